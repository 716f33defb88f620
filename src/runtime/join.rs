//! [`JoinHandle`]: the `Send` handle of a coroutine spawned onto a runtime thread, and the
//! completion its coroutine reports through.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::coroutine::{Cancelled, CoroutineId};
use crate::scheduler::{Inbox, Msg, Scheduler, Signal};

type Outcome<T> = std::thread::Result<T>;

/// What a cross-thread spawn shares between the coroutine and its handle.
pub(super) struct JoinState<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    outcome: Option<Outcome<T>>,
    /// Taken by `join`.
    taken: bool,
    /// Whoever waits in `join` (one at a time: `join` takes the handle).
    waiter: Option<Arc<Signal>>,
    /// The coroutine, once spawned: its task-table slot and id on its thread.
    key: Option<(usize, u64)>,
    /// `cancel` came before the coroutine was spawned: it never starts.
    cancel_early: bool,
}

impl<T> JoinState<T> {
    pub(super) fn new() -> Arc<JoinState<T>> {
        Arc::new(JoinState {
            inner: Mutex::new(Inner {
                outcome: None,
                taken: false,
                waiter: None,
                key: None,
                cancel_early: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, outcome: Outcome<T>) {
        let waiter = {
            let mut g = self.lock();
            if g.outcome.is_some() || g.taken {
                return;
            }
            g.outcome = Some(outcome);
            g.waiter.take()
        };
        if let Some(w) = waiter {
            w.notify();
        }
    }
}

/// Reports the coroutine's end to its handle, however it ends: a `Drop` before the body ran
/// (the closure dropped unrun because its thread went, or no stack could be had) reports why:
/// the spawn's error in `failure`, or that the thread had shut down. (The error is made only
/// then: an `io::Error` made up front would cost every spawn two allocations, freed on the
/// other thread.)
pub(super) struct Completer<T> {
    state: Arc<JoinState<T>>,
    ran: bool,
    failure: Option<io::Error>,
}

impl<T> Completer<T> {
    pub(super) fn new(state: Arc<JoinState<T>>) -> Completer<T> {
        Completer {
            state,
            ran: false,
            failure: None,
        }
    }

    /// Spawn failed (or could not be attempted): the handle reports `e`.
    pub(super) fn fail(mut self, e: io::Error) {
        self.failure = Some(e);
    }

    /// On the target thread (its inbox's callback, or a spawn made on that thread itself):
    /// spawns the coroutine that runs `f`, unless the handle cancelled it first (or cancels it
    /// while it is being spawned). A failure (no stack) is reported to the handle.
    pub(super) fn start<F>(self, stack_size: usize, f: F)
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        if self.state.lock().cancel_early {
            return; // the drop reports it cancelled
        }
        let state = self.state.clone();
        // The body takes the completer when it starts; a body dropped unrun (its coroutine
        // cancelled before its first turn) drops it, which reports the cancellation.
        let cell = Rc::new(Cell::new(Some(self)));
        let mine = cell.clone();
        let body = move || {
            if let Some(c) = mine.take() {
                let id = crate::coroutine::current().map_or(CoroutineId::NONE, |c| c.id());
                c.run(id, f);
            }
        };
        match crate::scheduler::spawn_with(None, stack_size, body) {
            Ok(h) => {
                // A `cancel` that came since the look above found no key and only set
                // `cancel_early`: it is acted on here, or it would be lost. Setting the key
                // and looking again under one lock leaves no gap for another.
                let early = {
                    let mut g = state.lock();
                    g.key = Some(h.key());
                    g.cancel_early
                };
                if early {
                    // Not started yet: its body is dropped unrun, which reports `Cancelled`.
                    let _ = h.cancel();
                }
            }
            Err(e) => {
                if let Some(c) = cell.take() {
                    c.fail(e);
                }
            }
        }
    }

    /// Runs `f` as the coroutine's body and reports its result or panic. A cancellation is
    /// reported as [`Cancelled`] and goes on unwinding.
    pub(super) fn run(mut self, id: CoroutineId, f: impl FnOnce() -> T) {
        self.ran = true;
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => self.state.finish(Ok(v)),
            Err(p) if crate::coroutine::is_cancellation(&*p) => {
                self.state.finish(Err(Box::new(Cancelled { id })));
                resume_unwind(p)
            }
            Err(p) => self.state.finish(Err(p)),
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if !self.ran {
            let (early, key) = {
                let g = self.state.lock();
                (g.cancel_early, g.key)
            };
            let outcome: Box<dyn Any + Send> = match key {
                // Spawned, but cancelled (or shut down) before its first turn.
                Some((_, id)) => Box::new(Cancelled {
                    id: CoroutineId::from_u64(id),
                }),
                None if early => Box::new(Cancelled {
                    id: CoroutineId::NONE,
                }),
                None => Box::new(self.failure.take().unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the coroutine never ran: its runtime thread was shut down",
                    )
                })),
            };
            self.state.finish(Err(outcome));
        }
    }
}

/// An owned permission to join a coroutine spawned on a runtime thread (and to cancel it).
///
/// `Send` and `Sync` when `T: Send`: it may be joined from any thread. Joining inside a
/// coroutine parks the coroutine (its thread runs others meanwhile); outside, on a thread that
/// has a scheduler, it runs that thread's loop; on any other thread it blocks the thread.
/// Dropping the handle detaches the coroutine.
pub struct JoinHandle<T> {
    pub(super) state: Arc<JoinState<T>>,
    pub(super) inbox: Arc<Inbox>,
    pub(super) thread: usize,
    /// `runtime::FORKS` when spawned: in a forked child the coroutine's thread does not exist.
    pub(super) forks: u64,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("runtime::JoinHandle")
            .field("thread", &self.thread)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Waits for the coroutine to finish and returns its result, or the payload of its panic
    /// ([`Cancelled`] if it was cancelled, an `io::Error` if it never ran because its thread
    /// was shut down first or no stack could be had).
    pub fn join(self) -> std::thread::Result<T> {
        match self.wait(None) {
            Ok(true) => {}
            Ok(false) => unreachable!("a wait without a deadline ends notified"),
            Err(e) => return Err(Box::new(e)),
        }
        let mut g = self.state.lock();
        g.taken = true;
        g.outcome
            .take()
            .unwrap_or_else(|| Err(Box::new(io::Error::other("coroutine result already taken"))))
    }

    /// [`join`](JoinHandle::join) for at most `timeout`: the handle back when it passed first.
    pub fn join_timeout(self, timeout: Duration) -> Result<std::thread::Result<T>, JoinHandle<T>> {
        let deadline = Instant::now().checked_add(timeout);
        match self.wait(deadline) {
            Ok(true) => Ok(self.join()),
            Ok(false) => Err(self),
            Err(e) => Ok(Err(Box::new(e))),
        }
    }

    /// Whether the coroutine has finished (returned, panicked, was cancelled or never ran).
    pub fn is_finished(&self) -> bool {
        self.state.lock().outcome.is_some()
    }

    /// The index of the runtime thread the coroutine runs on.
    pub fn thread_index(&self) -> usize {
        self.thread
    }

    /// Cancels the coroutine: on its thread, whatever it waits on is deleted and its stack
    /// unwound (its destructors run); `join` then returns a [`Cancelled`] payload. Returns
    /// once the request is on its way (the coroutine may still be running on its thread; one
    /// that finishes first is not affected). A coroutine not started yet never starts.
    pub fn cancel(&self) -> io::Result<()> {
        let key = {
            let mut g = self.state.lock();
            if g.outcome.is_some() {
                return Ok(());
            }
            match g.key {
                Some(k) => k,
                None => {
                    g.cancel_early = true;
                    return Ok(());
                }
            }
        };
        let (slot, id) = key;
        self.inbox.post(Msg::Run(Box::new(move || {
            if let Some(s) = Scheduler::current() {
                let _ = s.cancel_by_key(slot, id);
            }
        })))
    }

    /// Waits until finished or `deadline`: `Ok(false)` at the deadline.
    fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            let signal = {
                let mut g = self.state.lock();
                if g.outcome.is_some() {
                    return Ok(true);
                }
                if super::FORKS.load(std::sync::atomic::Ordering::Relaxed) != self.forks {
                    return Err(super::forked_child());
                }
                let s = Signal::new()?;
                g.waiter = Some(s.clone());
                s
            };
            /// Takes the waiter off the state however the wait ends (unwinding included).
            struct Unlist<'a, T>(&'a JoinState<T>);
            impl<T> Drop for Unlist<'_, T> {
                fn drop(&mut self) {
                    self.0.lock().waiter = None;
                }
            }
            let _unlist = Unlist(&self.state);
            if !signal.wait(deadline)? {
                return Ok(self.is_finished());
            }
        }
    }
}
