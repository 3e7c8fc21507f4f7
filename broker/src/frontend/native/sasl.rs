//! The native authentication and user apis (issue #18): SaslHandshake, SaslAuthenticate
//! (SCRAM-SHA-256, SCRAM-SHA-512; PLAIN only over TLS), CreateUser, AlterUserCredentials,
//! DeleteUser, ListUsers, each → core calls.

use std::sync::Arc;

use bytes::Bytes;
use wharf_protocol::messages::*;
use wharf_protocol::sasl::{parse_plain, ScramMechanism};
use wharf_protocol::{ApiKey, ErrorCode};

use crate::core::{
    AuthError, Broker, DefaultGuest, Existing, NewCredential, ScramServer, ScramStep, Session,
    UserError,
};
use crate::frontend::native::error_code;
use crate::frontend::native::{Native, NativeConnection};

/// The PLAIN mechanism's name.
const PLAIN: &str = "PLAIN";

/// What a connection may send before it has logged in when authentication is required.
pub const BEFORE_LOGIN: [ApiKey; 3] = [
    ApiKey::ApiVersions,
    ApiKey::SaslHandshake,
    ApiKey::SaslAuthenticate,
];

/// Where a connection's SASL exchange stands.
#[derive(Debug, Default)]
pub enum SaslState {
    /// No handshake yet.
    #[default]
    Start,
    /// PLAIN chosen.
    Plain,
    /// A SCRAM mechanism chosen.
    Scram(Box<ScramServer>),
    /// Over (logged in, or failed: a failed exchange starts again with a handshake).
    Done,
}

/// The mechanisms offered over this listener's transport.
fn mechanisms(native: &Native) -> Vec<String> {
    let mut names: Vec<String> = ScramMechanism::ALL
        .iter()
        .map(|mechanism| mechanism.name().to_string())
        .collect();
    if Broker::plain_allowed(native.transport) {
        names.push(PLAIN.to_string());
    }
    names
}

/// SaslHandshake: picks the mechanism.
pub fn handshake(
    native: &Native,
    connection: &NativeConnection,
    request: &SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let offered = mechanisms(native);
    let mut state = state(connection);
    let refuse = |error: ErrorCode, message: String| SaslHandshakeResponse {
        error,
        error_message: Some(message),
        mechanisms: offered.clone(),
    };
    if matches!(*state, SaslState::Plain | SaslState::Scram(_)) {
        return refuse(
            ErrorCode::IllegalSaslState,
            "a sasl exchange is already under way".to_string(),
        );
    }
    if connection.session.principal().is_authenticated() {
        return refuse(
            ErrorCode::IllegalSaslState,
            "the connection is already authenticated".to_string(),
        );
    }
    let mechanism = request.mechanism.as_str();
    *state = if mechanism == PLAIN && Broker::plain_allowed(native.transport) {
        SaslState::Plain
    } else if mechanism == PLAIN {
        return refuse(
            ErrorCode::UnsupportedSaslMechanism,
            "PLAIN sends the password itself and is offered only over TLS; use SCRAM-SHA-256 or SCRAM-SHA-512".to_string(),
        );
    } else if let Some(scram) = ScramMechanism::from_name(mechanism) {
        SaslState::Scram(Box::new(native.broker.scram_start(scram)))
    } else {
        return refuse(
            ErrorCode::UnsupportedSaslMechanism,
            format!("mechanism {mechanism:?} is not offered"),
        );
    };
    SaslHandshakeResponse {
        mechanisms: offered,
        ..Default::default()
    }
}

/// SaslAuthenticate: one step of the chosen mechanism (PLAIN's key derivation is awaited
/// here, in the ordered phase, so nothing of the connection is read until it is decided).
pub async fn authenticate(
    native: &Native,
    connection: &NativeConnection,
    request: SaslAuthenticateRequest,
) -> SaslAuthenticateResponse {
    let taken = std::mem::replace(&mut *state(connection), SaslState::Done);
    let outcome = match taken {
        SaslState::Start | SaslState::Done => Err(AuthError::IllegalState(
            "SaslAuthenticate without a SaslHandshake choosing a mechanism first".to_string(),
        )),
        SaslState::Plain => plain(
            &native.broker,
            &connection.session,
            &request.auth_bytes,
            connection,
        )
        .await
        .map(|()| Bytes::new()),
        SaslState::Scram(mut exchange) => match native.broker.scram_step(
            &connection.session,
            &mut exchange,
            &request.auth_bytes,
            connection.peer,
        ) {
            Ok(ScramStep::Continue(bytes)) => {
                *state(connection) = SaslState::Scram(exchange);
                Ok(Bytes::from(bytes))
            }
            Ok(ScramStep::Done { server_final, .. }) => Ok(Bytes::from(server_final)),
            Err(error) => Err(error),
        },
    };
    match outcome {
        Ok(auth_bytes) => SaslAuthenticateResponse {
            auth_bytes,
            ..Default::default()
        },
        Err(error) => {
            // A failed exchange may start again with a new handshake.
            *state(connection) = SaslState::Start;
            SaslAuthenticateResponse {
                error: error_code::auth(&error),
                error_message: Some(error.to_string()),
                auth_bytes: Bytes::new(),
            }
        }
    }
}

async fn plain(
    broker: &Arc<Broker>,
    session: &Session,
    message: &[u8],
    connection: &NativeConnection,
) -> Result<(), AuthError> {
    let plain = parse_plain(message).map_err(|error| AuthError::Malformed(error.to_string()))?;
    if plain
        .authzid
        .as_ref()
        .is_some_and(|authzid| *authzid != plain.user)
    {
        return Err(AuthError::Malformed(
            "an authorization id other than the user is not supported".to_string(),
        ));
    }
    broker
        .login_plain(
            session,
            &plain.user,
            &plain.password,
            connection.peer,
            DefaultGuest::Off,
        )
        .await
        .map(|_| ())
}

/// CreateUser (`existing` = must not exist) and AlterUserCredentials (must exist).
pub async fn set_credentials(
    broker: &Arc<Broker>,
    caller: &Session,
    request: UserCredentialsRequest,
    existing: Existing,
) -> UserAdminResponse {
    let mut credentials = Vec::with_capacity(request.credentials.len());
    for credential in request.credentials {
        let Some(mechanism) = ScramMechanism::from_name(&credential.mechanism) else {
            return UserAdminResponse {
                error: ErrorCode::UnsupportedSaslMechanism,
                error_message: Some(format!(
                    "mechanism {:?} is not SCRAM-SHA-256 or SCRAM-SHA-512",
                    credential.mechanism
                )),
            };
        };
        credentials.push((
            mechanism,
            NewCredential::Salted {
                salt: credential.salt.to_vec(),
                iterations: credential.iterations,
                salted_password: credential.salted_password.to_vec(),
            },
        ));
    }
    user_answer(
        broker
            .set_credentials(caller, &request.name, existing, credentials)
            .await,
    )
}

/// DeleteUser.
pub async fn delete_user(
    broker: &Arc<Broker>,
    caller: &Session,
    request: DeleteUserRequest,
) -> UserAdminResponse {
    user_answer(broker.delete_credentials(caller, &request.name, None).await)
}

/// ListUsers: names and mechanisms, never a key.
pub fn list_users(broker: &Broker, caller: &Session) -> ListUsersResponse {
    let users = match broker.list_users(caller) {
        Ok(users) => users,
        Err(error) => {
            return ListUsersResponse {
                error: error_code::user(&error),
                error_message: Some(error.to_string()),
                ..Default::default()
            }
        }
    };
    ListUsersResponse {
        users: users
            .into_iter()
            .map(|user| UserListing {
                name: user.name,
                credentials: user
                    .credentials
                    .into_iter()
                    .map(|(mechanism, iterations)| UserCredentialInfo {
                        mechanism: mechanism.name().to_string(),
                        iterations,
                    })
                    .collect(),
            })
            .collect(),
        ..Default::default()
    }
}

fn user_answer(outcome: Result<(), UserError>) -> UserAdminResponse {
    match outcome {
        Ok(()) => UserAdminResponse::default(),
        Err(error) => UserAdminResponse {
            error: error_code::user(&error),
            error_message: Some(error.to_string()),
        },
    }
}

fn state(connection: &NativeConnection) -> std::sync::MutexGuard<'_, SaslState> {
    connection
        .sasl
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}
