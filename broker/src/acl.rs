//! Access control lists (issue #18): who may do what to which resource. An ACL is Kafka's
//! binding of a principal and a host to an operation on a resource pattern, allowed or
//! denied; Wharf adds its queue resources (queues and exchanges) beside Kafka's (topics,
//! groups, transactional ids, the cluster). One decision function, [`authorize`], serves
//! every front end, so a rule holds whichever door a request came through.
//!
//! The decision, in order (Kafka's authorizer, with Wharf's default):
//! 1. A super user may do anything.
//! 2. With no ACL at all and authorization not required, anyone may do anything (a fresh
//!    broker on loopback needs no setup). Once any ACL exists, or with `authorization =
//!    required`, what no ACL allows is denied.
//! 3. An ACL applies to a request when its resource type is the request's, its pattern
//!    matches the resource name (literal: the same name or `*`; prefixed: a prefix of the
//!    name), its principal is the caller's or `User:*`, and its host is the caller's or `*`.
//! 4. A deny ACL for the operation (or `All`) wins over every allow.
//! 5. An allow ACL for the operation (or `All`) allows it. `Describe` is also allowed by
//!    an allow of `Read`, `Write`, `Delete` or `Alter`, and `DescribeConfigs` by an allow of
//!    `AlterConfigs`, as in Kafka; denies are never implied.
//! 6. Anything else is denied.
//!
//! - [`store`]: the durable list of ACLs (one checkpoint file in the data directory).

pub mod store;

use std::fmt;

/// The principal of a caller that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";
/// The principal pattern that matches every principal.
pub const ANY_PRINCIPAL: &str = "User:*";
/// The host pattern (and literal resource name) that matches every host (every name).
pub const WILDCARD: &str = "*";

/// What kind of thing an ACL protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Topic,
    Group,
    TransactionalId,
    Cluster,
    Queue,
    Exchange,
}

/// How an ACL's resource name matches names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PatternType {
    /// The same name, or `*` for every name.
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// What a request does to a resource (Kafka's operation names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

/// Whether an ACL allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Allow,
    Deny,
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclBinding {
    /// `User:NAME`, or `User:*` for everyone.
    pub principal: String,
    /// The client's IP address, or `*` for every host.
    pub host: String,
    pub resource_type: ResourceType,
    pub pattern_type: PatternType,
    /// The resource name or prefix (`*` with a literal pattern: every name).
    pub name: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// A request to authorize: who, from where, doing what to which resource.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub principal: &'a str,
    pub host: &'a str,
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub name: &'a str,
}

/// The settings the decision depends on besides the ACLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerSettings {
    /// Deny what no ACL allows even while there is no ACL (`authorization = required`).
    pub required: bool,
    /// Principals allowed everything (`super_users`).
    pub super_users: Vec<String>,
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// Decides whether `access` is allowed under `acls` (the module documentation gives the
/// rule). Cost: one pass over the ACLs.
pub fn authorize(acls: &[AclBinding], settings: &AuthorizerSettings, access: &Access) -> Decision {
    if settings
        .super_users
        .iter()
        .any(|user| user == access.principal)
    {
        return Decision::Allow;
    }
    if acls.is_empty() && !settings.required {
        return Decision::Allow;
    }
    let mut allowed = false;
    for acl in acls.iter().filter(|acl| applies(acl, access)) {
        match acl.permission {
            Permission::Deny if covers(acl.operation, access.operation) => return Decision::Deny,
            Permission::Deny => {}
            Permission::Allow => allowed |= allows(acl.operation, access.operation),
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

/// True if `access.operation` may be allowed on some resource of `access.resource_type`
/// (`access.name` is ignored): Kafka's by-resource-type check, which lets an idempotent
/// producer with `Write` on any topic start without `IdempotentWrite` on the cluster.
/// Simplified: a deny of one name does not count here; the per-resource check that follows
/// still refuses it.
pub fn allows_some(acls: &[AclBinding], settings: &AuthorizerSettings, access: &Access) -> bool {
    if settings
        .super_users
        .iter()
        .any(|user| user == access.principal)
        || (acls.is_empty() && !settings.required)
    {
        return true;
    }
    acls.iter().any(|acl| {
        acl.permission == Permission::Allow
            && acl.resource_type == access.resource_type
            && (acl.principal == access.principal || acl.principal == ANY_PRINCIPAL)
            && (acl.host == access.host || acl.host == WILDCARD)
            && allows(acl.operation, access.operation)
    })
}

/// True if `acl` is about the resource, principal and host of `access` (whatever the
/// operation).
fn applies(acl: &AclBinding, access: &Access) -> bool {
    acl.resource_type == access.resource_type
        && pattern_matches(acl.pattern_type, &acl.name, access.name)
        && (acl.principal == access.principal || acl.principal == ANY_PRINCIPAL)
        && (acl.host == access.host || acl.host == WILDCARD)
}

/// True if a pattern of `pattern_type` and `pattern` matches the resource `name`.
pub fn pattern_matches(pattern_type: PatternType, pattern: &str, name: &str) -> bool {
    match pattern_type {
        PatternType::Literal => pattern == name || pattern == WILDCARD,
        PatternType::Prefixed => name.starts_with(pattern),
    }
}

/// True if an ACL's `operation` names `requested` itself (or everything).
fn covers(operation: Operation, requested: Operation) -> bool {
    operation == Operation::All || operation == requested
}

/// True if an allow of `operation` allows `requested`, implied operations included.
fn allows(operation: Operation, requested: Operation) -> bool {
    covers(operation, requested)
        || match requested {
            Operation::Describe => matches!(
                operation,
                Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
            ),
            Operation::DescribeConfigs => operation == Operation::AlterConfigs,
            _ => false,
        }
}

/// Which ACLs a filter selects (for listing and deleting, as Kafka's `AclBindingFilter`):
/// every field left `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    pub principal: Option<String>,
    pub host: Option<String>,
    pub resource_type: Option<ResourceType>,
    pub pattern: PatternFilter,
    pub name: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

/// How a filter matches the pattern of an ACL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatternFilter {
    /// Any pattern type; a name, if given, must be the ACL's exact name.
    #[default]
    Any,
    /// The ACLs that would apply to the named resource: literal with the same name or `*`,
    /// prefixed with a prefix of it (with no name, the same as `Any`).
    Match,
    /// Only this pattern type (and the exact name, if given).
    Exactly(PatternType),
}

impl AclFilter {
    /// True if the filter selects `acl`.
    pub fn matches(&self, acl: &AclBinding) -> bool {
        let same = |wanted: &Option<String>, actual: &str| {
            wanted.as_deref().is_none_or(|wanted| wanted == actual)
        };
        let name_matches = match (self.pattern, self.name.as_deref()) {
            (PatternFilter::Match, Some(name)) => {
                pattern_matches(acl.pattern_type, &acl.name, name)
            }
            (PatternFilter::Exactly(pattern_type), _) => {
                acl.pattern_type == pattern_type && same(&self.name, &acl.name)
            }
            _ => same(&self.name, &acl.name),
        };
        name_matches
            && same(&self.principal, &acl.principal)
            && same(&self.host, &acl.host)
            && self
                .resource_type
                .is_none_or(|kind| kind == acl.resource_type)
            && self
                .operation
                .is_none_or(|operation| operation == acl.operation)
            && self
                .permission
                .is_none_or(|permission| permission == acl.permission)
    }
}

/// A refused operation: what was asked, by whom, of which resource. Every domain error has
/// an `Unauthorized` variant carrying it, and each front end answers it with its protocol's
/// authorization error (chosen by `resource_type` where the protocol tells them apart).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} is not authorized to {operation} {resource_type} {name:?}")]
pub struct Denied {
    /// The caller's principal (`User:NAME`).
    pub principal: String,
    /// What it asked to do.
    pub operation: Operation,
    /// Of what kind of resource.
    pub resource_type: ResourceType,
    /// Of which one.
    pub name: String,
}

/// Why an ACL cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// A field is malformed or the operation means nothing for the resource type.
    #[error("invalid ACL: {0}")]
    Invalid(String),
    /// The ACL file could not be written or read.
    #[error("ACL storage failed: {0}")]
    Storage(String),
    /// The caller may not manage ACLs.
    #[error(transparent)]
    Unauthorized(#[from] Denied),
    /// The cluster's metadata log did not take the change (no leader, or the outcome is
    /// unknown); nothing changed on this node.
    #[error("the cluster did not take the ACL change: {message}")]
    Cluster { no_leader: bool, message: String },
}

impl AclBinding {
    /// Checks that the ACL can mean something: a `User:` principal, a non-empty name, the
    /// cluster named `kafka-cluster` (Kafka's only cluster resource) or `*`, and an
    /// operation that exists for the resource type.
    ///
    /// # Errors
    /// `Invalid` naming the first problem.
    pub fn validate(&self) -> Result<(), AclError> {
        let Some(user) = self.principal.strip_prefix("User:") else {
            return Err(AclError::Invalid(format!(
                "principal {:?} must be User:NAME (or User:* for everyone)",
                self.principal
            )));
        };
        if user.is_empty() {
            return Err(AclError::Invalid(
                "principal has an empty user name".to_string(),
            ));
        }
        for (field, value) in [
            ("principal", &self.principal),
            ("host", &self.host),
            ("resource name", &self.name),
        ] {
            if value.len() > ACL_TEXT_BYTES_MAX {
                return Err(AclError::Invalid(format!(
                    "{field} is {} bytes, more than {ACL_TEXT_BYTES_MAX}",
                    value.len()
                )));
            }
        }
        if self.host.is_empty() {
            return Err(AclError::Invalid(
                "host is empty (use * for every host)".to_string(),
            ));
        }
        if self.name.is_empty() {
            return Err(AclError::Invalid("resource name is empty".to_string()));
        }
        if self.resource_type == ResourceType::Cluster
            && !(self.name == CLUSTER_NAME || self.name == WILDCARD)
        {
            return Err(AclError::Invalid(format!(
                "the cluster resource is named {CLUSTER_NAME:?}, not {:?}",
                self.name
            )));
        }
        if !self.resource_type.operations().contains(&self.operation) {
            return Err(AclError::Invalid(format!(
                "operation {} means nothing for a {} (valid: {})",
                self.operation,
                self.resource_type,
                self.resource_type
                    .operations()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }
}

/// Longest principal, host or resource name an ACL may have.
pub const ACL_TEXT_BYTES_MAX: usize = 4096;

/// The name of the one cluster resource (Kafka's).
pub const CLUSTER_NAME: &str = "kafka-cluster";

impl ResourceType {
    /// Every resource type.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::TransactionalId,
        ResourceType::Cluster,
        ResourceType::Queue,
        ResourceType::Exchange,
    ];

    /// The operations that mean something for this resource type (`All` always does).
    /// Kafka's lists for its types; for queues and exchanges the operations of docs/SECURITY.md.
    pub fn operations(self) -> &'static [Operation] {
        use Operation::*;
        match self {
            ResourceType::Topic => &[
                All,
                Read,
                Write,
                Create,
                Delete,
                Alter,
                Describe,
                DescribeConfigs,
                AlterConfigs,
            ],
            ResourceType::Group => &[All, Read, Describe, Delete],
            ResourceType::TransactionalId => &[All, Describe, Write],
            ResourceType::Cluster => &[
                All,
                Create,
                Alter,
                Describe,
                ClusterAction,
                DescribeConfigs,
                AlterConfigs,
                IdempotentWrite,
            ],
            ResourceType::Queue | ResourceType::Exchange => {
                &[All, Read, Write, Create, Delete, Alter, Describe]
            }
        }
    }

    /// The lowercase name used by the CLI and the HTTP API (`transactional-id`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::TransactionalId => "transactional-id",
            ResourceType::Cluster => "cluster",
            ResourceType::Queue => "queue",
            ResourceType::Exchange => "exchange",
        }
    }

    /// Parses [`ResourceType::name`].
    pub fn parse(text: &str) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 11] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
    ];

    /// Kafka's name (`DescribeConfigs`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "All",
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Delete => "Delete",
            Operation::Alter => "Alter",
            Operation::Describe => "Describe",
            Operation::ClusterAction => "ClusterAction",
            Operation::DescribeConfigs => "DescribeConfigs",
            Operation::AlterConfigs => "AlterConfigs",
            Operation::IdempotentWrite => "IdempotentWrite",
        }
    }

    /// Parses Kafka's name, ignoring case and `-`/`_` (`describe-configs` works too).
    pub fn parse(text: &str) -> Option<Operation> {
        let folded: String = text
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Operation::ALL
            .into_iter()
            .find(|operation| operation.name().to_ascii_lowercase() == folded)
    }
}

impl PatternType {
    /// The name used by the CLI and the HTTP API.
    pub fn name(self) -> &'static str {
        match self {
            PatternType::Literal => "literal",
            PatternType::Prefixed => "prefixed",
        }
    }

    /// Parses [`PatternType::name`].
    pub fn parse(text: &str) -> Option<PatternType> {
        [PatternType::Literal, PatternType::Prefixed]
            .into_iter()
            .find(|kind| kind.name() == text)
    }
}

impl Permission {
    /// The name used by the CLI and the HTTP API.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        }
    }

    /// Parses [`Permission::name`].
    pub fn parse(text: &str) -> Option<Permission> {
        [Permission::Allow, Permission::Deny]
            .into_iter()
            .find(|permission| permission.name() == text)
    }
}

impl PatternFilter {
    /// Parses a filter's pattern: `any`, `match`, `literal` or `prefixed`.
    pub fn parse(text: &str) -> Option<PatternFilter> {
        match text {
            "any" => Some(PatternFilter::Any),
            "match" => Some(PatternFilter::Match),
            other => PatternType::parse(other).map(PatternFilter::Exactly),
        }
    }
}

/// An ACL from its names (the CLI's, the HTTP API's and the native protocol's), checked with
/// [`AclBinding::validate`].
///
/// # Errors
/// `Invalid` naming the field that does not parse or what the ACL would mean nothing for.
pub fn binding_from_names(
    principal: &str,
    host: &str,
    resource_type: &str,
    pattern_type: &str,
    name: &str,
    operation: &str,
    permission: &str,
) -> Result<AclBinding, AclError> {
    let acl = AclBinding {
        principal: principal.to_string(),
        host: host.to_string(),
        resource_type: parse_resource_type(resource_type)?,
        pattern_type: PatternType::parse(pattern_type).ok_or_else(|| {
            AclError::Invalid(format!(
                "pattern type {pattern_type:?} is neither literal nor prefixed"
            ))
        })?,
        name: name.to_string(),
        operation: parse_operation(operation)?,
        permission: parse_permission(permission)?,
    };
    acl.validate()?;
    Ok(acl)
}

/// A filter from its names; `None` fields match anything.
///
/// # Errors
/// `Invalid` naming the field that does not parse.
pub fn filter_from_names(
    principal: Option<String>,
    host: Option<String>,
    resource_type: Option<&str>,
    pattern: &str,
    name: Option<String>,
    operation: Option<&str>,
    permission: Option<&str>,
) -> Result<AclFilter, AclError> {
    Ok(AclFilter {
        principal,
        host,
        resource_type: resource_type.map(parse_resource_type).transpose()?,
        pattern: PatternFilter::parse(pattern).ok_or_else(|| {
            AclError::Invalid(format!(
                "pattern {pattern:?} is none of any, match, literal, prefixed"
            ))
        })?,
        name,
        operation: operation.map(parse_operation).transpose()?,
        permission: permission.map(parse_permission).transpose()?,
    })
}

fn parse_resource_type(text: &str) -> Result<ResourceType, AclError> {
    ResourceType::parse(text).ok_or_else(|| {
        AclError::Invalid(format!(
            "resource type {text:?} is none of topic, group, transactional-id, cluster, queue, exchange"
        ))
    })
}

fn parse_operation(text: &str) -> Result<Operation, AclError> {
    Operation::parse(text)
        .ok_or_else(|| AclError::Invalid(format!("operation {text:?} is not one of Kafka's")))
}

fn parse_permission(text: &str) -> Result<Permission, AclError> {
    Permission::parse(text)
        .ok_or_else(|| AclError::Invalid(format!("permission {text:?} is neither allow nor deny")))
}

impl fmt::Display for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
