//! Core operations on producer ids and transactions.

use crate::core::Broker;
use crate::txn::{TxnEnd, TxnError, TxnOffsets, TxnProducer};

impl Broker {
    /// A producer id for an idempotent producer without a transactional id (epoch 0);
    /// reserving a new block of ids writes and fsyncs a file, so this runs on the blocking
    /// pool.
    ///
    /// # Errors
    /// Storage errors, as [`TxnError::Storage`].
    pub async fn init_producer_id(&self) -> Result<(i64, i16), TxnError> {
        let streams = self.streams.clone();
        tokio::task::spawn_blocking(move || streams.allocate_producer_id())
            .await
            .map_err(|error| TxnError::Internal(error.to_string()))?
            .map(|producer_id| (producer_id, 0))
            .map_err(TxnError::from)
    }

    /// InitProducerId with a transactional id (see [`crate::txn::TxnCoordinator::init`]).
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn init_transactional(
        &self,
        transactional_id: String,
        timeout_ms: u32,
    ) -> Result<(i64, i16), TxnError> {
        self.txn.init(transactional_id, timeout_ms).await
    }

    /// AddPartitionsToTxn.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn add_partitions_to_txn(
        &self,
        producer: TxnProducer,
        partitions: Vec<(String, u32)>,
    ) -> Result<(), TxnError> {
        self.txn.add_partitions(producer, partitions).await
    }

    /// AddOffsetsToTxn.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn add_offsets_to_txn(
        &self,
        producer: TxnProducer,
        group_id: String,
    ) -> Result<(), TxnError> {
        self.txn.add_offsets(producer, group_id).await
    }

    /// TxnOffsetCommit.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn txn_offset_commit(&self, offsets: TxnOffsets) -> Result<(), TxnError> {
        self.txn.offset_commit(offsets).await
    }

    /// EndTxn.
    ///
    /// # Errors
    /// As the coordinator decides.
    pub async fn end_txn(&self, producer: TxnProducer, end: TxnEnd) -> Result<(), TxnError> {
        self.txn.end(producer, end).await
    }
}
