//! HTTP authentication (issue #18): `Authorization: Basic` checked against the broker's users
//! (the core's PLAIN login: the same users and per-address failure limit as every protocol),
//! and `Authorization: Bearer <token>` with a token a user made ([`super::tokens`]).
//!
//! - `/health/live` and `/health/ready` are always open (Kubernetes probes carry no
//!   credentials).
//! - When authentication is optional, a request without credentials acts as the anonymous
//!   principal (and `/metrics` stays open); credentials that are sent are checked, and
//!   wrong ones get 401 all the same.
//! - When it is required, every other route needs valid credentials: 401 with
//!   `WWW-Authenticate: Basic realm="wharf"` otherwise.
//!
//! Each request with credentials costs one key derivation (4096 PBKDF2 iterations, a few
//! milliseconds on the blocking pool). The request's [`Principal`] travels as a request
//! extension, for the ACL checks that come next.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::error::ApiError;
use super::{Caller, Http, PeerAddr};
use crate::core::{Authentication, DefaultGuest, Principal, Session};

/// Routes that never ask for credentials.
const OPEN_PATHS: [&str; 2] = ["/health/live", "/health/ready"];
/// Routes open while authentication is optional (Prometheus scrapes without credentials).
const OPEN_WHEN_OPTIONAL: [&str; 1] = ["/metrics"];
/// The challenge of a 401.
const CHALLENGE: &str = "Basic realm=\"wharf\", charset=\"UTF-8\"";
/// The second challenge of a 401: tokens are accepted too.
const BEARER_CHALLENGE: &str = "Bearer realm=\"wharf\"";
/// Longest Authorization header looked at: a user name, a password and base64's growth.
const AUTHORIZATION_BYTES_MAX: usize = 4096;

/// The middleware: checks credentials, then runs the route with the request's principal.
pub async fn authenticate(
    State(http): State<Arc<Http>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let (Some(broker), Some(policy)) = (http.broker.get(), http.auth.get()) else {
        return ApiError::recovering().into_response();
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |info| {
            info.0 .0
        });
    let header = request.headers().get(header::AUTHORIZATION).cloned();
    let principal = match header {
        None if policy.mode == Authentication::Optional => Principal::Anonymous,
        None => {
            return unauthorized("authentication required: send Authorization: Basic or Bearer")
        }
        Some(value) if bearer_token(&value).is_some() => {
            let token = bearer_token(&value).unwrap_or_default();
            match broker.login_bearer(token, peer) {
                Ok(principal) => principal,
                Err(error) => return unauthorized(&error.to_string()),
            }
        }
        Some(value) => {
            let Some((user, password)) = basic_credentials(&value) else {
                return unauthorized(
                    "malformed Authorization header: expected Basic base64(user:password) or Bearer TOKEN",
                );
            };
            let session = Session::for_request(Principal::Anonymous, Some(peer));
            match broker
                .login_plain(&session, &user, &password, peer, DefaultGuest::Off)
                .await
            {
                Ok(principal) => principal,
                Err(error) => return unauthorized(&error.to_string()),
            }
        }
    };
    if policy.mode == Authentication::Required
        && !principal.is_authenticated()
        && !OPEN_WHEN_OPTIONAL.contains(&path)
    {
        return unauthorized("authentication required");
    }
    let caller = Caller(Arc::new(Session::for_request(
        principal.clone(),
        Some(peer),
    )));
    request.extensions_mut().insert(principal);
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// `Bearer TOKEN` → the token.
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    if text.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `Basic base64(user:password)` → user and password.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let bytes = value.as_bytes();
    if bytes.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::unauthorized(message).into_response();
    // Two WWW-Authenticate headers, one per scheme: extending a header map adds values
    // rather than replacing them.
    response.headers_mut().extend([
        (
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        ),
        (
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BEARER_CHALLENGE),
        ),
    ]);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse_and_refuse() {
        let value = HeaderValue::from_static("Basic YWxpY2U6czNjcjN0Og==");
        assert_eq!(
            basic_credentials(&value),
            Some(("alice".to_string(), "s3cr3t:".to_string()))
        );
        assert_eq!(
            bearer_token(&HeaderValue::from_static("Bearer wharf_ab_cd")),
            Some("wharf_ab_cd")
        );
        assert_eq!(bearer_token(&HeaderValue::from_static("Basic abc")), None);
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic YWxpY2U="] {
            assert_eq!(
                basic_credentials(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_refusal_offers_both_schemes() {
        let response = unauthorized("log in");
        let challenges: Vec<&HeaderValue> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(
            challenges,
            [
                &HeaderValue::from_static(CHALLENGE),
                &HeaderValue::from_static(BEARER_CHALLENGE)
            ]
        );
    }
}
