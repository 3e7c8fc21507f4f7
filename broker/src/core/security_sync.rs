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
//! follower): each node's files are made to hold exactly what the log holds, once the node
//! has bootstrapped. Bootstrapping happens once in a node's life (recorded in
//! `<data-dir>/cluster/followed`): the users, tokens and ACLs it had before its first pass
//! as a cluster node (made by `wharfd user create` before it joined, or kept from a build
//! that did not share them) are proposed to the log once a leader is known, a user as a
//! create (a user the log has keeps the log's credentials, and this node's tokens of it are
//! dropped), and until then they alone stay in force here (the node's files are not given
//! the log's entries before: a pass would take one the log deleted meanwhile for the
//! node's own). After it, what the log dropped is
//! removed here, also when the node was down then, and nothing local is proposed again
//! (`wharfd user create` refuses a data directory that followed a cluster).
//!
//! Invariant: on a bootstrapped node with peers, a user, token or ACL in force here is one
//! the log held at this node's last pass or since then through this node's own writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use wharf_protocol::sasl::{ScramCredential, ScramMechanism};

use crate::acl::store::{from_stored, to_stored, StoredAcl};
use crate::acl::{AclBinding, AclError, AclFilter};
use crate::auth::users::{check_credential, check_name, StoredToken};
use crate::auth::UserError;
use crate::cluster::metadata::{MetadataCommand, MetadataError, MetadataResult, MetadataState};
use crate::cluster::raft::{Cluster, ClusterError};
use crate::cluster::security_meta::{
    AclMeta, CredentialMeta, SecurityCommand, TokenMeta, UserExisting,
};

use super::auth_ops::Existing;
use super::Broker;

/// Whether this node's own users, tokens and ACLs went to the log (part of the
/// definitions' record, `<data-dir>/cluster/followed`; absent, false, from records written
/// before 2026-12-07).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FollowedSecurity {
    #[serde(default)]
    bootstrapped: bool,
}

/// ACLs per command when a node proposes its own (well inside a command's size bound).
const ADOPT_ACLS_PER_COMMAND: usize = 256;

/// What this node's write paths made while it had not bootstrapped: never proposed as its
/// own (the log had them; another node may have removed them since).
#[derive(Debug, Default)]
pub(crate) struct WrittenSecurity {
    users: BTreeSet<String>,
    tokens: BTreeSet<String>,
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
            .wait_applied(proposed.index, super::cluster_sync::LOCAL_APPLY_WAIT)
            .await;
        Ok(proposed.result)
    }

    /// Makes this node's copy of `user` (its credentials and tokens) what the log holds now.
    async fn user_from_log(&self, cluster: &Cluster, user: &str) -> Result<(), UserError> {
        let mut steps = self.cluster_follow.lock().await;
        let state = cluster.applied().state;
        steps.security_written.users.insert(user.to_string());
        steps.security_written.tokens.extend(
            self.users_handle()
                .tokens_of(user)
                .into_iter()
                .map(|token| token.id),
        );
        steps.security_written.tokens.extend(
            state
                .tokens
                .values()
                .filter(|token| token.user == user)
                .map(|token| token.id.clone()),
        );
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
        let mut steps = self.cluster_follow.lock().await;
        let state = cluster.applied().state;
        steps.security_written.acls.extend(changed.iter().cloned());
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
        // A read barrier: an empty removal commits after every ACL added before it, and
        // this node matches the filters once it applied it, so an ACL added through another
        // node a moment ago is not missed.
        match Self::propose_security(cluster, SecurityCommand::RemoveAcls(Vec::new())).await {
            Ok(_) => {}
            Err(error) => return Err(acl_refusal(error)),
        }
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

    /// One step of the follower's pass for users, tokens and ACLs (the module documentation
    /// has the rules), over `state`, the applied state the pass follows; `written` is what
    /// this node's write paths made before it bootstrapped. Answers whether bootstrapping
    /// is still to do (the caller runs the pass again a little later).
    pub(super) async fn follow_security(
        &self,
        cluster: &Cluster,
        state: &Arc<MetadataState>,
        followed: &mut FollowedSecurity,
        written: &mut WrittenSecurity,
    ) -> bool {
        let mut state = Arc::clone(state);
        if !followed.bootstrapped {
            let own = Own::of(self, &state, written);
            let adopted = own.is_empty()
                || (cluster.status().leader.is_some() && self.adopt(cluster, &own).await);
            if !adopted {
                // Until its own entries are the cluster's, this node's files stay as they
                // are (but for its own writes): were the log's entries written into them,
                // the next pass would take one the log deleted since for this node's own.
                return true;
            }
            followed.bootstrapped = true;
            state = cluster.applied().state;
            tracing::info!("this node's users, tokens and ACLs follow the cluster's");
        }
        *written = WrittenSecurity::default();
        let (users, tokens) = held_users(&state);
        let store = self.users_handle();
        match blocking(move || store.replace(users, tokens), user_stopped).await {
            Ok(true) => tracing::info!("users and tokens follow the cluster's metadata"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot make this node's users follow the cluster's metadata")
            }
        }
        let mut acls: Vec<AclBinding> = Vec::new();
        for meta in &state.acls {
            match acl_of(meta) {
                Ok(acl) => acls.push(acl),
                Err(error) => {
                    tracing::warn!(%error, "the cluster's metadata holds an ACL this node cannot read")
                }
            }
        }
        let store = Arc::clone(&self.acls);
        match blocking(move || store.replace(acls), AclError::Storage).await {
            Ok(true) => tracing::info!("ACLs follow the cluster's metadata"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot make this node's ACLs follow the cluster's metadata")
            }
        }
        false
    }

    /// Proposes this node's own users (as creates), the tokens of those that are its own in
    /// the log, and its ACLs. Answers whether the log decided on all of them (created, or
    /// kept as the log's); false at the first failure of the log (the next pass tries again,
    /// and a user created by an earlier try, whose credentials the log holds as this node
    /// has them, counts as this node's again).
    async fn adopt(&self, cluster: &Cluster, own: &Own) -> bool {
        let mut ours = BTreeSet::new();
        for (name, credentials) in &own.users {
            let metas: Vec<CredentialMeta> = credentials.iter().map(credential_meta).collect();
            let command = SecurityCommand::SetCredentials {
                user: name.clone(),
                credentials: metas.clone(),
                existing: UserExisting::MustNotExist,
            };
            match Self::propose_security(cluster, command).await {
                Ok(MetadataResult::Done) => {
                    tracing::info!(user = name, "proposed this node's user to the cluster");
                    ours.insert(name.clone());
                }
                Ok(_) => {
                    let mut sorted = metas;
                    sorted.sort();
                    if cluster.applied().state.users.get(name) == Some(&sorted) {
                        ours.insert(name.clone());
                    } else {
                        tracing::info!(
                            user = name,
                            "the cluster keeps its own user of this node's user's name"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(user = name, %error, "cannot propose this node's user to the cluster yet");
                    return false;
                }
            }
        }
        // A token of a user the cluster already had would log in as that other user.
        for token in own.tokens.iter().filter(|token| ours.contains(&token.user)) {
            if let Err(error) =
                Self::propose_security(cluster, SecurityCommand::AddToken(token_meta(token))).await
            {
                tracing::warn!(%error, "cannot propose this node's tokens to the cluster yet");
                return false;
            }
        }
        let acls: Vec<AclMeta> = own.acls.iter().cloned().collect();
        for chunk in acls.chunks(ADOPT_ACLS_PER_COMMAND) {
            if let Err(error) =
                Self::propose_security(cluster, SecurityCommand::AddAcls(chunk.to_vec())).await
            {
                tracing::warn!(%error, "cannot propose this node's ACLs to the cluster yet");
                return false;
            }
        }
        if !acls.is_empty() {
            tracing::info!(
                count = acls.len(),
                "proposed this node's ACLs to the cluster"
            );
        }
        true
    }
}

/// A node's own users, tokens and ACLs that the log lacks (before it bootstrapped).
#[derive(Debug)]
struct Own {
    users: BTreeMap<String, Vec<ScramCredential>>,
    tokens: Vec<StoredToken>,
    acls: BTreeSet<AclMeta>,
}

impl Own {
    fn of(broker: &Broker, state: &MetadataState, written: &WrittenSecurity) -> Own {
        let (users, tokens) = broker.users_handle().snapshot();
        Own {
            users: users
                .into_iter()
                .filter(|(name, _)| {
                    !state.users.contains_key(name) && !written.users.contains(name)
                })
                .collect(),
            tokens: tokens
                .into_iter()
                .filter(|token| {
                    !state.tokens.contains_key(&token.id) && !written.tokens.contains(&token.id)
                })
                .collect(),
            acls: broker
                .acls
                .current()
                .iter()
                .map(acl_meta)
                .filter(|acl| !state.acls.contains(acl) && !written.acls.contains(acl))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty() && self.acls.is_empty()
    }
}

/// The users and tokens the log holds, as the users file keeps them; each entry the file
/// could not hold is left out with a warning (one bad entry must not keep the rest,
/// deletions included, from being followed).
fn held_users(state: &MetadataState) -> (BTreeMap<String, Vec<ScramCredential>>, Vec<StoredToken>) {
    let mut users = BTreeMap::new();
    for (name, metas) in &state.users {
        let credentials = credentials_of(metas);
        let valid = check_name(name).is_ok()
            && !credentials.is_empty()
            && credentials
                .iter()
                .all(|credential| check_credential(credential).is_ok());
        if valid {
            users.insert(name.clone(), credentials);
        } else {
            tracing::warn!(
                user = name,
                "the cluster's metadata holds a user this node cannot keep"
            );
        }
    }
    let tokens = state
        .tokens
        .values()
        .filter(|token| users.contains_key(&token.user))
        .map(token_of)
        .collect();
    (users, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logs_limits_are_the_users_files() {
        assert_eq!(
            crate::cluster::security_meta::USERS_MAX,
            crate::auth::users::USERS_MAX
        );
        assert_eq!(
            crate::cluster::security_meta::TOKENS_MAX,
            crate::auth::users::TOKENS_MAX
        );
    }

    #[test]
    fn a_user_the_file_cannot_hold_is_left_out_and_the_rest_followed() {
        let good = CredentialMeta {
            mechanism: "SCRAM-SHA-256".into(),
            iterations: 4096,
            salt: Bytes::from_static(b"salt"),
            stored_key: Bytes::from(vec![1; 32]),
            server_key: Bytes::from(vec![2; 32]),
        };
        let mut state = MetadataState::default();
        state.users.insert("alice".into(), vec![good.clone()]);
        // Too few iterations, and a name with a control character.
        state.users.insert(
            "bob".into(),
            vec![CredentialMeta {
                iterations: 1,
                ..good.clone()
            }],
        );
        state.users.insert("c\u{7}".into(), vec![good]);
        let (users, _) = held_users(&state);
        assert_eq!(users.keys().collect::<Vec<_>>(), vec!["alice"]);
    }
}
