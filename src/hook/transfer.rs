//! The transfers of a cooperative call: one non-blocking attempt retried on readiness
//! (`coop_once`), and the loop of a call the kernel completes as one (a stream send, a
//! `MSG_WAITALL` receive: `transfer_all`), bounded as a whole by the fd's timeout (`Budget`),
//! with the iovec and `msghdr` arithmetic its later transfers need.

use std::ffi::c_int;
use std::io;
use std::time::{Duration, Instant};

use libc::{iovec, msghdr, ssize_t};

use super::{ret, stop_cancellation, table};
use crate::io::Interest;

/// One cooperative transfer: `op` (one non-blocking attempt) retried whenever the socket is
/// ready for `interest`, within the fd's timeout for that direction.
pub(super) fn coop_once(
    fd: c_int,
    bits: u64,
    interest: Interest,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    coop_once_within(
        fd,
        table::timeout(bits, interest.is_writable()),
        interest,
        op,
    )
}

/// [`coop_once`] within `timeout` (what is left of a call's budget) instead of the fd's.
pub(super) fn coop_once_within(
    fd: c_int,
    timeout: Option<Duration>,
    interest: Interest,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    stop_cancellation(|| crate::io::retry(fd, interest, timeout, op))
}

/// An fd's timeout for one direction, counted once for a whole call that makes several
/// transfers (a stream send, a `MSG_WAITALL` receive): the kernel bounds the blocking call,
/// not each transfer, so a peer that trickles bytes cannot stretch it. Without a timeout
/// (the common case) it reads no clock.
pub(super) struct Budget {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl Budget {
    fn new(bits: u64, write: bool) -> Budget {
        let timeout = table::timeout(bits, write);
        Budget {
            timeout,
            deadline: timeout.and_then(crate::event::deadline_after),
        }
    }

    /// What is left of it (`None`: no limit). Once spent, a transfer still makes its one
    /// attempt and only fails if that would wait.
    fn left(&self) -> Option<Duration> {
        match self.deadline {
            Some(d) => Some(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        }
    }
}

/// A cooperative receive of at most `len` bytes within `timeout` (`op` makes one non-blocking
/// attempt).
pub(super) fn coop_recv(
    fd: c_int,
    bits: u64,
    len: usize,
    peek: bool,
    timeout: Option<Duration>,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    stop_cancellation(|| {
        if bits & table::TCP != 0 && !peek {
            crate::io::read_owned(fd, None, timeout, len, op)
        } else {
            crate::io::retry(fd, Interest::READABLE, timeout, op)
        }
    })
}

/// A cooperative send of `len()` bytes; `op(offset)` makes one non-blocking attempt from
/// `offset`. Streams go on until everything is queued, as a blocking send does. `len` is asked
/// for only after the first transfer succeeded: for a vectored send it is the sum of the
/// caller's iovecs, which evco reads only once the kernel has accepted them (a bad pointer is
/// then the kernel's `EFAULT`, not a crash here).
pub(super) fn coop_send_all(
    fd: c_int,
    bits: u64,
    len: impl FnOnce() -> usize,
    mut op: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<usize> {
    if bits & table::STREAM == 0 {
        return coop_once(fd, bits, Interest::WRITABLE, || op(0));
    }
    transfer_all(&Budget::new(bits, true), len, |done, left| {
        stop_cancellation(|| crate::io::retry(fd, Interest::WRITABLE, left, || op(done)))
    })
}

/// The transfers of a call the kernel completes as one (a stream send, a `MSG_WAITALL`
/// receive): `once(done, left)` moves bytes from offset `done` within what is `left` of the
/// budget, until `len()` bytes moved (asked for only after the first transfer succeeded), a
/// transfer moves none, or one fails after some bytes moved (the call then reports those, as
/// the kernel's does; a failure of the first transfer is the call's error).
pub(super) fn transfer_all(
    budget: &Budget,
    len: impl FnOnce() -> usize,
    mut once: impl FnMut(usize, Option<Duration>) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = once(0, budget.left())?;
    if done == 0 {
        return Ok(0);
    }
    let total = len();
    while done < total {
        match once(done, budget.left()) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    Ok(done)
}

/// Flags for a send transfer after `done` bytes of the call went out: `MSG_NOSIGNAL` once some
/// did, since a peer gone by then makes the call return the count sent so far, as the kernel's
/// blocking send does without raising `SIGPIPE`.
pub(super) fn later(done: usize) -> c_int {
    if done > 0 { libc::MSG_NOSIGNAL } else { 0 }
}

/// A cooperative receive that honours `MSG_WAITALL` on streams as the kernel's blocking
/// receive does: transfers until `len()` bytes arrived, the peer closed, or an error or the
/// fd's receive timeout (counted once for the whole call) came after some bytes. `once(off,
/// flags, timeout)` makes one receive into the caller's buffer from `off` with `flags`
/// (`MSG_WAITALL` taken out). `len` is asked for only after a first transfer succeeded (see
/// [`coop_send_all`]).
pub(super) fn coop_recv_all(
    bits: u64,
    flags: c_int,
    len: impl FnOnce() -> usize,
    mut once: impl FnMut(usize, c_int, Option<Duration>) -> io::Result<usize>,
) -> ssize_t {
    let waitall =
        flags & libc::MSG_WAITALL != 0 && flags & libc::MSG_PEEK == 0 && bits & table::STREAM != 0;
    let flags = flags & !libc::MSG_WAITALL;
    if !waitall {
        return ret(once(0, flags, table::timeout(bits, false)));
    }
    ret(transfer_all(&Budget::new(bits, false), len, |got, left| {
        once(got, flags, left)
    }))
}

/// The caller's iovecs with the first `done` bytes skipped, for the later transfers of a
/// vectored call that takes several (the caller's array is not evco's to change, so the rest
/// goes in `into`).
///
/// # Safety
///
/// `iov` points at `n` readable iovecs: only call this after the kernel accepted them in a
/// transfer of this same call.
pub(super) unsafe fn iov_rest(iov: *const iovec, n: usize, done: usize, into: &mut Vec<iovec>) {
    into.clear();
    if n == 0 || iov.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    let all = unsafe { std::slice::from_raw_parts(iov, n) };
    let mut skip = done;
    for v in all {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        into.push(iovec {
            iov_base: v.iov_base.wrapping_byte_add(skip),
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
}

/// A copy of the caller's `msghdr` for a later transfer of a call that takes several: its
/// iovecs past the first `done` bytes (kept in `rest`), without the address and ancillary data,
/// which belong to the first transfer.
///
/// # Safety
///
/// As for [`iov_rest`]: `msg` and its iovecs were accepted by the kernel in a first transfer
/// of this same call. The result points into `rest`, which must outlive its use.
pub(super) unsafe fn msg_rest(msg: *const msghdr, done: usize, rest: &mut Vec<iovec>) -> msghdr {
    // SAFETY: the caller's contract.
    let mut m = unsafe { *msg };
    // SAFETY: as above.
    unsafe { iov_rest(m.msg_iov, msg_iovlen(&m), done, rest) };
    m.msg_iov = rest.as_mut_ptr();
    m.msg_iovlen = rest.len() as _;
    m.msg_name = std::ptr::null_mut();
    m.msg_namelen = 0;
    m.msg_control = std::ptr::null_mut();
    m.msg_controllen = 0;
    m
}

/// A `msghdr`'s iovec count as a `usize` (glibc declares it `size_t`, musl `int`).
#[allow(clippy::unnecessary_cast)]
pub(super) fn msg_iovlen(m: &msghdr) -> usize {
    m.msg_iovlen as usize
}

/// The total length of `n` iovecs (saturating: the kernel refuses more than `ssize_t` anyway).
///
/// # Safety
///
/// As for [`iov_rest`].
pub(super) unsafe fn iov_total(iov: *const iovec, n: usize) -> usize {
    if n == 0 || iov.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract.
    let all = unsafe { std::slice::from_raw_parts(iov, n) };
    all.iter().fold(0usize, |t, v| t.saturating_add(v.iov_len))
}
