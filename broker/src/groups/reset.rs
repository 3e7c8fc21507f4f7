//! The offset-reset rule of `wharf group reset-offsets` (Kafka's
//! `kafka-consumer-groups --reset-offsets`): where each partition's committed offset moves.
//! Pure: the caller reads the partition's bounds and stores the result.

/// Where a reset moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The log start offset.
    Earliest,
    /// The log end (high watermark): the group skips everything stored.
    Latest,
    /// This offset, clamped to [log start, log end] as Kafka's tool clamps it.
    Offset(i64),
    /// The first record at or after this timestamp (ms); the log end if none.
    Timestamp(i64),
}

/// What one partition's log offers a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    /// The first offset still stored.
    pub log_start: i64,
    /// The high watermark.
    pub log_end: i64,
    /// For a timestamp target: the first record at or after it (`None`: no such record).
    pub at_timestamp: Option<i64>,
}

/// The new committed offset of a partition.
pub fn plan_offset(target: ResetTarget, bounds: PartitionBounds) -> i64 {
    let clamp = |offset: i64| offset.clamp(bounds.log_start, bounds.log_end.max(bounds.log_start));
    match target {
        ResetTarget::Earliest => bounds.log_start,
        ResetTarget::Latest => bounds.log_end,
        ResetTarget::Offset(offset) => clamp(offset),
        ResetTarget::Timestamp(_) => clamp(bounds.at_timestamp.unwrap_or(bounds.log_end)),
    }
}

/// Whether a reset commits its plan or only shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Show the plan; change nothing (the default of Kafka's tool).
    DryRun,
    /// Commit the planned offsets durably.
    Execute,
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: PartitionBounds = PartitionBounds {
        log_start: 10,
        log_end: 50,
        at_timestamp: Some(30),
    };

    #[test]
    fn earliest_and_latest_are_the_log_bounds() {
        assert_eq!(plan_offset(ResetTarget::Earliest, BOUNDS), 10);
        assert_eq!(plan_offset(ResetTarget::Latest, BOUNDS), 50);
    }

    #[test]
    fn an_offset_is_clamped_to_the_log() {
        assert_eq!(plan_offset(ResetTarget::Offset(20), BOUNDS), 20);
        assert_eq!(plan_offset(ResetTarget::Offset(5), BOUNDS), 10);
        assert_eq!(plan_offset(ResetTarget::Offset(-1), BOUNDS), 10);
        assert_eq!(plan_offset(ResetTarget::Offset(99), BOUNDS), 50);
    }

    #[test]
    fn a_timestamp_past_every_record_moves_to_the_end() {
        assert_eq!(plan_offset(ResetTarget::Timestamp(7), BOUNDS), 30);
        let none = PartitionBounds {
            at_timestamp: None,
            ..BOUNDS
        };
        assert_eq!(plan_offset(ResetTarget::Timestamp(7), none), 50);
    }

    #[test]
    fn an_empty_log_plans_its_one_offset() {
        let empty = PartitionBounds {
            log_start: 0,
            log_end: 0,
            at_timestamp: None,
        };
        for target in [
            ResetTarget::Earliest,
            ResetTarget::Latest,
            ResetTarget::Offset(7),
            ResetTarget::Timestamp(7),
        ] {
            assert_eq!(plan_offset(target, empty), 0, "{target:?}");
        }
    }
}
