//! The native writer of the replication fault loop (issue #21, `tests/tests/fault_loop.rs`):
//! Wharf's own client crate as an idempotent acks=all producer, beside the confluent-kafka
//! writer of `tests/clients/confluent_faults.py`, on the same topic.
//!
//!     native_faults BOOTSTRAP TOPIC PARTITIONS RATE STOPFILE OUT
//!
//! Writes values `nP-SEQ` to partition P (SEQ counts up from 0 per partition), round robin,
//! at about RATE records a second, until STOPFILE exists; then waits up to 120 s for the
//! outstanding ones. Each delivery is one line of OUT, as the Python writer's: `A TIME
//! PARTITION OFFSET VALUE` when acknowledged, `F TIME VALUE ERROR` when it failed (TIME:
//! seconds since the epoch).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wharf_client::{
    Acks, Client, ClientConfig, Idempotence, Producer, ProducerConfig, ProducerRecord,
};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// Appends whole lines to the output file (each written and flushed at once, so the test
/// reads progress while the writer runs).
struct Lines(Mutex<std::fs::File>);

impl Lines {
    fn put(&self, line: &str) {
        let mut file = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        // A write error leaves the line out: the checker then finds the record unacknowledged,
        // which it tolerates (only acknowledged records must be stored).
        let _ = writeln!(file, "{line}");
        let _ = file.flush();
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, partitions, rate, stop, out] = args.as_slice() else {
        return Err("usage: native_faults BOOTSTRAP TOPIC PARTITIONS RATE STOPFILE OUT".into());
    };
    let partitions: u32 = partitions.parse().map_err(|_| "PARTITIONS: a number")?;
    let rate: f64 = rate.parse().map_err(|_| "RATE: a number")?;
    let stop = PathBuf::from(stop);
    let lines = Arc::new(Lines(Mutex::new(
        std::fs::File::create(out).map_err(|error| format!("{out}: {error}"))?,
    )));
    let client = Client::connect(ClientConfig::new(bootstrap.clone()))
        .await
        .map_err(|error| format!("connect to {bootstrap}: {error}"))?;
    let producer = Producer::try_new(
        &client,
        ProducerConfig::default()
            .acks(Acks::All)
            .idempotence(Idempotence::Enabled)
            .linger(Duration::from_millis(5))
            // Long enough to outlast any one fault of the loop (as librdkafka's default
            // message timeout in the Python writer).
            .delivery_timeout(Duration::from_secs(120)),
    )
    .map_err(|error| error.to_string())?;
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut pending = Vec::new();
    let mut sequence = vec![0u64; partitions as usize];
    while !stop.exists() {
        let partition = u32::try_from(sent % u64::from(partitions)).unwrap_or(0);
        let value = format!("n{partition}-{}", sequence[partition as usize]);
        sequence[partition as usize] += 1;
        sent += 1;
        let record =
            ProducerRecord::new(topic.clone(), value.clone().into_bytes()).partition(partition);
        match producer.enqueue(record).await {
            Ok(delivery) => {
                let lines = lines.clone();
                pending.push(tokio::spawn(async move {
                    match delivery.await {
                        Ok(metadata) => lines.put(&format!(
                            "A {:.6} {} {} {value}",
                            now(),
                            metadata.partition,
                            metadata.offset
                        )),
                        Err(error) => lines.put(&format!("F {:.6} {value} {error}", now())),
                    }
                }));
            }
            Err(error) => lines.put(&format!("F {:.6} {value} {error}", now())),
        }
        pending.retain(|task| !task.is_finished());
        // Pace to RATE: sleep until this record's slot.
        let due = Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        let _ = producer.flush().await;
        for task in pending {
            let _ = task.await;
        }
    })
    .await;
    if finished.is_err() {
        return Err("outstanding deliveries did not finish within 120 s".into());
    }
    producer.close().await.map_err(|error| error.to_string())
}
