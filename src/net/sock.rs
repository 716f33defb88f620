//! [`Sock`]: the socket inside every `net` type, which owns the fd's registration.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::AsRawFd;

/// A std socket that evco owns, non-blocking, whose fd may carry a persistent edge-triggered
/// registration in this thread's scheduler (see the scheduler's "Registered sockets").
///
/// # Invariant
///
/// The registration goes before the fd does: `Drop` and [`into_inner`](Sock::into_inner)
/// deregister first, so a later socket that reuses the fd number never inherits a stale event.
///
/// # Send
///
/// `!Send`, and so is every `net` type: a registration lives in the scheduler of the thread
/// that made it, and only that thread can remove it. A socket that moved to another thread and
/// closed there would leave its event behind, to swallow the wake-ups of the next socket with
/// the same fd number. Move a socket across threads with `into_std` and `from_std`.
pub(crate) struct Sock<T: AsRawFd>(ManuallyDrop<T>, PhantomData<*mut ()>);

impl<T: AsRawFd> Sock<T> {
    pub(crate) fn new(socket: T) -> Sock<T> {
        Sock(ManuallyDrop::new(socket), PhantomData)
    }

    /// Hands the socket out (to std, or as a raw fd), without a registration.
    pub(crate) fn into_inner(self) -> T {
        crate::scheduler::deregister(self.0.as_raw_fd());
        let mut me = ManuallyDrop::new(self);
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
        crate::scheduler::deregister(self.0.as_raw_fd());
        // SAFETY: dropped once, here; `self.0` is not touched afterwards.
        unsafe { ManuallyDrop::drop(&mut self.0) };
    }
}
