//! `wharf topic ...` and `wharf group ...`: admin requests printed as tables, or as one
//! JSON document with `--json`.

use serde_json::{json, Value};
use wharf_client::{
    Admin, Client, ConfigSource, GroupDescription, OffsetResetPlan, PartitionLag,
    PartitionReplicas, ResetMode, TopicConfigValue, TopicDescription,
};

use wharf_protocol::messages::REPLICATION_FACTOR_KEY;

use crate::table::{counted, or_dash, Table};
use crate::{CliError, GroupCommand, TopicCommand};

/// Runs a `topic` command.
pub async fn topic(client: &Client, command: TopicCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let factor = replication_factor.map(|factor| factor.to_string());
            let configs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .chain(
                    factor
                        .as_deref()
                        .map(|factor| (REPLICATION_FACTOR_KEY, factor)),
                )
                .collect();
            let topic_id = admin.create_topic(&name, partitions, &configs).await?;
            if json {
                let document = json!({
                    "name": name,
                    "topic_id": topic_id.to_string(),
                    "partitions": partitions,
                });
                println!("{document}");
            } else {
                println!(
                    "created topic \"{name}\" with {} (id {topic_id})",
                    counted(partitions, "partition")
                );
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            if json {
                let document: Vec<Value> = topics.iter().map(topic_summary_json).collect();
                println!("{}", Value::Array(document));
            } else {
                let mut table = Table::new(&["NAME", "PARTITIONS", "TOPIC-ID"]);
                for topic in &topics {
                    table.row(vec![
                        topic.name.clone(),
                        topic.partition_count().to_string(),
                        topic.topic_id.to_string(),
                    ]);
                }
                print!("{}", table.render());
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            let configs = admin.describe_topic_configs(&name).await?;
            // A broker from before DescribeReplicas (or one that refuses it) leaves the
            // replica columns out rather than failing the describe.
            let replicas = admin.describe_replicas(&name).await.unwrap_or_default();
            if json {
                println!("{}", topic_json(&topic, &configs, &replicas));
            } else {
                print!("{}", describe_topic_text(&topic, &configs, &replicas));
            }
        }
        TopicCommand::Alter { name, configs } => {
            let pairs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            admin.alter_topic_configs(&name, &pairs).await?;
            if json {
                let altered: serde_json::Map<String, Value> = configs
                    .iter()
                    .map(|(key, value)| (key.clone(), Value::String(value.clone())))
                    .collect();
                println!("{}", json!({ "name": name, "altered": altered }));
            } else {
                let listed: Vec<String> = configs
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                println!("altered topic \"{name}\": {}", listed.join(" "));
            }
        }
        TopicCommand::AddPartitions { name, count } => {
            admin.add_partitions(&name, count).await?;
            if json {
                println!("{}", json!({ "name": name, "partitions": count }));
            } else {
                println!("topic \"{name}\" now has {}", counted(count, "partition"));
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            if json {
                println!("{}", json!({ "name": name, "deleted": true }));
            } else {
                println!("deleted topic \"{name}\"");
            }
        }
    }
    Ok(())
}

/// Runs a `group` command.
pub async fn group(client: &Client, command: GroupCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if json {
                let document: Vec<Value> = groups
                    .iter()
                    .map(|group| {
                        json!({
                            "group_id": group.group_id,
                            "state": group.state,
                            "members": group.member_count,
                        })
                    })
                    .collect();
                println!("{}", Value::Array(document));
            } else {
                let mut table = Table::new(&["GROUP", "STATE", "MEMBERS"]);
                for group in &groups {
                    table.row(vec![
                        group.group_id.clone(),
                        group.state.clone(),
                        group.member_count.to_string(),
                    ]);
                }
                print!("{}", table.render());
            }
        }
        GroupCommand::Describe { group } => {
            let (description, lags) = admin.describe_group_with_lag(&group).await?;
            if description.members.is_empty() && lags.is_empty() {
                return Err(CliError::UnknownGroup { group });
            }
            if json {
                println!("{}", group_json(&description, &lags));
            } else {
                print!("{}", lag_table(&lags).render());
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            execute,
        } => {
            let mode = if execute {
                ResetMode::Execute
            } else {
                ResetMode::DryRun
            };
            let plan = admin.reset_offsets(&group, &topic, to, mode).await?;
            if json {
                println!("{}", reset_json(&group, &topic, mode, &plan));
            } else {
                print!("{}", reset_table(&group, &topic, &plan).render());
                if mode == ResetMode::DryRun {
                    eprintln!(
                        "dry run: nothing was committed; add --execute to commit these offsets"
                    );
                }
            }
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            if json {
                println!("{}", json!({ "group_id": group, "deleted": true }));
            } else {
                println!("deleted group \"{group}\"");
            }
        }
    }
    Ok(())
}

fn reset_table(group: &str, topic: &str, plan: &[OffsetResetPlan]) -> Table {
    let mut table = Table::new(&[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "NEW-OFFSET",
    ]);
    for planned in plan {
        table.row(vec![
            group.to_string(),
            topic.to_string(),
            planned.partition.to_string(),
            or_dash(planned.current_offset),
            planned.new_offset.to_string(),
        ]);
    }
    table
}

fn reset_json(group: &str, topic: &str, mode: ResetMode, plan: &[OffsetResetPlan]) -> Value {
    let partitions: Vec<Value> = plan
        .iter()
        .map(|planned| {
            json!({
                "partition": planned.partition,
                "current_offset": planned.current_offset,
                "new_offset": planned.new_offset,
            })
        })
        .collect();
    json!({
        "group_id": group,
        "topic": topic,
        "executed": mode == ResetMode::Execute,
        "partitions": partitions,
    })
}

fn source_name(source: ConfigSource) -> &'static str {
    match source {
        ConfigSource::Default => "default",
        ConfigSource::TopicOverride => "override",
    }
}

fn configs_table(configs: &[TopicConfigValue]) -> Table {
    let mut table = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
    for config in configs {
        table.row(vec![
            config.key.clone(),
            config.value.clone(),
            source_name(config.source).to_string(),
        ]);
    }
    table
}

fn topic_summary_json(topic: &TopicDescription) -> Value {
    json!({
        "name": topic.name,
        "topic_id": topic.topic_id.to_string(),
        "partitions": topic.partition_count(),
    })
}

/// The nodes of a partition that have every record it serves: the leader and each
/// follower it reports in sync (None when the leader's view is not known).
fn in_sync(replicas: &PartitionReplicas) -> Option<Vec<u64>> {
    let leader = replicas.leader?;
    if replicas.replicas.len() > 1 && replicas.followers.is_empty() {
        return None;
    }
    let mut nodes = vec![leader];
    nodes.extend(
        replicas
            .followers
            .iter()
            .filter(|(_, _, in_sync)| *in_sync)
            .map(|(node, _, _)| *node),
    );
    nodes.sort_unstable();
    Some(nodes)
}

fn node_list(nodes: &[u64]) -> String {
    let listed: Vec<String> = nodes.iter().map(u64::to_string).collect();
    listed.join(",")
}

fn topic_json(
    topic: &TopicDescription,
    configs: &[TopicConfigValue],
    replicas: &[PartitionReplicas],
) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|partition| {
            let mut described = json!({
                "partition": partition.partition,
                "leader": partition.leader,
                "log_start_offset": partition.log_start_offset,
                "end_offset": partition.high_watermark,
            });
            if let Some(placed) = replicas
                .iter()
                .find(|placed| placed.partition == partition.partition)
            {
                described["replicas"] = json!(placed.replicas);
                described["term"] = json!(placed.term);
                described["in_sync"] = json!(in_sync(placed));
                described["followers"] = placed
                    .followers
                    .iter()
                    .map(|(node, lag, in_sync)| {
                        json!({ "node": node, "lag_entries": lag, "in_sync": in_sync })
                    })
                    .collect();
            }
            described
        })
        .collect();
    let configs: Vec<Value> = configs
        .iter()
        .map(|config| {
            json!({
                "key": config.key,
                "value": config.value,
                "source": source_name(config.source),
            })
        })
        .collect();
    json!({
        "name": topic.name,
        "topic_id": topic.topic_id.to_string(),
        "partitions": partitions,
        "configs": configs,
    })
}

fn describe_topic_text(
    topic: &TopicDescription,
    configs: &[TopicConfigValue],
    replicas: &[PartitionReplicas],
) -> String {
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "LOG-START-OFFSET",
        "END-OFFSET",
        "REPLICAS",
        "IN-SYNC",
        "MAX-LAG",
    ]);
    for partition in &topic.partitions {
        let placed = replicas
            .iter()
            .find(|placed| placed.partition == partition.partition);
        let max_lag = placed
            .filter(|placed| !placed.followers.is_empty())
            .map(|placed| {
                placed
                    .followers
                    .iter()
                    .map(|(_, lag, _)| *lag)
                    .max()
                    .unwrap_or(0)
                    .to_string()
            });
        table.row(vec![
            partition.partition.to_string(),
            partition.leader.to_string(),
            partition.log_start_offset.to_string(),
            partition.high_watermark.to_string(),
            placed.map_or_else(|| "-".to_string(), |placed| node_list(&placed.replicas)),
            placed
                .and_then(in_sync)
                .map_or_else(|| "-".to_string(), |nodes| node_list(&nodes)),
            max_lag.unwrap_or_else(|| "-".to_string()),
        ]);
    }
    format!(
        "topic \"{}\" (id {}, {})\n{}\n{}",
        topic.name,
        topic.topic_id,
        counted(topic.partition_count(), "partition"),
        table.render(),
        configs_table(configs).render()
    )
}

fn lag_table(lags: &[PartitionLag]) -> Table {
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "COMMITTED-OFFSET",
        "END-OFFSET",
        "LAG",
        "MEMBER-ID",
    ]);
    for lag in lags {
        table.row(vec![
            lag.topic.clone(),
            lag.partition.to_string(),
            or_dash(lag.committed_offset),
            lag.end_offset.to_string(),
            or_dash(lag.lag),
            lag.member_id.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    table
}

fn group_json(description: &GroupDescription, lags: &[PartitionLag]) -> Value {
    let members: Vec<Value> = description
        .members
        .iter()
        .map(|member| {
            let assignment: Vec<Value> = member
                .assignment
                .iter()
                .map(|partition| json!({ "topic": partition.topic, "partition": partition.partition }))
                .collect();
            json!({
                "member_id": member.member_id,
                "client_id": member.client_id,
                "topics": member.topics,
                "assignment": assignment,
            })
        })
        .collect();
    let partitions: Vec<Value> = lags
        .iter()
        .map(|lag| {
            json!({
                "topic": lag.topic,
                "partition": lag.partition,
                "committed_offset": lag.committed_offset,
                "end_offset": lag.end_offset,
                "lag": lag.lag,
                "member_id": lag.member_id,
            })
        })
        .collect();
    json!({
        "group_id": description.group_id,
        "state": description.state,
        "generation": description.generation,
        "assignor": description.assignor,
        "members": members,
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_table_shows_dashes_without_commit() {
        let lags = vec![
            PartitionLag {
                topic: "orders".to_string(),
                partition: 0,
                committed_offset: Some(5),
                end_offset: 9,
                lag: Some(4),
                member_id: None,
            },
            PartitionLag {
                topic: "orders".to_string(),
                partition: 1,
                committed_offset: None,
                end_offset: 3,
                lag: None,
                member_id: Some("m-1".to_string()),
            },
        ];
        assert_eq!(
            lag_table(&lags).render(),
            "TOPIC   PARTITION  COMMITTED-OFFSET  END-OFFSET  LAG  MEMBER-ID\n\
             orders  0          5                 9           4    -\n\
             orders  1          -                 3           -    m-1\n"
        );
    }
}
