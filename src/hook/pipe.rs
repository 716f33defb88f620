//! Pipes, and the other makers of pollable fds. `eventfd`, `epoll_create`, `epoll_create1`,
//! `timerfd_create` and `signalfd` only tell the reactor the number is a new fd's (see the end
//! of this file). `pipe` and `pipe2` record both ends, and a `read`/`readv` of a blocking pipe
//! end this process made, inside a scheduled coroutine, first waits cooperatively until the
//! read would not block (bytes are queued, or no writer is left), then makes libc's call. The
//! self-pipe trick and C code that hands work between coroutines over a pipe then suspend only
//! the reader.
//!
//! The check before the read (`FIONREAD`, and a zero-timeout `poll` for a write end that went)
//! is what keeps two reader coroutines of one pipe from blocking the thread: both wake when
//! data comes, the first takes it, the second finds the pipe empty and waits again. A reader on
//! another thread or in another process that takes the bytes between the check and the read
//! can still make the read block the thread, as it would make libc's. Writes to a pipe stay
//! libc's (they block only while the pipe is full).

use std::ffi::c_int;

use super::fds::fresh;
use super::{errno_of, stop_cancellation, table};
use crate::io::Interest;
use crate::os::real;
use crate::scheduler;

/// Whether a read of `fd` should wait cooperatively first: a blocking pipe end this process
/// made, read inside a scheduled coroutine.
#[inline]
pub(super) fn cooperative_read(fd: c_int) -> bool {
    let bits = table::get(fd);
    if bits & (table::PIPE | table::NONBLOCK | table::DUPED) != table::PIPE {
        return super::cooperative_duped(fd, bits, table::PIPE).is_some();
    }
    scheduler::in_scheduled_coroutine()
}

/// Suspends the running coroutine until a read of pipe `fd` would not block; `Err(errno)`
/// when it cannot wait (`ECANCELED`). A failing check leaves the error to the read.
pub(super) fn until_readable(fd: c_int) -> Result<(), c_int> {
    loop {
        let mut queued: c_int = 0;
        // SAFETY: FIONREAD writes one int to `queued`.
        let r = unsafe {
            real::ioctl(
                fd,
                libc::FIONREAD as libc::c_ulong,
                &mut queued as *mut c_int as libc::c_ulong,
            )
        };
        if r != 0 || queued > 0 {
            return Ok(());
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { real::poll(&mut p, 1, 0) } != 0 && p.revents & libc::POLLIN == 0 {
            // Hung up (no writer left: the read returns 0 at once) or an error for the read
            // to report.
            return Ok(());
        }
        if p.revents & libc::POLLHUP != 0 {
            return Ok(());
        }
        stop_cancellation(|| crate::io::wait_for(fd, Interest::READABLE, None))
            .map_err(|e| errno_of(&e))?;
    }
}

/// The bits a new pipe end gets: `PIPE`, and `NONBLOCK` when it was made non-blocking.
fn pipe_bits(flags: c_int) -> u64 {
    table::PIPE
        | if flags & libc::O_NONBLOCK != 0 {
            table::NONBLOCK
        } else {
            0
        }
}

/// Hook: records both ends in the fd table.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    let r = unsafe { real::pipe(fds) };
    if r == 0 {
        // SAFETY: on success pipe wrote two fds to `fds`.
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        fresh(a, pipe_bits(0));
        fresh(b, pipe_bits(0));
    }
    r
}

/// Hook: records both ends in the fd table.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::pipe2(fds, flags) };
    if r == 0 {
        // SAFETY: on success pipe2 wrote two fds to `fds`.
        let (a, b) = unsafe { (*fds, *fds.add(1)) };
        fresh(a, pipe_bits(flags));
        fresh(b, pipe_bits(flags));
    }
    r
}

// ---- other pollable fds: the number is a new fd's ----------------------------------------
//
// These make fds a coroutine may wait on (`poll`, `epoll_wait`, `io::wait`) and that the hooks
// keep nothing for: each only tells the reactor the number is a new fd's (`renumbered`), as
// every fd the hooks see made does. Without that, an fd that got a number another thread is
// still closing (past its close's system call, before evco's close path ends) would read that
// close's `CLOSING` mark as its own close, and its waits would fail `EBADF` until it ended.

/// Hook: libc's `eventfd`, and the number is a new fd's.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn eventfd(initval: libc::c_uint, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    made(unsafe { real::eventfd(initval, flags) })
}

/// Hook: libc's `epoll_create`, and the number is a new fd's.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    made(unsafe { real::epoll_create(size) })
}

/// Hook: libc's `epoll_create1`, and the number is a new fd's.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    made(unsafe { real::epoll_create1(flags) })
}

/// Hook: libc's `timerfd_create`, and the number is a new fd's.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn timerfd_create(clock: libc::clockid_t, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    made(unsafe { real::timerfd_create(clock, flags) })
}

/// Hook: libc's `signalfd`; a new fd's number when it made one (`fd` -1), not when it changed
/// the mask of the signalfd `fd`.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn signalfd(
    fd: c_int,
    mask: *const libc::sigset_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::signalfd(fd, mask, flags) };
    if fd == -1 { made(r) } else { r }
}

/// `r`, a maker's result: a new fd's number is told to the reactor (see above).
fn made(r: c_int) -> c_int {
    if r >= 0 {
        crate::reactor::renumbered(r);
    }
    r
}
