//! A condition variable for the coroutines of one thread; see [`Condvar`].

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use super::{MutexGuard, WaitList, Woken};
use crate::scheduler::Waker;

/// Parks coroutines until another one signals that a condition under a
/// [`Mutex`](super::Mutex) may have changed.
///
/// As with std's, a wake-up says "look again", not "it holds": wait in a loop over the
/// condition ([`wait_while`](Condvar::wait_while) does that).
///
/// ```
/// use std::rc::Rc;
/// use evco::sync::{Condvar, Mutex};
///
/// evco::run(|| {
///     let state = Rc::new((Mutex::new(false), Condvar::new()));
///     let s = state.clone();
///     let waiter = evco::spawn(move || {
///         let (ready, cv) = &*s;
///         let ready = cv.wait_while(ready.lock().unwrap(), |r| !*r).unwrap();
///         assert!(*ready);
///     });
///     evco::yield_now().unwrap(); // the waiter parks
///     *state.0.lock().unwrap() = true;
///     state.1.notify_one();
///     waiter.join().unwrap();
/// });
/// ```
///
/// # Send
///
/// `!Send` and `!Sync`: its waiters are coroutines of one thread's scheduler.
pub struct Condvar {
    waiters: WaitList,
    _not_send: PhantomData<*mut ()>,
}

impl Condvar {
    /// A condition variable with no waiters.
    pub const fn new() -> Condvar {
        Condvar {
            waiters: WaitList::new(),
            _not_send: PhantomData,
        }
    }

    /// Unlocks `guard`'s mutex, parks until notified, and locks it again.
    ///
    /// An error, before anything is unlocked, when the caller cannot park: outside a scheduled
    /// coroutine (there is no loop to run on a caller's behalf while it holds a lock other
    /// coroutines need), or in one that is being cancelled. The guard is dropped then, which
    /// unlocks the mutex.
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
        // Fails (and unlocks, dropping the guard) now if this caller could not park below: not
        // in a scheduled coroutine, cancelling, or (timed) no timer alarm to be had.
        Waker::current()?;
        if deadline.is_some() {
            crate::scheduler::prepare_timeouts()?;
        }
        let mutex = guard.mutex();
        // The lock passes to the next locker while this coroutine waits; the guard must not
        // unlock it a second time.
        std::mem::forget(guard);
        mutex.unlock();
        let woken = self.waiters.wait(deadline, &|| {
            self.waiters.notify_one();
        });
        // A notification this coroutine had when the relock below unwinds (cancelled while it
        // waits for the mutex) goes on to the next waiter: nobody else would act on it.
        let pass_on = PassOn(self, matches!(woken, Ok(Woken::Notified)));
        // Parking can only fail for reasons checked above; relock either way.
        let guard = mutex.lock()?;
        std::mem::forget(pass_on);
        // Not notified is not timed out: a park may end early (see `WaitList::wait`).
        let timed_out =
            woken? == Woken::NotNotified && deadline.is_some_and(|d| Instant::now() >= d);
        Ok((guard, timed_out))
    }

    /// Wakes the coroutine that has waited longest, if any.
    pub fn notify_one(&self) {
        self.waiters.notify_one();
    }

    /// Wakes every waiting coroutine.
    pub fn notify_all(&self) {
        self.waiters.notify_all();
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

impl Default for Condvar {
    fn default() -> Condvar {
        Condvar::new()
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("waiters", &self.waiters.len())
            .finish()
    }
}
