//! Puts the producer's requests on the wire in the order the background task made them.
//!
//! A partition may have several batches in flight, each in its own produce request, and the
//! broker appends an idempotent batch only if its sequence follows the last one appended. So
//! the n-th request of a partition must reach the broker before the (n+1)-th. One task takes
//! the requests from a FIFO channel and queues each on its connection before it takes the
//! next ([`Client::start`]); the answers are awaited in tasks of their own, so a slow answer
//! holds up nothing behind it.
//!
//! Must never: await an answer before queueing the next request, or reorder requests.

use tokio::sync::mpsc;
use wharf_protocol::messages::ProduceResponse;
use wharf_protocol::{ErrorCode, Request, Response};

use crate::cluster::{Client, Target};
use crate::error::{Error, Result};

/// A partition: topic name and partition number.
pub(super) type PartitionKey = (String, u32);

/// One produce request and the batches it carries: (partition, batch id).
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) target: Target,
    pub(super) request: Request,
    pub(super) batches: Vec<(PartitionKey, u64)>,
}

/// The outcome of one produce request, per batch: the base offset or the error.
#[derive(Debug)]
pub(super) struct Completion {
    pub(super) results: Vec<(PartitionKey, u64, Result<i64>)>,
}

/// Sends `requests` in order until the channel closes; reports every outcome on
/// `completions`.
pub(super) async fn send_in_order(
    client: Client,
    mut requests: mpsc::Receiver<Outgoing>,
    completions: mpsc::Sender<Completion>,
) {
    while let Some(outgoing) = requests.recv().await {
        let started = client.start(outgoing.target, &outgoing.request).await;
        let completions = completions.clone();
        tokio::spawn(async move {
            let answer = match started {
                Ok(response) => response.await,
                Err(error) => Err(error),
            };
            let results = produce_results(outgoing.batches, answer);
            // The producer only stops once nothing is outstanding, which needs this reply.
            let _ = completions.send(Completion { results }).await;
        });
    }
}

/// Splits a produce answer into per-batch outcomes, in the order of `batches`.
fn produce_results(
    batches: Vec<(PartitionKey, u64)>,
    answer: Result<Option<Response>>,
) -> Vec<(PartitionKey, u64, Result<i64>)> {
    let fail_all = |batches: Vec<(PartitionKey, u64)>, error: Error| {
        batches
            .into_iter()
            .map(|(key, id)| (key, id, Err(error.clone())))
            .collect()
    };
    let response: ProduceResponse = match answer {
        // Acks::None: no answer, no offsets.
        Ok(None) => {
            return batches
                .into_iter()
                .map(|(key, id)| (key, id, Ok(-1)))
                .collect()
        }
        Ok(Some(Response::Produce(response))) => response,
        Ok(Some(_)) => {
            let error = Error::Decode(wharf_protocol::DecodeError::InvalidValue {
                field: "produce response type",
                value: 0,
            });
            return fail_all(batches, error);
        }
        Err(error) => return fail_all(batches, error),
    };
    if !response.error.is_ok() {
        let error = Error::server(response.error, response.error_message);
        return fail_all(batches, error);
    }
    batches
        .into_iter()
        .map(|(key, id)| {
            let found = response
                .topics
                .iter()
                .filter(|topic| topic.name == key.0)
                .flat_map(|topic| &topic.partitions)
                .find(|partition| partition.partition == key.1);
            let outcome = match found {
                Some(partition) if partition.error.is_ok() => Ok(partition.base_offset),
                Some(partition) => Err(Error::server(
                    partition.error,
                    partition.error_message.clone(),
                )),
                None => Err(Error::server(
                    ErrorCode::Unknown,
                    Some(format!("produce response lacks {}-{}", key.0, key.1)),
                )),
            };
            (key, id, outcome)
        })
        .collect()
}
