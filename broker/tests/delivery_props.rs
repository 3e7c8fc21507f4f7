//! Property test of a queue's delivery state machine: random publishes, consumers coming and
//! going, dispatches, acks (single and multiple), nacks with and without requeue, and ack
//! timeouts. After every step: no consumer holds more than its prefetch, every message is in
//! exactly one place (ready, unacknowledged, settled, dead-lettered), a settled message is
//! never delivered again, `redelivered` is set exactly when the message was delivered before,
//! and every delivery (and every drop-head of a full queue) takes the model's head: the
//! oldest ready message of the highest priority, a priority counting as at most the queue's
//! `max_priority` (none: every message is priority 0, so the head is the oldest).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use wharf_broker::queue::delivery::{
    AckScope, Action, ConsumerId, DeadLetterReason, DeliveryState, DeliveryTag, MessageId,
    MessageMeta, QueueLimits, Requeue,
};

#[derive(Debug, Clone)]
enum Op {
    Publish {
        priority: u8,
    },
    AddConsumer {
        consumer: u8,
        prefetch: u8,
    },
    RemoveConsumer {
        consumer: u8,
    },
    Dispatch,
    Ack {
        pick: u8,
        multiple: bool,
    },
    Nack {
        pick: u8,
        multiple: bool,
        requeue: bool,
    },
    AdvanceClock {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..7).prop_map(|priority| Op::Publish { priority }),
        1 => (0u8..4, 0u8..4).prop_map(|(consumer, prefetch)| Op::AddConsumer { consumer, prefetch }),
        1 => (0u8..4).prop_map(|consumer| Op::RemoveConsumer { consumer }),
        3 => Just(Op::Dispatch),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(pick, multiple)| Op::Ack { pick, multiple }),
        2 => (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(pick, multiple, requeue)| Op::Nack { pick, multiple, requeue }),
        1 => (0u16..3000).prop_map(|ms| Op::AdvanceClock { ms }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    next_id: MessageId,
    prefetch: BTreeMap<ConsumerId, u32>,
    /// Outstanding deliveries: tag → (consumer, message).
    outstanding: BTreeMap<DeliveryTag, (ConsumerId, MessageId)>,
    settled: BTreeSet<MessageId>,
    dead: BTreeSet<MessageId>,
    delivered_before: BTreeSet<MessageId>,
    /// Each message's effective priority (capped at the queue's maximum).
    priority: HashMap<MessageId, u8>,
}

impl Model {
    /// The message the queue must hand out next: the oldest ready message of the highest
    /// priority (ready: published and nowhere else).
    fn head(&self) -> Option<MessageId> {
        let elsewhere: BTreeSet<MessageId> = self
            .outstanding
            .values()
            .map(|(_, id)| *id)
            .chain(self.settled.iter().copied())
            .chain(self.dead.iter().copied())
            .collect();
        (0..self.next_id)
            .filter(|id| !elsewhere.contains(id))
            .min_by_key(|id| (std::cmp::Reverse(self.priority[id]), *id))
    }
}

fn apply(model: &mut Model, actions: &[Action]) -> Result<(), TestCaseError> {
    for action in actions {
        match *action {
            Action::Deliver(delivery) => {
                prop_assert!(
                    !model.settled.contains(&delivery.message),
                    "settled message {} delivered again",
                    delivery.message
                );
                prop_assert!(!model.dead.contains(&delivery.message));
                prop_assert_eq!(
                    delivery.redelivered,
                    model.delivered_before.contains(&delivery.message)
                );
                prop_assert_eq!(
                    Some(delivery.message),
                    model.head(),
                    "delivered out of priority-then-id order"
                );
                model.delivered_before.insert(delivery.message);
                model
                    .outstanding
                    .insert(delivery.tag, (delivery.consumer, delivery.message));
            }
            Action::Settle(id) => {
                prop_assert!(model.settled.insert(id), "settled twice: {}", id);
            }
            Action::DeadLetter(id, DeadLetterReason::MaxLength) => {
                prop_assert_eq!(
                    Some(id),
                    model.head(),
                    "drop-head dropped another than the head"
                );
                prop_assert!(model.dead.insert(id), "dead-lettered twice: {}", id);
            }
            Action::DeadLetter(id, _) => {
                prop_assert!(model.dead.insert(id), "dead-lettered twice: {}", id);
            }
            Action::Cancel(consumer, _) => {
                model.prefetch.remove(&consumer);
            }
            Action::Returned(id, deliveries) => {
                // Only a message delivered before, and not settled, returns.
                prop_assert!(model.delivered_before.contains(&id));
                prop_assert!(!model.settled.contains(&id) && !model.dead.contains(&id));
                prop_assert!(deliveries >= 1);
            }
        }
    }
    Ok(())
}

/// Each message's body size: varied, so a miscounted message shows.
fn body_bytes(id: MessageId) -> u32 {
    (id % 7) as u32 * 10 + 1
}

fn pick_tag(model: &Model, pick: u8) -> Option<(DeliveryTag, ConsumerId)> {
    if model.outstanding.is_empty() {
        return None;
    }
    let (tag, (consumer, _)) = model
        .outstanding
        .iter()
        .nth(pick as usize % model.outstanding.len())?;
    Some((*tag, *consumer))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn delivery_invariants_hold(
        ops in prop::collection::vec(op(), 1..120),
        delivery_limit in prop::option::of(0u32..3),
        max_priority in prop::option::of(0u8..5),
        max_length in prop::option::of(1u64..8),
    ) {
        let limits = QueueLimits { delivery_limit, ack_timeout_ms: Some(2000), max_priority, max_length, ..QueueLimits::default() };
        let mut state = DeliveryState::new(limits);
        let mut model = Model::default();
        let mut now_ms = 0i64;
        for op in ops {
            match op {
                Op::Publish { priority } => {
                    let id = model.next_id;
                    model.next_id += 1;
                    model.priority.insert(id, priority.min(max_priority.unwrap_or(0)));
                    let actions = state.enqueue(MessageMeta { id, expires_at_ms: None, delivery_count: 0, bytes: body_bytes(id), priority }).expect("drop-head never refuses");
                    apply(&mut model, &actions)?;
                    // A publish leaves the queue within its length (requeues may pass it).
                    if let Some(max_length) = max_length {
                        prop_assert!(state.ready_count() as u64 <= max_length);
                    }
                }
                Op::AddConsumer { consumer, prefetch } => {
                    let consumer = ConsumerId(u64::from(consumer));
                    if let std::collections::btree_map::Entry::Vacant(slot) = model.prefetch.entry(consumer) {
                        state.add_consumer(consumer, u32::from(prefetch));
                        slot.insert(u32::from(prefetch));
                    }
                }
                Op::RemoveConsumer { consumer } => {
                    let consumer = ConsumerId(u64::from(consumer));
                    let actions = state.remove_consumer(consumer);
                    model.prefetch.remove(&consumer);
                    model.outstanding.retain(|_, (owner, _)| *owner != consumer);
                    apply(&mut model, &actions)?;
                }
                Op::Dispatch => {
                    let actions = state.dispatch(now_ms);
                    apply(&mut model, &actions)?;
                }
                Op::Ack { pick, multiple } => {
                    if let Some((tag, consumer)) = pick_tag(&model, pick) {
                        let scope = if multiple { AckScope::Multiple } else { AckScope::Single };
                        let actions = state.ack(consumer, tag, scope).expect("outstanding tag");
                        model.outstanding.retain(|other, (owner, _)| !(*owner == consumer && (*other == tag || (multiple && *other < tag))));
                        apply(&mut model, &actions)?;
                        prop_assert!(state.ack(consumer, tag, AckScope::Single).is_err(), "double ack accepted");
                    }
                }
                Op::Nack { pick, multiple, requeue } => {
                    if let Some((tag, consumer)) = pick_tag(&model, pick) {
                        let requeue = if requeue { Requeue::Yes } else { Requeue::No };
                        let scope = if multiple { AckScope::Multiple } else { AckScope::Single };
                        let actions = state.nack(consumer, tag, scope, requeue).expect("outstanding tag");
                        model.outstanding.retain(|other, (owner, _)| !(*owner == consumer && (*other == tag || (multiple && *other < tag))));
                        apply(&mut model, &actions)?;
                    }
                }
                Op::AdvanceClock { ms } => {
                    now_ms += i64::from(ms);
                    let actions = state.check_ack_timeouts(now_ms);
                    for action in &actions {
                        if let Action::Cancel(consumer, _) = action {
                            model.outstanding.retain(|_, (owner, _)| owner != consumer);
                        }
                    }
                    apply(&mut model, &actions)?;
                }
            }
            // Prefetch is never exceeded.
            let mut held: HashMap<ConsumerId, u32> = HashMap::new();
            for (consumer, _) in model.outstanding.values() {
                *held.entry(*consumer).or_default() += 1;
            }
            for (consumer, count) in &held {
                let prefetch = model.prefetch.get(consumer).copied().unwrap_or(0);
                prop_assert!(prefetch == 0 || *count <= prefetch, "consumer {} holds {} > {}", consumer, count, prefetch);
                prop_assert_eq!(state.consumer_unacked(*consumer), *count as usize);
            }
            // Every message is in exactly one place.
            let placed = state.ready_count() + state.unacked_count() + model.settled.len() + model.dead.len();
            prop_assert_eq!(placed as i64, model.next_id);
            // The ready bytes are the bodies of the messages that are nowhere else.
            let elsewhere: BTreeSet<MessageId> = model.outstanding.values().map(|(_, id)| *id)
                .chain(model.settled.iter().copied()).chain(model.dead.iter().copied()).collect();
            let ready_bytes: u64 = (0..model.next_id).filter(|id| !elsewhere.contains(id)).map(|id| u64::from(body_bytes(id))).sum();
            prop_assert_eq!(state.ready_bytes(), ready_bytes);
            prop_assert_eq!(state.unacked_count(), model.outstanding.len());
        }
    }
}
