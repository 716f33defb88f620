//! Coroutine-aware synchronisation: channels that park the coroutine, never the thread.
//!
//! Everything here is for coroutines of one thread's scheduler (the types are `!Send`):
//! coroutines never move between threads, so these need no atomics and no locks, and a wait is
//! a park on the scheduler: the waiting coroutine is listed, suspends, and whoever makes
//! progress possible (a send, a receive, a drop of the other side) makes it ready again.
//!
//! - [`mpsc`]: multi-producer, single-consumer channels, unbounded ([`mpsc::channel`]) or
//!   bounded ([`mpsc::bounded`], including rendezvous with capacity 0).
//! - [`Mutex`]: a lock that can be held across a suspension (a `RefCell` cannot: another
//!   coroutine would find it borrowed), handed to waiters in arrival order.
//! - [`Condvar`]: waiting for a condition under a [`Mutex`].
//! - [`shared`]: the same (and `oneshot`, `mpmc`, `Semaphore`, `WaitGroup`) for coroutines and
//!   threads of *different* threads: `Send` and `Sync` types, which pay for a lock per operation
//!   that the types here do without (see "Why separate types" there).
//!
//! Outside a coroutine (on the scheduler's thread, e.g. in `main` after spawning), a blocking
//! call runs the event loop until it can complete, as
//! [`JoinHandle::join`](crate::JoinHandle::join) does; when nothing could ever let it complete,
//! it returns an error instead of hanging.
//!
//! # Send
//!
//! Nothing here but [`shared`] is `Send` or `Sync`: the waiters are coroutines of one thread's
//! scheduler.
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<evco::sync::mpsc::Sender<u8>>();
//! ```
//!
//! ```compile_fail
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<evco::sync::Mutex<u8>>();
//! ```
//!
//! # Wait lists
//!
//! Each direction of a channel, each mutex and each condition variable keeps a FIFO wait list
//! of parked coroutines. A notification takes the first waiter off the list and unparks it; the
//! woken coroutine re-checks its condition when it runs (another coroutine may have got there
//! first) and waits again at the back if it must. A mutex does not make its waiters re-check:
//! unlocking hands the lock to the first waiter directly, so a stream of newcomers cannot starve
//! it. A waiter that leaves the list in any other way (a timeout, or cancellation unwinding its
//! stack) removes itself. One that was notified but is cancelled before it ran passes the
//! notification on (the value to the next receiver, the lock to the next locker), so a
//! cancelled waiter never strands what a second one is waiting for.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::scheduler::{self, Waker};

mod condvar;
pub mod mpsc;
mod mutex;
pub mod shared;

pub use condvar::Condvar;
pub use mutex::{Mutex, MutexGuard};

/// Coroutines parked until some condition may hold; see "Wait lists" in the module docs.
#[derive(Default)]
pub(crate) struct WaitList {
    queue: RefCell<VecDeque<Waker>>,
}

impl std::fmt::Debug for WaitList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitList")
            .field("waiting", &self.len())
            .finish()
    }
}

/// How a [`WaitList::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Taken off the list by a notification.
    Notified,
    /// The deadline passed (or the park ended spuriously) while still listed.
    NotNotified,
}

impl WaitList {
    pub(crate) const fn new() -> WaitList {
        WaitList {
            queue: RefCell::new(VecDeque::new()),
        }
    }

    /// Number of coroutines listed.
    pub(crate) fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Unparks the longest-waiting coroutine; false when none waits.
    pub(crate) fn notify_one(&self) -> bool {
        let first = self.queue.borrow_mut().pop_front();
        match first {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        }
    }

    /// Unparks every listed coroutine.
    pub(crate) fn notify_all(&self) {
        let all = std::mem::take(&mut *self.queue.borrow_mut());
        for w in all {
            w.wake();
        }
    }

    /// Lists the running coroutine and parks it until a notification or `deadline`.
    ///
    /// `abandon` runs instead of the caller's own follow-up when the coroutine was notified but
    /// is unwinding (cancelled) before it could act on it: it passes the notification on.
    /// An error outside a scheduled coroutine, or in one that is being cancelled.
    pub(crate) fn wait(&self, deadline: Option<Instant>, abandon: &dyn Fn()) -> io::Result<Woken> {
        let me = Waker::current()?;
        self.queue.borrow_mut().push_back(me.clone());
        let guard = Listed {
            list: self,
            me,
            abandon,
            left: false,
        };
        match deadline {
            None => scheduler::park()?,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left > Duration::ZERO {
                    scheduler::park_timeout(left)?;
                }
            }
        }
        Ok(guard.leave())
    }

    fn remove(&self, me: &Waker) -> bool {
        let mut q = self.queue.borrow_mut();
        match q.iter().position(|w| w.same(me)) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }
}

/// A coroutine's entry on a [`WaitList`] while it waits; see "Wait lists".
struct Listed<'a> {
    list: &'a WaitList,
    me: Waker,
    abandon: &'a dyn Fn(),
    /// Set by `leave`: the wait ended normally and the entry is already off the list.
    left: bool,
}

impl Listed<'_> {
    /// The wait ended normally: off the list either way.
    fn leave(mut self) -> Woken {
        self.left = true;
        if self.list.remove(&self.me) {
            Woken::NotNotified
        } else {
            Woken::Notified
        }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        // Without `leave`, the park was cut short by unwinding (cancellation).
        if !self.left && !self.list.remove(&self.me) {
            (self.abandon)();
        }
    }
}
