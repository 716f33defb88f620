//! A counting semaphore for coroutines and threads of any thread; see [`Semaphore`].

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use super::{WaitQueue, Woken, lock, notify, passed, wait};
use crate::scheduler::Signal;

/// A count of permits: [`acquire`](Semaphore::acquire) takes one, waiting while there is none
/// (a coroutine parks, a thread blocks), and the [`SemaphorePermit`] gives it back when dropped.
///
/// Permits go to waiters in the order they asked: a released permit is handed to the first
/// waiter directly, so newcomers cannot starve it. While anyone waits no permit is free.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use evco::sync::shared::Semaphore;
///
/// // At most 3 of the coroutines of two threads in the section at once.
/// let limit = Arc::new(Semaphore::new(3));
/// let inside = Arc::new(AtomicUsize::new(0));
/// let threads: Vec<_> = (0..2)
///     .map(|_| {
///         let (limit, inside) = (limit.clone(), inside.clone());
///         std::thread::spawn(move || {
///             evco::run(move || {
///                 for _ in 0..10 {
///                     let (limit, inside) = (limit.clone(), inside.clone());
///                     evco::spawn(move || {
///                         let _permit = limit.acquire().unwrap();
///                         assert!(inside.fetch_add(1, Ordering::SeqCst) < 3);
///                         evco::time::sleep(Duration::from_millis(1));
///                         inside.fetch_sub(1, Ordering::SeqCst);
///                     });
///                 }
///             })
///         })
///     })
///     .collect();
/// threads.into_iter().for_each(|t| t.join().unwrap());
/// assert_eq!(limit.available_permits(), 3);
/// ```
pub struct Semaphore {
    state: StdMutex<State>,
}

struct State {
    /// Free permits; 0 while anyone waits.
    permits: usize,
    /// Free permits and those taken (not forgotten): what `add_permits` keeps within
    /// `usize::MAX`, so that giving a permit back never overflows `permits`.
    total: usize,
    waiters: WaitQueue,
}

impl State {
    /// Gives one permit back: to the first waiter (returned, to be notified), or to the count.
    fn release(&mut self) -> Option<Arc<Signal>> {
        let next = self.waiters.pop();
        if next.is_none() {
            self.permits += 1;
        }
        next
    }
}

/// One permit of a [`Semaphore`], given back when dropped.
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
}

impl Semaphore {
    /// A semaphore with `permits` free permits.
    pub const fn new(permits: usize) -> Semaphore {
        Semaphore {
            state: StdMutex::new(State {
                permits,
                total: permits,
                waiters: WaitQueue::new(),
            }),
        }
    }

    /// Takes a permit, waiting while there is none.
    ///
    /// An error when the caller cannot wait (a coroutine being cancelled, a bare
    /// [`Coroutine`](crate::coroutine::Coroutine)).
    pub fn acquire(&self) -> io::Result<SemaphorePermit<'_>> {
        Ok(self.acquire_until(None)?.expect("no deadline, no timeout"))
    }

    /// [`acquire`](Self::acquire) for at most `timeout`: `Ok(None)` when it passed first.
    pub fn acquire_timeout(&self, timeout: Duration) -> io::Result<Option<SemaphorePermit<'_>>> {
        // A timeout too long for `Instant` never passes: `None`.
        self.acquire_until(crate::event::deadline_after(timeout))
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        let mut st = lock(&self.state);
        if st.permits == 0 {
            return None;
        }
        st.permits -= 1;
        Some(SemaphorePermit { sem: self })
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> io::Result<Option<SemaphorePermit<'_>>> {
        let mut st = lock(&self.state);
        loop {
            if st.permits > 0 {
                st.permits -= 1;
                return Ok(Some(SemaphorePermit { sem: self }));
            }
            if passed(deadline) {
                return Ok(None);
            }
            // A permit handed to this waiter that it cannot take goes back.
            let (woken, relocked) = wait(
                &self.state,
                st,
                |s| &mut s.waiters,
                deadline,
                &State::release,
            )?;
            if woken == Woken::Notified {
                // Handed over by `release`: never counted as free.
                return Ok(Some(SemaphorePermit { sem: self }));
            }
            st = relocked;
        }
    }

    /// Adds `n` permits: handed to up to `n` waiters, the rest free.
    ///
    /// # Panics
    ///
    /// When the permits, free and taken, would pass `usize::MAX` (nothing is changed then):
    /// wrapping would lose every permit.
    pub fn add_permits(&self, n: usize) {
        let mut st = lock(&self.state);
        let Some(total) = st.total.checked_add(n) else {
            let had = st.total;
            drop(st);
            panic!(
                "Semaphore::add_permits({n}) with {had} free and taken: more than usize::MAX \
                 permits"
            );
        };
        st.total = total;
        let woken: Vec<_> = (0..n).map_while(|_| st.waiters.pop()).collect();
        st.permits += n - woken.len();
        drop(st);
        woken.into_iter().for_each(|s| s.notify());
    }

    /// Number of free permits now.
    pub fn available_permits(&self) -> usize {
        lock(&self.state).permits
    }
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken for good: dropping the semaphore's count by one.
    pub fn forget(self) {
        lock(&self.sem.state).total -= 1;
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        let next = lock(&self.sem.state).release();
        notify(next);
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("Semaphore")
            .field("permits", &st.permits)
            .field("waiters", &st.waiters)
            .finish()
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}
