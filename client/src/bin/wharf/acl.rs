//! `wharf acl add|list|remove` (issue #18): the broker's ACLs through the native ACL apis,
//! the same ACLs as Kafka's CreateAcls/DescribeAcls/DeleteAcls and `/api/v1/acls`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use wharf_client::{AclEntry, AclFilterRequest, Admin, Client};

use crate::table::Table;
use crate::CliError;

/// `wharf acl ...`.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add an ACL: allow or deny a principal an operation on a resource pattern.
    Add {
        #[command(flatten)]
        resource: Resource,
        /// `User:NAME`, or `User:*` for everyone.
        #[arg(long, value_name = "User:NAME")]
        principal: String,
        /// Kafka's operation name: Read, Write, Create, Delete, Alter, Describe,
        /// DescribeConfigs, AlterConfigs, ClusterAction, IdempotentWrite or All.
        #[arg(long, value_name = "OP")]
        operation: String,
        #[command(flatten)]
        permission: PermissionFlag,
        /// The client address the ACL is for (default `*`: every host).
        #[arg(long, default_value = "*")]
        host: String,
    },
    /// List the ACLs (all, or those the flags select).
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// Remove the ACLs the flags select, and list them.
    Remove {
        #[command(flatten)]
        filter: Filter,
    },
}

/// The resource of an ACL: one of the resource flags with its name or prefix.
#[derive(Debug, Args)]
#[group(required = false, multiple = false, id = "resource_kind")]
pub struct ResourceKind {
    /// A topic (`*`: every topic).
    #[arg(long, value_name = "PATTERN")]
    topic: Option<String>,
    /// A consumer group.
    #[arg(long, value_name = "PATTERN")]
    group: Option<String>,
    /// A transactional id.
    #[arg(long, value_name = "PATTERN")]
    transactional_id: Option<String>,
    /// A queue.
    #[arg(long, value_name = "PATTERN")]
    queue: Option<String>,
    /// An exchange.
    #[arg(long, value_name = "PATTERN")]
    exchange: Option<String>,
    /// The cluster (`kafka-cluster`, Kafka's one cluster resource).
    #[arg(long)]
    cluster: bool,
}

impl ResourceKind {
    /// The resource type and name given, if any.
    fn chosen(&self) -> Option<(&'static str, String)> {
        let named = [
            ("topic", &self.topic),
            ("group", &self.group),
            ("transactional-id", &self.transactional_id),
            ("queue", &self.queue),
            ("exchange", &self.exchange),
        ];
        named
            .into_iter()
            .find_map(|(kind, name)| name.clone().map(|name| (kind, name)))
            .or_else(|| {
                self.cluster
                    .then(|| ("cluster", "kafka-cluster".to_string()))
            })
    }
}

/// A resource for `acl add`: required.
#[derive(Debug, Args)]
pub struct Resource {
    #[command(flatten)]
    kind: ResourceKind,
    /// The name is a prefix: the ACL covers every name that starts with it.
    #[arg(long)]
    prefixed: bool,
}

/// `--allow` or `--deny`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PermissionFlag {
    /// Allow the operation.
    #[arg(long)]
    allow: bool,
    /// Deny the operation (a deny wins over every allow).
    #[arg(long)]
    deny: bool,
}

/// What `acl list` and `acl remove` select; each flag given must match.
#[derive(Debug, Args)]
pub struct Filter {
    #[command(flatten)]
    kind: ResourceKind,
    /// Only prefixed ACLs with exactly this prefix (default: literal ones with exactly this
    /// name).
    #[arg(long, conflicts_with = "matching")]
    prefixed: bool,
    /// Every ACL that applies to the named resource: literal with its name or `*`, prefixed
    /// with a prefix of it (list only makes sense of it; remove removes them all).
    #[arg(long = "match", id = "matching")]
    matching: bool,
    /// Only this principal's ACLs.
    #[arg(long, value_name = "User:NAME")]
    principal: Option<String>,
    /// Only ACLs for this operation.
    #[arg(long, value_name = "OP")]
    operation: Option<String>,
    /// Only ACLs for this host.
    #[arg(long)]
    host: Option<String>,
    /// Only allow ACLs.
    #[arg(long, conflicts_with = "deny")]
    allow: bool,
    /// Only deny ACLs.
    #[arg(long)]
    deny: bool,
}

impl Filter {
    fn request(&self) -> AclFilterRequest {
        let chosen = self.kind.chosen();
        let pattern = match (&chosen, self.matching, self.prefixed) {
            (None, _, _) => "any",
            (Some(_), true, _) => "match",
            (Some(_), false, true) => "prefixed",
            (Some(_), false, false) => "literal",
        };
        let (resource_type, name) = match chosen {
            Some((kind, name)) => (Some(kind.to_string()), Some(name)),
            None => (None, None),
        };
        AclFilterRequest {
            principal: self.principal.clone(),
            host: self.host.clone(),
            resource_type,
            pattern: pattern.to_string(),
            name,
            operation: self.operation.clone(),
            permission: if self.allow {
                Some("allow".to_string())
            } else if self.deny {
                Some("deny".to_string())
            } else {
                None
            },
        }
    }
}

/// Runs a `wharf acl` command.
///
/// # Errors
/// [`CliError`] for a refused ACL (the broker names what is wrong) or a connection failure.
pub async fn run(client: &Client, command: AclCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        AclCommand::Add {
            resource,
            principal,
            operation,
            permission,
            host,
        } => {
            let Some((resource_type, name)) = resource.kind.chosen() else {
                // A usage error, as clap reports a missing argument (exit status 2).
                clap::Error::raw(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "wharf acl add needs the resource: --topic, --group, --transactional-id, --queue or --exchange PATTERN, or --cluster\n",
                )
                .exit();
            };
            let entry = AclEntry {
                principal,
                host,
                resource_type: resource_type.to_string(),
                pattern_type: if resource.prefixed {
                    "prefixed"
                } else {
                    "literal"
                }
                .to_string(),
                name,
                operation,
                permission: if permission.allow { "allow" } else { "deny" }.to_string(),
            };
            admin.create_acls(vec![entry.clone()]).await?;
            print_acls(json, "added", &[entry]);
        }
        AclCommand::List { filter } => {
            let acls = admin.describe_acls(filter.request()).await?;
            print_acls(json, "", &acls);
        }
        AclCommand::Remove { filter } => {
            let removed = admin.delete_acls(filter.request()).await?;
            print_acls(json, "removed", &removed);
        }
    }
    Ok(())
}

/// Prints ACLs as a table (after `what`, if any) or a JSON array.
fn print_acls(json: bool, what: &str, acls: &[AclEntry]) {
    if json {
        let document: Vec<Value> = acls
            .iter()
            .map(|acl| {
                json!({
                    "principal": acl.principal,
                    "host": acl.host,
                    "resource_type": acl.resource_type,
                    "pattern_type": acl.pattern_type,
                    "name": acl.name,
                    "operation": acl.operation,
                    "permission": acl.permission,
                })
            })
            .collect();
        println!("{}", Value::Array(document));
        return;
    }
    if !what.is_empty() {
        println!("{what} {} ACL(s)", acls.len());
    }
    let mut table = Table::new(&[
        "PRINCIPAL",
        "HOST",
        "RESOURCE",
        "PATTERN",
        "NAME",
        "OPERATION",
        "PERMISSION",
    ]);
    for acl in acls {
        table.row(vec![
            acl.principal.clone(),
            acl.host.clone(),
            acl.resource_type.clone(),
            acl.pattern_type.clone(),
            acl.name.clone(),
            acl.operation.clone(),
            acl.permission.clone(),
        ]);
    }
    print!("{}", table.render());
}
