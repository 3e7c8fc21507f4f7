//! The SCRAM server exchange (RFC 5802 section 5), the same for every front end that carries
//! SASL: client-first → server-first, client-final → server-final.
//!
//! A user who does not exist gets a server-first message like any other (a salt derived from
//! the name and a per-process key, the default iteration count) and fails at the proof, so
//! the exchange does not tell who has an account.

use wharf_protocol::sasl::{
    self, ScramCredential, ScramMechanism, SCRAM_ITERATIONS_DEFAULT, SCRAM_SALT_BYTES,
};

use crate::auth::{AuthError, Principal, Users};

/// Random bytes in the server's half of the nonce.
pub const SERVER_NONCE_BYTES: usize = 18;

/// Where one exchange stands.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: ScramMechanism,
    /// The user client-first named, for logs.
    user: Option<String>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for client-first.
    Start,
    /// Waiting for client-final.
    Challenged {
        user: String,
        /// `None` for an unknown user: the proof cannot match.
        credential: Option<ScramCredential>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    /// Finished (either way); any further message is out of order.
    Done,
}

/// What the server answers to one client message.
#[derive(Debug)]
pub enum ScramStep {
    /// Send these bytes and wait for the next client message.
    Continue(Vec<u8>),
    /// The login succeeded: send these bytes (server-final) and act as the principal.
    Done {
        principal: Principal,
        server_final: Vec<u8>,
    },
}

impl ScramServer {
    /// A new exchange of `mechanism`.
    pub fn new(mechanism: ScramMechanism) -> ScramServer {
        ScramServer {
            mechanism,
            user: None,
            state: State::Start,
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// The user named in client-first, once it arrived (for logs).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Takes the next client message. `random` gives the server nonce's bytes (the caller
    /// reads them from the OS CSPRNG); `fake_salt_key` keys the salts of unknown users.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] for bytes that do not parse, [`AuthError::BadCredentials`]
    /// for a wrong proof or an unknown user, [`AuthError::IllegalState`] after the end.
    pub fn step(
        &mut self,
        users: &Users,
        message: &[u8],
        random: &[u8; SERVER_NONCE_BYTES],
        fake_salt_key: &[u8],
    ) -> Result<ScramStep, AuthError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => self.client_first(users, message, random, fake_salt_key),
            State::Challenged {
                user,
                credential,
                client_first_bare,
                server_first,
                nonce,
            } => {
                let last = sasl::parse_client_final(message)
                    .map_err(|error| AuthError::Malformed(error.to_string()))?;
                if last.nonce != nonce {
                    return Err(AuthError::Malformed("nonce does not match".to_string()));
                }
                if last.channel_binding != sasl::GS2_HEADER_BASE64 && last.channel_binding != "eSws"
                {
                    return Err(AuthError::Malformed(
                        "channel binding does not match the gs2 header".to_string(),
                    ));
                }
                let auth_message =
                    sasl::auth_message(&client_first_bare, &server_first, &last.without_proof);
                let Some(credential) = credential else {
                    return Err(AuthError::BadCredentials);
                };
                if !self.mechanism.verify_proof(
                    &credential.stored_key,
                    auth_message.as_bytes(),
                    &last.proof,
                ) {
                    return Err(AuthError::BadCredentials);
                }
                let signature = self
                    .mechanism
                    .server_signature(&credential.server_key, auth_message.as_bytes());
                Ok(ScramStep::Done {
                    principal: Principal::User(user),
                    server_final: sasl::server_final_message(&signature).into_bytes(),
                })
            }
            State::Done => Err(AuthError::IllegalState(
                "the scram exchange is already over".to_string(),
            )),
        }
    }

    fn client_first(
        &mut self,
        users: &Users,
        message: &[u8],
        random: &[u8; SERVER_NONCE_BYTES],
        fake_salt_key: &[u8],
    ) -> Result<ScramStep, AuthError> {
        let first = sasl::parse_client_first(message)
            .map_err(|error| AuthError::Malformed(error.to_string()))?;
        self.user = Some(first.user.clone());
        let credential = users.credential(&first.user, self.mechanism);
        let (salt, iterations) = match &credential {
            Some(credential) => (credential.salt.clone(), credential.iterations),
            None => {
                let mut salt = self.mechanism.hmac(fake_salt_key, first.user.as_bytes());
                salt.truncate(SCRAM_SALT_BYTES);
                (salt, SCRAM_ITERATIONS_DEFAULT)
            }
        };
        let nonce = format!("{}{}", first.nonce, sasl::nonce_from(random));
        let server_first = sasl::server_first_message(&nonce, &salt, iterations);
        let reply = server_first.clone().into_bytes();
        self.state = State::Challenged {
            user: first.user,
            credential,
            client_first_bare: first.bare,
            server_first,
            nonce,
        };
        Ok(ScramStep::Continue(reply))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::CredentialChange;
    use crate::storage::RealFs;

    /// Runs a whole client side against the server; returns the server's final result.
    fn login(
        users: &Users,
        mechanism: ScramMechanism,
        user: &str,
        password: &str,
    ) -> Result<Principal, AuthError> {
        let mut server = ScramServer::new(mechanism);
        let random = [7u8; SERVER_NONCE_BYTES];
        let bare = sasl::client_first_bare(user, "clientnonce");
        let first = format!("{}{bare}", sasl::GS2_HEADER);
        let ScramStep::Continue(server_first) =
            server.step(users, first.as_bytes(), &random, b"key")?
        else {
            panic!("server-first expected");
        };
        let parsed = sasl::parse_server_first(&server_first).expect("server first");
        let salted =
            mechanism.salted_password(password.as_bytes(), &parsed.salt, parsed.iterations);
        let without_proof = sasl::client_final_without_proof(&parsed.nonce);
        let server_first = String::from_utf8(server_first).expect("utf-8");
        let auth = sasl::auth_message(&bare, &server_first, &without_proof);
        let proof = mechanism.client_proof(&salted, auth.as_bytes());
        let last = sasl::client_final_message(&without_proof, &proof);
        match server.step(users, last.as_bytes(), &random, b"key")? {
            ScramStep::Done {
                principal,
                server_final,
            } => {
                let expected = mechanism
                    .server_signature(&mechanism.hmac(&salted, b"Server Key"), auth.as_bytes());
                assert_eq!(
                    sasl::parse_server_final(&server_final),
                    Ok(sasl::ServerFinal::Verifier(expected))
                );
                Ok(principal)
            }
            ScramStep::Continue(_) => panic!("done expected"),
        }
    }

    #[test]
    fn scram_logins_succeed_with_the_password_and_fail_otherwise() {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = Users::open(Arc::new(RealFs), dir.path()).expect("open");
        for mechanism in ScramMechanism::ALL {
            users
                .change(
                    "alice",
                    CredentialChange::Set(mechanism.credential(b"secret", b"salty salt", 4096)),
                )
                .expect("set");
            assert_eq!(
                login(&users, mechanism, "alice", "secret"),
                Ok(Principal::User("alice".to_string()))
            );
            assert_eq!(
                login(&users, mechanism, "alice", "wrong"),
                Err(AuthError::BadCredentials)
            );
            assert_eq!(
                login(&users, mechanism, "nobody", "secret"),
                Err(AuthError::BadCredentials)
            );
        }
    }

    #[test]
    fn messages_after_the_end_are_out_of_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = Users::open(Arc::new(RealFs), dir.path()).expect("open");
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        let random = [1u8; SERVER_NONCE_BYTES];
        assert!(matches!(
            server.step(&users, b"garbage", &random, b"key"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            server.step(&users, b"n,,n=a,r=b", &random, b"key"),
            Err(AuthError::IllegalState(_))
        ));
    }
}
