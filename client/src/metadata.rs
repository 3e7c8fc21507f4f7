//! Plain data describing the cluster: topic ids, topics, partitions and brokers, as the
//! client hands them to callers. Conversion from the wire's metadata types lives here too.

use std::fmt;

use wharf_protocol::messages::{BrokerInfo, PartitionMetadata, TopicMetadata};

/// A topic's stable id: a deleted and re-created topic gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TopicId(pub [u8; 16]);

impl fmt::Display for TopicId {
    /// Formats as a UUID: `8-4-4-4-12` lowercase hex digits.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                formatter.write_str("-")?;
            }
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic name.
    pub topic: String,
    /// The partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`'s partition `partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{}", self.topic, self.partition)
    }
}

/// A topic as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The topic name.
    pub name: String,
    /// The topic's stable id.
    pub topic_id: TopicId,
    /// Its partitions, ordered by number.
    pub partitions: Vec<PartitionDescription>,
}

impl TopicDescription {
    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).expect("partition counts fit in u32 on the wire")
    }

    pub(crate) fn from_wire(topic: TopicMetadata) -> Self {
        let mut partitions: Vec<PartitionDescription> = topic
            .partitions
            .into_iter()
            .map(PartitionDescription::from_wire)
            .collect();
        partitions.sort_by_key(|partition| partition.partition);
        TopicDescription {
            name: topic.name,
            topic_id: TopicId(topic.topic_id),
            partitions,
        }
    }
}

/// One partition as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// The partition number.
    pub partition: u32,
    /// Node id of the leader broker.
    pub leader: i32,
    /// The first offset still stored.
    pub log_start_offset: i64,
    /// The offset after the last readable record (the end offset).
    pub high_watermark: i64,
}

impl PartitionDescription {
    fn from_wire(partition: PartitionMetadata) -> Self {
        PartitionDescription {
            partition: partition.partition,
            leader: partition.leader,
            log_start_offset: partition.log_start_offset,
            high_watermark: partition.high_watermark,
        }
    }
}

/// `host:port` for a broker's advertised address, bracketing IPv6 hosts.
pub(crate) fn broker_address(broker: &BrokerInfo) -> String {
    if broker.host.contains(':') && !broker.host.starts_with('[') {
        format!("[{}]:{}", broker.host, broker.port)
    } else {
        format!("{}:{}", broker.host, broker.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_id_formats_as_uuid() {
        let id = TopicId([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(id.to_string(), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn ipv6_broker_host_is_bracketed() {
        let broker = BrokerInfo {
            node_id: 0,
            host: "::1".to_string(),
            port: 7420,
        };
        assert_eq!(broker_address(&broker), "[::1]:7420");
        let broker = BrokerInfo {
            node_id: 0,
            host: "localhost".to_string(),
            port: 7420,
        };
        assert_eq!(broker_address(&broker), "localhost:7420");
    }
}
