//! Appends to one log whose fsync is still to come, oldest first, each with the work that
//! waits for it (confirms to send, messages to make ready). A queue task keeps one for its
//! message log and one for its ack log, so it appends the next run while the previous one is
//! fsynced instead of sleeping through every fsync (issue #15).
//!
//! A log's durable offset only grows, so the entries become durable in the order they were
//! appended: the pipeline waits for its oldest entry and then takes every entry that the
//! durable offset has passed.
//!
//! A replicated queue's writes wait for their commit instead (`queue/replicated.rs`):
//! commands submitted in order are committed and applied in that order, so the same holds.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::{FutureExt, Shared};

use crate::queue::replicated::{self, CommitFuture};
use crate::queue::types::QueueError;
use crate::storage::Partition;

/// A replicated write's commit, as many may wait for it.
type CommitWait = Shared<Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send>>>;

/// What one append waits for.
enum Wait {
    /// Everything below this offset of the log fsynced.
    Fsync(i64),
    /// A replicated write committed and applied.
    Commit(CommitWait),
}

/// The appends to one log that wait for their fsync, oldest first.
pub(crate) struct Pipeline<T> {
    log: Arc<Partition>,
    /// What each append waits for and what waits for it.
    waiting: VecDeque<(Wait, T)>,
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
        self.waiting.push_back((Wait::Fsync(next_offset), work));
    }

    /// Adds the work that waits for a replicated write's commit.
    pub(crate) fn push_commit(&mut self, commit: CommitFuture, work: T) {
        let wait: Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send>> =
            Box::pin(async move { replicated::outcome(&commit.await?) });
        self.waiting.push_back((Wait::Commit(wait.shared()), work));
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
    ) -> impl Future<Output = Result<(), QueueError>> + Send + 'static {
        let fsync = match self.waiting.front() {
            Some((Wait::Fsync(next_offset), _)) => {
                Some(crate::append::durable(&self.log, *next_offset))
            }
            _ => None,
        };
        let commit = match self.waiting.front() {
            Some((Wait::Commit(commit), _)) => Some(commit.clone()),
            _ => None,
        };
        async move {
            if let Some(fsync) = fsync {
                return fsync
                    .await
                    .map_err(|error| QueueError::Storage(error.to_string()));
            }
            match commit {
                Some(commit) => commit.await,
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
        while self.waiting.front().is_some_and(|(wait, _)| match wait {
            Wait::Fsync(next_offset) => *next_offset <= durable,
            Wait::Commit(commit) => matches!(commit.peek(), Some(Ok(()))),
        }) {
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
