//! The wait primitive every blocking call in evco becomes, and the retry loop around it.
//!
//! Every blocking call on an fd is `retry` (or `read_owned` for stream reads): try the
//! non-blocking operation; on `EAGAIN`, wait for readiness, try again. Inside a scheduled
//! coroutine the wait suspends the coroutine: on a socket, for the next edge of its persistent
//! registration in the thread's reactor (see `crate::reactor`); on other fds, and where the
//! backend has no edge triggering, with the coroutine's own one-shot event. Outside coroutines
//! it is `poll(2)`, as a blocking socket would do. [`wait`] is the same wait for a caller's own
//! fd, and [`close`] the close that ends every wait on an fd first.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::event::What;
use crate::fd_table;
use crate::reactor::{self, FdState};
use crate::scheduler;

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
/// One-shot: whatever the wait registers is gone when it returns (or when the coroutine is
/// cancelled while it waits). Errors: [`io::ErrorKind::TimedOut`] on timeout; `EBADF` for a
/// bad fd or when the fd is closed through [`close`] (or a hooked `close`, on any thread) while
/// waiting; [`io::ErrorKind::InvalidInput`] outside a scheduled coroutine.
///
/// Without the `hook` feature evco does not see raw fds being made: one that takes the number
/// of an fd another thread is closing at that moment (past the close's system call, before
/// evco's close path has ended) may get `EBADF` from its first wait. A wait that starts as its
/// own fd is closed must end with `EBADF` (so that a close can end a wait on any thread), and
/// the two look alike; retry on an fd you know is open. With the hooks, and for evco's own
/// sockets, the fd's making clears the earlier close's mark.
pub fn wait(fd: impl AsRawFd, interest: Interest, timeout: Option<Duration>) -> io::Result<Ready> {
    let fd = fd.as_raw_fd();
    // Read first: a close after it, before the wait is listed, shows as a later generation
    // (one under way now is EBADF already).
    let seen = Some(closing_is_ebadf(fd)?);
    // libevent's epoll changelist applies a registration at the next dispatch and only logs a
    // failure there, so a bad fd would never wake its waiter: check it here. (evco's own I/O
    // paths skip this syscall: they wait only after a call on the fd returned EAGAIN.)
    if !crate::os::fd_is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let registered = reactor::find(fd).filter(|st| st.is_registered());
    let what = match registered {
        // A socket registration for an fd that is no longer a socket: the socket was closed
        // where evco could not see it and the number reused. Its state is stale.
        Some(_) if !crate::os::is_socket(fd)? => {
            reactor::renumbered(fd);
            wait_once(fd, interest.0, timeout, seen)?
        }
        Some(st) => {
            // An evco socket with a persistent edge-triggered event: an edge may already have
            // come and gone, so look at the level first (this path is for raw fds of evco's own
            // sockets only; evco's I/O never takes it).
            if let Some(ready) =
                crate::os::ready_now(fd, interest.is_readable(), interest.is_writable())?
            {
                return Ok(Ready(ready));
            }
            if interest.is_readable() && interest.is_writable() {
                wait_once(fd, interest.0, timeout, seen)?
            } else {
                let dir = if interest.is_readable() {
                    What::READ
                } else {
                    What::WRITE
                };
                scheduler::wait_io(timeout, |cx| Ok(st.enlist_edge(dir, cx.token())))?
            }
        }
        None => wait_once(fd, interest.0, timeout, seen)?,
    };
    if what.contains(What::TIMEOUT) {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "wait timed out"));
    }
    Ok(Ready(what))
}

/// A one-shot wait of the running coroutine for `fd` (its own event, listed on the fd's state
/// so that a close ends it).
fn wait_once(
    fd: RawFd,
    what: What,
    timeout: Option<Duration>,
    seen: Option<u32>,
) -> io::Result<What> {
    let st = state_for_wait(fd, false, seen)?;
    once_on(&st, what, timeout)
}

/// The running coroutine's state of `fd` for a wait (see `reactor::for_wait`; `seen`: the
/// fd's generation before the caller last found it open); an error where no wait can run
/// (outside a scheduled coroutine), before anything is made.
fn state_for_wait(fd: RawFd, register: bool, seen: Option<u32>) -> io::Result<Rc<FdState>> {
    scheduler::can_wait()?;
    reactor::for_wait(fd, register, seen).unwrap_or_else(|| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no scheduler on this thread",
        ))
    })
}

/// A one-shot wait for `what` on `st`'s fd. `EBADF` when the fd was closed while it waited:
/// the event that ended the wait (poll's `POLLNVAL`, or readiness of a new fd with the number)
/// can come before the close's own wake-up.
fn once_on(st: &FdState, what: What, timeout: Option<Duration>) -> io::Result<What> {
    let woke = scheduler::wait_io(timeout, |cx| {
        let (ev, callback, token) = cx.oneshot()?;
        // SAFETY: `token` is the task `callback` expects, and the wait's guard deletes `ev`
        // before the wait returns or unwinds, so the task outlives the pending event.
        unsafe { st.enlist_once(ev, what, callback, token) }
    });
    // A wait that could not start enlisted nothing, so nothing took the state out.
    st.unlink_if_idle();
    let woke = woke?;
    if st.is_stale() {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(woke)
}

/// Closes `fd`, first ending every wait on it with `EBADF` (closing an fd that epoll watches
/// would otherwise leave its waiters asleep forever), on this thread or any other.
pub fn close(fd: RawFd) -> io::Result<()> {
    let closing = reactor::forget(fd);
    let r = crate::os::close(fd);
    reactor::closed(closing);
    r
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
    let deadline = timeout.and_then(crate::event::deadline_after);
    let mut st = None;
    let co = crate::coroutine::is_coroutine();
    retry_until(fd, interest, deadline, co.then_some(&mut st), op)
}

/// [`retry`] until `deadline` (none: no limit). `st` is `None` outside a coroutine (waits are
/// `poll(2)`), else the fd's state as far as the caller knows it; a wait fills it in.
fn retry_until<T>(
    fd: RawFd,
    interest: Interest,
    deadline: Option<Instant>,
    mut st: Option<&mut Option<Rc<FdState>>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
        let left = remaining(deadline)?;
        match st.as_deref_mut() {
            Some(st) => wait_owned(fd, interest, left, st)?,
            None => crate::os::poll(fd, interest.is_readable(), interest.is_writable(), left)?,
        }
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

/// Where a socket type keeps its fd's state between calls (`net`'s `Sock`), so that its reads
/// find it without a lookup: valid while the state is registered (a state that was ended,
/// because the fd was closed or handed out, is not).
pub(crate) type StateCache = std::cell::Cell<Option<Rc<FdState>>>;

/// A read on an evco-owned stream socket: [`retry`], but when the socket's last read came back
/// short and no readable edge arrived since, wait for one first instead of paying for a `recv`
/// that would say `EAGAIN` (request/response loops save a syscall per message). `len` is the
/// space offered. `timeout` bounds the whole read, that first wait included. `cache`, when the
/// socket has one, saves looking its state up.
pub(crate) fn read_owned(
    fd: RawFd,
    cache: Option<&StateCache>,
    timeout: Option<Duration>,
    len: usize,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    let deadline = timeout.and_then(crate::event::deadline_after);
    if !crate::coroutine::is_coroutine() {
        return retry_until(fd, Interest::READABLE, deadline, None, op);
    }
    let mut st = match cache.and_then(StateCache::take) {
        Some(s) if s.is_registered() => Some(s),
        _ => reactor::find(fd),
    };
    let r = read_with(fd, &mut st, deadline, timeout, len, op);
    if let Some(c) = cache {
        c.set(st.filter(|s| s.is_registered()));
    }
    r
}

/// [`read_owned`] inside a coroutine, with the socket's state if known (filled in by a wait).
fn read_with(
    fd: RawFd,
    st: &mut Option<Rc<FdState>>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    len: usize,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    if st.as_ref().is_some_and(|s| !s.maybe_readable()) {
        wait_owned(fd, Interest::READABLE, timeout, st)?;
    }
    let n = retry_until(fd, Interest::READABLE, deadline, Some(st), op)?;
    if n > 0 && n < len {
        if let Some(s) = st {
            s.note_drained();
        }
    }
    Ok(n)
}

/// One readiness wait of the running coroutine after `EAGAIN` on an evco-owned socket: for the
/// next edge of its registration (a one-shot wait where the backend has no edge triggering).
/// `st` is the socket's state if known; it is filled in. A state made here reads the fd's
/// generation as it is made, a few instructions after the caller's EAGAIN: a close on another
/// thread that completes in that window goes unseen (reading the generation before every
/// attempt instead cost ~20 instructions per message).
fn wait_owned(
    fd: RawFd,
    interest: Interest,
    timeout: Option<Duration>,
    st: &mut Option<Rc<FdState>>,
) -> io::Result<()> {
    let dir = if interest.is_writable() {
        What::WRITE
    } else {
        What::READ
    };
    let state = match st {
        Some(s) if s.is_registered() => s,
        _ => st.insert(state_for_wait(fd, true, None)?),
    };
    let what = if state.is_registered() {
        // (An edge wait learns of a close through its own wake-up: the close ends the state.)
        scheduler::wait_io(timeout, |cx| Ok(state.enlist_edge(dir, cx.token())))?
    } else {
        once_on(state, dir, timeout)?
    };
    timed_out(what)
}

/// One one-shot readiness wait (for fds no evco socket owns yet, e.g. a connect in progress):
/// the scheduler's inside a scheduled coroutine, `poll(2)` elsewhere.
pub(crate) fn wait_for(fd: RawFd, interest: Interest, timeout: Option<Duration>) -> io::Result<()> {
    if crate::coroutine::is_coroutine() {
        // The caller's last call on the fd came just before this.
        let seen = Some(closing_is_ebadf(fd)?);
        timed_out(wait_once(fd, interest.0, timeout, seen)?)
    } else {
        crate::os::poll(fd, interest.is_readable(), interest.is_writable(), timeout)
    }
}

/// `fd`'s generation for a wait (see `fd_table::generation_unless_closing`); `EBADF` while a
/// close of it is under way.
fn closing_is_ebadf(fd: RawFd) -> io::Result<u32> {
    fd_table::generation_unless_closing(fd).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
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
