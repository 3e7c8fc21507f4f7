//! The disk alarm (issue #16, RabbitMQ's resource alarm): when the file system holding the
//! data directory has less free space than `disk_free_limit_bytes`, publishers are held
//! instead of filling the disk until writes fail. A background task samples the free space
//! every [`DISK_CHECK_INTERVAL`]; [`Broker::publish`] waits while the alarm is on, and
//! front ends tell their clients (AMQP `connection.blocked`/`unblocked`, the native
//! `ConnectionBlocked` push) so they know why their publishes stall.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::core::Broker;

/// How often the free space is sampled.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The alarm's state: the limit, the last sample, and whether it is on.
#[derive(Debug)]
pub struct DiskAlarm {
    dir: PathBuf,
    limit_bytes: u64,
    free_bytes: AtomicU64,
    on: watch::Sender<bool>,
}

impl DiskAlarm {
    /// An alarm for the file system of `dir`, off until the first sample (0: never on).
    pub fn new(dir: PathBuf, limit_bytes: u64) -> DiskAlarm {
        DiskAlarm {
            dir,
            limit_bytes,
            free_bytes: AtomicU64::new(u64::MAX),
            on: watch::channel(false).0,
        }
    }

    /// Samples the free space (blocking: one `statvfs`) and turns the alarm on or off.
    pub fn check(&self) {
        if self.limit_bytes == 0 {
            return;
        }
        let free = match crate::storage::free_space(&self.dir) {
            Ok(free) => free,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot read the free disk space");
                return;
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        let low = free < self.limit_bytes;
        let was = *self.on.borrow();
        if low != was {
            if low {
                tracing::warn!(
                    free_bytes = free,
                    limit_bytes = self.limit_bytes,
                    "disk alarm: free space below disk_free_limit_bytes; holding publishers"
                );
            } else {
                tracing::info!(free_bytes = free, "disk alarm cleared; publishers go on");
            }
            self.on.send_replace(low);
        }
    }
}

impl Broker {
    /// Whether the disk alarm is on (publishers are held).
    pub fn disk_alarm(&self) -> bool {
        *self.alarm.on.borrow()
    }

    /// The disk alarm's state, to follow its changes.
    pub fn watch_disk_alarm(&self) -> watch::Receiver<bool> {
        self.alarm.on.subscribe()
    }

    /// The free bytes of the data directory's file system at the last sample.
    pub fn free_disk_bytes(&self) -> u64 {
        self.alarm.free_bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the disk alarm is off (at once when it is).
    pub async fn disk_alarm_cleared(&self) {
        let mut on = self.alarm.on.subscribe();
        let _ = on.wait_for(|on| !*on).await;
    }

    /// Samples the free space on the blocking pool (the background task's step).
    pub(crate) async fn check_disk(self: &std::sync::Arc<Self>) {
        let broker = self.clone();
        let _ = tokio::task::spawn_blocking(move || broker.alarm.check()).await;
    }
}
