//! Waiting until a group of coroutines and threads is done; see [`WaitGroup`].

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use super::{WaitQueue, lock, notify_all, passed, wait};

/// Waits until every member of a group is done. Each member holds a clone; dropping it is
/// "done" (so a member that panics or is cancelled is done too), and
/// [`wait`](WaitGroup::wait) gives up the caller's own clone and blocks until every other one
/// is gone: a coroutine parks, a thread blocks.
///
/// This is crossbeam's `WaitGroup` (clone to add, drop to be done) rather than Go's
/// `Add`/`Done` counter: a count that nothing owns can be left too high by an early return or a
/// cancellation and then hang its waiter, and a clone cannot.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use evco::sync::shared::WaitGroup;
///
/// let done = Arc::new(AtomicUsize::new(0));
/// let wg = WaitGroup::new();
/// for _ in 0..4 {
///     let (wg, done) = (wg.clone(), done.clone());
///     std::thread::spawn(move || {
///         done.fetch_add(1, Ordering::SeqCst);
///         drop(wg);
///     });
/// }
/// evco::run(move || wg.wait().unwrap()); // parks until the four clones are dropped
/// assert_eq!(done.load(Ordering::SeqCst), 4);
/// ```
pub struct WaitGroup {
    inner: Arc<StdMutex<State>>,
}

struct State {
    /// Clones alive.
    members: usize,
    waiters: WaitQueue,
}

impl WaitGroup {
    /// A group of one: this handle.
    pub fn new() -> WaitGroup {
        WaitGroup {
            inner: Arc::new(StdMutex::new(State {
                members: 1,
                waiters: WaitQueue::new(),
            })),
        }
    }

    /// Gives up this handle and waits until every other one is dropped.
    ///
    /// An error when the caller cannot wait (a coroutine being cancelled, a bare
    /// [`Coroutine`](crate::coroutine::Coroutine)).
    pub fn wait(self) -> io::Result<()> {
        self.wait_until(None).map(drop)
    }

    /// [`wait`](Self::wait) for at most `timeout`: `Ok(false)` when it passed first (this
    /// handle is given up either way).
    pub fn wait_timeout(self, timeout: Duration) -> io::Result<bool> {
        // A timeout too long for `Instant` never passes: `None`.
        self.wait_until(crate::event::deadline_after(timeout))
    }

    fn wait_until(self, deadline: Option<Instant>) -> io::Result<bool> {
        let inner = self.inner.clone();
        drop(self);
        let mut st = lock(&inner);
        loop {
            if st.members == 0 {
                return Ok(true);
            }
            if passed(deadline) {
                return Ok(false);
            }
            // Every waiter is notified at once: nothing to pass on.
            st = wait(&inner, st, |s| &mut s.waiters, deadline, &|_| None)?.1;
        }
    }

    /// Number of handles alive, this one included (members not done yet, and waiters that
    /// have not given theirs up).
    pub fn members(&self) -> usize {
        lock(&self.inner).members
    }
}

impl Default for WaitGroup {
    fn default() -> WaitGroup {
        WaitGroup::new()
    }
}

impl Clone for WaitGroup {
    fn clone(&self) -> WaitGroup {
        lock(&self.inner).members += 1;
        WaitGroup {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for WaitGroup {
    fn drop(&mut self) {
        let mut st = lock(&self.inner);
        st.members -= 1;
        if st.members == 0 {
            let all = st.waiters.take();
            drop(st);
            notify_all(all);
        }
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("members", &self.members())
            .finish()
    }
}
