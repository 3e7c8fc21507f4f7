//! Bearer tokens (issue #18): a logged-in user makes tokens for themselves, lists and revokes
//! them; a request with `Authorization: Bearer <token>` then acts as that user
//! ([`super::auth`]). The broker stores only each token's SHA-256; the token is shown once,
//! in the answer that creates it. Each route → one core call.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::Principal;
use crate::frontend::http::error::{ApiError, ErrorBody, PathParams};
use crate::frontend::http::{Http, Shared};

/// The token routes.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
}

/// A new token: the only time the token itself is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Its public id (for listing and revoking).
    pub id: String,
    /// The user it logs in as.
    pub user: String,
    /// `wharf_<id>_<secret>`: send it as `Authorization: Bearer <token>`.
    pub token: String,
}

/// A token in a listing: never the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenSummary {
    /// Its public id.
    pub id: String,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
}

/// The caller's tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// The tokens, oldest first.
    pub tokens: Vec<TokenSummary>,
}

/// The logged-in user of a request, or 401.
fn user(principal: Option<Extension<Principal>>) -> Result<Principal, ApiError> {
    match principal {
        Some(Extension(principal)) if principal.is_authenticated() => Ok(principal),
        _ => Err(ApiError::unauthorized(
            "tokens belong to users: log in with Basic credentials",
        )),
    }
}

/// Creates a bearer token for the calling user.
#[utoipa::path(post, path = "/tokens", tag = "security", responses((status = 201, description = "Created: the token, shown only this once", body = CreatedToken), (status = 401, description = "Not logged in as a user", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn create_token(
    axum::extract::State(http): Shared,
    principal: Option<Extension<Principal>>,
) -> Result<Response, ApiError> {
    let principal = user(principal)?;
    let broker = http.broker()?;
    let created = broker.create_token(&principal).await?;
    let body = CreatedToken {
        id: created.id,
        user: principal.name().to_string(),
        token: created.token,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Lists the calling user's tokens (ids and times, never the tokens).
#[utoipa::path(get, path = "/tokens", tag = "security", responses((status = 200, description = "The caller's tokens", body = TokenList), (status = 401, description = "Not logged in as a user", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn list_tokens(
    axum::extract::State(http): Shared,
    principal: Option<Extension<Principal>>,
) -> Result<Response, ApiError> {
    let principal = user(principal)?;
    let broker = http.broker()?;
    let tokens = broker
        .list_tokens(&principal)
        .into_iter()
        .map(|token| TokenSummary {
            id: token.id,
            created_ms: token.created_ms,
        })
        .collect();
    Ok(Json(TokenList { tokens }).into_response())
}

/// Revokes one of the calling user's tokens.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "security", params(("id" = String, Path, description = "The token's id")), responses((status = 204, description = "Revoked"), (status = 401, description = "Not logged in as a user", body = ErrorBody), (status = 404, description = "The caller has no such token", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn delete_token(
    axum::extract::State(http): Shared,
    principal: Option<Extension<Principal>>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let principal = user(principal)?;
    let broker = http.broker()?;
    broker.delete_token(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
