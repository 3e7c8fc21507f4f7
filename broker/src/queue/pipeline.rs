//! Appends to one log whose fsync is still to come, oldest first, each with the work that
//! waits for it (confirms to send, messages to make ready). A queue task keeps one for its
//! message log and one for its ack log, so it appends the next run while the previous one is
//! fsynced instead of sleeping through every fsync (issue #15).
//!
//! A log's durable offset only grows, so the entries become durable in the order they were
//! appended: the pipeline waits for its oldest entry and then takes every entry that the
//! durable offset has passed.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use crate::storage::{Error, Partition};

/// The appends to one log that wait for their fsync, oldest first.
pub(crate) struct Pipeline<T> {
    log: Arc<Partition>,
    /// The offset each append must reach (its next offset) and what waits for it.
    waiting: VecDeque<(i64, T)>,
}

impl<T> Pipeline<T> {
    /// An empty pipeline on `log`.
    pub(crate) fn new(log: Arc<Partition>) -> Pipeline<T> {
        Pipeline {
            log,
            waiting: VecDeque::new(),
        }
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Adds the work that waits for everything below `next_offset` to be durable.
    pub(crate) fn push(&mut self, next_offset: i64, work: T) {
        self.waiting.push_back((next_offset, work));
    }

    /// The newest waiting work: what was appended last.
    pub(crate) fn newest_mut(&mut self) -> Option<&mut T> {
        self.waiting.back_mut().map(|(_, work)| work)
    }

    /// Resolves once the oldest waiting append is durable (at once with `Ok` when nothing
    /// waits; callers poll it only when something does). Owns what it needs, so the caller
    /// can go on changing the pipeline while it waits.
    pub(crate) fn oldest_durable(
        &self,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let wait = self
            .waiting
            .front()
            .map(|(next_offset, _)| crate::append::durable(&self.log, *next_offset));
        async move {
            match wait {
                Some(wait) => wait.await,
                None => Ok(()),
            }
        }
    }

    /// Takes the work of the oldest append, whose wait ([`Pipeline::oldest_durable`]) just
    /// resolved, and of every later one the log's durable offset has passed too, oldest
    /// first. After a failed wait (the log failed for good: nothing more becomes durable)
    /// the caller takes everything with [`Pipeline::take_all`] instead.
    pub(crate) fn take_durable(&mut self) -> Vec<T> {
        let durable = self.log.durable_offset();
        let mut done: Vec<T> = self
            .waiting
            .pop_front()
            .map(|(_, work)| work)
            .into_iter()
            .collect();
        while self
            .waiting
            .front()
            .is_some_and(|(next_offset, _)| *next_offset <= durable)
        {
            if let Some((_, work)) = self.waiting.pop_front() {
                done.push(work);
            }
        }
        done
    }

    /// Takes every waiting work, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.waiting.drain(..).map(|(_, work)| work).collect()
    }
}
