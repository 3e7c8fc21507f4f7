//! The durable list of ACLs: one checkpoint file, `acls`, in the data directory (magic
//! `WACL`, version 1; docs/STORAGE.md), replaced atomically on every change and read at
//! start. Readers take the current list as an `Arc` (copy on write): authorizing a request
//! never waits for a change being written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::acl::{
    AclBinding, AclError, AclFilter, Operation, PatternType, Permission, ResourceType,
};
use crate::storage::{checkpoint, Fs};

/// The ACL file, in the data directory.
pub const ACLS_FILE: &str = "acls";
const ACLS_MAGIC: [u8; 4] = *b"WACL";
/// The payload version this code writes and reads.
const ACLS_VERSION: u16 = 1;

wire_struct! {
    /// One stored ACL; enums as their names, so the file reads plainly in a hex dump.
    pub struct StoredAcl {
        pub principal: String,
        pub host: String,
        pub resource_type: String,
        pub pattern_type: String,
        pub name: String,
        pub operation: String,
        pub permission: String,
    }
}

wire_struct! {
    /// The ACL file's payload.
    pub struct StoredAcls {
        pub acls: Vec<StoredAcl>,
    }
}

/// The broker's ACLs, durable.
#[derive(Debug)]
pub struct AclStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    current: RwLock<Arc<Vec<AclBinding>>>,
    /// True while `current` is empty: the hot paths (every publish and produce) ask this
    /// one load before any lock.
    empty: AtomicBool,
    /// Held while a change is written, so changes apply one at a time, in order.
    writing: Mutex<()>,
}

impl AclStore {
    /// Reads the ACLs of the data directory `dir` (none if it has no ACL file).
    ///
    /// # Errors
    /// `Storage` if the file cannot be read, fails its checks or does not decode.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path) -> Result<AclStore, AclError> {
        let storage = |error: String| AclError::Storage(error);
        let found = checkpoint::read(fs.as_ref(), &dir.join(ACLS_FILE), ACLS_MAGIC)
            .map_err(|error| storage(error.to_string()))?;
        let acls = match found {
            None => Vec::new(),
            Some(found) if found.version != ACLS_VERSION => {
                return Err(storage(format!(
                    "ACL file version {} is not {ACLS_VERSION}",
                    found.version
                )))
            }
            Some(found) => {
                let mut reader = Reader::new(Bytes::from(found.payload));
                let stored = StoredAcls::decode(&mut reader, "acls")
                    .and_then(|stored| reader.finish().map(|()| stored))
                    .map_err(|error| storage(format!("ACL file does not decode: {error}")))?;
                stored
                    .acls
                    .into_iter()
                    .map(from_stored)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(AclStore {
            fs,
            dir: dir.to_path_buf(),
            empty: AtomicBool::new(acls.is_empty()),
            current: RwLock::new(Arc::new(acls)),
            writing: Mutex::new(()),
        })
    }

    /// True when no ACL exists (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.empty.load(Ordering::Acquire)
    }

    /// The ACLs now in force.
    pub fn current(&self) -> Arc<Vec<AclBinding>> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The ACLs `filter` selects.
    pub fn list(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.current()
            .iter()
            .filter(|acl| filter.matches(acl))
            .cloned()
            .collect()
    }

    /// Adds ACLs (those already present count as added, as in Kafka); durable before it
    /// returns. Blocking file I/O: call it on the blocking pool.
    ///
    /// # Errors
    /// `Invalid` for the first ACL that fails [`AclBinding::validate`] (nothing is added),
    /// `Storage` if the file cannot be written (nothing changes).
    pub fn add(&self, acls: &[AclBinding]) -> Result<(), AclError> {
        for acl in acls {
            acl.validate()?;
        }
        self.change(|current| {
            let mut next = current.to_vec();
            for acl in acls {
                if !next.contains(acl) {
                    next.push(acl.clone());
                }
            }
            next.sort();
            (next, ())
        })
    }

    /// Removes every ACL a filter selects; answers, per filter, the ACLs it removed (an ACL
    /// two filters select is listed under both). Durable before it returns; blocking.
    ///
    /// # Errors
    /// `Storage` if the file cannot be written (nothing changes).
    pub fn remove(&self, filters: &[AclFilter]) -> Result<Vec<Vec<AclBinding>>, AclError> {
        self.change(|current| {
            let removed: Vec<Vec<AclBinding>> = filters
                .iter()
                .map(|filter| {
                    current
                        .iter()
                        .filter(|acl| filter.matches(acl))
                        .cloned()
                        .collect()
                })
                .collect();
            let next = current
                .iter()
                .filter(|acl| !filters.iter().any(|filter| filter.matches(acl)))
                .cloned()
                .collect();
            (next, removed)
        })
    }

    /// Makes the list `acls` (sorted, without duplicates): what the cluster's metadata
    /// holds, on a node that follows it. Answers whether anything changed. Durable before it
    /// returns; blocking.
    ///
    /// # Errors
    /// `Storage` if the file cannot be written (nothing changes).
    pub fn replace(&self, mut acls: Vec<AclBinding>) -> Result<bool, AclError> {
        acls.sort();
        acls.dedup();
        self.change(|current| {
            let changed = acls != current;
            (acls, changed)
        })
    }

    /// Computes the next list from the current one, writes it, then puts it in force.
    fn change<T>(
        &self,
        next_of: impl FnOnce(&[AclBinding]) -> (Vec<AclBinding>, T),
    ) -> Result<T, AclError> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current();
        let (next, answer) = next_of(&current);
        if next != *current {
            let stored = StoredAcls {
                acls: next.iter().map(to_stored).collect(),
            };
            let mut bytes = BytesMut::new();
            stored.encode(&mut bytes);
            checkpoint::write(
                self.fs.as_ref(),
                &self.dir,
                ACLS_FILE,
                ACLS_MAGIC,
                ACLS_VERSION,
                0,
                &bytes,
            )
            .map_err(|error| AclError::Storage(error.to_string()))?;
            let mut current = self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.empty.store(next.is_empty(), Ordering::Release);
            *current = Arc::new(next);
        }
        Ok(answer)
    }
}

/// An ACL as the file (and the cluster's metadata) stores it: every field by name.
pub fn to_stored(acl: &AclBinding) -> StoredAcl {
    StoredAcl {
        principal: acl.principal.clone(),
        host: acl.host.clone(),
        resource_type: acl.resource_type.name().to_string(),
        pattern_type: acl.pattern_type.name().to_string(),
        name: acl.name.clone(),
        operation: acl.operation.name().to_string(),
        permission: acl.permission.name().to_string(),
    }
}

/// An ACL read back from [`to_stored`]'s form.
///
/// # Errors
/// `Storage` naming a field that holds no known name.
pub fn from_stored(stored: StoredAcl) -> Result<AclBinding, AclError> {
    let bad = |field: &str, value: &str| {
        AclError::Storage(format!("ACL file holds an unknown {field} {value:?}"))
    };
    Ok(AclBinding {
        resource_type: ResourceType::parse(&stored.resource_type)
            .ok_or_else(|| bad("resource type", &stored.resource_type))?,
        pattern_type: PatternType::parse(&stored.pattern_type)
            .ok_or_else(|| bad("pattern type", &stored.pattern_type))?,
        operation: Operation::parse(&stored.operation)
            .ok_or_else(|| bad("operation", &stored.operation))?,
        permission: Permission::parse(&stored.permission)
            .ok_or_else(|| bad("permission", &stored.permission))?,
        principal: stored.principal,
        host: stored.host,
        name: stored.name,
    })
}
