//! The one rule that decides which offsets a commit may store, shared by plain commits
//! (OffsetCommit) and transactional ones (TxnOffsetCommit): [`check`] fences the member
//! ([`GroupCoordinator::check_commit`]: zombies and stale generations) and then checks each
//! offset ([`check_entry`]).
//!
//! No I/O; the caller supplies the partition counts.

use crate::groups::offsets::Committed;
use crate::groups::{GroupCoordinator, GroupError};
use crate::streams::topic::INTERNAL_TOPIC_PREFIX;

/// Largest metadata string stored with a committed offset (Kafka's default too): it lives in
/// memory for every partition of every group.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// One offset a client asks to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetEntry {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset and its metadata.
    pub committed: Committed,
}

/// Why one entry of a commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRefusal {
    /// The topic is internal or unknown, or has no such partition.
    #[error("cannot commit offsets for {topic}-{partition}: unknown topic or partition")]
    UnknownTopicOrPartition { topic: String, partition: u32 },
    /// The offset is negative.
    #[error("bad offset {offset} for {topic}-{partition}")]
    NegativeOffset {
        topic: String,
        partition: u32,
        offset: i64,
    },
    /// The metadata is longer than [`OFFSET_METADATA_BYTES_MAX`].
    #[error("offset metadata of {metadata_bytes} bytes exceeds max {OFFSET_METADATA_BYTES_MAX}")]
    MetadataTooLarge { metadata_bytes: usize },
    /// The caller may not read the topic (ACLs).
    #[error(transparent)]
    Unauthorized(#[from] crate::acl::Denied),
}

/// The commit rule: the member must be current in its group, then each entry is checked on
/// its own. Returns each entry's outcome, in order.
///
/// # Errors
/// The group's refusal of the member; no entry is checked then.
pub fn check(
    groups: &GroupCoordinator,
    group_id: &str,
    member_id: &str,
    generation: i32,
    entries: &[OffsetEntry],
    partition_count: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<Result<(), EntryRefusal>>, GroupError> {
    groups.check_commit(group_id, member_id, generation)?;
    Ok(entries
        .iter()
        .map(|entry| check_entry(entry, &partition_count))
        .collect())
}

/// Checks one entry; `partition_count` gives a topic's partitions (None if it does not exist).
///
/// # Errors
/// The [`EntryRefusal`] that applies, checked in this order: unknown or internal topic or
/// partition, negative offset, metadata too long.
pub fn check_entry(
    entry: &OffsetEntry,
    partition_count: impl Fn(&str) -> Option<u32>,
) -> Result<(), EntryRefusal> {
    let exists = !entry.topic.starts_with(INTERNAL_TOPIC_PREFIX)
        && partition_count(&entry.topic).is_some_and(|count| entry.partition < count);
    if !exists {
        return Err(EntryRefusal::UnknownTopicOrPartition {
            topic: entry.topic.clone(),
            partition: entry.partition,
        });
    }
    if entry.committed.offset < 0 {
        return Err(EntryRefusal::NegativeOffset {
            topic: entry.topic.clone(),
            partition: entry.partition,
            offset: entry.committed.offset,
        });
    }
    if let Some(metadata) = &entry.committed.metadata {
        if metadata.len() > OFFSET_METADATA_BYTES_MAX {
            return Err(EntryRefusal::MetadataTooLarge {
                metadata_bytes: metadata.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, partition: u32, offset: i64, metadata_bytes: usize) -> OffsetEntry {
        OffsetEntry {
            topic: topic.to_string(),
            partition,
            committed: Committed {
                offset,
                metadata: Some("m".repeat(metadata_bytes)),
            },
        }
    }

    fn two_partitions(topic: &str) -> Option<u32> {
        (topic == "t" || topic == "__consumer_offsets").then_some(2)
    }

    #[test]
    fn internal_unknown_and_out_of_range_partitions_are_unknown() {
        for refused in [
            entry("__consumer_offsets", 0, 1, 0),
            entry("nope", 0, 1, 0),
            entry("t", 2, 1, 0),
        ] {
            assert!(matches!(
                check_entry(&refused, two_partitions),
                Err(EntryRefusal::UnknownTopicOrPartition { .. })
            ));
        }
    }

    #[test]
    fn negative_offset_and_long_metadata_are_refused() {
        assert!(matches!(
            check_entry(&entry("t", 1, -1, 0), two_partitions),
            Err(EntryRefusal::NegativeOffset { offset: -1, .. })
        ));
        assert_eq!(
            check_entry(
                &entry("t", 1, 0, OFFSET_METADATA_BYTES_MAX + 1),
                two_partitions
            ),
            Err(EntryRefusal::MetadataTooLarge {
                metadata_bytes: OFFSET_METADATA_BYTES_MAX + 1
            })
        );
        assert_eq!(
            check_entry(&entry("t", 1, 0, OFFSET_METADATA_BYTES_MAX), two_partitions),
            Ok(())
        );
    }
}
