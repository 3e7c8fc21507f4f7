//! Authentication (issue #18), protocol-neutral: the users and their SCRAM credentials
//! ([`users`]), the SCRAM server exchange every SASL-speaking front end runs ([`scram`]), the
//! per-address limit on failed logins ([`limiter`]), and the [`Principal`] a connection
//! carries once it has logged in (what ACL checks will be made against).
//!
//! This is domain code under the core: front ends reach it only through `core` (its
//! `auth_ops`). It names nothing of the wire protocols but the SASL mechanism bytes
//! (`wharf_protocol::sasl`), which are the same bytes in every protocol that carries them.
//!
//! **Invariants:** a password is never stored, logged or kept after the call that received
//! it; proofs, keys and tokens are compared in constant time; a login of an unknown user costs
//! and looks the same as a wrong password.

pub mod limiter;
pub mod scram;
pub mod users;

use std::fmt;

pub use limiter::{FailedLogins, FAILED_LOGINS_PER_MINUTE_MAX};
pub use scram::{ScramServer, ScramStep};
pub use users::{CredentialChange, UserError, UserInfo, Users, USERS_FILE};

/// Who a connection acts as: `User:alice` after a login, `User:ANONYMOUS` before (or when
/// authentication is optional and the client never logs in). Kafka's principal format, so
/// ACLs (issue #18, after this) name principals the way Kafka's tools do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A connection that has not authenticated.
    Anonymous,
    /// A user who proved their password (SCRAM or PLAIN), or presented a bearer token of
    /// theirs.
    User(String),
}

/// The name Kafka gives the principal of an unauthenticated connection.
pub const ANONYMOUS_NAME: &str = "ANONYMOUS";

impl Principal {
    /// True for a logged-in user.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Principal::User(_))
    }

    /// The user name (`ANONYMOUS` for an anonymous connection).
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => ANONYMOUS_NAME,
            Principal::User(name) => name,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "User:{}", self.name())
    }
}

/// Why a login failed. Front ends map each to their protocol's error; the text never says
/// whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong password or wrong proof: deliberately one case.
    #[error("authentication failed: invalid user name or password")]
    BadCredentials,
    /// The SASL bytes could not be parsed.
    #[error("malformed sasl message: {0}")]
    Malformed(String),
    /// The mechanism is not offered (or not over this transport).
    #[error("{0}")]
    UnsupportedMechanism(String),
    /// A message arrived in the wrong step of the exchange.
    #[error("{0}")]
    IllegalState(String),
    /// Too many failed logins from this address in the last minute.
    #[error("too many failed logins from {address}; retry in a minute")]
    TooManyFailures { address: String },
    /// Storage failed while checking (the user file).
    #[error("{0}")]
    Storage(String),
    /// The user already has `connections_per_user_max` connections (issue #18's limits).
    #[error("connection refused for user '{user}': user connection limit ({max}) is reached")]
    ConnectionLimit { user: String, max: usize },
}
