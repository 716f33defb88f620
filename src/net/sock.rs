//! [`Sock`]: the socket inside every `net` type, which ends the fd's state when it goes.

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use std::time::Duration;

use crate::io::{Interest, StateCache};

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
pub(crate) struct Sock<T: AsRawFd>(
    ManuallyDrop<T>,
    StateCache,
    NonBlocking,
    PhantomData<*mut ()>,
);

/// Whether the owner asked for std's non-blocking mode (`set_nonblocking(true)`): calls then
/// return `WouldBlock` instead of waiting. The fd itself is `O_NONBLOCK` either way. Shared by
/// the handles `try_clone` makes, as `O_NONBLOCK` is by `dup`s in std.
type NonBlocking = Rc<Cell<bool>>;

impl<T: AsRawFd> Sock<T> {
    pub(crate) fn new(socket: T) -> Sock<T> {
        // Without the hooks, nothing else ends a stale close's mark on a number evco's
        // socket takes (CI saw 1 client in 1,000 fail EBADF, a stress 29 waits in 80,000).
        crate::reactor::adopted(socket.as_raw_fd());
        Sock(
            ManuallyDrop::new(socket),
            StateCache::default(),
            NonBlocking::default(),
            PhantomData,
        )
    }

    /// A second handle from `clone` (a `dup` of this socket), sharing this one's mode.
    pub(crate) fn try_clone(&self, clone: impl FnOnce(&T) -> io::Result<T>) -> io::Result<Sock<T>> {
        let mut sock = Sock::new(clone(&self.0)?);
        sock.2 = self.2.clone();
        Ok(sock)
    }

    /// std's `set_nonblocking`: `true` makes every later call on this handle return
    /// `WouldBlock` where it would have waited; `false` restores the cooperative waits.
    pub(crate) fn set_nonblocking(&self, on: bool) {
        self.2.set(on);
    }

    /// Whether std's non-blocking mode is on.
    pub(crate) fn is_nonblocking(&self) -> bool {
        self.2.get()
    }

    /// [`crate::io::retry`] on this socket, or one attempt (`EINTR` retried) in non-blocking
    /// mode.
    pub(crate) fn retry<R>(
        &self,
        interest: Interest,
        timeout: Option<Duration>,
        op: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        if self.is_nonblocking() {
            return once(op);
        }
        crate::io::retry(self.0.as_raw_fd(), interest, timeout, op)
    }

    /// [`crate::io::read_owned`] on this socket, or one attempt in non-blocking mode.
    pub(crate) fn read_owned(
        &self,
        timeout: Option<Duration>,
        len: usize,
        op: impl FnMut() -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.is_nonblocking() {
            return once(op);
        }
        crate::io::read_owned(self.0.as_raw_fd(), Some(&self.1), timeout, len, op)
    }

    /// Hands the socket out (to std, or as a raw fd), without a registration.
    pub(crate) fn into_inner(self) -> T {
        crate::reactor::release(self.0.as_raw_fd());
        let mut me = ManuallyDrop::new(self);
        // The cached state and the mode go now: `me`'s fields are not dropped.
        drop(me.1.take());
        // SAFETY: the mode is read out exactly once here, and `me` is never dropped.
        drop(unsafe { std::ptr::read(&me.2) });
        // SAFETY: `me` is never used or dropped again, so the socket is moved out exactly once.
        unsafe { ManuallyDrop::take(&mut me.0) }
    }
}

/// `recv(MSG_PEEK)`: reads without consuming (std's Unix `peek` is unstable).
pub(crate) fn peek(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call, and
    // `fd` is a descriptor the caller borrows (a bad one is `EBADF`, not UB).
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking attempt of `op`, retried only on `EINTR`.
fn once<R>(mut op: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
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
        let closing = crate::reactor::forget(fd);
        // SAFETY: dropped once, here; `self.0` is not touched afterwards.
        unsafe { ManuallyDrop::drop(&mut self.0) };
        crate::reactor::closed(closing);
    }
}
