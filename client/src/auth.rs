//! Logging in (issue #18): the client side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802)
//! over the native SaslHandshake and SaslAuthenticate apis, run on the bare socket right
//! after the ApiVersions handshake, before the connection is shared; and the salting of new
//! passwords for the user admin apis (the password itself never goes on the wire).

use std::fmt;

use bytes::Bytes;
use wharf_protocol::messages::{
    SaslAuthenticateRequest, SaslHandshakeRequest, ScramCredentialUpsert,
};
use wharf_protocol::sasl::{
    self, ScramMechanism, ServerFinal, SCRAM_ITERATIONS_DEFAULT, SCRAM_SALT_BYTES,
};
use wharf_protocol::{ErrorCode, Request, Response};

use crate::connection::BareStream;
use crate::error::{check_code, Error, Result};

/// Random bytes of the client's nonce.
const CLIENT_NONCE_BYTES: usize = 24;

/// Who to log in as.
///
/// ```
/// use wharf_client::{ClientConfig, Credentials, ScramMechanism};
///
/// let config = ClientConfig::new("127.0.0.1:7420")
///     .credentials(Credentials::new("alice", "s3cret", ScramMechanism::Sha256));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    password: String,
    /// The SCRAM mechanism to use.
    pub mechanism: ScramMechanism,
}

impl Credentials {
    /// Credentials of `user` with `password`, logging in with `mechanism`.
    pub fn new(
        user: impl Into<String>,
        password: impl Into<String>,
        mechanism: ScramMechanism,
    ) -> Self {
        Credentials {
            user: user.into(),
            password: password.into(),
            mechanism,
        }
    }
}

impl fmt::Debug for Credentials {
    // The password stays out of logs and panic messages.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("user", &self.user)
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

/// Runs a SCRAM login on the bare socket (before the connection is shared).
///
/// # Errors
/// [`Error::Server`] with `AuthenticationFailed` (wrong password, unknown user),
/// `UnsupportedSaslMechanism`, or [`Error::Decode`] when the server's messages do not parse
/// or its signature is wrong (it does not know the password: not the broker it claims).
pub(crate) async fn login(credentials: &Credentials, bare: &mut BareStream<'_>) -> Result<()> {
    let mechanism = credentials.mechanism;
    let response = bare
        .call(Request::SaslHandshake(SaslHandshakeRequest {
            mechanism: mechanism.name().to_string(),
        }))
        .await?;
    let Response::SaslHandshake(handshake) = response else {
        return Err(unexpected("SaslHandshake"));
    };
    check_code(handshake.error, handshake.error_message)?;
    let mut random = [0u8; CLIENT_NONCE_BYTES];
    getrandom::fill(&mut random).map_err(|error| Error::InvalidState {
        reason: random_failed(&error),
    })?;
    let client_nonce = sasl::nonce_from(&random);
    let first_bare = sasl::client_first_bare(&credentials.user, &client_nonce);
    let first = format!("{}{first_bare}", sasl::GS2_HEADER);
    let server_first_bytes = authenticate(bare, first.into_bytes()).await?;
    let server_first = sasl::parse_server_first(&server_first_bytes).map_err(bad_server)?;
    if !server_first.nonce.starts_with(&client_nonce) || server_first.nonce == client_nonce {
        return Err(bad_server("server nonce does not extend the client's"));
    }
    let server_first_text =
        String::from_utf8(server_first_bytes.to_vec()).map_err(|_| bad_server("not utf-8"))?;
    let salted = mechanism.salted_password(
        credentials.password.as_bytes(),
        &server_first.salt,
        server_first.iterations,
    );
    let without_proof = sasl::client_final_without_proof(&server_first.nonce);
    let auth_message = sasl::auth_message(&first_bare, &server_first_text, &without_proof);
    let proof = mechanism.client_proof(&salted, auth_message.as_bytes());
    let last = sasl::client_final_message(&without_proof, &proof);
    let server_final = authenticate(bare, last.into_bytes()).await?;
    match sasl::parse_server_final(&server_final).map_err(bad_server)? {
        ServerFinal::Error(error) => {
            Err(Error::server(ErrorCode::AuthenticationFailed, Some(error)))
        }
        ServerFinal::Verifier(signature) => {
            let server_key = mechanism.hmac(&salted, b"Server Key");
            let expected = mechanism.server_signature(&server_key, auth_message.as_bytes());
            if signature == expected {
                Ok(())
            } else {
                Err(bad_server("server signature does not match"))
            }
        }
    }
}

async fn authenticate(bare: &mut BareStream<'_>, auth_bytes: Vec<u8>) -> Result<Bytes> {
    let response = bare
        .call(Request::SaslAuthenticate(SaslAuthenticateRequest {
            auth_bytes: Bytes::from(auth_bytes),
        }))
        .await?;
    let Response::SaslAuthenticate(answer) = response else {
        return Err(unexpected("SaslAuthenticate"));
    };
    check_code(answer.error, answer.error_message)?;
    Ok(answer.auth_bytes)
}

/// The salted credentials of `password` for each mechanism, for CreateUser and
/// AlterUserCredentials.
///
/// # Errors
/// [`Error::InvalidState`] if the operating system's random source fails.
pub(crate) fn upserts(
    password: &str,
    mechanisms: &[ScramMechanism],
) -> Result<Vec<ScramCredentialUpsert>> {
    mechanisms
        .iter()
        .map(|mechanism| {
            let mut salt = [0u8; SCRAM_SALT_BYTES];
            getrandom::fill(&mut salt).map_err(|error| Error::InvalidState {
                reason: random_failed(&error),
            })?;
            let salted =
                mechanism.salted_password(password.as_bytes(), &salt, SCRAM_ITERATIONS_DEFAULT);
            Ok(ScramCredentialUpsert {
                mechanism: mechanism.name().to_string(),
                iterations: SCRAM_ITERATIONS_DEFAULT,
                salt: Bytes::copy_from_slice(&salt),
                salted_password: Bytes::from(salted),
            })
        })
        .collect()
}

fn random_failed(_error: &getrandom::Error) -> &'static str {
    "the operating system's random source failed"
}

fn unexpected(api: &'static str) -> Error {
    Error::Decode(wharf_protocol::DecodeError::InvalidValue {
        field: api,
        value: 0,
    })
}

fn bad_server(reason: impl fmt::Display) -> Error {
    Error::ServerAuthentication {
        reason: reason.to_string(),
    }
}
