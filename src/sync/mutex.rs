//! A mutex for the coroutines of one thread; see [`Mutex`].

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::{WaitList, Woken};
use crate::coroutine;
use crate::scheduler;

/// A mutual-exclusion lock whose [`lock`](Mutex::lock) parks the coroutine, not the thread.
///
/// Coroutines of one thread never run at the same time, so a `RefCell` already protects data
/// between two suspensions. A `Mutex` is for a critical section that suspends: writing a
/// message in several parts to a shared connection, or refreshing a shared cache entry over
/// the network, while other coroutines that want the same data wait their turn. The lock goes
/// to waiters in the order they asked for it (unlocking hands it to the first one directly).
///
/// Unlike std's, it is never poisoned: a guard dropped by a panic (or a cancellation) unlocks
/// it like any other, and the next `lock` gets the data as the panicking holder left it.
///
/// ```
/// use std::rc::Rc;
/// use std::time::Duration;
/// use evco::sync::Mutex;
///
/// let log = evco::run(|| {
///     let log = Rc::new(Mutex::new(Vec::new()));
///     let writers: Vec<_> = (0..3)
///         .map(|id| {
///             let log = log.clone();
///             evco::spawn(move || {
///                 let mut entries = log.lock().unwrap();
///                 entries.push(format!("{id}: begin"));
///                 evco::time::sleep(Duration::from_millis(1)); // others wait, not interleave
///                 entries.push(format!("{id}: end"));
///             })
///         })
///         .collect();
///     writers.into_iter().for_each(|w| w.join().unwrap());
///     Rc::try_unwrap(log).unwrap().into_inner()
/// });
/// assert_eq!(log, ["0: begin", "0: end", "1: begin", "1: end", "2: begin", "2: end"]);
/// ```
///
/// # Send
///
/// `!Send` and `!Sync`: its waiters are coroutines of one thread's scheduler.
pub struct Mutex<T: ?Sized> {
    locked: Cell<bool>,
    waiters: WaitList,
    _not_send: PhantomData<*mut ()>,
    value: UnsafeCell<T>,
}

/// Access to the data of a locked [`Mutex`]; unlocks it when dropped.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            locked: Cell::new(false),
            waiters: WaitList::new(),
            _not_send: PhantomData,
            value: UnsafeCell::new(value),
        }
    }

    /// The data, taking the mutex apart.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks the mutex, parking the coroutine while another holds it.
    ///
    /// Outside a coroutine it runs the event loop until the mutex is free. An error when the
    /// caller cannot wait: a coroutine being cancelled, a bare
    /// [`Coroutine`](crate::coroutine::Coroutine), or a caller outside any coroutine whose loop
    /// has nothing left that could unlock it (including the caller holding it itself).
    pub fn lock(&self) -> io::Result<MutexGuard<'_, T>> {
        if let Some(guard) = self.try_lock() {
            return Ok(guard);
        }
        if !coroutine::is_coroutine() {
            scheduler::block_outside(|| !self.locked.get(), None)?;
            self.locked.set(true);
            return Ok(MutexGuard { mutex: self });
        }
        loop {
            // Cancelled after the lock was handed over: hand it on.
            match self.waiters.wait(None, &|| self.unlock())? {
                // `unlock` handed it over: still locked, now ours.
                Woken::Notified => return Ok(MutexGuard { mutex: self }),
                Woken::NotNotified => {
                    if let Some(guard) = self.try_lock() {
                        return Ok(guard);
                    }
                }
            }
        }
    }

    /// Locks the mutex if it is free and no coroutine is waiting for it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        if self.locked.get() || self.waiters.len() > 0 {
            return None;
        }
        self.locked.set(true);
        Some(MutexGuard { mutex: self })
    }

    /// Whether some guard holds it now.
    pub fn is_locked(&self) -> bool {
        self.locked.get()
    }

    /// The data, through an exclusive borrow (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// Hands the lock to the first waiter, or frees it.
    pub(crate) fn unlock(&self) {
        if !self.waiters.notify_one() {
            self.locked.set(false);
        }
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
            .field("locked", &self.locked.get())
            .field("waiters", &self.waiters.len())
            .finish_non_exhaustive()
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// The mutex this guard holds.
    pub(crate) fn mutex(&self) -> &'a Mutex<T> {
        self.mutex
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while its mutex is locked, and only one guard per lock
        // (made by `lock`/`try_lock`, which set or inherit `locked`); the mutex is `!Sync`, so
        // no other thread can reach the data. Hence no `&mut` to the data exists meanwhile
        // except through this guard, which `&self` borrows.
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
