//! `wharf cluster status|add-node|remove-node` (issue #20): the cluster's membership through
//! the native cluster apis of the broker `--broker` names.

use clap::Subcommand;
use serde_json::json;
use wharf_client::{Admin, Client};

use crate::table::Table;
use crate::CliError;

/// `wharf cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The answering node's view: the cluster id, its leader, term and members.
    Status,
    /// Add a node: it joins as a learner, catches up, then votes. Its data directory must
    /// be empty or already of this cluster.
    AddNode {
        /// The new node's id (its --node-id).
        node_id: u64,
        /// Its internal listener, HOST:PORT (its own entry of --cluster-peers).
        address: String,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id.
        node_id: u64,
    },
}

/// Runs a `wharf cluster` command.
///
/// # Errors
/// [`CliError`] for a refused change or a connection failure.
pub async fn run(client: &Client, command: ClusterCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        ClusterCommand::Status => {
            let status = admin.describe_cluster().await?;
            if json {
                let nodes: Vec<_> = status
                    .nodes
                    .iter()
                    .map(|(id, address, voter)| {
                        json!({ "node_id": id, "address": address, "voter": voter })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({
                        "node_id": status.node_id,
                        "cluster_id": status.cluster_id,
                        "leader_id": status.leader_id,
                        "role": status.role,
                        "term": status.term,
                        "last_log_index": status.last_log_index,
                        "last_applied_index": status.last_applied_index,
                        "nodes": nodes,
                    })
                );
            } else {
                println!(
                    "cluster {} · node {} is {} · leader {} · term {} · applied {}/{}",
                    status.cluster_id.as_deref().unwrap_or("(not formed)"),
                    status.node_id,
                    status.role,
                    status
                        .leader_id
                        .map_or_else(|| "none".to_string(), |id| id.to_string()),
                    status.term,
                    status.last_applied_index,
                    status.last_log_index
                );
                let mut table = Table::new(&["NODE", "ADDRESS", "ROLE"]);
                for (id, address, voter) in &status.nodes {
                    let role = match (*voter, Some(*id) == status.leader_id) {
                        (_, true) => "leader",
                        (true, false) => "voter",
                        (false, false) => "learner",
                    };
                    table.row(vec![id.to_string(), address.clone(), role.to_string()]);
                }
                print!("{}", table.render());
            }
        }
        ClusterCommand::AddNode { node_id, address } => {
            admin.add_node(node_id, &address).await?;
            report(json, "added", node_id);
        }
        ClusterCommand::RemoveNode { node_id } => {
            admin.remove_node(node_id).await?;
            report(json, "removed", node_id);
        }
    }
    Ok(())
}

fn report(json: bool, what: &str, node_id: u64) {
    if json {
        println!("{}", json!({ "node_id": node_id, "result": what }));
    } else {
        println!("{what} node {node_id}");
    }
}
