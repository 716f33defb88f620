//! `poll`: a cooperative wait inside a scheduled coroutine when every listed fd is a socket
//! this process created, waited for `POLLIN` and/or `POLLOUT`; libc's `poll` otherwise.

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

/// Hook: a cooperative wait inside a scheduled coroutine when every listed fd is a socket this
/// process created (see the module docs); libc's `poll` otherwise.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn poll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
) -> c_int {
    if timeout != 0 && scheduler::in_scheduled_coroutine() {
        let list: &mut [libc::pollfd] = if nfds == 0 {
            &mut []
        } else if !fds.is_null() && nfds <= MAX_POLL_FDS {
            // SAFETY: poll's contract: `fds` points at `nfds` pollfds the caller owns.
            unsafe { std::slice::from_raw_parts_mut(fds, nfds as usize) }
        } else {
            // SAFETY: the caller's arguments, passed on (libc reports EFAULT or EINVAL).
            return unsafe { real::poll(fds, nfds, timeout) };
        };
        if list.iter().all(|p| p.fd < 0) {
            // Nothing to watch (`poll(NULL, 0, ms)` is a common sleep): a sleep.
            if timeout > 0 && coop_sleep(Duration::from_millis(timeout as u64)) {
                return 0;
            }
            if timeout < 0 {
                // Forever: only a cancellation ends it (libc's would block the thread).
                let r = stop_cancellation(|| crate::scheduler::sleep(None));
                set_errno(r.err().as_ref().map_or(libc::ECANCELED, errno_of));
                return -1;
            }
        } else {
            // Only waits evco can express exactly: readability for POLLIN, writability for
            // POLLOUT (a lone POLLPRI would wake on ordinary data, and spin).
            let waitable = |p: &libc::pollfd| {
                p.fd < 0
                    || (table::get(p.fd) & table::SOCKET != 0
                        && p.events & (libc::POLLIN | libc::POLLOUT) != 0)
            };
            if list.iter().all(waitable) {
                return coop_poll(list, timeout);
            }
        }
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::poll(fds, nfds, timeout) }
}

/// `poll` over sockets, waiting through the scheduler between zero-timeout polls.
fn coop_poll(list: &mut [libc::pollfd], timeout: c_int) -> c_int {
    let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    loop {
        // SAFETY: `list` is the caller's pollfd array, borrowed for this call.
        let n = unsafe { real::poll(list.as_mut_ptr(), list.len() as libc::nfds_t, 0) };
        if n != 0 {
            return n; // something is ready, or an error
        }
        let left = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(l) if !l.is_zero() => Some(l),
                _ => return 0,
            },
        };
        // The hook passes only lists with at least one fd.
        let waited = stop_cancellation(|| match list.iter().filter(|p| p.fd >= 0).count() {
            1 => {
                let p = list.iter().find(|p| p.fd >= 0).expect("one fd");
                crate::io::wait(p.fd, poll_interest(p.events), left).map(drop)
            }
            _ => wait_any(list, left),
        });
        match waited {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            // An fd was closed under the wait: the next zero-timeout poll says `POLLNVAL`.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
            Err(e) => {
                set_errno(errno_of(&e));
                return -1;
            }
        }
    }
}

/// What a `pollfd`'s `events` (with POLLIN or POLLOUT, see `poll`) wait for, as evco's
/// interest. Errors and hang-ups, which poll always reports, wake either.
fn poll_interest(events: libc::c_short) -> Interest {
    match (events & libc::POLLIN != 0, events & libc::POLLOUT != 0) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        _ => Interest::READABLE,
    }
}

/// Waits until any of `list`'s fds is ready: a temporary epoll instance over them, itself
/// waited on as one readable fd.
fn wait_any(list: &[libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    // SAFETY: epoll_create1 has no memory preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` was just made and is owned by nothing else. Owned, it is closed however the
    // wait ends, a cancellation's unwinding included.
    let owned = unsafe { OwnedFd::from_raw_fd(ep) };
    for p in list.iter().filter(|p| p.fd >= 0) {
        let interest = poll_interest(p.events);
        let mut events = 0;
        if interest.is_readable() {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if interest.is_writable() {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: p.fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event; a listed fd twice fails with EEXIST, which
        // leaves the first registration, and the zero-timeout poll reports both anyway.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, p.fd, &mut ev) };
    }
    let r = crate::io::wait_for(ep, Interest::READABLE, timeout);
    drop(owned);
    r
}
