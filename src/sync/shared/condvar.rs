//! A condition variable for coroutines and threads of any thread; see [`Condvar`].

use std::fmt;
use std::io;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use super::{Listed, MutexGuard, WaitQueue, Woken, itself, lock, notify, notify_all};
use crate::coroutine;

/// Blocks coroutines and threads until another one signals that a condition under a
/// [`shared::Mutex`](super::Mutex) may have changed.
///
/// As with std's, a wake-up says "look again", not "it holds": wait in a loop over the
/// condition ([`wait_while`](Condvar::wait_while) does that). A waiter is listed before the
/// mutex is unlocked, so a notification sent under the mutex after that is never missed.
///
/// ```
/// use std::sync::Arc;
/// use evco::sync::shared::{Condvar, Mutex};
///
/// let state = Arc::new((Mutex::new(false), Condvar::new()));
/// let s = state.clone();
/// let waiter = std::thread::spawn(move || {
///     evco::run(move || {
///         let (ready, cv) = &*s;
///         let ready = cv.wait_while(ready.lock().unwrap(), |r| !*r).unwrap();
///         assert!(*ready);
///     })
/// });
/// *state.0.lock().unwrap() = true;
/// state.1.notify_all();
/// waiter.join().unwrap();
/// ```
#[derive(Default)]
pub struct Condvar {
    waiters: StdMutex<WaitQueue>,
}

impl Condvar {
    /// A condition variable with no waiters.
    pub const fn new() -> Condvar {
        Condvar {
            waiters: StdMutex::new(WaitQueue::new()),
        }
    }

    /// Unlocks `guard`'s mutex, blocks until notified, and locks it again.
    ///
    /// An error, before anything is unlocked, when the caller cannot wait (a coroutine being
    /// cancelled, a bare [`Coroutine`](crate::coroutine::Coroutine)); the guard is dropped then,
    /// which unlocks the mutex.
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T>) -> io::Result<MutexGuard<'a, T>> {
        self.wait_until(guard, None).map(|(g, _)| g)
    }

    /// [`wait`](Self::wait) for at most `timeout`; the flag is true when the timeout passed
    /// without a notification.
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> io::Result<(MutexGuard<'a, T>, bool)> {
        // A timeout too long for `Instant` never passes: `None`.
        self.wait_until(guard, crate::event::deadline_after(timeout))
    }

    /// Waits while `condition` holds for the data, checking it before every wait and after
    /// every wake-up.
    pub fn wait_while<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> io::Result<MutexGuard<'a, T>> {
        while condition(&mut *guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    fn wait_until<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> io::Result<(MutexGuard<'a, T>, bool)> {
        if deadline.is_some() && coroutine::is_coroutine() {
            // Fails (and unlocks, dropping the guard) now rather than after unlocking.
            crate::scheduler::prepare_timeouts()?;
        }
        let mut q = lock(&self.waiters);
        // A notification this waiter took but cannot act on goes to the next one.
        let listed = Listed::new(&self.waiters, &mut q, itself, &|q| q.pop())?;
        drop(q);
        let mutex = guard.mutex;
        // The lock passes to the next locker while this one waits; the guard must not unlock
        // it a second time.
        std::mem::forget(guard);
        mutex.unlock();
        let woken = listed.wait(deadline).map(|(w, _)| w);
        // A notification this waiter had when the relock below fails or unwinds (a coroutine
        // cancelled while it waits for the mutex) goes on to the next waiter: nobody else
        // would act on it.
        let pass_on = PassOn(self, matches!(woken, Ok(Woken::Notified)));
        // Relock either way (a cancelled coroutine unwinds out of the wait above instead).
        let guard = mutex.lock()?;
        std::mem::forget(pass_on);
        let timed_out = woken? == Woken::NotNotified && super::passed(deadline);
        Ok((guard, timed_out))
    }

    /// Wakes the waiter that has waited longest, if any.
    pub fn notify_one(&self) {
        let first = lock(&self.waiters).pop();
        notify(first);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        let all = lock(&self.waiters).take();
        notify_all(all);
    }
}

/// Passes a notification on unless forgotten (see `wait_until`).
struct PassOn<'a>(&'a Condvar, bool);

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.notify_one();
        }
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("waiters", &*lock(&self.waiters))
            .finish()
    }
}
