//! Synchronisation between threads: channels, locks and counters whose waiters may be
//! coroutines of any thread's scheduler, or plain threads.
//!
//! - [`mpsc`] and [`mpmc`]: channels, unbounded or bounded (capacity 0 is a rendezvous), with
//!   the methods and error types of the single-thread [`sync::mpsc`](crate::sync::mpsc); an
//!   [`mpmc::Receiver`] can be cloned.
//! - [`oneshot`]: one value, once.
//! - [`Mutex`] (a lock that can be held across a suspension, handed to waiters in arrival
//!   order) and [`Condvar`].
//! - [`Semaphore`]: a count of permits, each returned when its [`SemaphorePermit`] drops.
//! - [`WaitGroup`]: wait until every clone of it is gone.
//!
//! Every blocking call blocks whatever calls it in the way that fits: a coroutine parks (its
//! thread's other coroutines run on), a thread with a scheduler outside coroutines runs its event
//! loop until the call can complete, and a thread without one blocks in
//! [`std::thread::park`]. Whoever makes progress possible, on any thread, wakes the waiter:
//! directly on the waiter's own thread, through the waiter's scheduler's inbox (a lock-free
//! queue and one eventfd write) from another one.
//!
//! ```
//! use evco::sync::shared::mpsc;
//!
//! let (tx, rx) = mpsc::channel();
//! let producer = std::thread::spawn(move || {
//!     evco::run(move || {
//!         for i in 0..100u32 {
//!             let tx = tx.clone();
//!             evco::spawn(move || tx.send(i).unwrap());
//!         }
//!     })
//! });
//! let sum: u32 = evco::run(move || rx.iter().sum()); // parks until every sender is gone
//! producer.join().unwrap();
//! assert_eq!(sum, (0..100).sum());
//! ```
//!
//! # Send
//!
//! Every type here is `Send` and `Sync` (for `T: Send`), except the guards: a
//! [`MutexGuard`] stays with whoever locked, as a coroutine never moves between threads.
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<evco::sync::shared::MutexGuard<'static, u8>>();
//! ```
//!
//! # Why separate types
//!
//! The single-thread types in [`sync`](crate::sync) know that everything touching them runs
//! on one thread, one coroutine at a time: their state is a `Cell`, their waiters are
//! reference-counted tasks, and a wake-up is a push onto the ready queue. No atomics, no lock.
//! The types here must take a lock for every operation, allocate a shared wake-up flag for
//! every wait, and reach a waiter on another thread through its scheduler's inbox. Merging the
//! two would make every single-thread send and receive pay for that; keeping them apart keeps
//! the single-thread channel as fast as it was, and the type says which one a program needs.
//!
//! # Implementation
//!
//! Each type keeps its state under a `std::sync::Mutex`, held only for a few instructions and
//! never across a wait (no user code runs under it: values are dropped after it is released, so
//! it cannot be poisoned in a way that matters). Each way to wait has a FIFO queue of
//! one-shot signals (`scheduler::Signal`: a flag and who to wake). A waiter lists a fresh
//! signal under the state lock, releases the lock and blocks until notified; a notifier takes
//! the first signal off the list under the lock and notifies it after releasing the lock.
//! Being taken off the list is the notification: a waiter that wakes for any other reason (its
//! deadline) takes the lock and removes itself; finding itself gone, it was notified after all.
//!
//! A notified waiter re-checks its condition (a newcomer may have got there first) and waits
//! again at the back if it must, except where a notification hands something over directly:
//! [`Mutex`] unlocking (the lock) and [`Semaphore`] releasing (the permit), so a stream of
//! newcomers cannot starve a waiter. A waiter that leaves while its coroutine is cancelled (the
//! cancellation unwinds its stack through the wait) removes itself in a drop guard; if it had
//! been notified already, it passes the notification on (to the next receiver, the next locker,
//! the next acquirer), so a cancellation never strands a value, the lock or a permit.
//!
//! A wait across threads cannot know that no other thread will ever wake it, so unlike the
//! single-thread types a call that nothing can complete blocks for ever (like std's), instead of
//! returning a deadlock error.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdGuard, PoisonError};
use std::time::Instant;

use crate::scheduler::Signal;

mod chan;
mod condvar;
pub mod mpmc;
pub mod mpsc;
mod mutex;
pub mod oneshot;
mod semaphore;
mod wait_group;

pub use condvar::Condvar;
pub use mutex::{Mutex, MutexGuard};
pub use semaphore::{Semaphore, SemaphorePermit};
pub use wait_group::WaitGroup;

/// Locks a state lock. Poisoning is ignored: no user code runs under these locks, so a panic
/// cannot leave a state half-updated.
fn lock<S>(state: &StdMutex<S>) -> StdGuard<'_, S> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Notifies `signal`, if any: called after the state lock is released.
fn notify(signal: Option<Arc<Signal>>) {
    if let Some(s) = signal {
        s.notify();
    }
}

/// Waiters of one kind, first come first served; see "Implementation". A signal is notified only
/// after it was taken off its queue.
#[derive(Default)]
struct WaitQueue(VecDeque<Arc<Signal>>);

impl WaitQueue {
    const fn new() -> WaitQueue {
        WaitQueue(VecDeque::new())
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes off the longest-waiting signal, for the caller to notify.
    fn pop(&mut self) -> Option<Arc<Signal>> {
        self.0.pop_front()
    }

    /// Takes off every signal, for the caller to notify ([`notify_all`]).
    fn take(&mut self) -> VecDeque<Arc<Signal>> {
        std::mem::take(&mut self.0)
    }

    fn remove(&mut self, signal: &Arc<Signal>) -> bool {
        match self.0.iter().position(|s| Arc::ptr_eq(s, signal)) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.len())
    }
}

/// The [`Select`] of a state that is one queue.
fn itself(q: &mut WaitQueue) -> &mut WaitQueue {
    q
}

/// Notifies every signal of a [`WaitQueue::take`].
fn notify_all(signals: VecDeque<Arc<Signal>>) {
    for s in signals {
        s.notify();
    }
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woken {
    /// Taken off the queue by a notifier.
    Notified,
    /// The deadline passed while still listed.
    NotNotified,
}

/// Selects the queue a wait lists on, in the state `S`.
type Select<S> = fn(&mut S) -> &mut WaitQueue;

/// What a waiter that was notified but gives up (its coroutine is being cancelled) does instead
/// of acting on the notification: passes it on, returning whom to notify (after the lock).
type Abandon<'f, S> = &'f dyn Fn(&mut S) -> Option<Arc<Signal>>;

/// A waiter's signal while it is listed on a queue of the state under `state`. Dropped without
/// [`wait`](Listed::wait) returning (unwinding), it takes itself off and passes on a
/// notification it already had.
struct Listed<'a, 'f, S> {
    state: &'a StdMutex<S>,
    select: Select<S>,
    abandon: Abandon<'f, S>,
    signal: Arc<Signal>,
    /// Set when `wait` has settled the entry.
    settled: bool,
}

impl<'a, 'f, S> Listed<'a, 'f, S> {
    /// Lists a new signal for the caller on `select(st)`; `st` is the locked state of `state`,
    /// which the caller then releases before it calls [`wait`](Listed::wait). An error when the
    /// caller cannot wait (a coroutine being cancelled, a bare coroutine): nothing is listed.
    fn new(
        state: &'a StdMutex<S>,
        st: &mut S,
        select: Select<S>,
        abandon: Abandon<'f, S>,
    ) -> io::Result<Listed<'a, 'f, S>> {
        let signal = Signal::new()?;
        select(st).0.push_back(signal.clone());
        Ok(Listed {
            state,
            select,
            abandon,
            signal,
            settled: false,
        })
    }

    /// Blocks until notified or `deadline`; returns how the wait ended with the state locked
    /// again. An error when the wait failed (a notification it had is passed on).
    fn wait(mut self, deadline: Option<Instant>) -> io::Result<(Woken, StdGuard<'a, S>)> {
        let waited = self.signal.wait(deadline);
        let mut st = lock(self.state);
        self.settled = true;
        let notified = self.signal.is_notified() || !(self.select)(&mut st).remove(&self.signal);
        match waited {
            Ok(_) if notified => Ok((Woken::Notified, st)),
            Ok(_) => Ok((Woken::NotNotified, st)),
            Err(e) => {
                if notified {
                    let next = (self.abandon)(&mut st);
                    drop(st);
                    notify(next);
                }
                Err(e)
            }
        }
    }
}

impl<S> Drop for Listed<'_, '_, S> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Unwinding out of the wait: off the queue, and on with a notification it had.
        let mut st = lock(self.state);
        if self.signal.is_notified() || !(self.select)(&mut st).remove(&self.signal) {
            let next = (self.abandon)(&mut st);
            drop(st);
            notify(next);
        }
    }
}

/// Lists the caller on `select(st)`, releases the state, and blocks until notified or
/// `deadline` (see [`Listed`]).
fn wait<'a, S>(
    state: &'a StdMutex<S>,
    mut st: StdGuard<'a, S>,
    select: Select<S>,
    deadline: Option<Instant>,
    abandon: Abandon<'_, S>,
) -> io::Result<(Woken, StdGuard<'a, S>)> {
    let listed = Listed::new(state, &mut st, select, abandon)?;
    drop(st);
    listed.wait(deadline)
}

/// Whether `deadline` has passed.
fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}
