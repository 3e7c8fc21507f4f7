//! Core operations on producer ids and transactions.

use crate::acl::{Operation, ResourceType};
use crate::core::{Broker, Session};
use crate::txn::{TxnEnd, TxnError, TxnOffsets, TxnProducer, TxnSummary};

impl Broker {
    /// A producer id and epoch. Without a transactional id: a new id for an idempotent
    /// producer (epoch 0; see [`Broker::allocate_producer_id`]). With one: the coordinator fences earlier producers of the id
    /// (see [`crate::txn::TxnCoordinator::init`]); `timeout_ms` 0 asks for the default.
    ///
    /// # Errors
    /// Storage errors; the coordinator's refusal.
    pub async fn init_producer_id(
        &self,
        caller: &Session,
        transactional_id: Option<String>,
        timeout_ms: u32,
    ) -> Result<(i64, i16), TxnError> {
        if let Some(transactional_id) = transactional_id {
            self.check_txn_id(caller, &transactional_id)?;
            return self.txn.init(transactional_id, timeout_ms).await;
        }
        if !self.permits_some(caller, Operation::Write, ResourceType::Topic) {
            self.check_cluster(caller, Operation::IdempotentWrite)?;
        }
        self.allocate_producer_id()
            .await
            .map(|producer_id| (producer_id, 0))
    }

    /// AddPartitionsToTxn.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn add_partitions_to_txn(
        &self,
        caller: &Session,
        producer: TxnProducer,
        partitions: Vec<(String, Vec<u32>)>,
    ) -> Result<(), TxnError> {
        self.check_txn_id(caller, &producer.transactional_id)?;
        for (topic, _) in &partitions {
            self.check(caller, Operation::Write, ResourceType::Topic, topic)?;
        }
        self.txn.add_partitions(producer, partitions).await
    }

    /// AddOffsetsToTxn.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn add_offsets_to_txn(
        &self,
        caller: &Session,
        producer: TxnProducer,
        group_id: String,
    ) -> Result<(), TxnError> {
        self.check_txn_id(caller, &producer.transactional_id)?;
        self.check(caller, Operation::Read, ResourceType::Group, &group_id)?;
        self.txn.add_offsets(producer, group_id).await
    }

    /// TxnOffsetCommit.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn txn_offset_commit(
        &self,
        caller: &Session,
        offsets: TxnOffsets,
    ) -> Result<(), TxnError> {
        self.check_txn_id(caller, &offsets.producer.transactional_id)?;
        self.check(
            caller,
            Operation::Read,
            ResourceType::Group,
            &offsets.group_id,
        )?;
        for entry in &offsets.entries {
            self.check(caller, Operation::Read, ResourceType::Topic, &entry.topic)?;
        }
        self.txn.offset_commit(offsets).await
    }

    /// EndTxn.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn end_txn(
        &self,
        caller: &Session,
        producer: TxnProducer,
        end: TxnEnd,
    ) -> Result<(), TxnError> {
        self.check_txn_id(caller, &producer.transactional_id)?;
        self.txn.end(producer, end).await
    }

    /// The state of the named transactional ids (unknown ones left out), or of every one
    /// (Kafka's DescribeTransactions and ListTransactions); only those the caller may
    /// `Describe`.
    ///
    /// # Errors
    /// `NotRunning` when the coordinator has stopped.
    pub async fn describe_transactions(
        &self,
        caller: &Session,
        transactional_ids: Option<Vec<String>>,
    ) -> Result<Vec<TxnSummary>, TxnError> {
        let mut summaries = self.txn.describe(transactional_ids).await?;
        summaries.retain(|summary| {
            self.permits(
                caller,
                Operation::Describe,
                ResourceType::TransactionalId,
                &summary.transactional_id,
            )
        });
        Ok(summaries)
    }

    /// Write on the transactional id, and (in a cluster) this node coordinating
    /// transactions (docs/CLUSTER.md, "Routing").
    fn check_txn_id(&self, caller: &Session, transactional_id: &str) -> Result<(), TxnError> {
        self.check(
            caller,
            Operation::Write,
            ResourceType::TransactionalId,
            transactional_id,
        )?;
        if self.coordinates_here() {
            return Ok(());
        }
        Err(TxnError::NotCoordinator {
            coordinator: self.coordinator_elsewhere(),
        })
    }
}
