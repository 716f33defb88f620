//! The wait primitive every blocking call in evco becomes, and fd helpers around it.
//!
//! [`wait`] registers a one-shot libevent event for the fd and suspends the running coroutine;
//! the event's callback resumes it. See the `scheduler` module for the lifecycle of
//! that event.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::event::What;
use crate::scheduler::{self, Scheduler};

/// What a [`wait`] waits for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interest(What);

impl Interest {
    /// The fd is readable (or at EOF, or has an error or a pending connection).
    pub const READABLE: Interest = Interest(What::READ);
    /// The fd is writable (or has an error, or a non-blocking connect finished).
    pub const WRITABLE: Interest = Interest(What::WRITE);

    /// Whether it includes readability.
    pub fn is_readable(self) -> bool {
        self.0.contains(What::READ)
    }
    /// Whether it includes writability.
    pub fn is_writable(self) -> bool {
        self.0.contains(What::WRITE)
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_readable(), self.is_writable()) {
            (true, true) => write!(f, "READABLE | WRITABLE"),
            (true, false) => write!(f, "READABLE"),
            (false, true) => write!(f, "WRITABLE"),
            (false, false) => write!(f, "(none)"),
        }
    }
}

/// What a [`wait`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ready(What);

impl Ready {
    /// The fd became readable.
    pub fn is_readable(self) -> bool {
        self.0.contains(What::READ)
    }
    /// The fd became writable.
    pub fn is_writable(self) -> bool {
        self.0.contains(What::WRITE)
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready")
            .field("readable", &self.is_readable())
            .field("writable", &self.is_writable())
            .finish()
    }
}

/// Suspends the running coroutine until `fd` is ready for `interest`, or `timeout` passes.
///
/// One-shot: the event is registered for this call only and is gone when it returns (or when the
/// coroutine is cancelled while it waits). Errors: [`io::ErrorKind::TimedOut`] on timeout;
/// `EBADF` for a bad fd or when the fd is closed through [`close`] while waiting;
/// [`io::ErrorKind::InvalidInput`] outside a scheduled coroutine.
pub fn wait(fd: impl AsRawFd, interest: Interest, timeout: Option<Duration>) -> io::Result<Ready> {
    let fd = fd.as_raw_fd();
    // libevent's epoll changelist applies a registration at the next dispatch and only logs a
    // failure there, so a bad fd would never wake its waiter: check it here. (evco's own I/O
    // paths skip this syscall: they wait only after a call on the fd returned EAGAIN.)
    // SAFETY: F_GETFD only inspects the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let what = if scheduler::is_registered(fd) {
        // An evco socket with a persistent edge-triggered event: an edge may already have come
        // and gone, so look at the level first (this path is for raw fds of evco's own sockets
        // only; evco's I/O never takes it).
        if let Some(ready) =
            crate::os::ready_now(fd, interest.is_readable(), interest.is_writable())?
        {
            return Ok(Ready(ready));
        }
        let single = if interest.is_readable() {
            What::READ
        } else {
            What::WRITE
        };
        if interest.is_readable() && interest.is_writable() {
            scheduler::wait_event(fd, interest.0, timeout)?
        } else {
            scheduler::wait_registered(fd, single, timeout)?
        }
    } else {
        scheduler::wait_event(fd, interest.0, timeout)?
    };
    if what.contains(What::TIMEOUT) {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "wait timed out"));
    }
    Ok(Ready(what))
}

/// Closes `fd`, first waking every coroutine of this thread waiting on it with `EBADF` (closing
/// an fd that epoll watches would otherwise leave its waiters asleep forever).
pub fn close(fd: RawFd) -> io::Result<()> {
    if let Some(s) = Scheduler::current() {
        s.notify_close(fd);
    }
    scheduler::deregister(fd);
    // SAFETY: closing a descriptor has no memory-safety preconditions; the caller owns `fd`.
    if unsafe { libc::close(fd) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// THE retry primitive every evco I/O call is: try the non-blocking operation; on
/// `WouldBlock`, wait for `interest` on `fd` (suspending the coroutine, or `poll(2)` outside
/// coroutines, as a blocking socket would), then try again. `EINTR` retries at once. With a
/// `timeout`, the whole call fails with [`io::ErrorKind::TimedOut`] when it expires.
pub(crate) fn retry<T>(
    fd: RawFd,
    interest: Interest,
    timeout: Option<Duration>,
    op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    // A timeout too long for `Instant` is no timeout at all.
    retry_until(
        fd,
        interest,
        timeout.and_then(crate::event::deadline_after),
        op,
    )
}

/// [`retry`] until `deadline` (none: no limit).
fn retry_until<T>(
    fd: RawFd,
    interest: Interest,
    deadline: Option<Instant>,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
        wait_owned(fd, interest, remaining(deadline)?)?;
    }
}

/// What is left until `deadline` (`None`: no deadline, and no clock read); `TimedOut` once it
/// has passed.
fn remaining(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    let Some(d) = deadline else { return Ok(None) };
    match d.checked_duration_since(Instant::now()) {
        Some(r) if !r.is_zero() => Ok(Some(r)),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "operation timed out",
        )),
    }
}

/// A read on an evco-owned stream socket: [`retry`], but when the socket's last read came back
/// short and no readable edge arrived since, wait for one first instead of paying for a `recv`
/// that would say `EAGAIN` (request/response loops save a syscall per message). `len` is the
/// space offered. `timeout` bounds the whole read, that first wait included.
pub(crate) fn read_owned(
    fd: RawFd,
    timeout: Option<Duration>,
    len: usize,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    let deadline = timeout.and_then(crate::event::deadline_after);
    if !scheduler::maybe_readable(fd) && crate::coroutine::is_coroutine() {
        wait_owned(fd, Interest::READABLE, timeout)?;
    }
    let n = retry_until(fd, Interest::READABLE, deadline, op)?;
    if n > 0 && n < len {
        scheduler::note_drained(fd);
    }
    Ok(n)
}

/// One readiness wait after `EAGAIN` on an evco-owned socket: the socket's registration inside
/// a scheduled coroutine, `poll(2)` elsewhere.
fn wait_owned(fd: RawFd, interest: Interest, timeout: Option<Duration>) -> io::Result<()> {
    if crate::coroutine::is_coroutine() {
        let what = if interest.is_writable() {
            What::WRITE
        } else {
            What::READ
        };
        timed_out(scheduler::wait_registered(fd, what, timeout)?)
    } else {
        crate::os::poll(fd, interest.is_readable(), interest.is_writable(), timeout)
    }
}

/// One one-shot readiness wait (for fds no evco socket owns yet, e.g. a connect in progress):
/// the scheduler's inside a scheduled coroutine, `poll(2)` elsewhere.
pub(crate) fn wait_for(fd: RawFd, interest: Interest, timeout: Option<Duration>) -> io::Result<()> {
    if crate::coroutine::is_coroutine() {
        timed_out(scheduler::wait_event(fd, interest.0, timeout)?)
    } else {
        crate::os::poll(fd, interest.is_readable(), interest.is_writable(), timeout)
    }
}

fn timed_out(what: What) -> io::Result<()> {
    if what.contains(What::TIMEOUT) {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "operation timed out",
        ))
    } else {
        Ok(())
    }
}
