//! Resource alarms (issue #16, RabbitMQ's memory and disk alarms): when the file system
//! holding the data directory has less free space than `disk_free_limit_bytes`, or the
//! broker's own memory passes its high watermark (`memory_high_watermark`, a fraction of
//! the machine's memory, or `memory_high_watermark_bytes`), publishers are held instead of
//! filling the disk until writes fail or the memory until the kernel kills the process.
//! A background task samples both every [`CHECK_INTERVAL`], and more often while the free
//! space is close to the limit ([`Alarms::next_check_in`]); [`Broker::publish`] waits
//! while an alarm is on, and front ends tell their clients (AMQP `connection.blocked`/
//! `unblocked`, the native `ConnectionBlocked` push) so they know why their publishes
//! stall. Consumers go on, so the queues drain.
//!
//! The memory measured is the process's anonymous resident memory (heap and stacks): the
//! pages of the mapped segment files are page cache that the kernel reclaims and writes
//! back by itself, so they are not what the watermark guards.
//!
//! The limits can change while the broker runs ([`Broker::set_alarm_limits`]; `wharfd`
//! re-reads them from its config file on SIGHUP), as `rabbitmqctl
//! set_vm_memory_high_watermark` does for RabbitMQ.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::core::Broker;

/// How often the free space and the memory are sampled.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The shortest time between two samples, when the free space is just above the limit.
pub const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// The fastest the data directory's file system is assumed to fill (a tmpfs, a fast NVMe
/// disk): samples are spaced so that a writer this fast cannot use up the space between
/// the limit and the free space of the last sample before the next one (RabbitMQ's disk
/// monitor spaces its checks by the same reasoning). A single sample per
/// [`CHECK_INTERVAL`] let a publisher on a tmpfs fill 96 MB past the limit, to a full
/// disk, between two samples.
const FILL_BYTES_PER_SECOND: u64 = 2 << 30;

/// Which alarms are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Free disk space is below `disk_free_limit_bytes`.
    pub disk: bool,
    /// The broker's memory is above its high watermark.
    pub memory: bool,
}

impl Held {
    /// Whether publishers are held.
    pub fn any(self) -> bool {
        self.disk || self.memory
    }

    /// Why, in RabbitMQ's words for `connection.blocked` (`low on memory`, `low on disk`,
    /// `low on memory & disk`); `None` when no alarm is on.
    pub fn reason(self) -> Option<&'static str> {
        match (self.memory, self.disk) {
            (false, false) => None,
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk"),
            (true, true) => Some("low on memory & disk"),
        }
    }
}

/// The alarms' limits and last samples, and which are on.
#[derive(Debug)]
pub struct Alarms {
    dir: PathBuf,
    /// Free bytes below which the disk alarm goes on (0: never).
    disk_limit_bytes: AtomicU64,
    /// Memory bytes above which the memory alarm goes on (0: never).
    memory_limit_bytes: AtomicU64,
    free_bytes: AtomicU64,
    memory_bytes: AtomicU64,
    held: watch::Sender<Held>,
    /// One check at a time (the background task and a SIGHUP's new limits), so a check
    /// that read the old limits cannot finish after one that read the new ones.
    checking: std::sync::Mutex<()>,
}

/// The memory high watermark `config` asks for, in bytes (0: no memory alarm):
/// `memory_high_watermark_bytes` when set, else `memory_high_watermark` × the memory the
/// broker may use (the machine's, or its cgroup's limit).
pub fn memory_limit_bytes(config: &BrokerConfig) -> u64 {
    if config.memory_high_watermark_bytes > 0 {
        return config.memory_high_watermark_bytes;
    }
    if config.memory_high_watermark <= 0.0 {
        return 0;
    }
    match crate::metrics::memory_total_bytes() {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        Some(total) => (total as f64 * config.memory_high_watermark) as u64,
        None => {
            tracing::warn!("cannot read the machine's memory (/proc/meminfo): no memory alarm");
            0
        }
    }
}

impl Alarms {
    /// Alarms for the file system of `dir` and this process's memory, off until the first
    /// sample.
    pub fn new(dir: PathBuf, disk_limit_bytes: u64, memory_limit_bytes: u64) -> Alarms {
        Alarms {
            dir,
            disk_limit_bytes: AtomicU64::new(disk_limit_bytes),
            memory_limit_bytes: AtomicU64::new(memory_limit_bytes),
            free_bytes: AtomicU64::new(u64::MAX),
            memory_bytes: AtomicU64::new(0),
            held: watch::channel(Held::default()).0,
            checking: std::sync::Mutex::new(()),
        }
    }

    /// How long until the next sample: [`CHECK_INTERVAL`], or less (down to
    /// [`CHECK_INTERVAL_MIN`]) while the free space above `disk_free_limit_bytes` is what
    /// [`FILL_BYTES_PER_SECOND`] would use up sooner.
    pub fn next_check_in(&self) -> Duration {
        let limit = self.disk_limit_bytes.load(Ordering::Relaxed);
        let free = self.free_bytes.load(Ordering::Relaxed);
        if limit == 0 || free < limit {
            // No disk alarm, or it is on: publishers are held, nothing fills the disk.
            return CHECK_INTERVAL;
        }
        let headroom_ms = (free - limit).saturating_mul(1000) / FILL_BYTES_PER_SECOND;
        Duration::from_millis(headroom_ms).clamp(CHECK_INTERVAL_MIN, CHECK_INTERVAL)
    }

    /// Samples the free space (one `statvfs`) and the memory (one procfs read), both
    /// blocking, and turns each alarm on or off.
    pub fn check(&self) {
        let _one_at_a_time = self
            .checking
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut held = *self.held.borrow();
        let disk_limit = self.disk_limit_bytes.load(Ordering::Relaxed);
        if disk_limit == 0 {
            held.disk = false;
        } else {
            match crate::storage::free_space(&self.dir) {
                Ok(free) => {
                    self.free_bytes.store(free, Ordering::Relaxed);
                    held.disk = free < disk_limit;
                }
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot read the free disk space");
                }
            }
        }
        let memory_limit = self.memory_limit_bytes.load(Ordering::Relaxed);
        if let Some(used) = crate::metrics::anonymous_memory_bytes() {
            self.memory_bytes.store(used, Ordering::Relaxed);
            held.memory = memory_limit > 0 && used > memory_limit;
        } else {
            held.memory = false;
        }
        let was = *self.held.borrow();
        if held == was {
            return;
        }
        if held.disk != was.disk {
            if held.disk {
                tracing::warn!(
                    free_bytes = self.free_bytes.load(Ordering::Relaxed),
                    limit_bytes = disk_limit,
                    "disk alarm: free space below disk_free_limit_bytes; holding publishers"
                );
            } else {
                tracing::info!("disk alarm cleared");
            }
        }
        if held.memory != was.memory {
            if held.memory {
                tracing::warn!(
                    used_bytes = self.memory_bytes.load(Ordering::Relaxed),
                    limit_bytes = memory_limit,
                    "memory alarm: memory above memory_high_watermark; holding publishers"
                );
            } else {
                tracing::info!("memory alarm cleared");
            }
        }
        if !held.any() {
            tracing::info!("no resource alarm: publishers go on");
        }
        self.held.send_replace(held);
    }
}

impl Broker {
    /// Which resource alarms are on.
    pub fn alarms(&self) -> Held {
        *self.alarm.held.borrow()
    }

    /// Whether the disk alarm is on (publishers are held).
    pub fn disk_alarm(&self) -> bool {
        self.alarms().disk
    }

    /// Whether the memory alarm is on (publishers are held).
    pub fn memory_alarm(&self) -> bool {
        self.alarms().memory
    }

    /// The free bytes of the data directory's file system at the last sample.
    pub fn free_disk_bytes(&self) -> u64 {
        self.alarm.free_bytes.load(Ordering::Relaxed)
    }

    /// The broker's anonymous resident memory at the last sample, and the memory high
    /// watermark (0: no memory alarm).
    pub fn memory_bytes(&self) -> (u64, u64) {
        (
            self.alarm.memory_bytes.load(Ordering::Relaxed),
            self.alarm.memory_limit_bytes.load(Ordering::Relaxed),
        )
    }

    /// Resolves once no resource alarm is on (at once when none is).
    pub async fn alarms_cleared(&self) {
        let mut held = self.alarm.held.subscribe();
        let _ = held.wait_for(|held| !held.any()).await;
    }

    /// Sets the alarms' limits while the broker runs (`disk_free_limit_bytes` and the
    /// memory watermark of `config`, as at start) and samples at once, so lifting a limit
    /// lets held publishers go without waiting for the next period. Blocking (the sample).
    pub fn set_alarm_limits(&self, config: &BrokerConfig) {
        let memory = memory_limit_bytes(config);
        self.alarm
            .disk_limit_bytes
            .store(config.disk_free_limit_bytes, Ordering::Relaxed);
        self.alarm
            .memory_limit_bytes
            .store(memory, Ordering::Relaxed);
        tracing::info!(
            disk_free_limit_bytes = config.disk_free_limit_bytes,
            memory_high_watermark_bytes = memory,
            "resource alarm limits set"
        );
        self.alarm.check();
    }

    /// Samples on the blocking pool (the background task's step).
    pub(crate) async fn check_alarms(self: &std::sync::Arc<Self>) {
        let broker = self.clone();
        let _ = tokio::task::spawn_blocking(move || broker.alarm.check()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_come_sooner_as_the_free_space_nears_the_limit() {
        let alarms = Alarms::new(PathBuf::from("/"), 100_000_000, 0);
        assert_eq!(
            alarms.next_check_in(),
            CHECK_INTERVAL,
            "before the first sample"
        );
        let after = |free: u64| {
            alarms.free_bytes.store(free, Ordering::Relaxed);
            alarms.next_check_in()
        };
        assert_eq!(after(100_000_000_000), CHECK_INTERVAL, "far from the limit");
        let near = after(100_000_000 + 64 * 1024 * 1024);
        assert!(
            near < CHECK_INTERVAL && near > CHECK_INTERVAL_MIN,
            "64 MiB above the limit: {near:?}"
        );
        // What a writer at the assumed fill rate writes before the next sample is less
        // than the headroom.
        let written = FILL_BYTES_PER_SECOND as f64 * near.as_secs_f64();
        assert!(written <= (64 * 1024 * 1024) as f64, "{written}");
        assert_eq!(after(100_000_001), CHECK_INTERVAL_MIN, "just above");
        assert_eq!(after(99_000_000), CHECK_INTERVAL, "the alarm is on");
        let off = Alarms::new(PathBuf::from("/"), 0, 0);
        off.free_bytes.store(1, Ordering::Relaxed);
        assert_eq!(off.next_check_in(), CHECK_INTERVAL, "no disk alarm");
    }

    #[test]
    fn the_reason_names_each_alarm_that_is_on_in_rabbitmq_words() {
        let held = |disk, memory| Held { disk, memory };
        assert_eq!(held(false, false).reason(), None);
        assert!(!held(false, false).any());
        assert_eq!(held(true, false).reason(), Some("low on disk"));
        assert_eq!(held(false, true).reason(), Some("low on memory"));
        assert_eq!(held(true, true).reason(), Some("low on memory & disk"));
        assert!(held(false, true).any());
    }

    #[test]
    fn a_watermark_below_the_memory_in_use_holds_publishers_and_lifting_it_lets_them_go() {
        let dir = std::env::temp_dir();
        let alarms = Alarms::new(dir, 0, 1);
        alarms.check();
        assert_eq!(
            *alarms.held.borrow(),
            Held {
                disk: false,
                memory: true
            }
        );
        alarms.memory_limit_bytes.store(u64::MAX, Ordering::Relaxed);
        alarms.check();
        assert!(!alarms.held.borrow().any());
        alarms.memory_limit_bytes.store(0, Ordering::Relaxed);
        alarms.check();
        assert!(!alarms.held.borrow().any(), "0 is no memory alarm");
    }

    #[test]
    fn the_relative_watermark_is_a_fraction_of_the_machine_memory_and_bytes_override_it() {
        let mut config = BrokerConfig::default();
        let total = crate::metrics::memory_total_bytes().expect("procfs");
        let limit = memory_limit_bytes(&config);
        assert!(limit > total / 3 && limit < total / 2, "{limit} of {total}");
        config.memory_high_watermark_bytes = 12_345;
        assert_eq!(memory_limit_bytes(&config), 12_345);
        config.memory_high_watermark_bytes = 0;
        config.memory_high_watermark = 0.0;
        assert_eq!(memory_limit_bytes(&config), 0);
    }
}
