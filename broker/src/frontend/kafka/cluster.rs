//! The cluster as Kafka clients see it (issue #20): the broker list, the controller, each
//! partition's leader and replicas, and the coordinator, translated from the core's
//! [`Routing`]. A lone node is broker 0 of cluster `wharf`, as it always was.

use crate::config::ListenerKind;
use crate::core::routing::Routing;
use crate::core::Broker;

use super::{Kafka, CLUSTER_ID, NODE_ID};

/// A broker Kafka clients may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBroker {
    /// Its Kafka node id (Wharf's node id).
    pub node_id: i32,
    /// Its advertised Kafka listener.
    pub host: String,
    /// As above.
    pub port: u16,
}

/// One partition as a Metadata answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The leader's broker id, -1 while none is known.
    pub leader: i32,
    /// Its leader epoch.
    pub leader_epoch: i32,
    /// The brokers holding a replica.
    pub replicas: Vec<i32>,
    /// Those in sync with the leader (Kafka's ISR).
    pub in_sync: Vec<i32>,
}

/// The cluster for one answer.
#[derive(Debug)]
pub struct KafkaCluster<'a> {
    /// This node's Kafka id.
    pub this_node: i32,
    /// The cluster id metadata answers carry.
    pub cluster_id: String,
    /// The controller (the metadata log's leader), -1 while none is known.
    pub controller: i32,
    /// Every node with a Kafka listener.
    pub brokers: Vec<KafkaBroker>,
    routing: Option<Routing<'a>>,
}

/// A Wharf node id as a Kafka broker id (-1 if it does not fit).
fn broker_id(node: u64) -> i32 {
    i32::try_from(node).unwrap_or(-1)
}

impl KafkaCluster<'_> {
    /// The cluster as `kafka`'s broker sees it now.
    pub fn of(kafka: &Kafka) -> KafkaCluster<'_> {
        let (host, port) = &kafka.advertised;
        let Some(routing) = kafka.broker.routing() else {
            return KafkaCluster {
                this_node: NODE_ID,
                cluster_id: CLUSTER_ID.to_string(),
                controller: NODE_ID,
                brokers: vec![KafkaBroker {
                    node_id: NODE_ID,
                    host: host.clone(),
                    port: *port,
                }],
                routing: None,
            };
        };
        let this_node = broker_id(routing.this_node());
        let brokers = routing
            .addresses(ListenerKind::Kafka, (host, *port))
            .into_iter()
            .map(|address| KafkaBroker {
                node_id: broker_id(address.id),
                host: address.host,
                port: address.port,
            })
            .collect();
        KafkaCluster {
            this_node,
            cluster_id: routing
                .cluster_id()
                .unwrap_or_else(|| CLUSTER_ID.to_string()),
            controller: routing.controller().map_or(-1, broker_id),
            brokers,
            routing: Some(routing),
        }
    }

    /// The leader (-1: none known), its leader epoch, the replicas and the in-sync
    /// replicas of `topic`'s `partition`: this node, epoch 0, for a partition the cluster
    /// does not place.
    pub fn partition(&self, topic: &str, partition: u32) -> PartitionView {
        let Some((routing, placed)) = self.routing.as_ref().and_then(|routing| {
            routing
                .partition(topic, partition)
                .map(|placed| (routing, placed))
        }) else {
            return PartitionView {
                leader: self.this_node,
                leader_epoch: 0,
                replicas: vec![self.this_node],
                in_sync: vec![self.this_node],
            };
        };
        let in_sync = routing
            .in_sync(topic, partition, placed.leader)
            .unwrap_or_else(|| placed.replicas.clone());
        PartitionView {
            leader: placed.leader.map_or(-1, broker_id),
            leader_epoch: placed.leader_epoch,
            replicas: placed.replicas.into_iter().map(broker_id).collect(),
            in_sync: in_sync.into_iter().map(broker_id).collect(),
        }
    }

    /// The broker coordinating groups and transactions, if it has a Kafka listener.
    pub fn coordinator(&self) -> Option<&KafkaBroker> {
        let id = match self.routing.as_ref() {
            None => self.this_node,
            Some(routing) => broker_id(routing.coordinator()?),
        };
        self.brokers.iter().find(|broker| broker.node_id == id)
    }
}

/// The leader and leader epoch this node knows for `topic`'s `partition`, when it knows one
/// (KIP-951's `current_leader` in a refusal): `None` on a lone node, for a partition the
/// cluster does not place, and while no leader is known.
pub fn current_leader(broker: &Broker, topic: &str, partition: u32) -> Option<(i32, i32)> {
    let placed = broker.routing()?.partition(topic, partition)?;
    let leader = broker_id(placed.leader?);
    (leader >= 0 && placed.leader_epoch >= 0).then_some((leader, placed.leader_epoch))
}
