//! The background fsync service shared by all partitions.
//!
//! Partitions with `FlushPolicy::Always` ask for a flush after each append; a request is
//! deduplicated per partition (a flag), so the queue never holds a partition twice and its
//! length is bounded by the number of partitions. A flusher thread takes a partition, clears
//! its flag, and fsyncs once for everything appended so far; appends that land during the
//! fsync set the flag again and ride the next one. That is the group commit: N concurrent
//! appenders cost about one fsync per fsync-duration, not N.
//!
//! Partitions with `FlushPolicy::Interval` register once and are fsynced when dirty and their
//! interval has passed. Partitions with `FlushPolicy::Never` ask for the seal of each segment
//! they roll; a separate sealer thread runs those, since one seal fsyncs a whole segment
//! (seconds for a GiB) and must not hold up the group commits of `Always` partitions. The
//! queues hold `Weak` references, so a dropped partition simply disappears. The threads stop
//! when the last `Flusher` handle is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::storage::config::FlushPolicy;
use crate::storage::partition::Partition;

/// How often flusher threads look at interval partitions when no request wakes them.
const IDLE_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Queue {
    requested: VecDeque<Weak<Partition>>,
    interval: Vec<Weak<Partition>>,
    /// `FlushPolicy::Never` partitions with rolled segments to seal (deduplicated like
    /// `requested`).
    seals: VecDeque<Weak<Partition>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    seal_wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Stops the threads when the last handle goes away.
#[derive(Debug)]
struct Owner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        {
            // Set under the queue lock so a thread between its stop check and its wait
            // cannot miss the wake-up.
            let _queue = self.shared.lock();
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        self.shared.seal_wake.notify_all();
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        let current = std::thread::current().id();
        for thread in threads {
            // The last handle can be dropped by a flusher thread itself (it held the last
            // reference to a partition); a thread cannot join itself, and it exits on its own
            // once it sees `stop`.
            if thread.thread().id() == current {
                continue;
            }
            // A flusher thread that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

/// Handle to the flusher threads. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl Flusher {
    /// Starts `thread_count` flusher threads (at least one) and the sealer thread.
    ///
    /// # Panics
    /// If the operating system cannot start a thread.
    pub fn spawn(thread_count: usize) -> Flusher {
        let shared = Arc::new(Shared::default());
        let mut threads: Vec<JoinHandle<()>> = (0..thread_count.max(1))
            .map(|thread_index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("wharf-flusher-{thread_index}"))
                    .spawn(move || run(&shared))
                    .expect("starting a flusher thread")
            })
            .collect();
        let sealer_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wharf-sealer".to_string())
                .spawn(move || run_sealer(&sealer_shared))
                .expect("starting the sealer thread"),
        );
        Flusher {
            _owner: Arc::new(Owner {
                shared: shared.clone(),
                threads: Mutex::new(threads),
            }),
            shared,
        }
    }

    /// A flusher without threads: requests wait forever, so nothing is fsynced unless a test
    /// calls `Partition::flush` itself. For tests of what a crash leaves before the flusher
    /// ran.
    pub fn idle() -> Flusher {
        let shared = Arc::new(Shared::default());
        Flusher {
            _owner: Arc::new(Owner {
                shared: shared.clone(),
                threads: Mutex::new(Vec::new()),
            }),
            shared,
        }
    }

    /// Queues `partition` for an fsync (the caller deduplicates).
    pub(crate) fn request(&self, partition: &Arc<Partition>) {
        self.shared
            .lock()
            .requested
            .push_back(Arc::downgrade(partition));
        self.shared.wake.notify_one();
    }

    /// Queues `partition` (`FlushPolicy::Never`) for the seal of its rolled segments (the
    /// caller deduplicates).
    pub(crate) fn request_seal(&self, partition: &Arc<Partition>) {
        self.shared
            .lock()
            .seals
            .push_back(Arc::downgrade(partition));
        self.shared.seal_wake.notify_one();
    }

    /// Adds a partition with `FlushPolicy::Interval` to the periodic flush list.
    pub(crate) fn register_interval(&self, partition: &Arc<Partition>) {
        self.shared.lock().interval.push(Arc::downgrade(partition));
    }
}

fn run(shared: &Shared) {
    let mut last_interval_check = std::time::Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        // Interval partitions are checked at least every tick, even under a steady stream of
        // flush requests, so they are never starved.
        if last_interval_check.elapsed() >= IDLE_TICK {
            flush_due_intervals(shared);
            last_interval_check = std::time::Instant::now();
        }
        match next_request(shared, &shared.wake, |queue| &mut queue.requested) {
            Some(partition) => {
                partition.take_flush_request();
                // A failure is recorded in the partition, which refuses writes from now on.
                let _ = partition.flush_on_request();
            }
            None => {
                flush_due_intervals(shared);
                last_interval_check = std::time::Instant::now();
            }
        }
    }
}

/// Takes the next partition off the list `pick` chooses, waiting on `wake` for up to one
/// tick while it is empty. `None` after an idle tick, or if the partition is gone.
fn next_request(
    shared: &Shared,
    wake: &Condvar,
    pick: impl Fn(&mut Queue) -> &mut VecDeque<Weak<Partition>>,
) -> Option<Arc<Partition>> {
    let mut queue = shared.lock();
    if pick(&mut queue).is_empty() && !shared.stop.load(Ordering::Acquire) {
        queue = wake
            .wait_timeout(queue, IDLE_TICK)
            .unwrap_or_else(|poison| poison.into_inner())
            .0;
    }
    let next = pick(&mut queue).pop_front();
    drop(queue);
    next.and_then(|weak| weak.upgrade())
}

fn run_sealer(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(partition) = next_request(shared, &shared.seal_wake, |queue| &mut queue.seals) {
            partition.take_flush_request();
            // A failure is recorded in the partition, which refuses writes from now on.
            let _ = partition.flush_on_request();
        }
    }
}

fn flush_due_intervals(shared: &Shared) {
    let due: Vec<Arc<Partition>> = {
        let mut queue = shared.lock();
        queue.interval.retain(|weak| weak.strong_count() > 0);
        queue.interval.iter().filter_map(Weak::upgrade).collect()
    };
    for partition in due {
        let FlushPolicy::Interval { interval_ms } = partition.config().flush else {
            continue;
        };
        if partition.is_dirty()
            && partition.since_last_flush() >= Duration::from_millis(interval_ms)
        {
            let _ = partition.flush();
        }
    }
}
