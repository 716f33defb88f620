//! Interposed libc calls: unmodified blocking socket code (std::net, C client libraries)
//! becomes cooperative inside coroutines.
//!
//! With the `hook` feature (on by default) evco defines `socket`, `accept`, `connect`, `read`,
//! `write`, `recv`, `send` and their relatives, `close`, `dup`, `fcntl`, `ioctl`,
//! `setsockopt` and the sleeps itself, and the makers of other pollable fds (`pipe`,
//! `eventfd`, `epoll_create`, `timerfd_create`, `signalfd`), so that it knows every such number
//! is a new fd's. The linker binds calls in the program to these before
//! libc's (and, for libraries loaded with the program, the dynamic linker does the same for
//! the symbols they use); each one finds libc's own with `dlsym(RTLD_NEXT)` and calls it.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//!
//! evco::run(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let server = evco::spawn(move || {
//!         // Blocks this coroutine only: without the hooks, the thread would stop here
//!         // before the client below could connect.
//!         let (mut conn, _) = listener.accept().unwrap();
//!         let mut buf = [0u8; 5];
//!         conn.read_exact(&mut buf).unwrap();
//!         conn.write_all(&buf).unwrap();
//!     });
//!     let mut client = TcpStream::connect(addr).unwrap();
//!     client.write_all(b"hello").unwrap();
//!     let mut back = [0u8; 5];
//!     client.read_exact(&mut back).unwrap();
//!     assert_eq!(&back, b"hello");
//!     server.join().unwrap();
//! });
//! ```
//!
//! # What a hook changes, and where
//!
//! Only what a program could not tell apart from blocking:
//!
//! - **Inside a scheduled coroutine, on a blocking socket this process created** (through
//!   `socket`, `socketpair` or `accept`; a listening socket it inherited, from socket
//!   activation or a parent, is adopted by its first `accept` in a coroutine), a call that would
//!   block makes a non-blocking attempt instead, and on `EAGAIN` waits for readiness through
//!   evco's reactor: the coroutine suspends, the thread runs others. It is evco's own retry
//!   loop (`io::retry`, `io::read_owned`), so hooked sockets get the same persistent
//!   edge-triggered registration as [`net`](crate::net) sockets. The attempt is non-blocking
//!   per call, never by changing the open file description, which other threads and
//!   processes may share: transfers pass `MSG_DONTWAIT`; `accept` waits until the listener is
//!   readable and then makes the blocking call (see "accept" below); only `connect` sets
//!   `O_NONBLOCK` for its one attempt, and only on a socket never duplicated (`dup`,
//!   `fcntl(F_DUPFD)`, `try_clone`): a duplicated one connects with libc's blocking call.
//! - `SO_RCVTIMEO` and `SO_SNDTIMEO` bound those waits as they bound the blocking call (a
//!   timeout is `EAGAIN`, and `EINPROGRESS` for `connect`); they are kept in milliseconds,
//!   rounded up.
//! - A blocking stream `send`/`write`/`sendto`/`writev`/`sendmsg` returns when everything is
//!   queued, as the kernel's does (or with the bytes sent so far when a later wait fails), so
//!   a program that makes the call once, without a loop, loses nothing; a `sendmsg`'s
//!   ancillary data goes with its first transfer only, and a peer gone after some bytes went
//!   makes it return their count without `SIGPIPE`, as the kernel's does. `MSG_WAITALL`
//!   receives (`recv`, `recvfrom`, `recvmsg`) are waited out the same way, except with
//!   `MSG_PEEK`: that returns what it can see once some data is there, where Linux's TCP would
//!   wait for all of it; a `recvmsg` that takes several transfers reports the
//!   address and flags of the first, and one given room for ancillary data ends after its
//!   first transfer (a later one would have nowhere to put descriptors, and the kernel closes
//!   descriptors that arrive without room). The timeout bounds
//!   the whole call, not each transfer. `read`/`readv` and receives without `MSG_WAITALL` make
//!   one transfer once the socket is ready, as the kernel's do. Evco reads a caller's iovecs
//!   or `msghdr` itself only after the kernel accepted them in a first transfer, so a bad
//!   pointer is still the kernel's `EFAULT`. When a later transfer of such a call fails
//!   (`ECONNRESET`, say), the call reports the bytes moved before it, as the kernel's does, but
//!   the error itself is gone: the kernel keeps it for the next call, evco's transfer consumed
//!   it. A `read` of 0 bytes returns 0 at once, as the kernel's does on a socket (a `recv` of 0
//!   bytes waits for data, as the kernel's does). A Unix-domain `connect` is libc's (it blocks
//!   only while the listener's queue is full).
//! - TCP urgent data (`MSG_OOB`) is the kernel's: a read stops short at the urgent mark, and
//!   the next read returns the data behind it at once, without waiting (the reactor's urgent
//!   watch, `reactor::urgent`); `recv(MSG_OOB)` is libc's call.
//! - A signal does not interrupt a cooperative wait: its handler runs and the call goes on
//!   waiting, as if every handler had `SA_RESTART`; a program that relies on `EINTR` to
//!   break out of a blocking call does not get it inside a coroutine.
//! - A hook called from a signal handler is cooperative only if the handler interrupted the
//!   coroutine's own code: one that interrupted the scheduler, the middle of a switch or one
//!   of evco's waits (where the scheduler's state is mid-change) makes libc's call. (A handler
//!   that interrupted the coroutine's own code and sleeps suspends the coroutine inside the
//!   handler; the signal stays blocked on the thread until the handler returns.)
//! - `poll`, `ppoll`, `select`, `pselect`, `epoll_wait` and `epoll_pwait` inside a scheduled
//!   coroutine, with a timeout that is not zero, wait for the first listed fd to become ready
//!   over any mix of pollable fds (one socket of the process: evco's wait on it; anything else:
//!   a temporary epoll instance over them, or the caller's epoll fd, waited on as one fd), then
//!   report what a zero-timeout call of libc's says (so an fd that is not open, or is closed
//!   during the wait, is `POLLNVAL`, as libc's says). A signal mask is not applied inside a
//!   coroutine (see `poll`). `poll(NULL, 0, ms)` sleeps as below, and with a negative timeout
//!   suspends the coroutine until it is cancelled. This is what makes std's `connect_timeout`
//!   and C clients that wait with `poll` or `select` (curl's eventfd wake-ups included)
//!   cooperative.
//! - `sleep`, `usleep`, `nanosleep` and `clock_nanosleep` inside a scheduled coroutine suspend
//!   it on a timer ([`time::sleep`](crate::time::sleep)); `clock_nanosleep` only on the
//!   realtime, monotonic, boottime and TAI clocks (on others it is libc's, which refuses the
//!   calling thread's CPU clock and unknown ids with `EINVAL`).
//! - `read`/`readv` of a blocking pipe end the process made (`pipe`, `pipe2`) inside a
//!   scheduled coroutine wait cooperatively until the read would not block, then are libc's
//!   (see `pipe`); writes to pipes are libc's.
//! - Everywhere else every hook is a plain call of libc's function: outside coroutines, inside
//!   a bare [`Coroutine`](crate::coroutine::Coroutine), on fds the process did not create as
//!   sockets (stdin/stdout/stderr, files, pipes, inherited fds), and on sockets the program
//!   made non-blocking itself (it still gets `EAGAIN`). evco never leaves `O_NONBLOCK` set on
//!   an fd it did not set it on for the program, so outside coroutines a socket behaves
//!   exactly as the program configured it. Those paths allocate nothing and take no lock:
//!   one load from the fd table below, one thread-local read, one call.
//! - `close` (and `dup2`/`dup3` over an open fd) is evco's one close path,
//!   `reactor::forget`: coroutines waiting on the fd get `EBADF`, on this thread or any other
//!   (whose reactor's doorbell it rings), and its registration goes, so a reused fd number
//!   never inherits a stale one. It takes no lock and is safe in a signal handler, as libc's
//!   is: where the handler interrupted evco's own code (the scheduler, libevent, a switch, a
//!   wait) rather than a coroutine's, the waits it ends on this thread end on the loop's next
//!   turn, through the thread's doorbell, instead of at once.
//! - An fd closed where the hooks cannot see it (`fclose(fdopen(fd))`, `close_range`,
//!   `syscall(SYS_close)`) leaves its entry behind. A hook that finds the entry wrong (a
//!   socket call on the number fails with `ENOTSOCK`: a file or pipe got it) clears it and
//!   makes libc's call with the caller's arguments, so the caller never sees the stale entry.
//!
//! # accept
//!
//! No call makes one `accept` non-blocking without changing the listener's open file
//! description, which a `try_clone`, another thread or a forked process may share (flipping
//! `O_NONBLOCK` on it made their blocking `accept` fail with `EAGAIN`, and two threads
//! flipping it at once left one of them in a blocking `accept`). So a cooperative `accept`
//! waits (suspended) until the listener is readable, takes a per-listener lock that the
//! coroutines of this process share (keyed by the socket's inode, so duplicates share it),
//! checks again that a connection is queued, and makes libc's blocking call, which returns at
//! once. What remains: a thread outside any coroutine, or another process, that accepts from
//! the same listener between that check and the call makes this `accept` wait, blocking the
//! thread, until the next connection. Serve a listener shared with other processes from
//! non-blocking sockets ([`net::TcpListener`](crate::net::TcpListener)) or one listener per
//! process (`SO_REUSEPORT`).
//!
//! # Name resolution
//!
//! `getaddrinfo`, `getnameinfo`, `gethostbyname`, `gethostbyname2`, `gethostbyaddr` and their
//! `_r` forms are replaced, not wrapped (glibc resolves inside libc). Inside a scheduled
//! coroutine, forward lookups answer from the hosts file and evdns on the scheduler's resolver
//! (the configuration [`net::lookup_host`](crate::net::lookup_host) reads, `EVCO_RESOLV_CONF`
//! included); reverse lookups, and forward ones with NSS sources beyond `files` and `dns`, run
//! glibc's own call on a small thread pool while the coroutine is parked. Outside coroutines
//! they are libc's. See `resolve`'s module docs.
//!
//! # Cancellation
//!
//! Cancelling a coroutine unwinds its stack from the point where it is suspended, but a hooked
//! call's caller is C, or Rust that called libc through an `extern "C"` declaration (std
//! does), and unwinding through such a call is undefined behaviour: the unwinder may abort
//! the process. So the unwinding stops in the hook: a cancelled hooked call returns `-1` with
//! `ECANCELED` (a sleep returns as if complete), and from then on every hooked call that would
//! block fails the same way at once (not `EINTR`, which callers retry in a loop). The
//! coroutine ends when its code returns on those errors, and `cancel` returns then; code that
//! retries failed calls forever keeps it running. Its locals are dropped as it returns.
//! Hooks are `extern "C"`: nothing unwinds out of them (a panic would be a bug in evco, and
//! aborts).
//!
//! # The fd table
//!
//! The hooks' entry for an fd is the `bits` word of its slot in the process-wide fd table
//! (`crate::fd_table`): whether the fd is a socket this process created, whether it is a
//! stream, a TCP stream, whether the program made it non-blocking, whether it was duplicated,
//! and its receive and send timeouts. Updated by the hooks that create, configure, duplicate
//! and close fds; read with relaxed loads (an fd used by two threads at once is the program's
//! race, as it would be without evco). Fds at or above [`MAX_FDS`] are never hooked.
//! `O_NONBLOCK` belongs to the open file description, which `dup` shares: for an fd marked
//! duplicated, the hooks ask the real flag (`F_GETFL`) instead of trusting the entry's bit.
//!
//! # Layout
//!
//! This file holds what every hook shares (when a call is cooperative, the entry's bits,
//! errno, stopping a cancellation); `transfer` the loop of calls the kernel completes as one;
//! `rw` the read/write family; `fds` the hooks that create, configure, duplicate and close
//! fds; `sleep` and `poll` theirs.

mod fds;
mod pipe;
mod poll;
mod resolve;
mod rw;
mod sleep;
mod transfer;

use std::ffi::c_int;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::fd_table;
use crate::os::real::set_errno;
use crate::scheduler;

pub use crate::fd_table::MAX_FDS;

/// Whether evco treats `fd` as a socket this process created (and would make its blocking
/// calls cooperative inside coroutines, unless the program made it non-blocking).
pub fn is_tracked(fd: RawFd) -> bool {
    fd_table::bits(fd) & table::SOCKET != 0
}

/// Whether the hooks recorded `fd` as a pipe end this process made (`pipe`, `pipe2`), whose
/// reads wait cooperatively inside coroutines.
pub fn is_piped(fd: RawFd) -> bool {
    fd_table::bits(fd) & table::PIPE != 0
}

/// The hooks' bits in an fd's slot (see "The fd table").
mod table {
    use super::*;

    pub(super) const SOCKET: u64 = 1;
    pub(super) const NONBLOCK: u64 = 2;
    pub(super) const STREAM: u64 = 4;
    /// An AF_INET/AF_INET6 stream: reads may use the short-read rule (`io::read_owned`).
    pub(super) const TCP: u64 = 8;
    /// Duplicated (`dup`, `dup2`, `F_DUPFD`): its open file description has other fds.
    pub(super) const DUPED: u64 = 16;
    /// A pipe end this process made (`pipe`, `pipe2`), never with `SOCKET`: reads of it wait
    /// cooperatively (see `pipe`).
    pub(super) const PIPE: u64 = 32;
    const RCV_SHIFT: u32 = 8;
    const SND_SHIFT: u32 = 36;
    /// Timeouts in milliseconds, 28 bits each (74 hours; longer ones are clamped).
    const MS_MASK: u64 = (1 << 28) - 1;

    pub(super) fn get(fd: RawFd) -> u64 {
        fd_table::bits(fd)
    }

    pub(super) fn set(fd: RawFd, bits: u64) {
        if let Some(s) = fd_table::get_or_grow(fd) {
            s.bits.store(bits, Relaxed);
        }
    }

    /// Sets `flag` on `fd`'s entry if it is a socket's or a pipe's.
    pub(super) fn mark(fd: RawFd, flag: u64, on: bool) {
        if let Some(s) = fd_table::get(fd) {
            let bits = s.bits.load(Relaxed);
            if bits & (SOCKET | PIPE) != 0 {
                s.bits
                    .store(if on { bits | flag } else { bits & !flag }, Relaxed);
            }
        }
    }

    pub(super) fn set_timeout(fd: RawFd, send: bool, timeout: Option<Duration>) {
        let Some(s) = fd_table::get(fd) else { return };
        let ms = timeout.map_or(0, |t| {
            let ms = t.as_micros().div_ceil(1000);
            ms.clamp(1, MS_MASK as u128) as u64
        });
        let shift = if send { SND_SHIFT } else { RCV_SHIFT };
        let bits = s.bits.load(Relaxed);
        if bits & SOCKET != 0 {
            s.bits
                .store((bits & !(MS_MASK << shift)) | (ms << shift), Relaxed);
        }
    }

    pub(super) fn timeout(bits: u64, send: bool) -> Option<Duration> {
        let shift = if send { SND_SHIFT } else { RCV_SHIFT };
        match (bits >> shift) & MS_MASK {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno a failed cooperative call reports.
fn errno_of(e: &io::Error) -> c_int {
    if let Some(code) = e.raw_os_error() {
        return code;
    }
    match e.kind() {
        // SO_RCVTIMEO / SO_SNDTIMEO expired: what the blocking call says.
        io::ErrorKind::TimedOut => libc::EAGAIN,
        // Cancelling: the coroutine cannot wait any more. Not EINTR: callers retry that
        // (std's `read_exact`/`write_all`, C's `while (errno == EINTR)`), which would spin.
        io::ErrorKind::Interrupted => libc::ECANCELED,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        _ => libc::EIO,
    }
}

/// A cooperative call's result as libc reports it: the count, or -1 with errno.
fn ret(r: io::Result<usize>) -> libc::ssize_t {
    match r {
        Ok(n) => n as libc::ssize_t,
        Err(e) => {
            set_errno(errno_of(&e));
            -1
        }
    }
}

/// The table bits of `fd` when a blocking call on it should be made cooperative: a blocking
/// socket this process created, used inside a scheduled coroutine.
#[inline]
fn cooperative(fd: c_int) -> Option<u64> {
    let bits = table::get(fd);
    if bits & (table::SOCKET | table::NONBLOCK | table::DUPED) != table::SOCKET {
        return cooperative_duped(fd, bits, table::SOCKET);
    }
    scheduler::in_scheduled_coroutine().then_some(bits)
}

/// [`cooperative`] (or `pipe::cooperative_read`, with `kind` PIPE) for an fd whose table
/// entry says `kind` and duplicated: `O_NONBLOCK` belongs to the open file description, which
/// its duplicates share, so a flag set or cleared through another fd is not in this fd's bits.
/// The real flag is asked (one `fcntl`, for duplicated fds only).
#[cold]
#[inline(never)]
fn cooperative_duped(fd: c_int, bits: u64, kind: u64) -> Option<u64> {
    if bits & (kind | table::DUPED) != kind | table::DUPED || !scheduler::in_scheduled_coroutine() {
        return None;
    }
    // SAFETY: F_GETFL takes no argument and reads nothing of the caller's.
    let flags = unsafe { crate::os::real::fcntl(fd, libc::F_GETFL, 0) };
    (flags >= 0 && flags & libc::O_NONBLOCK == 0).then_some(bits)
}

/// After a cooperative call failed: whether it failed because `fd`'s entry is stale (a socket
/// call on it said `ENOTSOCK`: the socket was closed where the hooks could not see, and a file
/// or pipe got the number). The entry is cleared then, and the caller makes libc's own call.
fn stale_entry(fd: c_int, r: isize) -> bool {
    if r == -1 && errno() == libc::ENOTSOCK {
        crate::reactor::renumbered(fd);
        return true;
    }
    false
}

/// Runs a cooperative wait, stopping a cancellation's unwinding here: it becomes the error a
/// wait gets in a coroutine that is being cancelled (`ECANCELED` for the caller). A hook's
/// caller is C, or Rust code that called libc through an `extern "C"` declaration, and
/// unwinding through such a call is undefined behaviour (in practice the unwinder may find no
/// entry for the call and abort the process). See "Cancellation" in the module docs.
fn stop_cancellation<T>(wait: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(wait)) {
        Ok(r) => r,
        Err(p) if crate::coroutine::is_cancellation(&*p) => {
            Err(crate::coroutine::cancelling_error())
        }
        // Anything else is a bug in evco: the hook is `extern "C"`, so this aborts.
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Whether the running coroutine is being cancelled (its waits fail at once).
fn cancelling() -> bool {
    crate::coroutine::current_core().is_some_and(|c| c.is_cancelling())
}

// ---- the hooks ----
//
// SAFETY (for every `#[unsafe(no_mangle)]` in this module's files): each one replaces libc's
// symbol of the same name for the whole process, libevent and std included, so each has libc's
// exact signature and contract: it either calls the real function with the caller's arguments,
// or does the same work cooperatively and reports the result the way libc does (-1 with
// errno). None lets a panic or a coroutine's cancellation unwind out of it (`extern "C"` aborts
// instead, and `stop_cancellation` turns a cancellation into an error first).

/// The address of every hook, in one exported table (`evco_hook_table` in include/evco.h).
///
/// A C program linked with libevco.a gets from the archive only the members that resolve a
/// symbol it references: the hooks, which nothing references by name (the program means libc's
/// `read`), would silently stay out. Every `evco_sched_*` entry of the C ABI refers to this
/// table, which refers to every hook, so the linker keeps them all, with `--gc-sections` too;
/// a program that calls no such function can name the table itself (`-Wl,-u,evco_hook_table`).
/// Null-terminated.
#[repr(transparent)]
#[derive(Debug)]
pub struct HookTable([*const std::ffi::c_void; 49]);

// SAFETY: the table is immutable and holds only addresses of functions, never dereferenced as
// data by anyone.
unsafe impl Sync for HookTable {}

macro_rules! hook_table {
    ($($f:path),* $(,)?) => {
        HookTable([$($f as *const std::ffi::c_void,)* std::ptr::null()])
    };
}

/// See [`HookTable`].
#[unsafe(no_mangle)]
pub static evco_hook_table: HookTable = hook_table![
    fds::socket,
    fds::socketpair,
    fds::accept,
    fds::accept4,
    fds::connect,
    fds::close,
    fds::dup,
    fds::dup2,
    fds::dup3,
    fds::setsockopt,
    fds::fcntl,
    fds::ioctl,
    rw::read,
    rw::write,
    rw::recv,
    rw::send,
    rw::recvfrom,
    rw::sendto,
    rw::recvmsg,
    rw::sendmsg,
    rw::readv,
    rw::writev,
    sleep::nanosleep,
    sleep::clock_nanosleep,
    sleep::usleep,
    sleep::sleep,
    poll::poll,
    poll::ppoll,
    poll::select,
    poll::pselect,
    poll::epoll_wait,
    poll::epoll_pwait,
    pipe::pipe,
    pipe::pipe2,
    pipe::eventfd,
    pipe::epoll_create,
    pipe::epoll_create1,
    pipe::timerfd_create,
    pipe::signalfd,
    fds::fcntl64,
    resolve::getaddrinfo,
    resolve::getnameinfo,
    resolve::gethostbyname,
    resolve::gethostbyname2,
    resolve::gethostbyname_r,
    resolve::gethostbyname2_r,
    resolve::gethostbyaddr,
    resolve::gethostbyaddr_r,
];

/// Whether the process's `read`, `accept`, ... as the dynamic linker resolves them (for
/// libevent and every shared library) are evco's hooks.
pub(crate) fn active() -> bool {
    ["read\0", "accept\0", "connect\0", "usleep\0"]
        .iter()
        .all(|name| {
            // SAFETY: dlsym with a NUL-terminated name and the default scope; only compared.
            let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast()) };
            evco_hook_table
                .0
                .iter()
                .any(|&h| !h.is_null() && h == found.cast_const())
        })
}
