//! Logins and user management (issue #18): the one place every front end checks a password
//! or a SCRAM proof, limits failed logins per client address, logs failures, and sets the
//! session's [`Principal`].
//!
//! Which mechanisms a transport may use is decided here too ([`Broker::plain_allowed`]),
//! so the rule is the same for every protocol that shares it.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use wharf_protocol::sasl::{
    ScramCredential, ScramMechanism, SCRAM_ITERATIONS_DEFAULT, SCRAM_SALT_BYTES,
};

use crate::acl::Operation;
use crate::auth::scram::SERVER_NONCE_BYTES;
use crate::auth::users::{check_credential, check_name, StoredToken, TOKENS_MAX, USERS_MAX};
use crate::auth::{
    AuthError, CredentialChange, FailedLogins, Principal, ScramServer, ScramStep, UserError,
    UserInfo, Users,
};
use crate::core::{Broker, Session};

/// The user name RabbitMQ's default login uses.
pub const GUEST_USER: &str = "guest";

/// Bytes of the per-process key that makes unknown users' SCRAM salts.
const FAKE_SALT_KEY_BYTES: usize = 32;

/// The authentication state the core keeps: the users, recent failures, and the key of
/// unknown users' salts.
#[derive(Debug)]
pub struct AuthState {
    users: Arc<Users>,
    failures: FailedLogins,
    fake_salt_key: [u8; FAKE_SALT_KEY_BYTES],
}

impl AuthState {
    /// Wraps the opened users; an address is refused after `failures_per_minute_max` failed
    /// logins within a minute.
    ///
    /// # Errors
    /// A message if the operating system's random source fails.
    pub fn new(users: Users, failures_per_minute_max: usize) -> Result<AuthState, String> {
        let mut fake_salt_key = [0u8; FAKE_SALT_KEY_BYTES];
        getrandom::fill(&mut fake_salt_key)
            .map_err(|error| format!("cannot read the system's random source: {error}"))?;
        Ok(AuthState {
            users: Arc::new(users),
            failures: FailedLogins::new(failures_per_minute_max),
            fake_salt_key,
        })
    }
}

/// How a transport protects what a client sends, for the mechanism rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plaintext TCP: PLAIN would show the password to anyone on the path.
    Plaintext,
    /// TLS (issue #18's transport half plugs this in per listener).
    Tls,
}

/// Whether AMQP's default `guest` login may be used (RabbitMQ: only from loopback, and
/// only while no user named `guest` exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultGuest {
    /// `guest`/`guest` from a loopback address logs in as `User:guest`.
    LoopbackOnly,
    /// No default login.
    Off,
}

/// New credentials for a user.
#[derive(Debug, Clone)]
pub enum NewCredential {
    /// A password: the core salts and derives it (the password is dropped after).
    Password(String),
    /// Already salted (Kafka's AlterUserScramCredentials sends SaltedPassword, salt and
    /// iterations; the server keys are derived from them).
    Salted {
        salt: Vec<u8>,
        iterations: u32,
        salted_password: Vec<u8>,
    },
}

impl Broker {
    /// The user store, for writes run on the blocking pool.
    pub(crate) fn users_handle(&self) -> Arc<Users> {
        Arc::clone(&self.auth.users)
    }

    /// True when at least one user exists.
    pub fn users_exist(&self) -> bool {
        !self.auth.users.is_empty()
    }

    /// Every user with the mechanisms they have credentials for. Needs `Describe` on the
    /// cluster.
    ///
    /// # Errors
    /// `Unauthorized`.
    pub fn list_users(&self, caller: &Session) -> Result<Vec<UserInfo>, UserError> {
        self.check_cluster(caller, Operation::Describe)?;
        Ok(self.auth.users.list())
    }

    /// True if PLAIN may be used over `transport` by the native protocol: only over TLS,
    /// since PLAIN sends the password itself. (Kafka's and AMQP's front ends follow their
    /// own fields' rules instead; docs/SECURITY.md lists them.)
    pub fn plain_allowed(transport: Transport) -> bool {
        transport == Transport::Tls
    }

    /// A new SCRAM exchange.
    pub fn scram_start(&self, mechanism: ScramMechanism) -> ScramServer {
        ScramServer::new(mechanism)
    }

    /// Takes the next client message of a SCRAM exchange from `peer`; on success sets the
    /// session's principal.
    ///
    /// # Errors
    /// [`AuthError`]: the exchange is over (the caller answers in its protocol's terms).
    pub fn scram_step(
        &self,
        session: &Session,
        exchange: &mut ScramServer,
        message: &[u8],
        peer: SocketAddr,
    ) -> Result<ScramStep, AuthError> {
        let now_ms = self.clock.now_ms();
        if !self.auth.failures.allows(peer.ip(), now_ms) {
            return Err(AuthError::TooManyFailures {
                address: peer.ip().to_string(),
            });
        }
        let mut random = [0u8; SERVER_NONCE_BYTES];
        getrandom::fill(&mut random).map_err(|error| AuthError::Storage(error.to_string()))?;
        let mechanism = exchange.mechanism();
        let step = exchange.step(&self.auth.users, message, &random, &self.auth.fake_salt_key);
        match &step {
            Ok(ScramStep::Done { principal, .. }) => {
                self.auth.failures.record_success(peer.ip());
                let slot = self.admit_connection(session, principal, peer)?;
                tracing::info!(%peer, %principal, %mechanism, "login");
                session.set_principal(principal.clone(), slot);
            }
            Ok(ScramStep::Continue(_)) => {}
            Err(error) => self.login_failed(
                peer,
                exchange.user().unwrap_or("?"),
                mechanism.name(),
                error,
            ),
        }
        step
    }

    /// Checks a PLAIN login (user and password) from `peer` against the stored credentials
    /// (derived with the stored salt and iterations, compared in constant time); on success
    /// sets the session's principal. The derivation costs milliseconds: it runs on the
    /// blocking pool.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] for an unknown user or a wrong password (the same
    /// answer), [`AuthError::TooManyFailures`] when `peer` is over the limit.
    pub async fn login_plain(
        self: &Arc<Self>,
        session: &Session,
        user: &str,
        password: &str,
        peer: SocketAddr,
        guest: DefaultGuest,
    ) -> Result<Principal, AuthError> {
        if !self.auth.failures.allows(peer.ip(), self.clock.now_ms()) {
            return Err(AuthError::TooManyFailures {
                address: peer.ip().to_string(),
            });
        }
        let credentials = self.auth.users.credentials(user);
        let accepted = if credentials.is_empty() {
            // The default guest login of RabbitMQ, when allowed; otherwise an unknown user
            // still costs a derivation, so the answer takes as long as a wrong password.
            let default_guest = guest == DefaultGuest::LoopbackOnly
                && user == GUEST_USER
                && peer.ip().is_loopback();
            let password = password.to_string();
            tokio::task::spawn_blocking(move || {
                let decoy =
                    ScramMechanism::Sha256.credential(b"", b"decoy salt", SCRAM_ITERATIONS_DEFAULT);
                let _ = decoy.matches_password(password.as_bytes());
                default_guest && constant_time_eq(password.as_bytes(), GUEST_USER.as_bytes())
            })
            .await
            .unwrap_or(false)
        } else {
            let password = password.to_string();
            tokio::task::spawn_blocking(move || {
                credentials[0].matches_password(password.as_bytes())
            })
            .await
            .unwrap_or(false)
        };
        if !accepted {
            let error = AuthError::BadCredentials;
            self.login_failed(peer, user, "PLAIN", &error);
            return Err(error);
        }
        self.auth.failures.record_success(peer.ip());
        let principal = Principal::User(user.to_string());
        let slot = self.admit_connection(session, &principal, peer)?;
        tracing::info!(%peer, %principal, mechanism = "PLAIN", "login");
        session.set_principal(principal.clone(), slot);
        Ok(principal)
    }

    /// Counts a connection that just logged in as `principal` against
    /// `connections_per_user_max` (a per-request session of HTTP counts against nothing);
    /// a refusal is logged at WARN.
    fn admit_connection(
        &self,
        session: &Session,
        principal: &Principal,
        peer: SocketAddr,
    ) -> Result<Option<crate::core::quota::UserSlot>, AuthError> {
        if session.is_per_request() {
            return Ok(None);
        }
        self.admit_user(principal).inspect_err(|error| {
            tracing::warn!(%peer, %principal, %error, "connection refused: too many connections for this user");
        })
    }

    fn login_failed(&self, peer: SocketAddr, user: &str, mechanism: &str, error: &AuthError) {
        // Malformed exchanges and wrong passwords both count: either may be a guesser.
        if !matches!(error, AuthError::TooManyFailures { .. }) {
            self.auth
                .failures
                .record_failure(peer.ip(), self.clock.now_ms());
        }
        tracing::warn!(%peer, user, mechanism, %error, "authentication failed");
    }

    /// Sets `user`'s credentials, durably (on the blocking pool): each `(mechanism,
    /// credential)` pair adds or replaces that mechanism's credential, in one write. Needs
    /// `Alter` on the cluster, except that a logged-in user may change their own password.
    ///
    /// # Errors
    /// [`UserError`]: `Unauthorized`, a bad name or credential, the user exists
    /// (`Existing::MustNotExist`) or not (`Existing::MustExist`), or storage.
    pub async fn set_credentials(
        self: &Arc<Self>,
        caller: &Session,
        user: &str,
        existing: Existing,
        credentials: Vec<(ScramMechanism, NewCredential)>,
    ) -> Result<(), UserError> {
        let own_password =
            existing == Existing::MustExist && caller.principal() == Principal::User(user.into());
        if !own_password {
            self.check_cluster(caller, Operation::Alter)?;
        }
        if let Some(cluster) = self.replicated().cloned() {
            // Derived and checked here, as a lone node does; the log decides whether the
            // user exists (docs/CLUSTER.md, "Users, tokens and ACLs").
            let name = user.to_string();
            let creating = existing != Existing::MustExist && !self.auth.users.exists(user);
            if creating && self.auth.users.count() >= USERS_MAX {
                return Err(UserError::TooMany {
                    count: self.auth.users.count(),
                    max: USERS_MAX,
                });
            }
            let derived = tokio::task::spawn_blocking(move || derive_checked(&name, credentials))
                .await
                .map_err(|error| UserError::InvalidCredential {
                    reason: error.to_string(),
                })??;
            return self
                .set_credentials_replicated(&cluster, user, existing, derived)
                .await;
        }
        let broker = self.clone();
        let user = user.to_string();
        tokio::task::spawn_blocking(move || {
            set_credentials_blocking(&broker.auth.users, &user, existing, credentials)
        })
        .await
        .map_err(|error| UserError::InvalidCredential {
            reason: error.to_string(),
        })?
    }

    /// Removes `user`, or only its credential of one mechanism, durably. Needs `Alter` on
    /// the cluster.
    ///
    /// # Errors
    /// `Unauthorized`, [`UserError::NotFound`] or storage.
    pub async fn delete_credentials(
        self: &Arc<Self>,
        caller: &Session,
        user: &str,
        mechanism: Option<ScramMechanism>,
    ) -> Result<(), UserError> {
        self.check_cluster(caller, Operation::Alter)?;
        if let Some(cluster) = self.replicated().cloned() {
            check_name(user)?;
            return self
                .delete_credentials_replicated(&cluster, user, mechanism)
                .await;
        }
        let broker = self.clone();
        let user = user.to_string();
        let change = match mechanism {
            Some(mechanism) => CredentialChange::Remove(mechanism),
            None => CredentialChange::RemoveUser,
        };
        tokio::task::spawn_blocking(move || broker.auth.users.change(&user, change))
            .await
            .map_err(|error| UserError::InvalidCredential {
                reason: error.to_string(),
            })?
    }
}

/// Whether a credential change may create a user or change an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Create: refused if the user exists.
    MustNotExist,
    /// Change a password: refused if there is no such user.
    MustExist,
    /// Either (Kafka's AlterUserScramCredentials upserts).
    Either,
}

/// Sets credentials on `users` (blocking): shared by the running broker and by
/// `wharfd user create` on a stopped one.
///
/// # Errors
/// [`UserError`].
pub fn set_credentials_blocking(
    users: &Users,
    user: &str,
    existing: Existing,
    credentials: Vec<(ScramMechanism, NewCredential)>,
) -> Result<(), UserError> {
    let mut stored = Vec::with_capacity(credentials.len());
    for (mechanism, credential) in credentials {
        stored.push(derive(mechanism, credential)?);
    }
    let change = match existing {
        Existing::MustNotExist => CredentialChange::Create(stored),
        Existing::MustExist => CredentialChange::Update(stored),
        Existing::Either => {
            for credential in stored {
                users.change(user, CredentialChange::Set(credential))?;
            }
            return Ok(());
        }
    };
    users.change(user, change)
}

/// The stored credentials of `credentials` for user `name`, checked as the users file
/// checks them (blocking: salting a password runs its iterations).
///
/// # Errors
/// [`UserError::InvalidName`], [`UserError::InvalidCredential`].
fn derive_checked(
    name: &str,
    credentials: Vec<(ScramMechanism, NewCredential)>,
) -> Result<Vec<ScramCredential>, UserError> {
    check_name(name)?;
    if credentials.is_empty() {
        return Err(UserError::InvalidCredential {
            reason: "no credential given".to_string(),
        });
    }
    let mut derived = Vec::with_capacity(credentials.len());
    for (mechanism, credential) in credentials {
        let credential = derive(mechanism, credential)?;
        check_credential(&credential)?;
        derived.push(credential);
    }
    Ok(derived)
}

/// The stored credential of a password (salted here) or of a client-salted password.
fn derive(
    mechanism: ScramMechanism,
    credential: NewCredential,
) -> Result<ScramCredential, UserError> {
    let invalid = |reason: String| UserError::InvalidCredential { reason };
    match credential {
        NewCredential::Password(password) => {
            if password.is_empty() {
                return Err(invalid("empty password".to_string()));
            }
            if password.len() > wharf_protocol::sasl::PASSWORD_BYTES_MAX {
                return Err(invalid("password longer than 1024 bytes".to_string()));
            }
            let mut salt = [0u8; SCRAM_SALT_BYTES];
            getrandom::fill(&mut salt).map_err(|error| {
                invalid(format!("cannot read the system's random source: {error}"))
            })?;
            Ok(mechanism.credential(password.as_bytes(), &salt, SCRAM_ITERATIONS_DEFAULT))
        }
        NewCredential::Salted {
            salt,
            iterations,
            salted_password,
        } => {
            if salted_password.len() != mechanism.hash_bytes() {
                return Err(invalid(format!(
                    "salted password of {} bytes is not {} bytes",
                    salted_password.len(),
                    mechanism.hash_bytes()
                )));
            }
            let client_key = mechanism.hmac(&salted_password, b"Client Key");
            Ok(ScramCredential {
                mechanism,
                salt,
                iterations,
                stored_key: mechanism.hash(&client_key),
                server_key: mechanism.hmac(&salted_password, b"Server Key"),
            })
        }
    }
}

/// Constant-time equality of two byte strings (the length may leak, the contents do not).
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(left.ct_eq(right))
}

/// What a listener asks of its connections (issue #18): whether they must log in, and how
/// long one may stay connected without doing so. `server.rs` makes one per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Required or optional.
    pub mode: crate::config::Authentication,
    /// How long an unauthenticated connection may stay open when `mode` is required.
    pub timeout: std::time::Duration,
}

impl AuthPolicy {
    /// Resolves when a connection from `peer` opened at `opened` should be closed for not
    /// logging in: authentication is required and `timeout` passed without a login. Never
    /// otherwise.
    pub async fn until_timed_out(
        self,
        session: &Session,
        peer: SocketAddr,
        opened: tokio::time::Instant,
    ) {
        if self.mode == crate::config::Authentication::Optional {
            return std::future::pending().await;
        }
        tokio::time::sleep_until(opened + self.timeout).await;
        if session.principal().is_authenticated() {
            return std::future::pending().await;
        }
        tracing::info!(
            %peer,
            timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            "closing a connection that did not authenticate in time"
        );
    }
}

/// Prefix of every bearer token, so a leaked one is recognisable (secret scanners).
pub const TOKEN_PREFIX: &str = "wharf_";
/// Random bytes of a token's public id.
const TOKEN_ID_BYTES: usize = 8;
/// Random bytes of a token's secret: 256 bits, so the stored SHA-256 cannot be reversed by
/// guessing.
const TOKEN_SECRET_BYTES: usize = 32;

/// A new bearer token: shown once, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The public id (also inside the token).
    pub id: String,
    /// `wharf_<id>_<secret>`.
    pub token: String,
}

/// A token as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The public id.
    pub id: String,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
}

impl Broker {
    /// Makes a bearer token that logs in as `principal`'s user, stored hashed, durably.
    ///
    /// # Errors
    /// [`UserError`]: the anonymous principal, a deleted user, too many tokens, storage.
    pub async fn create_token(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<NewToken, UserError> {
        let Principal::User(user) = principal else {
            return Err(UserError::InvalidName {
                reason: "the anonymous principal cannot own tokens",
            });
        };
        let mut id_bytes = [0u8; TOKEN_ID_BYTES];
        let mut secret = [0u8; TOKEN_SECRET_BYTES];
        getrandom::fill(&mut id_bytes)
            .and_then(|()| getrandom::fill(&mut secret))
            .map_err(|error| UserError::InvalidCredential {
                reason: format!("cannot read the system's random source: {error}"),
            })?;
        let id: String = id_bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let token = format!(
            "{TOKEN_PREFIX}{id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let stored = StoredToken {
            id: id.clone(),
            user: user.clone(),
            hash: Sha256::digest(token.as_bytes()).to_vec(),
            created_ms: self.clock.now_ms(),
        };
        if let Some(cluster) = self.replicated().cloned() {
            if self.auth.users.token_count() >= TOKENS_MAX {
                return Err(UserError::TooMany {
                    count: self.auth.users.token_count(),
                    max: TOKENS_MAX,
                });
            }
            self.add_token_replicated(&cluster, &stored).await?;
            tracing::info!(%principal, token_id = id, "bearer token created");
            return Ok(NewToken { id, token });
        }
        let broker = self.clone();
        tokio::task::spawn_blocking(move || broker.auth.users.add_token(stored))
            .await
            .map_err(|error| UserError::InvalidCredential {
                reason: error.to_string(),
            })??;
        tracing::info!(%principal, token_id = id, "bearer token created");
        Ok(NewToken { id, token })
    }

    /// `principal`'s tokens (none for the anonymous principal).
    pub fn list_tokens(&self, principal: &Principal) -> Vec<TokenInfo> {
        let Principal::User(user) = principal else {
            return Vec::new();
        };
        self.auth
            .users
            .tokens_of(user)
            .into_iter()
            .map(|token| TokenInfo {
                id: token.id,
                created_ms: token.created_ms,
            })
            .collect()
    }

    /// Revokes `principal`'s token `id`, durably.
    ///
    /// # Errors
    /// [`UserError::NotFound`] unless `principal` owns such a token; storage errors.
    pub async fn delete_token(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
    ) -> Result<(), UserError> {
        let user = principal.name().to_string();
        if let Some(cluster) = self.replicated().cloned() {
            return self.remove_token_replicated(&cluster, &user, id).await;
        }
        let id = id.to_string();
        let broker = self.clone();
        tokio::task::spawn_blocking(move || broker.auth.users.remove_token(&user, &id))
            .await
            .map_err(|error| UserError::InvalidCredential {
                reason: error.to_string(),
            })?
    }

    /// Checks a bearer token from `peer`: its hash is compared in constant time with the
    /// stored one of its id. Failures count against the address like wrong passwords.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] for an unknown, malformed or revoked token;
    /// [`AuthError::TooManyFailures`] when `peer` is over the limit.
    pub fn login_bearer(&self, token: &str, peer: SocketAddr) -> Result<Principal, AuthError> {
        if !self.auth.failures.allows(peer.ip(), self.clock.now_ms()) {
            return Err(AuthError::TooManyFailures {
                address: peer.ip().to_string(),
            });
        }
        let id = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id);
        let stored = id.and_then(|id| self.auth.users.token(id));
        let hash = Sha256::digest(token.as_bytes());
        match stored {
            Some(stored) if constant_time_eq(&hash, &stored.hash) => {
                self.auth.failures.record_success(peer.ip());
                Ok(Principal::User(stored.user))
            }
            _ => {
                let error = AuthError::BadCredentials;
                self.login_failed(peer, "?", "BEARER", &error);
                Err(error)
            }
        }
    }
}
