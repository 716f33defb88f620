//! A mutex for coroutines and threads of any thread; see [`Mutex`].
//!
//! The lock word is an atomic: `LOCKED`, plus `QUEUED` while waiters may be listed. An
//! uncontended lock and unlock are one compare-and-swap each. Everything else happens under the
//! wait queue's lock, which is the only place `QUEUED` is set and the only place a locked
//! mutex with `QUEUED` is unlocked: a locker sets `QUEUED` (by compare-and-swap from `LOCKED`,
//! so an unlock cannot slip between its look and its listing) and lists itself; an unlocker
//! that finds `QUEUED` takes the queue lock and hands the lock to the first waiter, keeping
//! `LOCKED` (and `QUEUED` while more wait), or stores 0 when nobody is left (a waiter that timed
//! out leaves `QUEUED` stale; the next unlock clears it). So the word is never `QUEUED` without
//! `LOCKED`: a free mutex has no waiters, and [`Mutex::try_lock`] cannot overtake one.

use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use super::{WaitQueue, Woken, itself, lock, notify, wait};
use crate::scheduler::Signal;

const LOCKED: u8 = 1;
const QUEUED: u8 = 2;

/// A mutual-exclusion lock shared between threads, whose [`lock`](Mutex::lock) parks a
/// coroutine (its thread's other coroutines run on) and blocks a plain thread.
///
/// A guard may be held across a suspension (a sleep, a socket wait, a channel receive), which a
/// `std::sync::Mutex` held by a coroutine must not be: the thread's other coroutines that want
/// it would block the whole thread. The lock goes to waiters in the order they asked for it:
/// unlocking hands it to the first one directly.
///
/// Unlike std's, it is never poisoned: a guard dropped by a panic (or a cancellation) unlocks
/// it like any other, and the next `lock` gets the data as the panicking holder left it.
///
/// ```
/// use std::sync::Arc;
/// use evco::sync::shared::Mutex;
///
/// let counter = Arc::new(Mutex::new(0u64));
/// let threads: Vec<_> = (0..2)
///     .map(|_| {
///         let counter = counter.clone();
///         std::thread::spawn(move || {
///             evco::run(move || {
///                 for _ in 0..100 {
///                     let counter = counter.clone();
///                     evco::spawn(move || {
///                         let mut n = counter.lock().unwrap();
///                         evco::yield_now().unwrap(); // held across a suspension
///                         *n += 1;
///                     });
///                 }
///             })
///         })
///     })
///     .collect();
/// threads.into_iter().for_each(|t| t.join().unwrap());
/// assert_eq!(*counter.lock().unwrap(), 200);
/// ```
///
/// # Send
///
/// `Send` and `Sync` when `T` is `Send`. A [`MutexGuard`] is neither: it stays with the
/// coroutine or thread that locked, as a coroutine never moves between threads.
pub struct Mutex<T: ?Sized> {
    state: AtomicU8,
    waiters: StdMutex<WaitQueue>,
    value: UnsafeCell<T>,
}

// SAFETY: the mutex hands out access to `value` only through a `MutexGuard`, and only one guard
// exists at a time (`LOCKED` is set by exactly one `lock`/`try_lock`, or handed to exactly one
// waiter, until that guard's drop). So `&Mutex<T>` on several threads gives them `T` one at a
// time, which needs `T: Send` only, as for `std::sync::Mutex`.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

/// Access to the data of a locked [`Mutex`]; unlocks it when dropped.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    pub(super) mutex: &'a Mutex<T>,
    _not_send: PhantomData<*mut ()>,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            state: AtomicU8::new(0),
            waiters: StdMutex::new(WaitQueue::new()),
            value: UnsafeCell::new(value),
        }
    }

    /// The data, taking the mutex apart.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks the mutex, waiting while another holds it: a coroutine parks, a thread blocks.
    ///
    /// An error when the caller cannot wait: a coroutine being cancelled, a bare
    /// [`Coroutine`](crate::coroutine::Coroutine). A caller that holds the lock itself waits for
    /// ever.
    pub fn lock(&self) -> io::Result<MutexGuard<'_, T>> {
        if let Some(guard) = self.try_lock() {
            return Ok(guard);
        }
        let mut q = lock(&self.waiters);
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s == 0 {
                if self.take(0) {
                    return Ok(self.guard());
                }
                continue;
            }
            if s == LOCKED && !self.take_from(LOCKED, LOCKED | QUEUED) {
                continue;
            }
            // Listed: the unlock that sees `QUEUED` hands the lock over under the queue lock.
            let (woken, relocked) = wait(&self.waiters, q, itself, None, &|q| self.hand_off(q))?;
            if woken == Woken::Notified {
                return Ok(self.guard());
            }
            q = relocked;
        }
    }

    /// Locks the mutex if it is free (a free mutex has nobody waiting).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.take(0).then(|| self.guard())
    }

    /// Whether some guard holds it now.
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & LOCKED != 0
    }

    /// The data, through an exclusive borrow (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    fn take(&self, from: u8) -> bool {
        self.take_from(from, LOCKED)
    }

    fn take_from(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn guard(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            mutex: self,
            _not_send: PhantomData,
        }
    }

    /// Hands the lock to the first waiter (returned, to be notified), or frees it. Under the
    /// queue lock.
    fn hand_off(&self, q: &mut WaitQueue) -> Option<Arc<Signal>> {
        let next = q.pop();
        let s = match (&next, q.is_empty()) {
            (None, _) => 0,
            (Some(_), true) => LOCKED,
            (Some(_), false) => LOCKED | QUEUED,
        };
        self.state.store(s, Ordering::Release);
        next
    }

    /// Frees the lock, or hands it to the first waiter.
    pub(super) fn unlock(&self) {
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        let mut q = lock(&self.waiters);
        let next = self.hand_off(&mut q);
        drop(q);
        notify(next);
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T: ?Sized> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("locked", &self.is_locked())
            .field("waiters", &*lock(&self.waiters))
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while its mutex is locked, and only one guard per lock
        // (see the `Sync` impl); `LOCKED` was taken with `Acquire` (or handed over under the
        // queue lock after a `Release` store), so the previous holder's writes are visible.
        // No `&mut` to the data exists meanwhile except through this guard, which `&self`
        // borrows.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this borrow the only one.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
