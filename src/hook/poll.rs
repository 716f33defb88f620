//! The readiness waits: `poll`, `ppoll`, `select`, `pselect`, `epoll_wait` and `epoll_pwait`.
//! Inside a scheduled coroutine, with a timeout that is not zero, each suspends the coroutine
//! instead of the thread, over any mix of pollable fds (sockets, pipes, eventfds, timerfds,
//! signalfds, ttys, inherited fds; regular files are always ready, as the kernel says), and
//! reports what the kernel's call would: between zero-timeout calls of libc's own, it waits
//! until one of the fds is ready.
//!
//! - One socket the process made, polled for `POLLIN`/`POLLOUT`: evco's own wait on it.
//! - Anything else: a temporary epoll instance over the listed fds (the events poll asks for,
//!   exactly: `POLLPRI` becomes `EPOLLPRI`, `POLLRDNORM` `EPOLLRDNORM`, and so on), itself
//!   waited on as one readable fd.
//! - `epoll_wait`: a wait for the caller's epoll fd to become readable.
//! - `poll(NULL, 0, ms)` (and `select` with no fds) is a sleep; with no timeout, it suspends the
//!   coroutine until it is cancelled.
//!
//! `ppoll`, `pselect` and `epoll_pwait` take a signal mask for the wait: the thread's mask is
//! shared by every coroutine on it, so inside a coroutine the mask is not applied (a handler
//! runs whenever the thread's own mask lets its signal in, as for every other cooperative
//! call). Outside coroutines they are libc's, mask included. A cancelled wait fails with
//! `ECANCELED`.

use std::ffi::c_int;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::sleep::coop_sleep;
use super::{errno_of, stop_cancellation, table};
use crate::io::Interest;
use crate::os::real::{self, set_errno};
use crate::scheduler;

/// Longest list the hook reads itself: the kernel's default `fs.nr_open`, above which libc's
/// `poll` fails with `EINVAL` without reading the list (so must the hook: it reads the caller's
/// array before any system call does).
const MAX_POLL_FDS: libc::nfds_t = 1 << 20;

/// A wait's timeout as poll has it (negative: none) from a `timespec`; `None` for a bad one
/// (the caller's libc call reports it).
fn ms_of_timespec(t: *const libc::timespec) -> Option<c_int> {
    // SAFETY: a non-null timeout is the caller's timespec.
    let Some(t) = (unsafe { t.as_ref() }) else {
        return Some(-1);
    };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return None;
    }
    let ms = (t.tv_sec as u128 * 1000) + (t.tv_nsec as u128).div_ceil(1_000_000);
    Some(ms.min(c_int::MAX as u128) as c_int)
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn poll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
) -> c_int {
    // SAFETY: the caller's arguments.
    match unsafe { coop_poll_call(fds, nfds, timeout) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, passed on.
        None => unsafe { real::poll(fds, nfds, timeout) },
    }
}

/// Hook: `poll` with a `timespec` timeout; the mask is not applied inside a coroutine (see the
/// module docs).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    tmo: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    if let Some(ms) = ms_of_timespec(tmo) {
        // SAFETY: the caller's arguments.
        if let Some(r) = unsafe { coop_poll_call(fds, nfds, ms) } {
            return r;
        }
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::ppoll(fds, nfds, tmo, mask) }
}

/// `poll`'s cooperative form, or `None` where the call is libc's (outside a scheduled
/// coroutine, a zero timeout, a list evco does not read).
///
/// # Safety
///
/// poll's contract: `fds` points at `nfds` pollfds the caller owns.
unsafe fn coop_poll_call(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
) -> Option<c_int> {
    if timeout == 0 || !scheduler::in_scheduled_coroutine() {
        return None;
    }
    let list: &mut [libc::pollfd] = if nfds == 0 {
        &mut []
    } else if !fds.is_null() && nfds <= MAX_POLL_FDS {
        // SAFETY: poll's contract: `fds` points at `nfds` pollfds the caller owns.
        unsafe { std::slice::from_raw_parts_mut(fds, nfds as usize) }
    } else {
        return None; // libc reports EFAULT or EINVAL
    };
    if list.iter().all(|p| p.fd < 0) {
        return Some(coop_nothing(timeout));
    }
    Some(coop_poll(list, timeout))
}

/// A wait on no fds (`poll(NULL, 0, ms)`, a common sleep): a sleep; with no timeout, until the
/// coroutine is cancelled (`ECANCELED`). libc's would block the thread.
fn coop_nothing(timeout: c_int) -> c_int {
    if timeout > 0 {
        if coop_sleep(Duration::from_millis(timeout as u64)) {
            return 0;
        }
        // SAFETY: a zero-length poll with a timeout: libc's sleep (not reached inside a
        // scheduled coroutine, where coop_sleep sleeps).
        return unsafe { real::poll(std::ptr::null_mut(), 0, timeout) };
    }
    let r = stop_cancellation(|| crate::scheduler::sleep(None));
    set_errno(r.err().as_ref().map_or(libc::ECANCELED, errno_of));
    -1
}

/// `poll` over `list` (at least one fd), waiting through the scheduler between zero-timeout
/// polls.
fn coop_poll(list: &mut [libc::pollfd], timeout: c_int) -> c_int {
    let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    let mut backoff = Backoff::default();
    loop {
        // SAFETY: `list` is the caller's pollfd array, borrowed for this call.
        let n = unsafe { real::poll(list.as_mut_ptr(), list.len() as libc::nfds_t, 0) };
        if n != 0 {
            return n; // something is ready, or an error
        }
        let left = match remaining(deadline) {
            Ok(l) => l,
            Err(()) => return 0,
        };
        let mut live = list.iter().filter(|p| p.fd >= 0);
        let waited = stop_cancellation(|| {
            backoff.wait(left, || match (live.next(), live.next()) {
                (Some(p), None) if own_socket_wait(p) => {
                    crate::io::wait(p.fd, poll_interest(p.events), left).map(drop)
                }
                _ => wait_any(list, left),
            })
        });
        if let Err(r) = after_wait(waited) {
            return r;
        }
    }
}

/// Whether `p` is one that evco's own wait expresses exactly: a socket the process made, for
/// POLLIN and/or POLLOUT only.
fn own_socket_wait(p: &libc::pollfd) -> bool {
    table::get(p.fd) & table::SOCKET != 0
        && p.events & (libc::POLLIN | libc::POLLOUT) != 0
        && p.events & !(libc::POLLIN | libc::POLLOUT) == 0
}

/// What is left until `deadline`: `Ok(None)` without one, `Err(())` once it passed.
fn remaining(deadline: Option<Instant>) -> Result<Option<Duration>, ()> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(l) if !l.is_zero() => Ok(Some(l)),
            _ => Err(()),
        },
    }
}

/// How long a wait loop sleeps instead of waiting on its fds after a wait that ended `EBADF`
/// found them open again (see [`Backoff`]).
const STALE_MARK_NAP: Duration = Duration::from_millis(1);

/// Keeps a wait loop from spinning on a number another thread is still closing. A wait ends
/// `EBADF` at once while an fd's number carries a close's `CLOSING` mark; the fd the caller
/// polls may be a new one that got the number after that close's system call (made where the
/// hooks do not see, `epoll_create` say), and the mark stays until the closing thread ends its
/// close (seconds, with `SO_LINGER`). The first `EBADF` is looked at again at once (a close
/// under the wait: the next zero-timeout call reports it); while they go on, each wait is a
/// nap of [`STALE_MARK_NAP`] instead, so the thread's other coroutines run and the loop costs
/// a few system calls a millisecond. Before, the loop spun without yielding until the close
/// ended (a 10 ms ticker coroutine ticked 0 times in a 500 ms `epoll_wait`).
#[derive(Default)]
struct Backoff {
    stale: bool,
}

impl Backoff {
    fn wait(
        &mut self,
        left: Option<Duration>,
        wait: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let r = if self.stale {
            let nap = left.map_or(STALE_MARK_NAP, |l| l.min(STALE_MARK_NAP));
            crate::scheduler::sleep(Some(nap))
        } else {
            wait()
        };
        self.stale = matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EBADF));
        r
    }
}

/// After one cooperative wait: `Ok` to look again, `Err(-1)` (errno set) when the wait failed
/// (cancelled).
fn after_wait(waited: io::Result<()>) -> Result<(), c_int> {
    match waited {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(()),
        // An fd was closed under the wait: the next zero-timeout call reports it.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => {
            set_errno(errno_of(&e));
            Err(-1)
        }
    }
}

/// What a `pollfd`'s `events` wait for, as evco's interest (for a socket's own wait).
fn poll_interest(events: libc::c_short) -> Interest {
    match (events & libc::POLLIN != 0, events & libc::POLLOUT != 0) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        _ => Interest::READABLE,
    }
}

/// Waits until any of `list`'s fds is ready as poll would report it: a temporary epoll
/// instance over them (the events poll asks for, exactly), itself waited on as one readable
/// fd. An fd epoll refuses (a regular file: `EPERM`) is one poll reports ready at once, so it
/// never gets here.
fn wait_any(list: &[libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    // SAFETY: epoll_create1 has no memory preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // `libc::epoll_create1` is evco's hook: an earlier close's `CLOSING` mark on the number,
    // which would end the wait on `ep` with `EBADF` at once, is gone.
    // SAFETY: `ep` was just made and is owned by nothing else. Owned, it is closed however the
    // wait ends, a cancellation's unwinding included.
    let owned = unsafe { OwnedFd::from_raw_fd(ep) };
    // One registration per fd, for the union of what its entries ask: an fd listed twice
    // (`[{fd, POLLIN}, {fd, POLLOUT}]`) is woken by either entry's events, as poll is.
    let mut wanted: Vec<(c_int, u32)> = list
        .iter()
        .filter(|p| p.fd >= 0)
        .map(|p| (p.fd, epoll_events(p.events)))
        .collect();
    wanted.sort_unstable_by_key(|&(fd, _)| fd);
    wanted.dedup_by(|(fd, events), (kept_fd, kept)| {
        let same = fd == kept_fd;
        if same {
            *kept |= *events;
        }
        same
    });
    for (fd, events) in wanted {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event. A failure (an fd epoll refuses) leaves that fd
        // out: see above.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    let r = crate::io::wait_for(ep, Interest::READABLE, timeout);
    drop(owned);
    r
}

/// The epoll events that wait for what a `pollfd`'s `events` ask (the same bits, exactly).
fn epoll_events(poll_events: libc::c_short) -> u32 {
    let mut events = 0u32;
    for (poll_bit, epoll_bit) in [
        (libc::POLLIN, libc::EPOLLIN),
        (libc::POLLOUT, libc::EPOLLOUT),
        (libc::POLLPRI, libc::EPOLLPRI),
        (libc::POLLRDHUP, libc::EPOLLRDHUP),
        // Asked for alone, without POLLIN/POLLOUT, these must be waited for too: an fd
        // registered for none of its events would wake the wait only on a hang-up.
        (libc::POLLRDNORM, libc::EPOLLRDNORM),
        (libc::POLLRDBAND, libc::EPOLLRDBAND),
        (libc::POLLWRNORM, libc::EPOLLWRNORM),
        (libc::POLLWRBAND, libc::EPOLLWRBAND),
    ] {
        if poll_events & poll_bit != 0 {
            events |= epoll_bit as u32;
        }
    }
    events
}

// ---- select ---------------------------------------------------------------------------------

/// `select`'s sets as a poll list over fds `0..nfds` (only the fds in some set).
fn select_list(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
) -> Vec<libc::pollfd> {
    let has = |set: *mut libc::fd_set, fd: c_int| {
        // SAFETY: a non-null set is the caller's fd_set, FD_SETSIZE bits, and
        // `fd` < nfds <= FD_SETSIZE.
        !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
    };
    (0..nfds)
        .filter_map(|fd| {
            let mut events = 0;
            if has(r, fd) {
                events |= libc::POLLIN;
            }
            if has(w, fd) {
                events |= libc::POLLOUT;
            }
            if has(e, fd) {
                events |= libc::POLLPRI;
            }
            (events != 0).then_some(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        })
        .collect()
}

/// Writes a finished poll's answer back into `select`'s sets, as select reports it (readable
/// on data, hang-up or error; writable on room or error; exceptional on urgent data); the
/// number of bits set, or -1 with `EBADF` for an fd that is not open.
fn select_answer(
    list: &[libc::pollfd],
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
) -> c_int {
    if list.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        set_errno(libc::EBADF);
        return -1;
    }
    let mut n = 0;
    for set in [r, w, e] {
        if !set.is_null() {
            // SAFETY: the caller's fd_set.
            unsafe { libc::FD_ZERO(set) };
        }
    }
    let mut mark = |set: *mut libc::fd_set, fd: c_int| {
        if !set.is_null() {
            // SAFETY: the caller's fd_set; `fd` < FD_SETSIZE (it came from select_list).
            unsafe { libc::FD_SET(fd, set) };
            n += 1;
        }
    };
    for p in list {
        let rev = p.revents;
        if p.events & libc::POLLIN != 0 && rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
        {
            mark(r, p.fd);
        }
        if p.events & libc::POLLOUT != 0 && rev & (libc::POLLOUT | libc::POLLERR) != 0 {
            mark(w, p.fd);
        }
        if p.events & libc::POLLPRI != 0 && rev & libc::POLLPRI != 0 {
            mark(e, p.fd);
        }
    }
    n
}

/// `select`'s cooperative form over the sets, for at most `ms` (negative: no limit), or `None`
/// where it is libc's. Sets `left` to what remains of the timeout, as Linux's select does.
fn coop_select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ms: c_int,
    left: &mut Option<Duration>,
) -> Option<c_int> {
    if ms == 0
        || !(0..=libc::FD_SETSIZE as c_int).contains(&nfds)
        || !scheduler::in_scheduled_coroutine()
    {
        return None;
    }
    let mut list = select_list(nfds, r, w, e);
    if list.is_empty() {
        return Some(coop_nothing(ms));
    }
    let start = Instant::now();
    let n = coop_poll(&mut list, ms);
    if ms > 0 {
        *left = Some(Duration::from_millis(ms as u64).saturating_sub(start.elapsed()));
    }
    Some(if n < 0 {
        n
    } else {
        select_answer(&list, r, w, e)
    })
}

/// Hook: see the module docs (`nfds` above `FD_SETSIZE` is libc's call).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tmo: *mut libc::timeval,
) -> c_int {
    // SAFETY: a non-null timeout is the caller's timeval.
    let ms = match unsafe { tmo.as_ref() } {
        None => Some(-1),
        Some(t) if t.tv_sec >= 0 && (0..1_000_000).contains(&t.tv_usec) => {
            let ms = t.tv_sec as u128 * 1000 + (t.tv_usec as u128).div_ceil(1000);
            Some(ms.min(c_int::MAX as u128) as c_int)
        }
        Some(_) => None,
    };
    let mut left = None;
    if let Some(r) = ms.and_then(|ms| coop_select(nfds, r, w, e, ms, &mut left)) {
        // SAFETY: (as above) the caller's timeval, updated as Linux's select does.
        if let (Some(l), Some(t)) = (left, unsafe { tmo.as_mut() }) {
            t.tv_sec = l.as_secs() as libc::time_t;
            t.tv_usec = l.subsec_micros() as libc::suseconds_t;
        }
        return r;
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::select(nfds, r, w, e, tmo) }
}

/// Hook: `select` with a `timespec` timeout; the mask is not applied inside a coroutine (see
/// the module docs).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tmo: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let mut left = None;
    if let Some(res) = ms_of_timespec(tmo).and_then(|ms| coop_select(nfds, r, w, e, ms, &mut left))
    {
        return res;
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::pselect(nfds, r, w, e, tmo, mask) }
}

// ---- epoll_wait -----------------------------------------------------------------------------

/// `epoll_wait`'s cooperative form: zero-timeout calls of libc's, and between them a wait for
/// the epoll fd to become readable (it is while any of its fds has an event to report).
fn coop_epoll_wait(
    ep: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    ms: c_int,
) -> Option<c_int> {
    if ms == 0 || !scheduler::in_scheduled_coroutine() {
        return None;
    }
    let deadline = (ms > 0).then(|| Instant::now() + Duration::from_millis(ms as u64));
    let mut backoff = Backoff::default();
    loop {
        // SAFETY: the caller's arguments, with a zero timeout.
        let n = unsafe { real::epoll_wait(ep, events, max, 0) };
        if n != 0 {
            return Some(n);
        }
        let Ok(left) = remaining(deadline) else {
            return Some(0);
        };
        let waited = stop_cancellation(|| {
            backoff.wait(left, || crate::io::wait_for(ep, Interest::READABLE, left))
        });
        if let Err(r) = after_wait(waited) {
            return Some(r);
        }
    }
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn epoll_wait(
    ep: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    match coop_epoll_wait(ep, events, max, timeout) {
        Some(r) => r,
        // SAFETY: the caller's arguments, passed on.
        None => unsafe { real::epoll_wait(ep, events, max, timeout) },
    }
}

/// Hook: `epoll_wait` with a signal mask; the mask is not applied inside a coroutine (see the
/// module docs).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    match coop_epoll_wait(ep, events, max, timeout) {
        Some(r) => r,
        // SAFETY: the caller's arguments, passed on.
        None => unsafe { real::epoll_pwait(ep, events, max, timeout, mask) },
    }
}
