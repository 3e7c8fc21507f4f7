//! ACL management and the authorization decision (issue #18): every front end adds, lists
//! and removes ACLs through these calls and asks [`Broker::authorize`] whether a caller may
//! do an operation, so one rule (`crate::acl::authorize`) holds on every protocol.

use std::sync::Arc;

use crate::acl::store::AclStore;
use crate::acl::{self, Access, AclBinding, AclError, AclFilter, AuthorizerSettings, Decision};
use crate::core::Broker;

impl Broker {
    /// Adds ACLs (durable when it returns; the file is written on the blocking pool).
    ///
    /// # Errors
    /// `Invalid` naming the first ACL that means nothing (none is added), `Storage` if the
    /// file cannot be written.
    pub async fn create_acls(&self, acls: Vec<AclBinding>) -> Result<(), AclError> {
        let store = Arc::clone(&self.acls);
        blocking(move || store.add(&acls)).await
    }

    /// The ACLs `filter` selects, in a stable order.
    pub fn describe_acls(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.acls.list(filter)
    }

    /// Removes the ACLs each filter selects; answers what each removed (durable when it
    /// returns).
    ///
    /// # Errors
    /// `Storage` if the file cannot be written (nothing is removed).
    pub async fn delete_acls(
        &self,
        filters: Vec<AclFilter>,
    ) -> Result<Vec<Vec<AclBinding>>, AclError> {
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
