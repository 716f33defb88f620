//! The hooks that create, configure, duplicate and close fds (`socket`, `socketpair`,
//! `accept`, `accept4`, `connect`, `close`, `dup`, `dup2`, `dup3`, `setsockopt`, and the
//! variadic `fcntl` and `ioctl`), and the entries they keep.

use std::ffi::{c_int, c_void};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libc::{sockaddr, socklen_t};

use super::transfer::coop_once;
use super::{cooperative, errno, errno_of, ret, stale_entry, stop_cancellation, table};
use crate::io::Interest;
use crate::os::real::{self, set_errno};

/// Runs one attempt of `op` with `O_NONBLOCK` set on `fd`, and clears it again (keeping the
/// attempt's errno), unless it was set already (the program may have made the description
/// non-blocking through another fd). Only for a description that is evco's alone: `connect`
/// on a socket never duplicated.
fn nonblocking_attempt(fd: c_int, op: impl FnOnce() -> c_int) -> io::Result<usize> {
    // SAFETY: F_GETFL only reads the description's status flags.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    if fl == -1 {
        return Err(io::Error::last_os_error());
    }
    let toggle = fl & libc::O_NONBLOCK == 0;
    // SAFETY: F_SETFL with the flags just read, plus O_NONBLOCK.
    if toggle && unsafe { real::fcntl(fd, libc::F_SETFL, (fl | libc::O_NONBLOCK) as _) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let r = op();
    let saved = errno();
    if toggle {
        // SAFETY: as above, the flags as they were.
        unsafe { real::fcntl(fd, libc::F_SETFL, fl as _) };
    }
    if r < 0 {
        Err(io::Error::from_raw_os_error(saved))
    } else {
        Ok(r as usize)
    }
}

/// What a new socket of this `domain` and `ty` (with its `SOCK_*` flags) is in the table.
fn socket_bits(domain: c_int, ty: c_int) -> u64 {
    let mut bits = table::SOCKET;
    if ty & libc::SOCK_NONBLOCK != 0 {
        bits |= table::NONBLOCK;
    }
    if ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) == libc::SOCK_STREAM {
        bits |= table::STREAM;
        if domain == libc::AF_INET || domain == libc::AF_INET6 {
            bits |= table::TCP;
        }
    }
    bits
}

/// `fd` was just created (a socket, an accepted connection, a duplicate): whatever evco knew
/// of an earlier fd with its number is forgotten (`reactor::forget`: normally `close` did that
/// already; not when the earlier fd was closed where the hooks could not see, or on another
/// thread since, or by `dup2`), and the new
/// entry recorded.
pub(super) fn fresh(fd: c_int, bits: u64) {
    crate::reactor::renumbered(fd);
    table::set(fd, bits);
}

// ---- the hooks ----
//
// SAFETY (for every `#[unsafe(no_mangle)]` below): each one replaces libc's symbol of the same
// name for the whole process, libevent and std included, so each has libc's exact signature
// and contract: it either calls the real function with the caller's arguments, or does the
// same work cooperatively and reports the result the way libc does (-1 with errno). None lets
// a panic or a coroutine's cancellation unwind out of it (`extern "C"` aborts instead, and
// `stop_cancellation` turns a cancellation into an error first).

/// Hook: records the new socket in the fd table.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    if fd >= 0 {
        fresh(fd, socket_bits(domain, ty));
    }
    fd
}

/// Hook: records both sockets in the fd table.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::socketpair(domain, ty, protocol, sv) };
    if r == 0 {
        let bits = socket_bits(domain, ty);
        // SAFETY: on success socketpair wrote two fds to `sv`.
        let (a, b) = unsafe { (*sv, *sv.add(1)) };
        fresh(a, bits);
        fresh(b, bits);
    }
    r
}

/// Hook: `accept4` without flags.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn accept(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe { accept4(fd, addr, len, 0) }
}

/// Hook: cooperative on a blocking listener inside a coroutine; the new socket is recorded.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let listener = adopt_listener(fd);
    let new = match cooperative(fd) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::accept4(fd, addr, len, flags) }
        }
        Some(bits) => {
            let r = coop_once(fd, bits, Interest::READABLE, || {
                // SAFETY: the caller's arguments, passed on once a connection is queued.
                accept_when_queued(fd, || unsafe { real::accept4(fd, addr, len, flags) })
            });
            let r = ret(r) as c_int;
            if stale_entry(fd, r as isize) {
                // SAFETY: the caller's arguments, passed on.
                return unsafe { real::accept4(fd, addr, len, flags) };
            }
            r
        }
    };
    if new >= 0 {
        let mut bits = if listener & table::SOCKET != 0 {
            // The kind, and the timeouts: the kernel copies SO_RCVTIMEO/SO_SNDTIMEO to the
            // accepted socket.
            listener & !table::NONBLOCK
        } else {
            // A listener the process did not create (inherited, e.g. socket activation): the
            // connection is still a socket this process made; ask what kind.
            socket_bits(sockopt(new, libc::SO_DOMAIN), sockopt(new, libc::SO_TYPE))
        };
        if flags & libc::SOCK_NONBLOCK != 0 {
            bits |= table::NONBLOCK;
        }
        fresh(new, bits);
    }
    new
}

/// `fd`'s entry, after adopting it when it is a listening socket the process did not create
/// (inherited: socket activation, a parent's listener) and the caller is a scheduled coroutine:
/// its accepts then suspend the coroutine like those on a listener the process made, instead
/// of blocking the thread. One `getsockopt` on an accept of an unknown fd in a coroutine.
fn adopt_listener(fd: c_int) -> u64 {
    let bits = table::get(fd);
    if bits != 0 || !crate::scheduler::in_scheduled_coroutine() {
        return bits;
    }
    if sockopt(fd, libc::SO_ACCEPTCONN) != 1 {
        return bits;
    }
    let mut adopted = socket_bits(sockopt(fd, libc::SO_DOMAIN), sockopt(fd, libc::SO_TYPE));
    // SAFETY: F_GETFL only reads the description's status flags.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    if fl != -1 && fl & libc::O_NONBLOCK != 0 {
        adopted |= table::NONBLOCK;
    }
    table::set(fd, adopted);
    adopted
}

/// One cooperative `accept` attempt without touching the listener's `O_NONBLOCK` (see
/// "accept" in the module docs): `WouldBlock` unless a connection is queued; then, holding
/// this process's lock for the listener, checks again and makes the blocking call `op`.
fn accept_when_queued(fd: c_int, op: impl FnOnce() -> c_int) -> io::Result<usize> {
    let lock = accept_lock(fd)?;
    loop {
        if !queued(fd)? {
            if sockopt(fd, libc::SO_ACCEPTCONN) != 1 {
                // Not a listener (a datagram socket, a connected stream): no connection will
                // ever be queued, and libc's accept fails at once (EINVAL, EOPNOTSUPP).
                let r = op();
                return if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(r as usize)
                };
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            break;
        }
        // Another coroutine of this process is taking a connection from it: let it.
        crate::scheduler::yield_now()?;
    }
    let r = if queued(fd).unwrap_or(false) {
        Some(op())
    } else {
        None
    };
    let saved = errno();
    lock.store(false, Ordering::Release);
    match r {
        None => Err(io::ErrorKind::WouldBlock.into()),
        Some(r) if r < 0 => Err(io::Error::from_raw_os_error(saved)),
        Some(r) => Ok(r as usize),
    }
}

/// Whether a connection is queued on listener `fd` (a zero-timeout `poll`).
fn queued(fd: c_int) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on our stack, count 1, no waiting.
    match unsafe { real::poll(&mut p, 1, 0) } {
        -1 => Err(io::Error::last_os_error()),
        _ if p.revents & libc::POLLNVAL != 0 => Err(io::Error::from_raw_os_error(libc::EBADF)),
        n => Ok(n > 0),
    }
}

/// The lock this process's coroutines take to accept from the listener `fd`: one of a few,
/// chosen by the socket's inode, which its duplicates share (collisions only serialise two
/// listeners' accepts, each of which returns at once).
fn accept_lock(fd: c_int) -> io::Result<&'static AtomicBool> {
    static LOCKS: [AtomicBool; 64] = [const { AtomicBool::new(false) }; 64];
    let id = crate::os::file_identity(fd).ok_or_else(io::Error::last_os_error)?;
    Ok(&LOCKS[(id % LOCKS.len() as u64) as usize])
}

/// An int socket option at `SOL_SOCKET` (-1 when it cannot be read).
fn sockopt(fd: c_int, name: c_int) -> c_int {
    let mut v: c_int = -1;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: the option is one int, written into `v`, whose size `len` gives.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            &mut v as *mut c_int as *mut c_void,
            &mut len,
        )
    };
    if r == 0 { v } else { -1 }
}

/// Hook: a blocking TCP connect inside a coroutine starts non-blocking and waits for the
/// socket to become writable (bounded by `SO_SNDTIMEO`, then `EINPROGRESS` as the kernel's).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // A duplicated socket's description is not evco's alone: `O_NONBLOCK` set on it for the
    // attempt would show through the other fds (see "What a hook changes").
    let Some(bits) = cooperative(fd).filter(|b| b & (table::TCP | table::DUPED) == table::TCP)
    else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::connect(fd, addr, len) };
    };
    // SAFETY: as above, one attempt with the socket non-blocking.
    match nonblocking_attempt(fd, || unsafe { real::connect(fd, addr, len) }) {
        Ok(_) => return 0,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            crate::reactor::renumbered(fd);
            // SAFETY: the caller's arguments, passed on.
            return unsafe { real::connect(fd, addr, len) };
        }
        Err(e) => {
            set_errno(errno_of(&e));
            return -1;
        }
    }
    let timeout = table::timeout(bits, true);
    match stop_cancellation(|| crate::io::wait_for(fd, Interest::WRITABLE, timeout)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            set_errno(libc::EINPROGRESS);
            return -1;
        }
        Err(e) => {
            set_errno(errno_of(&e));
            return -1;
        }
    }
    match sockopt(fd, libc::SO_ERROR) {
        0 => 0,
        -1 => -1, // getsockopt's own errno
        err => {
            set_errno(err);
            -1
        }
    }
}

/// Hook: evco's one close path (`reactor::forget`: waiters on any thread get `EBADF`, the
/// registration goes), then libc's close.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn close(fd: c_int) -> c_int {
    let closing = crate::reactor::forget(fd);
    // SAFETY: the caller's argument, passed on.
    let r = unsafe { real::close(fd) };
    crate::reactor::closed(closing);
    r
}

/// Hook: the duplicate inherits the fd's table entry.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    let new = unsafe { real::dup(fd) };
    if new >= 0 {
        duplicated(fd, new);
    }
    new
}

/// Hook: `new`, if it was open, is forgotten as by `close` (its waiters get `EBADF`, its
/// registration goes); it inherits `fd`'s entry.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::dup2(fd, new) };
    replaced(fd, r);
    r
}

/// Hook: as `dup2`.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::dup3(fd, new, flags) };
    replaced(fd, r);
    r
}

/// After a `dup2`/`dup3` that returned `r`: `r` now refers to `fd`'s socket (`fresh` wakes
/// whatever waited on the one it replaced and drops its registration).
fn replaced(fd: c_int, r: c_int) {
    if r >= 0 && r != fd {
        duplicated(fd, r);
    }
}

/// `new` is a duplicate of `fd`: it inherits `fd`'s entry, and both are marked as sharing
/// their open file description.
fn duplicated(fd: c_int, new: c_int) {
    table::mark(fd, table::DUPED, true);
    let bits = table::get(fd);
    fresh(new, bits);
}

/// Hook: records `SO_RCVTIMEO` and `SO_SNDTIMEO`.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::setsockopt(fd, level, name, val, len) };
    let timeo = name == libc::SO_RCVTIMEO || name == libc::SO_SNDTIMEO;
    if r == 0 && level == libc::SOL_SOCKET && timeo && len as usize >= size_of::<libc::timeval>() {
        // SAFETY: the kernel accepted `val` as a timeval of `len` bytes.
        let tv = unsafe { std::ptr::read_unaligned(val as *const libc::timeval) };
        let d = Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64);
        table::set_timeout(fd, name == libc::SO_SNDTIMEO, (!d.is_zero()).then_some(d));
    }
    r
}

// `fcntl` and `ioctl` are variadic in C (`int fcntl(int, int, ...)`), which stable Rust cannot
// define. They are defined here with their one optional argument as a fixed third one. On the
// Linux ABIs evco's hooks build for (x86-64 System V, AArch64 AAPCS64), a variadic
// caller passes an integer or pointer argument exactly where a fixed one goes (x86-64 also sets
// `%al`, which a non-variadic callee ignores), so libc's callers reach these unchanged; the
// argument is read as the kernel reads it, an integer or a pointer. When the caller passed
// none, the value is whatever the register held, and the kernel ignores it, as it ignores what
// a C `va_arg` would have read. (Defining them in Rust, not C, puts them in libevco.so's
// exports with the other hooks: rustc's version script for a cdylib exports only Rust items.)
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "evco's fcntl/ioctl hooks assume a C ABI where variadic integer arguments go where fixed ones do"
);

/// Hook: records `O_NONBLOCK` and duplicates (see above for the signature).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::fcntl(fd, cmd, arg) };
    if r >= 0 {
        match cmd {
            libc::F_SETFL => table::mark(fd, table::NONBLOCK, arg as c_int & libc::O_NONBLOCK != 0),
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => duplicated(fd, r),
            _ => {}
        }
    }
    r
}

/// Hook: glibc 2.28+ also exports `fcntl64`. On 64-bit targets it is the same call (one
/// struct flock), so it shares the hook; on 32-bit ones it takes struct flock64 where fcntl
/// takes struct flock, and forwarding it to the real fcntl would misread record locks: there it
/// stays libc's (and an O_NONBLOCK set through it is not seen by the hooks).
#[cfg(target_pointer_width = "64")]
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    // SAFETY: the caller's arguments, passed on (same contract as `fcntl`).
    unsafe { fcntl(fd, cmd, arg) }
}

/// Hook: records `FIONBIO` (see `fcntl` for the signature).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn ioctl(
    fd: c_int,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::ioctl(fd, request, arg) };
    if r == 0 && request == libc::FIONBIO && arg != 0 {
        // SAFETY: the kernel just read an int through `arg`.
        let on = unsafe { *(arg as *const c_int) } != 0;
        table::mark(fd, table::NONBLOCK, on);
    }
    r
}
