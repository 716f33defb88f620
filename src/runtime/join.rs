//! [`JoinHandle`]: the `Send` handle of a coroutine spawned onto a runtime thread, and the
//! completion its coroutine reports through.
//!
//! # Invariants
//!
//! - One allocation per spawn ([`Spawn`]): the closure, the outcome and what names the
//!   coroutine on its thread. The closure is taken exactly once, by the target thread when the
//!   posted job runs (or by the spawning thread when it is the target), or dropped when the
//!   job is abandoned; the handle never touches it.
//! - The outcome is set once (`finish` ignores later reports), by whoever learns how the
//!   coroutine ended: its body (result, panic, `Cancelled`), the completer dropped unrun
//!   (`Cancelled`), the spawner (no stack), or the abandoned job (never ran). `finish` takes the
//!   listed waiter under the same lock it sets the outcome with, then notifies it: a joiner
//!   that was notified is no longer listed.
//! - Cancel against spawn: `cancel` sets `cancelled` and then reads the coroutine's id; the
//!   target thread publishes the id and then reads `cancelled` (all `SeqCst`). So a cancel is
//!   never lost: either `cancel` finds the id and posts the cancellation, or the target thread
//!   sees `cancelled` and cancels the coroutine it just spawned (before its first turn), or
//!   both, which is harmless (cancelling a finished coroutine does nothing).

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::coroutine::{Cancelled, CoroutineId};
use crate::scheduler::{Inbox, Job, Msg, Scheduler, Signal};

type Outcome<T> = std::thread::Result<T>;

/// A cross-thread spawn: the closure, and what the coroutine and its handle share, in one
/// allocation (an `Arc` the poster, the target thread's inbox and the handle hold). `B` is
/// [`Body<F>`] where it is made and `dyn Erased` in the handle, which does not know `F`.
pub(super) struct Spawn<T, B: ?Sized> {
    inner: Mutex<Inner<T>>,
    /// Set by `cancel` (see "Cancel against spawn" below).
    cancelled: AtomicBool,
    /// The coroutine's id once spawned (0, `CoroutineId::NONE`, before), and its task-table
    /// slot (written before the id): what `cancel` names it by on its thread.
    id: AtomicU64,
    slot: AtomicUsize,
    /// True while the target thread is spawning the coroutine: a body dropped then (no stack
    /// could be had) leaves the report to the spawner, which has the error. Only the target
    /// thread touches it.
    spawning: AtomicBool,
    stack_size: usize,
    body: B,
}

/// What the handle's state is, seen without the closure's type.
pub(super) type Shared<T> = Spawn<T, dyn Erased>;

/// The closure of a spawn, until the target thread takes it.
pub(super) struct Body<F>(UnsafeCell<Option<F>>);

// SAFETY: the closure (`Send`) is reached only through `Job::run` and `Job::abandon`, which
// the posted message calls exactly once between them (`Posted` gives its `Arc` up to one or the
// other), or through `start_here`, which takes the place of posting; no two threads ever reach
// it at once, and the handle never does.
unsafe impl<F: Send> Sync for Body<F> {}

/// [`Body<F>`] with its type forgotten.
pub(super) trait Erased: Send + Sync {}
impl<F: Send> Erased for Body<F> {}

struct Inner<T> {
    outcome: Option<Outcome<T>>,
    /// Taken by `join`.
    taken: bool,
    /// The outcome is the `io::Error` of a closure that never ran (set with it, by `fail`),
    /// not a panic of the closure: what `Runtime::block_on` tells apart.
    never_ran: bool,
    /// Whoever waits in `join` (one at a time: `join` takes the handle).
    waiter: Option<Arc<Signal>>,
}

impl<T, F> Spawn<T, Body<F>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    pub(super) fn new(stack_size: usize, f: F) -> Arc<Spawn<T, Body<F>>> {
        Arc::new(Spawn {
            inner: Mutex::new(Inner {
                outcome: None,
                taken: false,
                never_ran: false,
                waiter: None,
            }),
            cancelled: AtomicBool::new(false),
            id: AtomicU64::new(0),
            slot: AtomicUsize::new(0),
            spawning: AtomicBool::new(false),
            stack_size,
            body: Body(UnsafeCell::new(Some(f))),
        })
    }

    /// Takes the closure (`None` once taken).
    ///
    /// # Safety
    ///
    /// Called only from `Job::run`, `Job::abandon` or `start_here` (see `Body`'s `Sync`).
    unsafe fn take_body(&self) -> Option<F> {
        // SAFETY: per the contract, nothing else reaches the cell meanwhile.
        unsafe { (*self.body.0.get()).take() }
    }

    /// Spawns the coroutine on the calling thread, the target itself (instead of posting).
    pub(super) fn start_here(self: Arc<Self>) {
        // SAFETY: the job was never posted: this is the one call that reaches its closure.
        if let Some(f) = unsafe { self.take_body() } {
            let stack_size = self.stack_size;
            Completer::new(self).start(stack_size, f);
        }
    }
}

impl<T, F> Job for Spawn<T, Body<F>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>) {
        // SAFETY: called once, from the posted message (see `Body`).
        if let Some(f) = unsafe { self.take_body() } {
            let stack_size = self.stack_size;
            Completer::new(self).start(stack_size, f);
        }
    }

    fn abandon(&self) {
        // SAFETY: called once, instead of `run`, from the posted message (see `Body`).
        let body = unsafe { self.take_body() };
        // The handle learns the job never ran even if the closure's destructor panics.
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(body)));
        self.fail(io::Error::new(
            io::ErrorKind::NotConnected,
            "the coroutine never ran: its runtime thread was shut down",
        ));
        if let Err(p) = dropped {
            // The destructor ran on a coroutine that was cancelled meanwhile (a failed post
            // drops the job on the posting thread): its unwinding goes on. Not when this drop
            // itself runs in an unwinding (a guard's destructor that spawned): a second panic
            // out of it would abort the process, and the coroutine ends with the first anyway.
            if crate::coroutine::is_cancellation(&*p) && !std::thread::panicking() {
                resume_unwind(p);
            }
            log::error!(
                "evco: the closure of a spawn that never ran panicked when dropped: {}",
                crate::event::panic_message(&*p)
            );
        }
    }
}

impl<T, B: ?Sized> Spawn<T, B> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, outcome: Outcome<T>) {
        self.finish_as(outcome, false);
    }

    /// [`finish`](Spawn::finish), saying whether the closure never ran (`outcome` is then
    /// the `io::Error` why).
    fn finish_as(&self, outcome: Outcome<T>, never_ran: bool) {
        let waiter = {
            let mut g = self.lock();
            if g.outcome.is_some() || g.taken {
                return;
            }
            g.outcome = Some(outcome);
            g.never_ran = never_ran;
            g.waiter.take()
        };
        if let Some(w) = waiter {
            w.notify();
        }
    }

    /// Reports that the spawn failed (or could not be attempted) with `e`.
    pub(super) fn fail(&self, e: io::Error) {
        self.finish_as(Err(Box::new(e)), true);
    }
}

/// Reports the coroutine's end to its handle, however it ends: a `Drop` before the body ran
/// (its coroutine cancelled, or shut down, before its first turn) reports it cancelled.
struct Completer<T> {
    job: Arc<Shared<T>>,
    ran: bool,
}

impl<T: Send + 'static> Completer<T> {
    fn new(job: Arc<Shared<T>>) -> Completer<T> {
        Completer { job, ran: false }
    }

    /// On the target thread (its inbox's callback, or a spawn made on that thread itself):
    /// spawns the coroutine that runs `f`, unless the handle cancelled it first (or cancels it
    /// while it is being spawned). A failure (no stack) is reported to the handle.
    fn start<F>(self, stack_size: usize, f: F)
    where
        F: FnOnce() -> T + 'static,
    {
        if self.job.cancelled.load(Ordering::Acquire) {
            return; // the drop reports it cancelled
        }
        let job = self.job.clone();
        // The body takes the completer along; a body dropped unrun (its coroutine cancelled
        // before its first turn) drops it, which reports the cancellation.
        let body = move || {
            let id = crate::coroutine::current().map_or(CoroutineId::NONE, |c| c.id());
            self.run(id, f);
        };
        job.spawning.store(true, Ordering::Relaxed);
        let spawned = crate::scheduler::spawn_keyed(stack_size, body);
        job.spawning.store(false, Ordering::Relaxed);
        match spawned {
            Ok((slot, id)) => {
                // See "Cancel against spawn": the key is published before `cancelled` is
                // looked at again, and `cancel` sets `cancelled` before it looks for the key,
                // all `SeqCst`, so at least one of the two sees the other.
                job.slot.store(slot, Ordering::Relaxed);
                job.id.store(id, Ordering::SeqCst);
                if job.cancelled.load(Ordering::SeqCst) {
                    // Not started yet: its body is dropped unrun, which reports `Cancelled`.
                    if let Some(s) = Scheduler::current() {
                        let _ = s.cancel_by_key(slot, id);
                    }
                }
            }
            Err(e) => job.fail(e),
        }
    }

    /// Runs `f` as the coroutine's body and reports its result or panic. A cancellation is
    /// reported as [`Cancelled`] and goes on unwinding.
    fn run(mut self, id: CoroutineId, f: impl FnOnce() -> T) {
        self.ran = true;
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => self.job.finish(Ok(v)),
            Err(p) if crate::coroutine::is_cancellation(&*p) => {
                self.job.finish(Err(Box::new(Cancelled { id })));
                resume_unwind(p)
            }
            Err(p) => self.job.finish(Err(p)),
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if self.ran || self.job.spawning.load(Ordering::Relaxed) {
            return; // reported by `run`, or by the spawner (with its error)
        }
        let id = CoroutineId::from_u64(self.job.id.load(Ordering::SeqCst));
        // Spawned, but cancelled (or shut down) before its first turn; or cancelled before it
        // was spawned.
        let outcome: Box<dyn Any + Send> = Box::new(Cancelled { id });
        self.job.finish(Err(outcome));
    }
}

/// An owned permission to join a coroutine spawned on a runtime thread (and to cancel it).
///
/// `Send` and `Sync` when `T: Send`: it may be joined from any thread. Joining inside a
/// coroutine parks the coroutine (its thread runs others meanwhile); outside, on a thread that
/// has a scheduler, it runs that thread's loop; on any other thread it blocks the thread.
/// Dropping the handle detaches the coroutine.
pub struct JoinHandle<T> {
    pub(super) state: Arc<Shared<T>>,
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
            Ok(Some(outcome)) => outcome,
            Ok(None) => unreachable!("a wait without a deadline ends with the outcome"),
            Err(e) => Err(Box::new(e)),
        }
    }

    /// [`join`](JoinHandle::join), with a closure that never ran (and a join that could not
    /// wait) as the `Err` and the coroutine's own outcome, panics included, as the `Ok`:
    /// even a panic whose payload is an `io::Error` is the `Ok`.
    pub(super) fn join_ran(self) -> io::Result<std::thread::Result<T>> {
        match self.wait(None)? {
            Some(Err(p)) if self.state.lock().never_ran => match p.downcast::<io::Error>() {
                Ok(e) => Err(*e),
                Err(p) => Ok(Err(p)),
            },
            Some(outcome) => Ok(outcome),
            None => unreachable!("a wait without a deadline ends with the outcome"),
        }
    }

    /// [`join`](JoinHandle::join) for at most `timeout`: the handle back when it passed first.
    pub fn join_timeout(self, timeout: Duration) -> Result<std::thread::Result<T>, JoinHandle<T>> {
        let deadline = Instant::now().checked_add(timeout);
        match self.wait(deadline) {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => Err(self),
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
        if self.is_finished() {
            return Ok(());
        }
        // See "Cancel against spawn".
        self.state.cancelled.store(true, Ordering::SeqCst);
        let id = self.state.id.load(Ordering::SeqCst);
        if id == 0 {
            return Ok(()); // not spawned yet: the target thread sees `cancelled`
        }
        let slot = self.state.slot.load(Ordering::Relaxed);
        self.inbox.post(Msg::Run(Box::new(move || {
            if let Some(s) = Scheduler::current() {
                let _ = s.cancel_by_key(slot, id);
            }
        })))
    }

    /// Waits until finished or `deadline` and takes the outcome: `None` at the deadline.
    fn wait(&self, deadline: Option<Instant>) -> io::Result<Option<Outcome<T>>> {
        // A coroutine joining one spawned on its own thread: the new coroutine is in the ready
        // queue ahead of the caller, and one turn of the queue often ends it. Taking that turn
        // first saves listing a `Signal` (an allocation, and a wake-up through it) for the
        // common short job; a job that waits costs the caller one extra turn.
        if !self.is_finished()
            && crate::coroutine::is_coroutine()
            && Scheduler::current().is_some_and(|s| s.owns_inbox(&self.inbox))
        {
            // Its own handle (ids are process-unique; 0 is no coroutine yet): it would wait
            // for itself.
            let me = crate::coroutine::current().map_or(0, |c| c.id().as_u64());
            if me != 0 && self.state.id.load(Ordering::SeqCst) == me {
                return Err(io::Error::new(
                    io::ErrorKind::Deadlock,
                    "a coroutine cannot join itself",
                ));
            }
            crate::yield_now()?;
        }
        loop {
            // One lock: the outcome if it is there, else the waiter listed.
            let signal = {
                let mut g = self.state.lock();
                if let Some(outcome) = g.outcome.take() {
                    g.taken = true;
                    return Ok(Some(outcome));
                }
                if super::FORKS.load(Ordering::Relaxed) != self.forks {
                    return Err(super::forked_child());
                }
                let s = Signal::new()?;
                g.waiter = Some(s.clone());
                s
            };
            /// Takes the waiter off the state however the wait ends (unwinding included),
            /// unless `finish` took it already: it does so before it notifies.
            struct Unlist<'a, T>(&'a Shared<T>, &'a Signal);
            impl<T> Drop for Unlist<'_, T> {
                fn drop(&mut self) {
                    if !self.1.is_notified() {
                        self.0.lock().waiter = None;
                    }
                }
            }
            let _unlist = Unlist(&self.state, &signal);
            if !signal.wait(deadline)? && !self.is_finished() {
                return Ok(None);
            }
        }
    }
}
