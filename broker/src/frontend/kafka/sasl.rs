//! Kafka's SASL apis and user management (issue #18): SaslHandshake (v1) and
//! SaslAuthenticate (v0–v2) with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN, and
//! DescribeUserScramCredentials / AlterUserScramCredentials, each → core calls.
//!
//! SaslHandshake v0 (SASL tokens framed without Kafka headers afterwards) is not served:
//! every client since Kafka 1.0 uses v1 with SaslAuthenticate when the broker advertises it.
//!
//! PLAIN is allowed on this plaintext listener, as Kafka allows it on SASL_PLAINTEXT
//! listeners (the operator chose the listener); the native protocol is stricter
//! (docs/SECURITY.md).

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use wharf_protocol::sasl::{parse_plain, ScramMechanism};

use super::error_code;
use super::handlers::text;
use crate::core::{
    AuthError, Broker, DefaultGuest, Existing, NewCredential, ScramServer, ScramStep, Session,
    UserInfo,
};

/// The PLAIN mechanism's name.
pub const PLAIN: &str = "PLAIN";
/// The mechanisms SaslHandshake offers, in Kafka's order.
const MECHANISMS: [&str; 3] = ["SCRAM-SHA-256", "SCRAM-SHA-512", PLAIN];

/// Where a connection's SASL exchange stands.
#[derive(Debug, Default)]
pub enum SaslState {
    /// No handshake yet.
    #[default]
    Start,
    /// SaslHandshake chose PLAIN; one SaslAuthenticate follows.
    Plain,
    /// SaslHandshake chose a SCRAM mechanism; two SaslAuthenticates follow.
    Scram(Box<ScramServer>),
    /// Logged in (or failed): further SASL requests are out of order.
    Done,
}

/// SaslHandshake: picks the mechanism of the SaslAuthenticates that follow.
pub fn handshake(
    broker: &Broker,
    state: &mut SaslState,
    request: &SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mechanisms = MECHANISMS.iter().map(|name| text(name)).collect();
    let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
    if !matches!(state, SaslState::Start) {
        return response.with_error_code(ResponseError::IllegalSaslState.code());
    }
    let name: &str = &request.mechanism;
    *state = if name == PLAIN {
        SaslState::Plain
    } else if let Some(mechanism) = ScramMechanism::from_name(name) {
        SaslState::Scram(Box::new(broker.scram_start(mechanism)))
    } else {
        return response.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
    };
    response
}

/// The ordered part of SaslAuthenticate that needs no waiting: a SCRAM step. PLAIN (which
/// derives a key on the blocking pool) is [`authenticate_plain`].
pub enum Authenticate {
    /// The answer is known.
    Answer(SaslAuthenticateResponse),
    /// A PLAIN message to check.
    Plain(Vec<u8>),
}

/// SaslAuthenticate: one step of the chosen mechanism.
pub fn authenticate(
    broker: &Broker,
    session: &Session,
    state: &mut SaslState,
    request: &SaslAuthenticateRequest,
    peer: SocketAddr,
) -> Authenticate {
    match std::mem::replace(state, SaslState::Done) {
        SaslState::Start | SaslState::Done => Authenticate::Answer(failure(
            ResponseError::IllegalSaslState,
            "SaslAuthenticate without a SaslHandshake choosing a mechanism first",
        )),
        SaslState::Plain => Authenticate::Plain(request.auth_bytes.to_vec()),
        SaslState::Scram(mut exchange) => {
            match broker.scram_step(session, &mut exchange, &request.auth_bytes, peer) {
                Ok(ScramStep::Continue(bytes)) => {
                    *state = SaslState::Scram(exchange);
                    Authenticate::Answer(
                        SaslAuthenticateResponse::default().with_auth_bytes(bytes.into()),
                    )
                }
                Ok(ScramStep::Done { server_final, .. }) => Authenticate::Answer(
                    SaslAuthenticateResponse::default().with_auth_bytes(server_final.into()),
                ),
                Err(error) => Authenticate::Answer(auth_failure(&error)),
            }
        }
    }
}

/// Checks a PLAIN SaslAuthenticate.
pub async fn authenticate_plain(
    broker: &Arc<Broker>,
    session: &Session,
    message: Vec<u8>,
    peer: SocketAddr,
) -> SaslAuthenticateResponse {
    let plain = match parse_plain(&message) {
        Ok(plain) => plain,
        Err(error) => return auth_failure(&AuthError::Malformed(error.to_string())),
    };
    if plain
        .authzid
        .as_ref()
        .is_some_and(|authzid| *authzid != plain.user)
    {
        return failure(
            ResponseError::SaslAuthenticationFailed,
            "an authorization id other than the user is not supported",
        );
    }
    match broker
        .login_plain(
            session,
            &plain.user,
            &plain.password,
            peer,
            DefaultGuest::Off,
        )
        .await
    {
        Ok(_) => SaslAuthenticateResponse::default(),
        Err(error) => auth_failure(&error),
    }
}

impl std::fmt::Debug for Authenticate {
    // A PLAIN message holds the password: it stays out of logs.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticate::Answer(response) => {
                formatter.debug_tuple("Answer").field(response).finish()
            }
            Authenticate::Plain(_) => formatter.write_str("Plain(..)"),
        }
    }
}

fn auth_failure(error: &AuthError) -> SaslAuthenticateResponse {
    failure(error_code::auth(error), &error.to_string())
}

fn failure(code: ResponseError, message: &str) -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(code.code())
        .with_error_message(Some(text(message)))
}

/// Kafka's mechanism numbers in the SCRAM credential apis.
fn mechanism_of(code: i8) -> Option<ScramMechanism> {
    match code {
        1 => Some(ScramMechanism::Sha256),
        2 => Some(ScramMechanism::Sha512),
        _ => None,
    }
}

fn mechanism_code(mechanism: ScramMechanism) -> i8 {
    match mechanism {
        ScramMechanism::Sha256 => 1,
        ScramMechanism::Sha512 => 2,
    }
}

/// DescribeUserScramCredentials: every user (a null list) or the named ones; never a key.
pub fn describe_user_scram_credentials(
    broker: &Broker,
    caller: &Session,
    request: &DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let users = match broker.list_users(caller) {
        Ok(users) => users,
        Err(error) => {
            return DescribeUserScramCredentialsResponse::default()
                .with_error_code(error_code::user(&error).code())
                .with_error_message(Some(text(&error.to_string())))
        }
    };
    let describe = |user: &UserInfo| {
        DescribeUserScramCredentialsResult::default()
            .with_user(text(&user.name))
            .with_credential_infos(
                user.credentials
                    .iter()
                    .map(|(mechanism, iterations)| {
                        CredentialInfo::default()
                            .with_mechanism(mechanism_code(*mechanism))
                            .with_iterations(i32::try_from(*iterations).unwrap_or(i32::MAX))
                    })
                    .collect(),
            )
    };
    let results = match &request.users {
        None => users.iter().map(describe).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                let name: &str = &name.name;
                match users.iter().find(|user| user.name == name) {
                    Some(user) => describe(user),
                    None => DescribeUserScramCredentialsResult::default()
                        .with_user(text(name))
                        .with_error_code(ResponseError::ResourceNotFound.code())
                        .with_error_message(Some(text(&format!(
                            "attempt to describe a user credential that does not exist: {name}"
                        )))),
                }
            })
            .collect(),
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// AlterUserScramCredentials: deletions, then upsertions (salted passwords, as Kafka's
/// admin clients send them), one result per user.
pub async fn alter_user_scram_credentials(
    broker: &Arc<Broker>,
    caller: &Session,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut results: Vec<AlterUserScramCredentialsResult> = Vec::new();
    let mut record = |user: &str, outcome: Result<(), (ResponseError, String)>| {
        if results.iter().any(|result| result.user.as_str() == user) {
            return;
        }
        let result = AlterUserScramCredentialsResult::default().with_user(text(user));
        results.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => result
                .with_error_code(code.code())
                .with_error_message(Some(text(&message))),
        });
    };
    for deletion in &request.deletions {
        let outcome = match mechanism_of(deletion.mechanism) {
            None => Err(unsupported_mechanism(deletion.mechanism)),
            Some(mechanism) => broker
                .delete_credentials(caller, &deletion.name, Some(mechanism))
                .await
                .map_err(|error| (error_code::user(&error), error.to_string())),
        };
        record(&deletion.name, outcome);
    }
    for upsertion in request.upsertions {
        let outcome = match mechanism_of(upsertion.mechanism) {
            None => Err(unsupported_mechanism(upsertion.mechanism)),
            Some(mechanism) => broker
                .set_credentials(
                    caller,
                    &upsertion.name,
                    Existing::Either,
                    vec![(
                        mechanism,
                        NewCredential::Salted {
                            salt: upsertion.salt.to_vec(),
                            iterations: u32::try_from(upsertion.iterations).unwrap_or(0),
                            salted_password: upsertion.salted_password.to_vec(),
                        },
                    )],
                )
                .await
                .map_err(|error| (error_code::user(&error), error.to_string())),
        };
        record(&upsertion.name, outcome);
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}

fn unsupported_mechanism(code: i8) -> (ResponseError, String) {
    (
        ResponseError::UnsupportedSaslMechanism,
        format!("unknown scram mechanism {code}"),
    )
}
