//! The read/write family: `read`, `write`, `recv`, `send`, `recvfrom`, `sendto`, `recvmsg`,
//! `sendmsg`, `readv` and `writev`. Each is libc's call unless the fd is a blocking socket this
//! process created and the caller a scheduled coroutine; then it is one of two cooperative
//! calls, `coop_recvfrom`/`coop_recvmsg` or `coop_sendto`/`coop_sendmsg`, built on `transfer`.
//! A cooperative call that finds the fd is no socket (`ENOTSOCK`: its entry is stale) clears
//! the entry and makes libc's call instead.

use std::ffi::{c_int, c_void};

use libc::{iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use super::transfer::{
    coop_once_within, coop_recv, coop_recv_all, coop_send_all, iov_total, later, msg_iovlen,
    msg_rest,
};
use super::{cooperative, ret, stale_entry};
use crate::io::Interest;
use crate::os::cvt_size as cvt;
use crate::os::real;

/// The shape of every hook here: libc's call (`real`) unless `bits` says the call is
/// cooperative; then the cooperative one (`coop`), and libc's after all when it found the fd's
/// entry stale (see `stale_entry`).
#[inline]
fn hooked(
    fd: c_int,
    bits: Option<u64>,
    coop: impl FnOnce(u64) -> ssize_t,
    real: impl Fn() -> ssize_t,
) -> ssize_t {
    match bits {
        None => real(),
        Some(b) => match coop(b) {
            r if stale_entry(fd, r) => real(),
            r => r,
        },
    }
}

/// [`cooperative`] for a receive with `MSG_*` flags: not when the caller asked not to wait
/// (`MSG_DONTWAIT`), nor for out-of-band or error-queue reads, which never block in the kernel
/// and which no readiness edge announces (waiting for one could hang).
#[inline]
fn cooperative_recv(fd: c_int, flags: c_int) -> Option<u64> {
    if flags & (libc::MSG_DONTWAIT | libc::MSG_OOB | libc::MSG_ERRQUEUE) != 0 {
        return None;
    }
    cooperative(fd)
}

/// [`cooperative`] for a send with `MSG_*` flags: not when the caller asked not to wait.
#[inline]
fn cooperative_send(fd: c_int, flags: c_int) -> Option<u64> {
    if flags & libc::MSG_DONTWAIT != 0 {
        return None;
    }
    cooperative(fd)
}

/// Before libc's read of `fd`: on a blocking pipe end this process made, inside a scheduled
/// coroutine, waits until the read would not block (see `pipe`), unless `wants_bytes` says the
/// read asks for none. False (errno set) when the
/// wait failed (`ECANCELED`).
#[inline]
fn pipe_ready(fd: c_int, wants_bytes: impl FnOnce() -> bool) -> bool {
    // A read of nothing returns 0 at once, as the kernel's does.
    if !super::pipe::cooperative_read(fd) || !wants_bytes() {
        return true;
    }
    match super::pipe::until_readable(fd) {
        Ok(()) => true,
        Err(e) => {
            crate::os::real::set_errno(e);
            false
        }
    }
}

/// Hook: on a hooked socket in a coroutine, a cooperative `recv`.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    // A read of nothing returns 0 at once on a socket, ready or not (unlike a recv of nothing,
    // which waits for data like any other).
    let bits = cooperative(fd).filter(|_| count > 0);
    if bits.is_none() && !pipe_ready(fd, || count > 0) {
        return -1;
    }
    hooked(
        fd,
        bits,
        // SAFETY: the caller's buffer; on a socket, read is recv without flags.
        |bits| unsafe { coop_recv_buf(fd, bits, buf, count, 0) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::read(fd, buf, count) },
    )
}

/// Hook: on a hooked socket in a coroutine, a cooperative `send` of everything.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    hooked(
        fd,
        cooperative(fd),
        // SAFETY: the caller's buffer; on a socket, write is send without flags.
        |bits| unsafe { coop_send_buf(fd, bits, buf, count, 0) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::write(fd, buf, count) },
    )
}

/// Hook: cooperative on a hooked socket in a coroutine (`MSG_WAITALL` waited out).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    hooked(
        fd,
        cooperative_recv(fd, flags),
        // SAFETY: the caller's arguments.
        |bits| unsafe { coop_recv_buf(fd, bits, buf, len, flags) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::recv(fd, buf, len, flags) },
    )
}

/// Hook: cooperative on a hooked socket in a coroutine.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn send(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    hooked(
        fd,
        cooperative_send(fd, flags),
        // SAFETY: the caller's arguments.
        |bits| unsafe { coop_send_buf(fd, bits, buf, len, flags) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::send(fd, buf, len, flags) },
    )
}

/// Hook: cooperative on a hooked socket in a coroutine (`MSG_WAITALL` waited out).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    hooked(
        fd,
        cooperative_recv(fd, flags),
        // SAFETY: the caller's arguments.
        |bits| unsafe { coop_recvfrom(fd, bits, buf, len, flags, addr, alen) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::recvfrom(fd, buf, len, flags, addr, alen) },
    )
}

/// Hook: cooperative on a hooked socket in a coroutine (streams: until everything is queued).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    hooked(
        fd,
        cooperative_send(fd, flags),
        // SAFETY: the caller's arguments.
        |bits| unsafe { coop_sendto(fd, bits, buf, len, flags, addr, alen) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::sendto(fd, buf, len, flags, addr, alen) },
    )
}

/// The cooperative `recv` behind `read` and `recv`: [`coop_recvfrom`] without an address.
///
/// # Safety
///
/// `recv`'s contract: `buf` is `len` writable bytes.
unsafe fn coop_recv_buf(
    fd: c_int,
    bits: u64,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    let (addr, alen) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the caller's contract; no address arguments.
    unsafe { coop_recvfrom(fd, bits, buf, len, flags, addr, alen) }
}

/// The cooperative `send` behind `write` and `send`: [`coop_sendto`] without an address.
///
/// # Safety
///
/// `send`'s contract: `buf` is `len` readable bytes.
unsafe fn coop_send_buf(
    fd: c_int,
    bits: u64,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: the caller's contract; no address arguments.
    unsafe { coop_sendto(fd, bits, buf, len, flags, std::ptr::null(), 0) }
}

/// The cooperative `recvfrom` behind `read`, `recv` and `recvfrom` (`MSG_WAITALL` waited out
/// on streams).
///
/// # Safety
///
/// `recvfrom`'s contract: `buf` is `len` writable bytes, `addr`/`alen` null or valid.
unsafe fn coop_recvfrom(
    fd: c_int,
    bits: u64,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    let peek = flags & libc::MSG_PEEK != 0;
    coop_recv_all(
        bits,
        flags,
        || len,
        |off, flags, timeout| {
            coop_recv(fd, bits, len - off, peek, timeout, || {
                // SAFETY: `off <= len`: the rest of the caller's buffer; one non-blocking
                // attempt with the caller's address arguments.
                cvt(unsafe {
                    real::recvfrom(
                        fd,
                        buf.byte_add(off),
                        len - off,
                        flags | libc::MSG_DONTWAIT,
                        addr,
                        alen,
                    )
                })
            })
        },
    )
}

/// The cooperative `sendto` behind `write`, `send` and `sendto`: on streams, until everything
/// is queued.
///
/// # Safety
///
/// `sendto`'s contract: `buf` is `len` readable bytes, `addr` null or `alen` valid bytes.
unsafe fn coop_sendto(
    fd: c_int,
    bits: u64,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    ret(coop_send_all(
        fd,
        bits,
        || len,
        |off| {
            // SAFETY: `off <= len`: the rest of the caller's buffer.
            cvt(unsafe {
                real::sendto(
                    fd,
                    buf.byte_add(off),
                    len - off,
                    flags | libc::MSG_DONTWAIT | later(off),
                    addr,
                    alen,
                )
            })
        },
    ))
}

/// Hook: cooperative on a hooked socket in a coroutine (`MSG_WAITALL` waited out on
/// streams). A `MSG_WAITALL` receive that takes several transfers gets the address and flags
/// of the first; the later ones fill the rest of the iovecs. When the caller gives a buffer for
/// ancillary data, it ends after the first transfer (no descriptor can be lost to a transfer
/// without room for it).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    hooked(
        fd,
        cooperative_recv(fd, flags),
        // SAFETY: the caller's arguments.
        |bits| unsafe { coop_recvmsg(fd, bits, msg, flags) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::recvmsg(fd, msg, flags) },
    )
}

/// The cooperative `recvmsg` behind `recvmsg` and `readv` (see `recvmsg`).
///
/// # Safety
///
/// `recvmsg`'s contract for `msg`.
unsafe fn coop_recvmsg(fd: c_int, bits: u64, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let mut rest = Vec::new();
    coop_recv_all(
        bits,
        flags,
        // SAFETY: asked for after the kernel read `*msg` and its iovecs in a first transfer.
        || unsafe {
            if (*msg).msg_control.is_null() {
                iov_total((*msg).msg_iov, msg_iovlen(&*msg))
            } else {
                // The caller takes ancillary data (descriptors, credentials): a later transfer
                // cannot hand it any (its buffer holds the first one's), and the kernel would
                // close descriptors that arrive without room. End after the first transfer,
                // as the kernel's own MSG_WAITALL stops at data that carries some.
                0
            }
        },
        |got, flags, timeout| {
            coop_once_within(fd, timeout, Interest::READABLE, || {
                if got == 0 {
                    // SAFETY: the caller's arguments; one non-blocking attempt.
                    return cvt(unsafe { real::recvmsg(fd, msg, flags | libc::MSG_DONTWAIT) });
                }
                // SAFETY: a first transfer of this call succeeded, so the kernel accepted
                // `*msg` and its iovecs.
                let mut m = unsafe { msg_rest(msg, got, &mut rest) };
                // SAFETY: `m` describes the rest of the caller's buffers.
                cvt(unsafe { real::recvmsg(fd, &mut m, flags | libc::MSG_DONTWAIT) })
            })
        },
    )
}

/// Hook: cooperative on a hooked socket in a coroutine; on streams it goes on until every
/// byte is queued, as a blocking `sendmsg` does (the ancillary data goes with the first
/// transfer only).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    hooked(
        fd,
        cooperative_send(fd, flags),
        // SAFETY: the caller's arguments.
        |bits| unsafe { coop_sendmsg(fd, bits, msg, flags) },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::sendmsg(fd, msg, flags) },
    )
}

/// The cooperative `sendmsg` behind `sendmsg` and `writev` (see `sendmsg`).
///
/// # Safety
///
/// `sendmsg`'s contract for `msg`.
unsafe fn coop_sendmsg(fd: c_int, bits: u64, msg: *const msghdr, flags: c_int) -> ssize_t {
    let mut rest = Vec::new();
    ret(coop_send_all(
        fd,
        bits,
        // SAFETY: asked for after the kernel read `*msg` and its iovecs in a first transfer.
        || unsafe { iov_total((*msg).msg_iov, msg_iovlen(&*msg)) },
        |done| {
            if done == 0 {
                // SAFETY: the caller's arguments; one non-blocking attempt.
                return cvt(unsafe { real::sendmsg(fd, msg, flags | libc::MSG_DONTWAIT) });
            }
            // SAFETY: a first transfer of this call succeeded, so the kernel accepted `*msg`
            // and its iovecs.
            let m = unsafe { msg_rest(msg, done, &mut rest) };
            // SAFETY: `m` describes the rest of the caller's data.
            cvt(unsafe { real::sendmsg(fd, &m, flags | libc::MSG_DONTWAIT | later(done)) })
        },
    ))
}

/// Whether `readv`/`writev` accept `n` iovecs; libc's own call reports `EINVAL` otherwise.
fn iov_count_ok(n: c_int) -> bool {
    (0..=libc::UIO_MAXIOV).contains(&n)
}

/// A `msghdr` over the caller's iovecs (a count `iov_count_ok` accepted), for
/// `readv`/`writev` on sockets.
fn iov_msg(iov: *const iovec, n: c_int) -> msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut m: msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov as *mut iovec;
    m.msg_iovlen = n as _;
    m
}

/// Hook: on a hooked socket in a coroutine, a cooperative `recvmsg`.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let bits = cooperative(fd).filter(|_| iov_count_ok(n));
    // (On a pipe, the iovecs are read here, before the kernel has seen them: a bad array
    // faults in the hook instead of failing with EFAULT.)
    // SAFETY: the caller's `n` iovecs (checked for a sane count first).
    let wants = || iov_count_ok(n) && unsafe { iov_total(iov, n as usize) } > 0;
    if bits.is_none() && !pipe_ready(fd, wants) {
        return -1;
    }
    hooked(
        fd,
        bits,
        |bits| {
            let mut m = iov_msg(iov, n);
            // SAFETY: `m` points at the caller's iovecs; recvmsg on a socket is readv.
            unsafe { coop_recvmsg(fd, bits, &mut m, 0) }
        },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::readv(fd, iov, n) },
    )
}

/// Hook: on a hooked socket in a coroutine, a cooperative `sendmsg`; on streams it goes on
/// until every byte is queued, as a blocking `writev` does.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    hooked(
        fd,
        cooperative(fd).filter(|_| iov_count_ok(n)),
        |bits| {
            let m = iov_msg(iov, n);
            // SAFETY: `m` points at the caller's iovecs; sendmsg on a socket is writev.
            unsafe { coop_sendmsg(fd, bits, &m, 0) }
        },
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real::writev(fd, iov, n) },
    )
}
