//! [`Sock`]: the socket inside every `net` type, which ends the fd's state when it goes.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::AsRawFd;

use crate::io::StateCache;

/// A std socket that evco owns, non-blocking, whose fd may carry a persistent edge-triggered
/// registration in this thread's reactor (see "Registered sockets" in `crate::reactor`).
///
/// # Invariant
///
/// The fd's state goes before the fd does: `Drop` calls `reactor::forget` (the one close path)
/// before the socket closes, and [`into_inner`](Sock::into_inner) drops this thread's state of
/// it, so a later socket that reuses the fd number never inherits a stale event.
///
/// # Send
///
/// `!Send`, and so is every `net` type: a registration lives in the reactor of the thread that
/// made it, and is cheapest to remove there (a close elsewhere has to ring that thread's
/// doorbell). Move a socket across threads with `into_std` and `from_std`.
pub(crate) struct Sock<T: AsRawFd>(ManuallyDrop<T>, StateCache, PhantomData<*mut ()>);

impl<T: AsRawFd> Sock<T> {
    pub(crate) fn new(socket: T) -> Sock<T> {
        Sock(
            ManuallyDrop::new(socket),
            StateCache::default(),
            PhantomData,
        )
    }

    /// Where the socket's reads keep its fd's state between calls (see `io::read_owned`).
    pub(crate) fn state_cache(&self) -> &StateCache {
        &self.1
    }

    /// Hands the socket out (to std, or as a raw fd), without a registration.
    pub(crate) fn into_inner(self) -> T {
        crate::reactor::release(self.0.as_raw_fd());
        let mut me = ManuallyDrop::new(self);
        // The cached state goes now: `me`'s fields are not dropped.
        drop(me.1.take());
        // SAFETY: `me` is never used or dropped again, so the socket is moved out exactly once.
        unsafe { ManuallyDrop::take(&mut me.0) }
    }
}

impl<T: AsRawFd> Deref for Sock<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: AsRawFd> Drop for Sock<T> {
    fn drop(&mut self) {
        let fd = self.0.as_raw_fd();
        crate::reactor::forget(fd);
        // SAFETY: dropped once, here; `self.0` is not touched afterwards.
        unsafe { ManuallyDrop::drop(&mut self.0) };
        crate::reactor::closed(fd);
    }
}
