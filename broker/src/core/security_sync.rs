//! Users, bearer tokens and ACLs through the cluster's metadata log (issue #20), so a client
//! that logs in on one node logs in on every node, and an ACL made on one is in force on all.
//! A lone `wharfd` keeps them in its own files, as before.
//!
//! Write path (a node started with peers): the core checks the change as a lone node does
//! (names, credential bounds, the ACL's meaning, the caller's rights), proposes it
//! (`cluster::security_meta::SecurityCommand`), and once its node applied it makes this
//! node's `users` or `acls` file hold what the log now holds for what it changed.
//!
//! Follower ([`Broker::follow_security`], one step of each pass of the definitions'
//! follower): each node's files are made to hold what the log holds, with two exceptions
//! kept from the definitions' rules. A user, token or ACL this node has that the log never
//! held and this node never followed (made before the node joined, or by `wharfd user
//! create` while it was stopped) is proposed to the log once a leader is known: created if
//! the log has no user of that name (a user the log has keeps the log's credentials), so the
//! nodes' bootstrap users become the cluster's. One this node followed and the log dropped
//! is removed here, even if the node was down when it was dropped.
//!
//! Invariant: on a node with peers, a user, token or ACL in force here is the log's, or a
//! local one not yet proposed (never one the log dropped after this node saw it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use wharf_protocol::sasl::{ScramCredential, ScramMechanism};

use crate::acl::store::{from_stored, to_stored, StoredAcl};
use crate::acl::{AclBinding, AclError, AclFilter};
use crate::auth::users::StoredToken;
use crate::auth::UserError;
use crate::cluster::metadata::{MetadataCommand, MetadataError, MetadataResult, MetadataState};
use crate::cluster::raft::{Cluster, ClusterError};
use crate::cluster::security_meta::{
    AclMeta, CredentialMeta, SecurityCommand, TokenMeta, UserExisting,
};

use super::auth_ops::Existing;
use super::Broker;

/// The users, tokens and ACLs of the log this node has followed (part of the definitions'
/// record, `<data-dir>/cluster/followed`; absent from records written before 2026-12-07).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FollowedSecurity {
    #[serde(default)]
    users: BTreeSet<String>,
    #[serde(default)]
    tokens: BTreeSet<String>,
    #[serde(default)]
    acls: BTreeSet<AclMeta>,
}

fn credential_meta(credential: &ScramCredential) -> CredentialMeta {
    CredentialMeta {
        mechanism: credential.mechanism.name().to_string(),
        iterations: credential.iterations,
        salt: Bytes::copy_from_slice(&credential.salt),
        stored_key: Bytes::copy_from_slice(&credential.stored_key),
        server_key: Bytes::copy_from_slice(&credential.server_key),
    }
}

fn credential_of(meta: &CredentialMeta) -> Option<ScramCredential> {
    Some(ScramCredential {
        mechanism: ScramMechanism::from_name(&meta.mechanism)?,
        salt: meta.salt.to_vec(),
        iterations: meta.iterations,
        stored_key: meta.stored_key.to_vec(),
        server_key: meta.server_key.to_vec(),
    })
}

fn token_meta(token: &StoredToken) -> TokenMeta {
    TokenMeta {
        id: token.id.clone(),
        user: token.user.clone(),
        hash: Bytes::copy_from_slice(&token.hash),
        created_ms: token.created_ms,
    }
}

fn token_of(meta: &TokenMeta) -> StoredToken {
    StoredToken {
        id: meta.id.clone(),
        user: meta.user.clone(),
        hash: meta.hash.to_vec(),
        created_ms: meta.created_ms,
    }
}

fn acl_meta(acl: &AclBinding) -> AclMeta {
    let stored = to_stored(acl);
    AclMeta {
        principal: stored.principal,
        host: stored.host,
        resource_type: stored.resource_type,
        pattern_type: stored.pattern_type,
        name: stored.name,
        operation: stored.operation,
        permission: stored.permission,
    }
}

fn acl_of(meta: &AclMeta) -> Result<AclBinding, AclError> {
    from_stored(StoredAcl {
        principal: meta.principal.clone(),
        host: meta.host.clone(),
        resource_type: meta.resource_type.clone(),
        pattern_type: meta.pattern_type.clone(),
        name: meta.name.clone(),
        operation: meta.operation.clone(),
        permission: meta.permission.clone(),
    })
}

/// The credentials the log holds for a user, as the users file keeps them (a mechanism this
/// build does not know is left out).
fn credentials_of(metas: &[CredentialMeta]) -> Vec<ScramCredential> {
    metas.iter().filter_map(credential_of).collect()
}

fn user_refusal(error: ClusterError) -> UserError {
    UserError::Cluster {
        no_leader: error == ClusterError::NoLeader,
        message: error.to_string(),
    }
}

fn acl_refusal(error: ClusterError) -> AclError {
    AclError::Cluster {
        no_leader: error == ClusterError::NoLeader,
        message: error.to_string(),
    }
}

/// A refusal of the log as the user error a lone node gives for it.
fn user_error(error: MetadataError) -> UserError {
    match error {
        MetadataError::UserExists(name) => UserError::AlreadyExists { name },
        MetadataError::UnknownUser(name) => UserError::NotFound { name },
        MetadataError::UnknownToken(id) => UserError::NotFound {
            name: format!("token {id}"),
        },
        other => UserError::InvalidCredential {
            reason: other.to_string(),
        },
    }
}

/// Runs a store write on the blocking pool (STYLE.md section 4); a task that did not
/// finish is `stopped`'s error.
async fn blocking<T: Send + 'static, E: Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    stopped: impl FnOnce(String) -> E,
) -> Result<T, E> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(stopped(error.to_string())),
    }
}

fn user_stopped(reason: String) -> UserError {
    UserError::InvalidCredential { reason }
}

impl Broker {
    /// Proposes a security change and waits until this node applied it.
    async fn propose_security(
        cluster: &Cluster,
        command: SecurityCommand,
    ) -> Result<MetadataResult, ClusterError> {
        let proposed = cluster.propose(MetadataCommand::Security(command)).await?;
        // Committed; if this node lags, the follower brings its files level later.
        let _ = cluster
            .wait_applied(proposed.index, std::time::Duration::from_secs(5))
            .await;
        Ok(proposed.result)
    }

    /// Makes this node's copy of `user` (its credentials and tokens) what the log holds now.
    async fn user_from_log(&self, cluster: &Cluster, user: &str) -> Result<(), UserError> {
        let _following = self.cluster_follow.lock().await;
        let state = cluster.applied().state;
        let (mut users, tokens) = self.users_handle().snapshot();
        match state.users.get(user) {
            Some(metas) => {
                users.insert(user.to_string(), credentials_of(metas));
            }
            None => {
                users.remove(user);
            }
        }
        let mut tokens: Vec<StoredToken> = tokens
            .into_iter()
            .filter(|token| token.user != user)
            .collect();
        tokens.extend(
            state
                .tokens
                .values()
                .filter(|token| token.user == user)
                .map(token_of),
        );
        let store = self.users_handle();
        blocking(
            move || store.replace(users, tokens).map(|_| ()),
            user_stopped,
        )
        .await
    }

    /// Sets `user`'s credentials through the metadata log (already derived and checked).
    pub(crate) async fn set_credentials_replicated(
        &self,
        cluster: &Cluster,
        user: &str,
        existing: Existing,
        credentials: Vec<ScramCredential>,
    ) -> Result<(), UserError> {
        let command = SecurityCommand::SetCredentials {
            user: user.to_string(),
            credentials: credentials.iter().map(credential_meta).collect(),
            existing: match existing {
                Existing::MustNotExist => UserExisting::MustNotExist,
                Existing::MustExist => UserExisting::MustExist,
                Existing::Either => UserExisting::Either,
            },
        };
        match Self::propose_security(cluster, command).await {
            Ok(MetadataResult::Refused(refused)) => Err(user_error(refused)),
            Ok(_) => self.user_from_log(cluster, user).await,
            Err(error) => Err(user_refusal(error)),
        }
    }

    /// Removes `user` (or its credential of one mechanism) through the metadata log.
    pub(crate) async fn delete_credentials_replicated(
        &self,
        cluster: &Cluster,
        user: &str,
        mechanism: Option<ScramMechanism>,
    ) -> Result<(), UserError> {
        let command = SecurityCommand::RemoveCredentials {
            user: user.to_string(),
            mechanism: mechanism.map(|mechanism| mechanism.name().to_string()),
        };
        match Self::propose_security(cluster, command).await {
            Ok(MetadataResult::Refused(refused)) => Err(user_error(refused)),
            Ok(_) => self.user_from_log(cluster, user).await,
            Err(error) => Err(user_refusal(error)),
        }
    }

    /// Adds a bearer token through the metadata log.
    pub(crate) async fn add_token_replicated(
        &self,
        cluster: &Cluster,
        token: &StoredToken,
    ) -> Result<(), UserError> {
        let command = SecurityCommand::AddToken(token_meta(token));
        match Self::propose_security(cluster, command).await {
            Ok(MetadataResult::Refused(refused)) => Err(user_error(refused)),
            Ok(_) => self.user_from_log(cluster, &token.user).await,
            Err(error) => Err(user_refusal(error)),
        }
    }

    /// Revokes a bearer token through the metadata log.
    pub(crate) async fn remove_token_replicated(
        &self,
        cluster: &Cluster,
        user: &str,
        id: &str,
    ) -> Result<(), UserError> {
        let command = SecurityCommand::RemoveToken {
            user: user.to_string(),
            id: id.to_string(),
        };
        match Self::propose_security(cluster, command).await {
            Ok(MetadataResult::Refused(_)) => Err(UserError::NotFound {
                name: format!("token {id} of {user}"),
            }),
            Ok(_) => self.user_from_log(cluster, user).await,
            Err(error) => Err(user_refusal(error)),
        }
    }

    /// Makes this node's ACLs hold or lack `changed` as the log does now.
    async fn acls_from_log(&self, cluster: &Cluster, changed: &[AclMeta]) -> Result<(), AclError> {
        let _following = self.cluster_follow.lock().await;
        let state = cluster.applied().state;
        let mut next: Vec<AclBinding> = self.acls.current().to_vec();
        for meta in changed {
            let acl = acl_of(meta)?;
            next.retain(|held| *held != acl);
            if state.acls.contains(meta) {
                next.push(acl);
            }
        }
        let store = Arc::clone(&self.acls);
        blocking(move || store.replace(next).map(|_| ()), AclError::Storage).await
    }

    /// Adds ACLs (already checked) through the metadata log.
    pub(crate) async fn add_acls_replicated(
        &self,
        cluster: &Cluster,
        acls: &[AclBinding],
    ) -> Result<(), AclError> {
        let metas: Vec<AclMeta> = acls.iter().map(acl_meta).collect();
        match Self::propose_security(cluster, SecurityCommand::AddAcls(metas.clone())).await {
            Ok(MetadataResult::Refused(refused)) => Err(AclError::Invalid(refused.to_string())),
            Ok(_) => self.acls_from_log(cluster, &metas).await,
            Err(error) => Err(acl_refusal(error)),
        }
    }

    /// Removes the ACLs each filter selects among those the log holds (as this node applied
    /// it); answers, per filter, those removed.
    pub(crate) async fn remove_acls_replicated(
        &self,
        cluster: &Cluster,
        filters: &[AclFilter],
    ) -> Result<Vec<Vec<AclBinding>>, AclError> {
        let held: Vec<(AclMeta, AclBinding)> = cluster
            .applied()
            .state
            .acls
            .iter()
            .filter_map(|meta| acl_of(meta).ok().map(|acl| (meta.clone(), acl)))
            .collect();
        let selected: BTreeSet<AclMeta> = held
            .iter()
            .filter(|(_, acl)| filters.iter().any(|filter| filter.matches(acl)))
            .map(|(meta, _)| meta.clone())
            .collect();
        let removed: BTreeSet<AclMeta> = if selected.is_empty() {
            BTreeSet::new()
        } else {
            let command = SecurityCommand::RemoveAcls(selected.iter().cloned().collect());
            match Self::propose_security(cluster, command).await {
                Ok(MetadataResult::Acls(removed)) => removed.into_iter().collect(),
                Ok(MetadataResult::Refused(refused)) => {
                    return Err(AclError::Invalid(refused.to_string()))
                }
                Ok(_) => BTreeSet::new(),
                Err(error) => return Err(acl_refusal(error)),
            }
        };
        let changed: Vec<AclMeta> = selected.into_iter().collect();
        self.acls_from_log(cluster, &changed).await?;
        Ok(filters
            .iter()
            .map(|filter| {
                held.iter()
                    .filter(|(meta, acl)| removed.contains(meta) && filter.matches(acl))
                    .map(|(_, acl)| acl.clone())
                    .collect()
            })
            .collect())
    }

    /// One pass of the follower for users, tokens and ACLs (the module documentation has
    /// the rules). `state` is the applied state the pass follows; proposals it makes are
    /// followed from the state after them.
    pub(super) async fn follow_security(
        &self,
        cluster: &Cluster,
        state: &MetadataState,
        followed: &mut FollowedSecurity,
    ) {
        let (local_users, local_tokens) = self.users_handle().snapshot();
        let local_acls: Vec<AclMeta> = self.acls.current().iter().map(acl_meta).collect();
        // Local entries the log never held and this node never followed.
        let new_users: BTreeMap<String, Vec<ScramCredential>> = local_users
            .iter()
            .filter(|(name, _)| !state.users.contains_key(*name) && !followed.users.contains(*name))
            .map(|(name, credentials)| (name.clone(), credentials.clone()))
            .collect();
        let new_tokens: Vec<StoredToken> = local_tokens
            .iter()
            .filter(|token| {
                !state.tokens.contains_key(&token.id) && !followed.tokens.contains(&token.id)
            })
            .cloned()
            .collect();
        let new_acls: Vec<AclMeta> = local_acls
            .iter()
            .filter(|acl| !state.acls.contains(*acl) && !followed.acls.contains(*acl))
            .cloned()
            .collect();
        let mut adopted = FollowedSecurity::default();
        let mut state = Arc::new(state.clone());
        let adopting = !(new_users.is_empty() && new_tokens.is_empty() && new_acls.is_empty());
        if adopting && cluster.status().leader.is_some() {
            self.adopt(cluster, &new_users, &new_tokens, &new_acls, &mut adopted)
                .await;
            state = cluster.applied().state;
        }
        // What this node holds from now on: the log's entries, and the local ones not
        // proposed yet (or proposed and not applied here yet).
        let mut users: BTreeMap<String, Vec<ScramCredential>> = state
            .users
            .iter()
            .map(|(name, metas)| (name.clone(), credentials_of(metas)))
            .collect();
        for (name, credentials) in &new_users {
            users
                .entry(name.clone())
                .or_insert_with(|| credentials.clone());
        }
        let mut tokens: BTreeMap<String, StoredToken> = state
            .tokens
            .iter()
            .map(|(id, meta)| (id.clone(), token_of(meta)))
            .collect();
        for token in &new_tokens {
            tokens
                .entry(token.id.clone())
                .or_insert_with(|| token.clone());
        }
        let mut acls: Vec<AclBinding> = Vec::new();
        for meta in state.acls.iter().chain(new_acls.iter()) {
            match acl_of(meta) {
                Ok(acl) => acls.push(acl),
                Err(error) => {
                    tracing::warn!(%error, "the cluster's metadata holds an ACL this node cannot read")
                }
            }
        }
        let store = self.users_handle();
        let tokens: Vec<StoredToken> = tokens.into_values().collect();
        match blocking(move || store.replace(users, tokens), user_stopped).await {
            Ok(true) => tracing::info!("users and tokens follow the cluster's metadata"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot make this node's users follow the cluster's metadata");
                return;
            }
        }
        let store = Arc::clone(&self.acls);
        match blocking(move || store.replace(acls), AclError::Storage).await {
            Ok(true) => tracing::info!("ACLs follow the cluster's metadata"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot make this node's ACLs follow the cluster's metadata");
                return;
            }
        }
        followed.users = state.users.keys().cloned().collect();
        followed.users.extend(adopted.users);
        followed.tokens = state.tokens.keys().cloned().collect();
        followed.tokens.extend(adopted.tokens);
        followed.acls = state.acls.clone();
        followed.acls.extend(adopted.acls);
    }

    /// Proposes this node's own users, tokens and ACLs the log lacks; records in `adopted`
    /// what the log decided on (created, or kept as the log's). Stops at the first failure
    /// of the log: the next pass tries again.
    async fn adopt(
        &self,
        cluster: &Cluster,
        users: &BTreeMap<String, Vec<ScramCredential>>,
        tokens: &[StoredToken],
        acls: &[AclMeta],
        adopted: &mut FollowedSecurity,
    ) {
        for (name, credentials) in users {
            let command = SecurityCommand::SetCredentials {
                user: name.clone(),
                credentials: credentials.iter().map(credential_meta).collect(),
                existing: UserExisting::MustNotExist,
            };
            match Self::propose_security(cluster, command).await {
                Ok(_) => {
                    tracing::info!(user = name, "proposed this node's user to the cluster");
                    adopted.users.insert(name.clone());
                }
                Err(error) => {
                    tracing::warn!(user = name, %error, "cannot propose this node's user to the cluster yet");
                    return;
                }
            }
        }
        for token in tokens {
            match Self::propose_security(cluster, SecurityCommand::AddToken(token_meta(token)))
                .await
            {
                Ok(_) => {
                    adopted.tokens.insert(token.id.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot propose this node's tokens to the cluster yet");
                    return;
                }
            }
        }
        if !acls.is_empty() {
            match Self::propose_security(cluster, SecurityCommand::AddAcls(acls.to_vec())).await {
                Ok(_) => {
                    tracing::info!(
                        count = acls.len(),
                        "proposed this node's ACLs to the cluster"
                    );
                    adopted.acls.extend(acls.iter().cloned());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot propose this node's ACLs to the cluster yet");
                }
            }
        }
    }
}
