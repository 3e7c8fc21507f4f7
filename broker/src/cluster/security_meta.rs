//! Users, their SCRAM credentials, HTTP bearer tokens and ACLs in the metadata log (issue
//! #20: "users and ACLs" are cluster-wide definitions), so a client logs in and is
//! authorized alike on every node.
//!
//! The log holds them as the nodes' stores keep them, without reading them: a credential is
//! its mechanism's name, salt, iteration count and the two keys RFC 5802 says a server keeps
//! (never a password); a token is the SHA-256 of the token string; an ACL is its seven fields
//! by name. The core converts to and from its own types (`core/security_sync.rs`), checks
//! every request as a lone node does before proposing, and makes each node's `users` and
//! `acls` files follow what the log applied. Applying here keeps only the rules the log must
//! decide in one order: whether a user exists (create, change, delete), whether a token's
//! owner exists, and which ACLs a removal found.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::codec::bytes_field;

/// Most users the log holds: the users file's own limit (`auth::users::USERS_MAX`; a test
/// in `core/security_sync.rs` checks they agree), so every node's file can hold them.
pub const USERS_MAX: usize = 100_000;
/// Most bearer tokens the log holds (`auth::users::TOKENS_MAX`).
pub const TOKENS_MAX: usize = 10_000;
use super::metadata::{MetadataError, MetadataResult, MetadataState};

/// One stored SCRAM credential of a user.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CredentialMeta {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// The iteration count of `Hi`.
    pub iterations: u32,
    /// The salt of `Hi`.
    #[serde(with = "bytes_field")]
    pub salt: Bytes,
    /// `H(ClientKey)`.
    #[serde(with = "bytes_field")]
    pub stored_key: Bytes,
    /// `HMAC(SaltedPassword, "Server Key")`.
    #[serde(with = "bytes_field")]
    pub server_key: Bytes,
}

impl std::fmt::Debug for CredentialMeta {
    // Keys stay out of logs and panic messages.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CredentialMeta")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// An HTTP bearer token: its public id, owner, and the SHA-256 of the whole token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenMeta {
    pub id: String,
    pub user: String,
    #[serde(with = "bytes_field")]
    pub hash: Bytes,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
}

impl std::fmt::Debug for TokenMeta {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TokenMeta")
            .field("id", &self.id)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// One ACL, its fields by name (as the `acls` file stores them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclMeta {
    pub principal: String,
    pub host: String,
    pub resource_type: String,
    pub pattern_type: String,
    pub name: String,
    pub operation: String,
    pub permission: String,
}

/// Whether [`SecurityCommand::SetCredentials`] may create the user or change an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserExisting {
    /// Create: refused if the user exists.
    MustNotExist,
    /// Change: refused if there is no such user.
    MustExist,
    /// Either (Kafka's AlterUserScramCredentials upserts).
    Either,
}

/// A change to the users, tokens or ACLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// Adds or replaces each credential's mechanism of `user` (creating the user when
    /// `existing` allows).
    SetCredentials {
        user: String,
        credentials: Vec<CredentialMeta>,
        existing: UserExisting,
    },
    /// Removes `user`'s credential of `mechanism` (the user too if it was the last), or the
    /// whole user; a user's tokens go with the user.
    RemoveCredentials {
        user: String,
        mechanism: Option<String>,
    },
    /// Adds a token of an existing user.
    AddToken(TokenMeta),
    /// Removes `user`'s token `id`.
    RemoveToken { user: String, id: String },
    /// Adds ACLs (those present count as added, as in Kafka).
    AddAcls(Vec<AclMeta>),
    /// Removes these ACLs; answers [`MetadataResult::Acls`] with those the log held.
    RemoveAcls(Vec<AclMeta>),
}

impl MetadataState {
    /// Applies a [`SecurityCommand`].
    pub(super) fn apply_security(
        &mut self,
        command: &SecurityCommand,
    ) -> Result<MetadataResult, MetadataError> {
        match command {
            SecurityCommand::SetCredentials {
                user,
                credentials,
                existing,
            } => {
                let exists = self.users.contains_key(user);
                match existing {
                    UserExisting::MustNotExist if exists => {
                        return Err(MetadataError::UserExists(user.clone()))
                    }
                    UserExisting::MustExist if !exists => {
                        return Err(MetadataError::UnknownUser(user.clone()))
                    }
                    _ => {}
                }
                if credentials.is_empty() {
                    return Err(MetadataError::Invalid(format!(
                        "no credential given for user {user:?}"
                    )));
                }
                if !exists && self.users.len() >= USERS_MAX {
                    return Err(MetadataError::Invalid(format!(
                        "{} users reach the maximum of {USERS_MAX}",
                        self.users.len()
                    )));
                }
                let stored = self.users.entry(user.clone()).or_default();
                for credential in credentials {
                    stored.retain(|old| old.mechanism != credential.mechanism);
                    stored.push(credential.clone());
                }
                stored.sort();
                Ok(MetadataResult::Done)
            }
            SecurityCommand::RemoveCredentials { user, mechanism } => {
                let unknown = || MetadataError::UnknownUser(user.clone());
                let stored = self.users.get_mut(user).ok_or_else(unknown)?;
                match mechanism {
                    Some(mechanism) => {
                        let before = stored.len();
                        stored.retain(|old| &old.mechanism != mechanism);
                        if stored.len() == before {
                            return Err(unknown());
                        }
                        if stored.is_empty() {
                            self.users.remove(user);
                        }
                    }
                    None => {
                        self.users.remove(user);
                    }
                }
                let users = &self.users;
                self.tokens
                    .retain(|_, token| users.contains_key(&token.user));
                Ok(MetadataResult::Done)
            }
            SecurityCommand::AddToken(token) => {
                if !self.users.contains_key(&token.user) {
                    return Err(MetadataError::UnknownUser(token.user.clone()));
                }
                if self.tokens.contains_key(&token.id) {
                    return Err(MetadataError::Invalid(format!(
                        "a token with id {:?} exists",
                        token.id
                    )));
                }
                if self.tokens.len() >= TOKENS_MAX {
                    return Err(MetadataError::Invalid(format!(
                        "{} tokens reach the maximum of {TOKENS_MAX}",
                        self.tokens.len()
                    )));
                }
                self.tokens.insert(token.id.clone(), token.clone());
                Ok(MetadataResult::Done)
            }
            SecurityCommand::RemoveToken { user, id } => match self.tokens.get(id) {
                Some(token) if &token.user == user => {
                    self.tokens.remove(id);
                    Ok(MetadataResult::Done)
                }
                _ => Err(MetadataError::UnknownToken(id.clone())),
            },
            SecurityCommand::AddAcls(acls) => {
                self.acls.extend(acls.iter().cloned());
                Ok(MetadataResult::Done)
            }
            SecurityCommand::RemoveAcls(acls) => Ok(MetadataResult::Acls(
                acls.iter()
                    .filter(|acl| self.acls.remove(*acl))
                    .cloned()
                    .collect(),
            )),
        }
    }
}

/// The users as the log holds them, for a node's store to follow.
pub type UsersMeta = BTreeMap<String, Vec<CredentialMeta>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::metadata::MetadataCommand;

    fn credential(mechanism: &str, key: u8) -> CredentialMeta {
        CredentialMeta {
            mechanism: mechanism.into(),
            iterations: 4096,
            salt: Bytes::from_static(b"salt"),
            stored_key: Bytes::from(vec![key; 32]),
            server_key: Bytes::from(vec![key; 32]),
        }
    }

    fn apply(state: &mut MetadataState, command: SecurityCommand) -> MetadataResult {
        state.apply(&MetadataCommand::Security(command))
    }

    fn set(
        user: &str,
        credentials: Vec<CredentialMeta>,
        existing: UserExisting,
    ) -> SecurityCommand {
        SecurityCommand::SetCredentials {
            user: user.into(),
            credentials,
            existing,
        }
    }

    #[test]
    fn users_are_created_changed_and_removed_in_log_order() {
        let mut state = MetadataState::default();
        let create = || {
            set(
                "alice",
                vec![credential("SCRAM-SHA-256", 1)],
                UserExisting::MustNotExist,
            )
        };
        assert_eq!(apply(&mut state, create()), MetadataResult::Done);
        // A second create (another node's, say) is refused: the log decides.
        assert_eq!(
            apply(&mut state, create()),
            MetadataResult::Refused(MetadataError::UserExists("alice".into()))
        );
        assert_eq!(
            apply(
                &mut state,
                set(
                    "bob",
                    vec![credential("SCRAM-SHA-256", 2)],
                    UserExisting::MustExist
                )
            ),
            MetadataResult::Refused(MetadataError::UnknownUser("bob".into()))
        );
        // A change replaces its mechanism's credential and keeps the other.
        apply(
            &mut state,
            set(
                "alice",
                vec![
                    credential("SCRAM-SHA-512", 3),
                    credential("SCRAM-SHA-256", 4),
                ],
                UserExisting::Either,
            ),
        );
        assert_eq!(
            state.users["alice"],
            vec![
                credential("SCRAM-SHA-256", 4),
                credential("SCRAM-SHA-512", 3)
            ]
        );
        let token = TokenMeta {
            id: "t1".into(),
            user: "alice".into(),
            hash: Bytes::from_static(&[9; 32]),
            created_ms: 1,
        };
        assert_eq!(
            apply(&mut state, SecurityCommand::AddToken(token.clone())),
            MetadataResult::Done
        );
        // An id is one token's: another owner cannot take it over.
        let taken = TokenMeta {
            user: "alice".into(),
            created_ms: 2,
            ..token.clone()
        };
        assert!(matches!(
            apply(&mut state, SecurityCommand::AddToken(taken)),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        assert_eq!(
            apply(
                &mut state,
                SecurityCommand::RemoveToken {
                    user: "bob".into(),
                    id: "t1".into()
                }
            ),
            MetadataResult::Refused(MetadataError::UnknownToken("t1".into()))
        );
        // Removing one mechanism keeps the user; removing the last removes it, tokens too.
        apply(
            &mut state,
            SecurityCommand::RemoveCredentials {
                user: "alice".into(),
                mechanism: Some("SCRAM-SHA-512".into()),
            },
        );
        assert_eq!(state.users["alice"].len(), 1);
        assert_eq!(state.tokens.len(), 1);
        apply(
            &mut state,
            SecurityCommand::RemoveCredentials {
                user: "alice".into(),
                mechanism: Some("SCRAM-SHA-256".into()),
            },
        );
        assert!(state.users.is_empty());
        assert!(state.tokens.is_empty());
        assert_eq!(
            apply(&mut state, SecurityCommand::AddToken(token)),
            MetadataResult::Refused(MetadataError::UnknownUser("alice".into()))
        );
    }

    #[test]
    fn a_removal_answers_the_acls_the_log_held() {
        let mut state = MetadataState::default();
        let acl = |principal: &str| AclMeta {
            principal: principal.into(),
            host: "*".into(),
            resource_type: "Topic".into(),
            pattern_type: "Literal".into(),
            name: "orders".into(),
            operation: "Read".into(),
            permission: "Allow".into(),
        };
        apply(
            &mut state,
            SecurityCommand::AddAcls(vec![acl("User:a"), acl("User:b")]),
        );
        // Adding one that exists changes nothing.
        apply(&mut state, SecurityCommand::AddAcls(vec![acl("User:a")]));
        assert_eq!(state.acls.len(), 2);
        assert_eq!(
            apply(
                &mut state,
                SecurityCommand::RemoveAcls(vec![acl("User:a"), acl("User:c")])
            ),
            MetadataResult::Acls(vec![acl("User:a")])
        );
        assert_eq!(state.acls.iter().collect::<Vec<_>>(), vec![&acl("User:b")]);
    }

    #[test]
    fn credentials_and_tokens_round_trip_the_logs_encodings_and_hide_their_keys() {
        let mut state = MetadataState::default();
        apply(
            &mut state,
            set(
                "alice",
                vec![credential("SCRAM-SHA-256", 7)],
                UserExisting::Either,
            ),
        );
        let packed = crate::cluster::codec::encode(&state).expect("encodes");
        let unpacked: MetadataState = crate::cluster::codec::decode(&packed).expect("decodes");
        assert_eq!(unpacked, state);
        let json = serde_json::to_vec(&state).expect("encodes");
        assert_eq!(
            serde_json::from_slice::<MetadataState>(&json).expect("decodes"),
            state
        );
        let shown = format!("{:?}", state.users["alice"]);
        assert!(
            !shown.contains("stored_key") && !shown.contains("salt"),
            "{shown}"
        );
        // A state from before users were in the log still reads.
        let older: MetadataState = serde_json::from_str(
            r#"{"nodes":{},"topics":{},"queues":{},"exchanges":{},"bindings":[],"test_register":{}}"#,
        )
        .expect("decodes");
        assert!(older.users.is_empty() && older.tokens.is_empty() && older.acls.is_empty());
    }
}
