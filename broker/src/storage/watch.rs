//! A monotonic counter that threads and async tasks can wait on without polling: the log end
//! offset for long-poll fetches, the durable offset for acks=all.
//!
//! Runtime-agnostic: async waiters register a `std::task::Waker`, blocking waiters use a
//! `Condvar`. A waiter that is dropped removes its waker, so abandoned long polls do not
//! accumulate. Once failed, every present and future wait returns the failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Why a wait ended without reaching its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The watch was failed or closed, with the reason.
    Failed(Arc<str>),
    /// The timeout passed first.
    TimedOut,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    target: i64,
    waker: Waker,
}

#[derive(Debug)]
struct State {
    value: i64,
    failure: Option<Arc<str>>,
    waiters: Vec<Waiter>,
    next_waiter_id: u64,
}

/// A monotonic `i64` with waiters.
#[derive(Debug)]
pub struct Watch {
    state: Mutex<State>,
    changed: Condvar,
}

impl Watch {
    /// A watch starting at `value`.
    pub fn new(value: i64) -> Self {
        Watch {
            state: Mutex::new(State {
                value,
                failure: None,
                waiters: Vec::new(),
                next_waiter_id: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The current value.
    pub fn value(&self) -> i64 {
        self.lock().value
    }

    /// Raises the value to `value` (never lowers it) and wakes every waiter it satisfies.
    pub fn advance(&self, value: i64) {
        let ready = {
            let mut state = self.lock();
            if value <= state.value {
                return;
            }
            state.value = value;
            take_waiters(&mut state, |waiter| waiter.target <= value)
        };
        self.changed.notify_all();
        for waiter in ready {
            waiter.waker.wake();
        }
    }

    /// Fails the watch: every waiter, now and later, gets `reason`.
    pub fn fail(&self, reason: &str) {
        let all = {
            let mut state = self.lock();
            if state.failure.is_none() {
                state.failure = Some(Arc::from(reason));
            }
            take_waiters(&mut state, |_| true)
        };
        self.changed.notify_all();
        for waiter in all {
            waiter.waker.wake();
        }
    }

    /// The failure reason, if failed.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.lock().failure.clone()
    }

    /// Blocks until the value reaches `target`, the watch fails, or `timeout` passes.
    ///
    /// # Errors
    /// `WaitError::Failed` or `WaitError::TimedOut`.
    pub fn wait_blocking(&self, target: i64, timeout: Duration) -> Result<i64, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.value >= target {
                return Ok(state.value);
            }
            if let Some(reason) = &state.failure {
                return Err(WaitError::Failed(reason.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// A future that resolves when the value reaches `target` or the watch fails.
    pub fn wait(self: &Arc<Self>, target: i64) -> WaitFor {
        WaitFor {
            watch: self.clone(),
            target,
            waiter_id: None,
        }
    }
}

fn take_waiters(state: &mut State, predicate: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
    let mut taken = Vec::new();
    let mut kept = Vec::with_capacity(state.waiters.len());
    for waiter in state.waiters.drain(..) {
        if predicate(&waiter) {
            taken.push(waiter);
        } else {
            kept.push(waiter);
        }
    }
    state.waiters = kept;
    taken
}

/// Future returned by [`Watch::wait`].
#[derive(Debug)]
pub struct WaitFor {
    watch: Arc<Watch>,
    target: i64,
    waiter_id: Option<u64>,
}

impl Future for WaitFor {
    type Output = Result<i64, WaitError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let target = self.target;
        let watch = self.watch.clone();
        let mut state = watch.lock();
        if state.value >= target {
            return Poll::Ready(Ok(state.value));
        }
        if let Some(reason) = &state.failure {
            return Poll::Ready(Err(WaitError::Failed(reason.clone())));
        }
        let waker = context.waker().clone();
        match self.waiter_id {
            Some(id) => match state.waiters.iter_mut().find(|waiter| waiter.id == id) {
                Some(waiter) => waiter.waker = waker,
                None => state.waiters.push(Waiter { id, target, waker }),
            },
            None => {
                let id = state.next_waiter_id;
                state.next_waiter_id += 1;
                state.waiters.push(Waiter { id, target, waker });
                drop(state);
                self.waiter_id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for WaitFor {
    fn drop(&mut self) {
        if let Some(id) = self.waiter_id {
            self.watch.lock().waiters.retain(|waiter| waiter.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn future_wakes_when_target_reached() {
        let watch = Arc::new(Watch::new(0));
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut context = Context::from_waker(&waker);
        let mut future = Box::pin(watch.wait(5));
        assert!(future.as_mut().poll(&mut context).is_pending());
        watch.advance(4);
        assert!(!flag.0.load(std::sync::atomic::Ordering::SeqCst));
        watch.advance(5);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(future.as_mut().poll(&mut context), Poll::Ready(Ok(5)));
    }

    #[test]
    fn dropped_future_removes_its_waker() {
        let watch = Arc::new(Watch::new(0));
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag);
        let mut context = Context::from_waker(&waker);
        let mut future = Box::pin(watch.wait(5));
        assert!(future.as_mut().poll(&mut context).is_pending());
        assert!(future.as_mut().poll(&mut context).is_pending());
        assert_eq!(watch.lock().waiters.len(), 1);
        drop(future);
        assert!(watch.lock().waiters.is_empty());
    }

    #[test]
    fn failure_ends_blocking_wait() {
        let watch = Arc::new(Watch::new(0));
        let failing = watch.clone();
        let thread = std::thread::spawn(move || failing.fail("disk gone"));
        let result = watch.wait_blocking(1, Duration::from_secs(10));
        thread.join().unwrap();
        assert_eq!(result, Err(WaitError::Failed(Arc::from("disk gone"))));
    }

    #[test]
    fn blocking_wait_times_out() {
        let watch = Watch::new(0);
        let result = watch.wait_blocking(1, Duration::from_millis(1));
        assert_eq!(result, Err(WaitError::TimedOut));
    }
}
