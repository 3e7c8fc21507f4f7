//! ACL management and the authorization decision (issue #18): every front end adds, lists
//! and removes ACLs through these calls and asks [`Broker::authorize`] whether a caller may
//! do an operation, so one rule (`crate::acl::authorize`) holds on every protocol.

use std::sync::Arc;

use crate::acl::store::AclStore;
use crate::acl::{
    self, Access, AclBinding, AclError, AclFilter, AuthorizerSettings, Decision, Denied, Operation,
    ResourceType, CLUSTER_NAME,
};
use crate::core::{Broker, Session};

impl Broker {
    /// Refuses `operation` on a resource unless the caller may do it: the one authorization
    /// check every core operation makes before it acts (`crate::acl` gives the rule).
    /// Refusals are logged at INFO, as Kafka's authorizer log does.
    ///
    /// # Errors
    /// `Denied` naming the caller, the operation and the resource.
    pub fn check(
        &self,
        caller: &Session,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), Denied> {
        if self.permits(caller, operation, resource_type, name) {
            return Ok(());
        }
        let principal = caller.principal().to_string();
        tracing::info!(
            principal,
            host = caller.host(),
            operation = operation.name(),
            resource_type = resource_type.name(),
            resource = name,
            "request denied by ACLs"
        );
        Err(Denied {
            principal,
            operation,
            resource_type,
            name: name.to_string(),
        })
    }

    /// [`Broker::check`] of an operation on the cluster itself.
    ///
    /// # Errors
    /// `Denied`.
    pub fn check_cluster(&self, caller: &Session, operation: Operation) -> Result<(), Denied> {
        self.check(caller, operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// True if the caller may do `operation` on the resource (no log: listings use it to
    /// leave out what the caller may not see). With no ACL and authorization optional it
    /// answers at once, without looking at the caller.
    pub fn permits(
        &self,
        caller: &Session,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if self.acls.is_empty() && !self.authorizer.required {
            return true;
        }
        self.decide(
            caller,
            operation,
            resource_type,
            name,
            |acls, settings, access| acl::authorize(acls, settings, access) == Decision::Allow,
        )
    }

    /// True if the caller may do `operation` on some resource of `resource_type`
    /// ([`acl::allows_some`]).
    pub fn permits_some(
        &self,
        caller: &Session,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        self.decide(caller, operation, resource_type, "", acl::allows_some)
    }

    /// Runs `rule` over the ACLs in force for the caller's access.
    fn decide(
        &self,
        caller: &Session,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
        rule: impl FnOnce(&[AclBinding], &AuthorizerSettings, &Access) -> bool,
    ) -> bool {
        let acls = self.acls.current();
        let principal = caller.principal().to_string();
        let access = Access {
            principal: &principal,
            host: caller.host(),
            operation,
            resource_type,
            name,
        };
        rule(&acls, &self.authorizer, &access)
    }

    /// Adds ACLs (durable when it returns; the file is written on the blocking pool). The
    /// caller needs `Alter` on the cluster.
    ///
    /// # Errors
    /// `Unauthorized`, `Invalid` naming the first ACL that means nothing (none is added),
    /// `Storage` if the file cannot be written.
    pub async fn create_acls(
        &self,
        caller: &Session,
        acls: Vec<AclBinding>,
    ) -> Result<(), AclError> {
        self.check_cluster(caller, Operation::Alter)?;
        if let Some(cluster) = self.replicated().cloned() {
            for acl in &acls {
                acl.validate()?;
            }
            return self.add_acls_replicated(&cluster, &acls).await;
        }
        let store = Arc::clone(&self.acls);
        blocking(move || store.add(&acls)).await
    }

    /// The ACLs `filter` selects, in a stable order. The caller needs `Describe` on the
    /// cluster.
    ///
    /// # Errors
    /// `Unauthorized`.
    pub fn describe_acls(
        &self,
        caller: &Session,
        filter: &AclFilter,
    ) -> Result<Vec<AclBinding>, AclError> {
        self.check_cluster(caller, Operation::Describe)?;
        Ok(self.acls.list(filter))
    }

    /// Removes the ACLs each filter selects; answers what each removed (durable when it
    /// returns). The caller needs `Alter` on the cluster.
    ///
    /// # Errors
    /// `Unauthorized`, or `Storage` if the file cannot be written (nothing is removed).
    pub async fn delete_acls(
        &self,
        caller: &Session,
        filters: Vec<AclFilter>,
    ) -> Result<Vec<Vec<AclBinding>>, AclError> {
        self.check_cluster(caller, Operation::Alter)?;
        if let Some(cluster) = self.replicated().cloned() {
            return self.remove_acls_replicated(&cluster, &filters).await;
        }
        let store = Arc::clone(&self.acls);
        blocking(move || store.remove(&filters)).await
    }

    /// Whether `access` is allowed under the ACLs in force and the broker's authorization
    /// settings (`crate::acl` documents the rule).
    pub fn authorize(&self, access: &Access) -> Decision {
        acl::authorize(&self.acls.current(), &self.authorizer, access)
    }

    /// The authorization settings the broker runs with.
    pub fn authorizer_settings(&self) -> &AuthorizerSettings {
        &self.authorizer
    }
}

/// Opens the ACL store of the data directory (blocking).
///
/// # Errors
/// `Storage` if the ACL file cannot be read or fails its checks.
pub(crate) fn open_store(
    fs: Arc<dyn crate::storage::Fs>,
    data_dir: &std::path::Path,
) -> Result<Arc<AclStore>, AclError> {
    AclStore::open(fs, data_dir).map(Arc::new)
}

/// Runs an ACL file write on the blocking pool (STYLE.md section 4).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AclError> + Send + 'static,
) -> Result<T, AclError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(AclError::Storage(error.to_string())))
}
