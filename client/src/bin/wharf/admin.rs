//! `wharf topic ...` and `wharf group ...`: admin requests printed as tables, or as one
//! JSON document with `--json`.

use serde_json::{json, Value};
use wharf_client::{Admin, Client, GroupDescription, PartitionLag, TopicDescription};

use crate::table::{counted, or_dash, Table};
use crate::{CliError, GroupCommand, TopicCommand};

/// Runs a `topic` command.
pub async fn topic(client: &Client, command: TopicCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let configs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
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
            if json {
                println!("{}", topic_json(&topic));
            } else {
                print!("{}", describe_topic_text(&topic));
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
            let description = admin.describe_group(&group).await?;
            let lags = admin.group_lag(&group).await?;
            if description.members.is_empty() && lags.is_empty() {
                return Err(CliError::UnknownGroup { group });
            }
            if json {
                println!("{}", group_json(&description, &lags));
            } else {
                print!("{}", lag_table(&lags).render());
            }
        }
    }
    Ok(())
}

fn topic_summary_json(topic: &TopicDescription) -> Value {
    json!({
        "name": topic.name,
        "topic_id": topic.topic_id.to_string(),
        "partitions": topic.partition_count(),
    })
}

fn topic_json(topic: &TopicDescription) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|partition| {
            json!({
                "partition": partition.partition,
                "leader": partition.leader,
                "log_start_offset": partition.log_start_offset,
                "end_offset": partition.high_watermark,
            })
        })
        .collect();
    json!({
        "name": topic.name,
        "topic_id": topic.topic_id.to_string(),
        "partitions": partitions,
    })
}

fn describe_topic_text(topic: &TopicDescription) -> String {
    let mut table = Table::new(&["PARTITION", "LEADER", "LOG-START-OFFSET", "END-OFFSET"]);
    for partition in &topic.partitions {
        table.row(vec![
            partition.partition.to_string(),
            partition.leader.to_string(),
            partition.log_start_offset.to_string(),
            partition.high_watermark.to_string(),
        ]);
    }
    format!(
        "topic \"{}\" (id {}, {})\n{}",
        topic.name,
        topic.topic_id,
        counted(topic.partition_count(), "partition"),
        table.render()
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
