//! `wharf cluster status|add-node|remove-node [--cancel]|rebalance` (issue #20): the cluster's
//! membership and replica placement through the native cluster apis of the broker
//! `--broker` names.

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
    /// Remove a node from the cluster. A node that is up is drained first: every topic
    /// partition on it moves to the others with its records (an unreplicated one too,
    /// through a replicated log of its own), and the node is removed once none is left.
    /// A node that is down is removed at once; what it alone held is placed again, empty.
    ///
    /// With --cancel, stops the drain of a node instead (after a `remove-node` that is
    /// still moving its replicas, or gave up waiting): the node stays and takes replicas
    /// again; moves already under way finish (`wharf cluster rebalance` evens the counts out
    /// afterwards). Stop a `remove-node` still running first: it asks again until its
    /// --timeout-ms, and each ask drains the node again.
    RemoveNode {
        /// The node's id.
        node_id: u64,
        /// How long to wait for the drain's moves, in milliseconds.
        #[arg(long, default_value_t = 300_000)]
        timeout_ms: u64,
        /// Stop the node's drain and keep the node.
        #[arg(long, conflicts_with = "timeout_ms")]
        cancel: bool,
    },
    /// Move replicated partitions and queues onto the nodes holding fewest replicas (after
    /// nodes were added): each group's leader adds the new node, waits until it caught up,
    /// then changes the group's voters; the partition or queue stays available throughout.
    /// An unreplicated partition moves with its records only when moving replicated sets
    /// cannot even the counts out (it needs its node up: one on a node that is down waits
    /// for it); unreplicated queues stay where their messages are.
    Rebalance {
        /// Print the moves started and return, without waiting for them.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for every move to finish, in milliseconds.
        #[arg(long, default_value_t = 300_000)]
        timeout_ms: u64,
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
            // A broker from before FindCoordinator leaves it out (`None`); another failure
            // is shown, not taken for "none known".
            let coordinator = match admin.find_coordinator().await {
                Ok(found) => Some(Ok(found)),
                Err(wharf_client::Error::UnsupportedApi { .. }) => None,
                Err(error) => Some(Err(error.to_string())),
            };
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
                        "coordinator": match &coordinator {
                            Some(Ok(Some((id, address)))) => {
                                json!({ "node_id": id, "native_address": address })
                            }
                            Some(Err(error)) => json!({ "error": error }),
                            Some(Ok(None)) | None => serde_json::Value::Null,
                        },
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
                match &coordinator {
                    Some(Ok(Some((id, address)))) => {
                        println!("groups and transactions: coordinated by node {id} ({address})");
                    }
                    Some(Ok(None)) => println!("groups and transactions: no coordinator known yet"),
                    Some(Err(error)) => {
                        println!(
                            "groups and transactions: cannot ask for the coordinator: {error}"
                        );
                    }
                    None => {}
                }
            }
        }
        ClusterCommand::AddNode { node_id, address } => {
            admin.add_node(node_id, &address).await?;
            report(json, "added", node_id);
        }
        ClusterCommand::RemoveNode {
            node_id,
            cancel: true,
            ..
        } => cancel_drain(&admin, node_id, json).await?,
        ClusterCommand::RemoveNode {
            node_id,
            timeout_ms,
            cancel: false,
        } => {
            remove_node(&admin, node_id, timeout_ms).await?;
            report(json, "removed", node_id);
        }
        ClusterCommand::Rebalance {
            no_wait,
            timeout_ms,
        } => rebalance(&admin, json, no_wait, timeout_ms).await?,
    }
    Ok(())
}

/// `wharf cluster remove-node`: asks again every second while the broker answers that
/// the node is still being drained, until `timeout_ms` passed.
async fn remove_node(admin: &Admin, node_id: u64, timeout_ms: u64) -> Result<(), CliError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    loop {
        match admin.remove_node(node_id).await {
            Err(error)
                if error.code() == Some(wharf_client::ErrorCode::RequestTimedOut)
                    && error.to_string().contains("being drained")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            answered => return Ok(answered?),
        }
    }
}

/// `wharf cluster remove-node --cancel`: stops the node's drain, then prints the moves
/// still under way off or onto it (they finish).
async fn cancel_drain(admin: &Admin, node_id: u64, json: bool) -> Result<(), CliError> {
    let moves: Vec<wharf_client::ReplicaMoveEntry> = admin
        .cancel_drain(node_id)
        .await?
        .into_iter()
        .filter(|moved| moved.from.contains(&node_id) || moved.to.contains(&node_id))
        .collect();
    if json {
        let answer = json!({
            "node_id": node_id,
            "result": "drain cancelled",
            "moves": described(&moves),
        });
        println!("{answer}");
    } else {
        println!(
            "cancelled node {node_id}'s drain: it stays and takes replicas again; {} of its \
             move(s) still under way",
            moves.len()
        );
        print_moves(&moves);
    }
    Ok(())
}

/// `wharf cluster rebalance`: starts the rebalance, prints its moves, then (unless
/// `no_wait`) asks every half second until none is left or `timeout_ms` passed.
async fn rebalance(
    admin: &Admin,
    json: bool,
    no_wait: bool,
    timeout_ms: u64,
) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let moves = admin.rebalance(true).await?;
    if !json {
        if moves.is_empty() {
            println!("nothing to move: every replicated set is where it belongs");
        } else {
            print_moves(&moves);
        }
    }
    let mut left = moves.len();
    if !no_wait {
        let deadline = started + std::time::Duration::from_millis(timeout_ms);
        while left > 0 {
            if std::time::Instant::now() >= deadline {
                return Err(CliError::Unfinished {
                    moves_left: left,
                    timeout_ms,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            left = admin.rebalance(false).await?.len();
        }
    }
    if json {
        println!(
            "{}",
            json!({
                "moves": described(&moves),
                "done": left == 0,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else if !moves.is_empty() && left == 0 {
        println!(
            "moved {} replicated set(s) in {:.1} s",
            moves.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The moves as `--json` prints them.
fn described(moves: &[wharf_client::ReplicaMoveEntry]) -> Vec<serde_json::Value> {
    moves
        .iter()
        .map(|moved| {
            json!({
                "name": moved.name,
                "partition": (moved.partition >= 0).then_some(moved.partition),
                "from": moved.from,
                "to": moved.to,
            })
        })
        .collect()
}

/// The moves as a table (nothing for none).
fn print_moves(moves: &[wharf_client::ReplicaMoveEntry]) {
    if moves.is_empty() {
        return;
    }
    let nodes = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut table = Table::new(&["TOPIC/QUEUE", "PARTITION", "FROM", "TO"]);
    for moved in moves {
        table.row(vec![
            moved.name.clone(),
            if moved.partition >= 0 {
                moved.partition.to_string()
            } else {
                "(queue)".to_string()
            },
            nodes(&moved.from),
            nodes(&moved.to),
        ]);
    }
    print!("{}", table.render());
}

fn report(json: bool, what: &str, node_id: u64) {
    if json {
        println!("{}", json!({ "node_id": node_id, "result": what }));
    } else {
        println!("{what} node {node_id}");
    }
}
