//! Interposed libc calls: unmodified blocking socket code (std::net, C client libraries)
//! becomes cooperative inside coroutines.
//!
//! With the `hook` feature (on by default) evco defines `socket`, `accept`, `connect`, `read`,
//! `write`, `recv`, `send` and their relatives, `close`, `dup`, `fcntl`, `ioctl`,
//! `setsockopt` and the sleeps itself. The linker binds calls in the program to these before
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
//!   `socket`, `socketpair` or `accept`, also on a listener it inherited), a call that would block makes the non-blocking
//!   attempt instead (`MSG_DONTWAIT`, or `O_NONBLOCK` set for the one `accept`/`connect`
//!   attempt and cleared again), and on `EAGAIN` waits for readiness through evco's
//!   scheduler: the coroutine suspends, the thread runs others. It is evco's own retry loop
//!   (`io::retry`, `io::read_owned`), so hooked sockets get the same persistent
//!   edge-triggered registration as [`net`](crate::net) sockets.
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
//! - A signal does not interrupt a cooperative wait: its handler runs and the call goes on
//!   waiting, as if every handler had `SA_RESTART`; a program that relies on `EINTR` to
//!   break out of a blocking call does not get it inside a coroutine.
//! - `poll` inside a scheduled coroutine, when every fd it lists is a socket this process
//!   created polled for `POLLIN` and/or `POLLOUT`, waits for the first one to become ready
//!   (one fd: evco's wait on it; several: a temporary epoll instance over them, waited on as
//!   one fd), then reports `revents` from a
//!   zero-timeout `poll`. `poll(NULL, 0, ms)` sleeps as below. This is what makes std's
//!   `connect_timeout` and C clients that wait with `poll` cooperative.
//! - `sleep`, `usleep`, `nanosleep` and `clock_nanosleep` inside a scheduled coroutine suspend
//!   it on a timer ([`time::sleep`](crate::time::sleep)).
//! - Everywhere else every hook is a plain call of libc's function: outside coroutines, inside
//!   a bare [`Coroutine`](crate::coroutine::Coroutine), on fds the process did not create as
//!   sockets (stdin/stdout/stderr, files, pipes, inherited fds), and on sockets the program
//!   made non-blocking itself (it still gets `EAGAIN`). evco never leaves `O_NONBLOCK` set on
//!   an fd it did not set it on for the program, so outside coroutines a socket behaves
//!   exactly as the program configured it. Those paths allocate nothing and take no lock:
//!   one load from the fd table below, one thread-local read, one call.
//! - `close` (and `dup2`/`dup3` over an open fd) wakes coroutines of this thread waiting on the
//!   fd with `EBADF` and removes its registration, so a reused fd number never inherits a
//!   stale one. For a socket never waited on in a coroutine that costs two `RefCell` checks
//!   and allocates nothing. A socket used in coroutines on one thread but closed by another
//!   leaves its registration in the first thread's scheduler: every fd the hooks see created
//!   gets a new generation number, and a scheduler replaces a registration made under an
//!   older one.
//!
//! `select`, `ppoll`, `epoll_wait` and DNS (`getaddrinfo`) are not hooked, nor `poll` over
//! other fds: they block the thread as before. [`net::lookup_host`](crate::net::lookup_host)
//! resolves names without blocking it.
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
//! One `AtomicU64` per fd below [`MAX_FDS`], in a static array (zero pages until touched):
//! whether the fd is a socket this process created, whether it is a stream, a TCP stream,
//! whether the program made it non-blocking, and its receive and send timeouts. Updated by the
//! hooks that create, configure, duplicate and close fds; read with relaxed loads (an fd used
//! by two threads at once is the program's race, as it would be without evco). Fds at or above
//! `MAX_FDS` are never hooked. `O_NONBLOCK` belongs to the open file description, which `dup`
//! shares: the table tracks it per fd, so a flag changed through one duplicate is not seen
//! through the other.

use std::ffi::{CStr, c_int, c_uint, c_void};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use libc::{iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t, timespec};

use crate::event::What;
use crate::io::Interest;
use crate::os::cvt_size as cvt;
use crate::scheduler;

/// Fds at or above this are never hooked (see "The fd table").
pub const MAX_FDS: usize = 1 << 20;

/// Whether evco treats `fd` as a socket this process created (and would make its blocking
/// calls cooperative inside coroutines, unless the program made it non-blocking).
pub fn is_tracked(fd: RawFd) -> bool {
    table::get(fd) & table::SOCKET != 0
}

mod table {
    use super::*;

    pub(super) const SOCKET: u64 = 1;
    pub(super) const NONBLOCK: u64 = 2;
    pub(super) const STREAM: u64 = 4;
    /// An AF_INET/AF_INET6 stream: reads may use the short-read rule (`io::read_owned`).
    pub(super) const TCP: u64 = 8;
    const RCV_SHIFT: u32 = 8;
    const SND_SHIFT: u32 = 36;
    /// Timeouts in milliseconds, 28 bits each (74 hours; longer ones are clamped).
    const MS_MASK: u64 = (1 << 28) - 1;

    static FDS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];
    /// How many times an fd with this number was created (see `super::generation`).
    static GENERATIONS: [AtomicU32; MAX_FDS] = [const { AtomicU32::new(0) }; MAX_FDS];

    pub(super) fn new_generation(fd: RawFd) {
        if let Some(g) = usize::try_from(fd).ok().and_then(|i| GENERATIONS.get(i)) {
            g.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn generation(fd: RawFd) -> u32 {
        usize::try_from(fd)
            .ok()
            .and_then(|i| GENERATIONS.get(i))
            .map_or(0, |g| g.load(Relaxed))
    }

    fn slot(fd: RawFd) -> Option<&'static AtomicU64> {
        FDS.get(usize::try_from(fd).ok()?)
    }

    pub(super) fn get(fd: RawFd) -> u64 {
        slot(fd).map_or(0, |s| s.load(Relaxed))
    }

    pub(super) fn set(fd: RawFd, bits: u64) {
        if let Some(s) = slot(fd) {
            s.store(bits, Relaxed);
        }
    }

    pub(super) fn set_nonblocking(fd: RawFd, on: bool) {
        if let Some(s) = slot(fd) {
            let bits = s.load(Relaxed);
            if bits & SOCKET != 0 {
                s.store(
                    if on {
                        bits | NONBLOCK
                    } else {
                        bits & !NONBLOCK
                    },
                    Relaxed,
                );
            }
        }
    }

    pub(super) fn set_timeout(fd: RawFd, send: bool, timeout: Option<Duration>) {
        let Some(s) = slot(fd) else { return };
        let ms = timeout.map_or(0, |t| {
            let ms = t.as_micros().div_ceil(1000);
            ms.clamp(1, MS_MASK as u128) as u64
        });
        let shift = if send { SND_SHIFT } else { RCV_SHIFT };
        let bits = s.load(Relaxed);
        s.store((bits & !(MS_MASK << shift)) | (ms << shift), Relaxed);
    }

    pub(super) fn timeout(bits: u64, send: bool) -> Option<Duration> {
        let shift = if send { SND_SHIFT } else { RCV_SHIFT };
        match (bits >> shift) & MS_MASK {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// A libc function found with `dlsym(RTLD_NEXT)`, on first use or by the constructor below.
struct Real {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Real {
    const fn new(name: &'static CStr) -> Real {
        Real {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The function's address, or 0 when no later object defines it.
    fn get(&self) -> usize {
        match self.addr.load(Relaxed) {
            0 => self.resolve(),
            a => a,
        }
    }

    #[cold]
    fn resolve(&self) -> usize {
        // SAFETY: `name` is a NUL-terminated symbol name; dlsym only reads it.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        self.addr.store(a, Relaxed);
        a
    }
}

/// Declares, for every listed libc function, a `Real` in `sym` and a typed caller in `real`
/// that fails with `ENOSYS` when libc has no such function.
macro_rules! real_fns {
    ($($name:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        #[allow(non_upper_case_globals)]
        mod sym {
            use super::Real;
            $(pub(super) static $name: Real =
                Real::new(match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                    Ok(c) => c,
                    Err(_) => panic!("symbol name"),
                });)*
            use std::ffi::CStr;

            pub(super) fn resolve_all() {
                $($name.get();)*
            }
        }

        /// libc's own functions, past evco's hooks.
        pub(crate) mod real {
            #[allow(unused_imports)]
            use super::*;
            $(
                /// libc's function of this name.
                ///
                /// # Safety
                ///
                /// libc's contract for it.
                pub(crate) unsafe fn $name($($a: $t),*) -> $r {
                    let addr = super::sym::$name.get();
                    if addr == 0 {
                        super::set_errno(libc::ENOSYS);
                        return -1 as $r;
                    }
                    // SAFETY: `addr` is what dlsym returned for this name: libc's function,
                    // whose C prototype the listed signature copies.
                    let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute(addr) };
                    // SAFETY: the caller keeps libc's contract.
                    unsafe { f($($a),*) }
                }
            )*
        }
    };
}

real_fns! {
    socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    socketpair(domain: c_int, ty: c_int, protocol: c_int, sv: *mut c_int) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t;
    write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    close(fd: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(fd: c_int, new: c_int) -> c_int;
    dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    nanosleep(req: *const timespec, rem: *mut timespec) -> c_int;
    clock_nanosleep(clock: libc::clockid_t, flags: c_int, req: *const timespec, rem: *mut timespec) -> c_int;
    usleep(us: libc::useconds_t) -> c_int;
    poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int;
}

/// libc's `fcntl` and `ioctl` (variadic: not expressible in `real_fns!`).
static REAL_FCNTL: Real = Real::new(c"fcntl");
static REAL_IOCTL: Real = Real::new(c"ioctl");

unsafe fn real_fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    let addr = REAL_FCNTL.get();
    if addr == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: libc's variadic fcntl, found by dlsym.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = unsafe { std::mem::transmute(addr) };
    // SAFETY: the caller passes on its own caller's arguments (one word, as fcntl reads it).
    unsafe { f(fd, cmd, arg) }
}

unsafe fn real_ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    let addr = REAL_IOCTL.get();
    if addr == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: libc's variadic ioctl, found by dlsym.
    let f: unsafe extern "C" fn(c_int, libc::c_ulong, ...) -> c_int =
        unsafe { std::mem::transmute(addr) };
    // SAFETY: as in `real_fcntl`.
    unsafe { f(fd, request, arg) }
}

/// Resolves every real function before `main` (and before other threads exist), so that the
/// hooks never call `dlsym` later, e.g. from a signal handler. Best effort: a hook called
/// earlier, or a linker that drops this constructor, resolves lazily.
// SAFETY: `.init_array` entries are called once by the dynamic loader (or the static startup
// code) before `main`, with `(argc, argv, envp)`, which an `extern "C" fn()` ignores under the
// C calling convention; `resolve_at_start` only calls `dlsym`, which is fine at that point.
#[used]
#[unsafe(link_section = ".init_array")]
static RESOLVE_AT_START: extern "C" fn() = resolve_at_start;

extern "C" fn resolve_at_start() {
    sym::resolve_all();
    REAL_FCNTL.get();
    REAL_IOCTL.get();
}

fn set_errno(e: c_int) {
    // SAFETY: errno is this thread's; the location is always valid.
    unsafe { *libc::__errno_location() = e };
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

fn ret(r: io::Result<usize>) -> ssize_t {
    match r {
        Ok(n) => n as ssize_t,
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
    if bits & (table::SOCKET | table::NONBLOCK) != table::SOCKET {
        return None;
    }
    scheduler::in_scheduled_coroutine().then_some(bits)
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

/// One cooperative transfer: `op` (one non-blocking attempt) retried whenever the socket is
/// ready for `interest`, within the fd's timeout for that direction.
fn coop_once(
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
fn coop_once_within(
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
struct Budget {
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

/// A cooperative receive of at most `len` bytes within `timeout` (`op` makes one non-blocking
/// attempt).
fn coop_recv(
    fd: c_int,
    bits: u64,
    len: usize,
    peek: bool,
    timeout: Option<Duration>,
    op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    stop_cancellation(|| {
        if bits & table::TCP != 0 && !peek {
            crate::io::read_owned(fd, timeout, len, op)
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
fn coop_send_all(
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
fn transfer_all(
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
fn later(done: usize) -> c_int {
    if done > 0 { libc::MSG_NOSIGNAL } else { 0 }
}

/// A cooperative receive that honours `MSG_WAITALL` on streams as the kernel's blocking
/// receive does: transfers until `len()` bytes arrived, the peer closed, or an error or the
/// fd's receive timeout (counted once for the whole call) came after some bytes. `once(off,
/// flags, timeout)` makes one receive into the caller's buffer from `off` with `flags`
/// (`MSG_WAITALL` taken out). `len` is asked for only after a first transfer succeeded (see
/// [`coop_send_all`]).
fn coop_recv_all(
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
unsafe fn iov_rest(iov: *const iovec, n: usize, done: usize, into: &mut Vec<iovec>) {
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
unsafe fn msg_rest(msg: *const msghdr, done: usize, rest: &mut Vec<iovec>) -> msghdr {
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
fn msg_iovlen(m: &msghdr) -> usize {
    m.msg_iovlen as usize
}

/// The total length of `n` iovecs (saturating: the kernel refuses more than `ssize_t` anyway).
///
/// # Safety
///
/// As for [`iov_rest`].
unsafe fn iov_total(iov: *const iovec, n: usize) -> usize {
    if n == 0 || iov.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract.
    let all = unsafe { std::slice::from_raw_parts(iov, n) };
    all.iter().fold(0usize, |t, v| t.saturating_add(v.iov_len))
}

/// Runs one attempt of `op` with `O_NONBLOCK` set on `fd`, and clears it again (keeping the
/// attempt's errno), unless it was set already: `O_NONBLOCK` belongs to the open file
/// description, which a `dup` (`try_clone`) shares, and the program may have made it
/// non-blocking through the other fd.
fn nonblocking_attempt(fd: c_int, op: impl FnOnce() -> c_int) -> io::Result<usize> {
    // SAFETY: F_GETFL only reads the description's status flags.
    let fl = unsafe { real_fcntl(fd, libc::F_GETFL, 0) };
    if fl == -1 {
        return Err(io::Error::last_os_error());
    }
    let toggle = fl & libc::O_NONBLOCK == 0;
    // SAFETY: F_SETFL with the flags just read, plus O_NONBLOCK.
    if toggle && unsafe { real_fcntl(fd, libc::F_SETFL, (fl | libc::O_NONBLOCK) as _) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let r = op();
    let saved = errno();
    if toggle {
        // SAFETY: as above, the flags as they were.
        unsafe { real_fcntl(fd, libc::F_SETFL, fl as _) };
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

/// `fd` was just created (a socket, an accepted connection, a duplicate): record it, and drop
/// any registration this thread's scheduler still has for the number. Normally `close` removed
/// that already; it is left behind when a socket used in coroutines here was closed by another
/// thread (std's sockets are `Send`), and epoll would never report the new socket through it.
fn fresh(fd: c_int, bits: u64) {
    table::set(fd, bits);
    table::new_generation(fd);
    scheduler::forget_fd(fd);
}

/// How many times the hooks have seen an fd with this number created (socket, accept, dup):
/// a scheduler's registration made under an older generation belongs to a socket that is gone
/// (closed by another thread) and must not be reused.
pub(crate) fn generation(fd: RawFd) -> u32 {
    table::generation(fd)
}

/// `fd` is going away (closed, or replaced by `dup2`): forget it, and wake this thread's
/// coroutines waiting on it.
fn forget(fd: c_int) {
    if table::get(fd) == 0 {
        return;
    }
    table::set(fd, 0);
    scheduler::forget_fd(fd);
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
unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    if fd >= 0 {
        fresh(fd, socket_bits(domain, ty));
    }
    fd
}

/// Hook: records both sockets in the fd table.
#[unsafe(no_mangle)]
unsafe extern "C" fn socketpair(
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
unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe { accept4(fd, addr, len, 0) }
}

/// Hook: cooperative on a blocking listener inside a coroutine; the new socket is recorded.
#[unsafe(no_mangle)]
unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let listener = table::get(fd);
    let new = match cooperative(fd) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::accept4(fd, addr, len, flags) }
        }
        Some(bits) => {
            let r = coop_once(fd, bits, Interest::READABLE, || {
                // SAFETY: as above, one attempt with the listener non-blocking.
                nonblocking_attempt(fd, || unsafe { real::accept4(fd, addr, len, flags) })
            });
            ret(r) as c_int
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
unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(bits) = cooperative(fd).filter(|b| b & table::TCP != 0) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::connect(fd, addr, len) };
    };
    // SAFETY: as above, one attempt with the socket non-blocking.
    match nonblocking_attempt(fd, || unsafe { real::connect(fd, addr, len) }) {
        Ok(_) => return 0,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
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

/// Hook: on a hooked socket in a coroutine, a cooperative `recv`.
#[unsafe(no_mangle)]
unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    match cooperative(fd) {
        // A read of nothing returns 0 at once on a socket, ready or not (unlike a recv of
        // nothing, which waits for data like any other).
        Some(bits) if count > 0 => {
            // SAFETY: the caller's buffer; on a socket, read is recv without flags.
            unsafe { coop_recv_buf(fd, bits, buf, count, 0) }
        }
        _ => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::read(fd, buf, count) }
        }
    }
}

/// Hook: on a hooked socket in a coroutine, a cooperative `send` of everything.
#[unsafe(no_mangle)]
unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    match cooperative(fd) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::write(fd, buf, count) }
        }
        // SAFETY: the caller's buffer; on a socket, write is send without flags.
        Some(bits) => unsafe { coop_send_buf(fd, bits, buf, count, 0) },
    }
}

/// Hook: cooperative on a hooked socket in a coroutine (`MSG_WAITALL` waited out).
#[unsafe(no_mangle)]
unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    match cooperative_recv(fd, flags) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::recv(fd, buf, len, flags) }
        }
        // SAFETY: the caller's arguments.
        Some(bits) => unsafe { coop_recv_buf(fd, bits, buf, len, flags) },
    }
}

/// Hook: cooperative on a hooked socket in a coroutine.
#[unsafe(no_mangle)]
unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    match cooperative_send(fd, flags) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::send(fd, buf, len, flags) }
        }
        // SAFETY: the caller's arguments.
        Some(bits) => unsafe { coop_send_buf(fd, bits, buf, len, flags) },
    }
}

/// Hook: cooperative on a hooked socket in a coroutine (`MSG_WAITALL` waited out).
#[unsafe(no_mangle)]
unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    match cooperative_recv(fd, flags) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::recvfrom(fd, buf, len, flags, addr, alen) }
        }
        // SAFETY: the caller's arguments.
        Some(bits) => unsafe { coop_recvfrom(fd, bits, buf, len, flags, addr, alen) },
    }
}

/// Hook: cooperative on a hooked socket in a coroutine (streams: until everything is queued).
#[unsafe(no_mangle)]
unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    match cooperative_send(fd, flags) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::sendto(fd, buf, len, flags, addr, alen) }
        }
        // SAFETY: the caller's arguments.
        Some(bits) => unsafe { coop_sendto(fd, bits, buf, len, flags, addr, alen) },
    }
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
unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let Some(bits) = cooperative_recv(fd, flags) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::recvmsg(fd, msg, flags) };
    };
    // SAFETY: the caller's arguments.
    unsafe { coop_recvmsg(fd, bits, msg, flags) }
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
unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let Some(bits) = cooperative_send(fd, flags) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::sendmsg(fd, msg, flags) };
    };
    // SAFETY: the caller's arguments.
    unsafe { coop_sendmsg(fd, bits, msg, flags) }
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
unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    match cooperative(fd).filter(|_| iov_count_ok(n)) {
        None => {
            // SAFETY: the caller's arguments, passed on.
            unsafe { real::readv(fd, iov, n) }
        }
        Some(bits) => {
            let mut m = iov_msg(iov, n);
            // SAFETY: `m` points at the caller's iovecs; recvmsg on a socket is readv.
            unsafe { coop_recvmsg(fd, bits, &mut m, 0) }
        }
    }
}

/// Hook: on a hooked socket in a coroutine, a cooperative `sendmsg`; on streams it goes on
/// until every byte is queued, as a blocking `writev` does.
#[unsafe(no_mangle)]
unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let Some(bits) = cooperative(fd).filter(|_| iov_count_ok(n)) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::writev(fd, iov, n) };
    };
    let m = iov_msg(iov, n);
    // SAFETY: `m` points at the caller's iovecs; sendmsg on a socket is writev.
    unsafe { coop_sendmsg(fd, bits, &m, 0) }
}

/// Hook: forgets the fd (waking its waiters with `EBADF`), then closes it.
#[unsafe(no_mangle)]
unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget(fd);
    // SAFETY: the caller's argument, passed on.
    unsafe { real::close(fd) }
}

/// Hook: the duplicate inherits the fd's table entry.
#[unsafe(no_mangle)]
unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    let new = unsafe { real::dup(fd) };
    if new >= 0 {
        fresh(new, table::get(fd));
    }
    new
}

/// Hook: `new`, if it was open, is forgotten as by `close` (its waiters get `EBADF`, its
/// registration goes); it inherits `fd`'s entry.
#[unsafe(no_mangle)]
unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::dup2(fd, new) };
    replaced(fd, r);
    r
}

/// Hook: as `dup2`.
#[unsafe(no_mangle)]
unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::dup3(fd, new, flags) };
    replaced(fd, r);
    r
}

/// After a `dup2`/`dup3` that returned `r`: `r` now refers to `fd`'s socket (`fresh` wakes
/// whatever waited on the one it replaced and drops its registration).
fn replaced(fd: c_int, r: c_int) {
    if r >= 0 && r != fd {
        fresh(r, table::get(fd));
    }
}

/// Hook: records `SO_RCVTIMEO` and `SO_SNDTIMEO`.
#[unsafe(no_mangle)]
unsafe extern "C" fn setsockopt(
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

/// The Rust side of the `fcntl` hook (src/hook/shim.c): records `O_NONBLOCK` and duplicates.
#[unsafe(no_mangle)]
unsafe extern "C" fn evco_hook_fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real_fcntl(fd, cmd, arg) };
    if r >= 0 {
        match cmd {
            libc::F_SETFL => table::set_nonblocking(fd, arg as c_int & libc::O_NONBLOCK != 0),
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => fresh(r, table::get(fd)),
            _ => {}
        }
    }
    r
}

/// The Rust side of the `ioctl` hook (src/hook/shim.c): records `FIONBIO`.
#[unsafe(no_mangle)]
unsafe extern "C" fn evco_hook_ioctl(
    fd: c_int,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real_ioctl(fd, request, arg) };
    if r == 0 && request == libc::FIONBIO && arg != 0 {
        // SAFETY: the kernel just read an int through `arg`.
        let on = unsafe { *(arg as *const c_int) } != 0;
        table::set_nonblocking(fd, on);
    }
    r
}

/// Sleeps the running scheduled coroutine for `d` (`d == 0`: yields); false outside one, and
/// the caller makes libc's call instead. A coroutine that is (or gets) cancelled ends its
/// sleep at once and reports it complete: the caller goes on to its next call, which fails,
/// instead of holding the thread. (Failing with `EINTR` would not do: std's `thread::sleep`
/// retries from the remaining time it expects in `rem`, forever.)
fn coop_sleep(d: Duration) -> bool {
    if !scheduler::in_scheduled_coroutine() {
        return false;
    }
    let slept = stop_cancellation(|| {
        if d.is_zero() {
            scheduler::yield_now()
        } else {
            scheduler::wait_event(-1, What::NONE, Some(d)).map(drop)
        }
    });
    let cancelled = crate::coroutine::current_core().is_some_and(|c| c.is_cancelling());
    slept.is_ok() || cancelled
}

fn duration_of(ts: &timespec) -> Option<Duration> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Hook: a timer wait inside a scheduled coroutine.
#[unsafe(no_mangle)]
unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    // SAFETY: a non-null request is the caller's timespec.
    let d = unsafe { req.as_ref() }.and_then(duration_of);
    if d.is_some_and(coop_sleep) {
        return 0;
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::nanosleep(req, rem) }
}

/// Hook: a timer wait inside a scheduled coroutine (relative, or absolute on the given clock).
#[unsafe(no_mangle)]
unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const timespec,
    rem: *mut timespec,
) -> c_int {
    if scheduler::in_scheduled_coroutine() && !req.is_null() {
        // SAFETY: a non-null request is the caller's timespec.
        if let Some(mut d) = duration_of(unsafe { &*req }) {
            let mut ok = true;
            if flags & libc::TIMER_ABSTIME != 0 {
                // SAFETY: a zeroed timespec for clock_gettime to fill.
                let mut now: timespec = unsafe { std::mem::zeroed() };
                // SAFETY: `now` is a valid timespec to write.
                ok = unsafe { libc::clock_gettime(clock, &mut now) } == 0;
                d = duration_of(&now).map_or(Duration::ZERO, |n| d.saturating_sub(n));
            }
            if ok && coop_sleep(d) {
                return 0;
            }
        }
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::clock_nanosleep(clock, flags, req, rem) }
}

/// Hook: a timer wait inside a scheduled coroutine.
#[unsafe(no_mangle)]
unsafe extern "C" fn usleep(us: libc::useconds_t) -> c_int {
    if coop_sleep(Duration::from_micros(us as u64)) {
        return 0;
    }
    // SAFETY: the caller's argument, passed on.
    unsafe { real::usleep(us) }
}

/// Hook: a timer wait inside a scheduled coroutine (whole seconds).
#[unsafe(no_mangle)]
unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    if coop_sleep(Duration::from_secs(secs as u64)) {
        return 0;
    }
    // glibc's sleep is nanosleep and reports the seconds left, rounded.
    let ts = timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let mut rem = ts;
    // SAFETY: two valid timespecs.
    if unsafe { real::nanosleep(&ts, &mut rem) } == 0 {
        0
    } else {
        rem.tv_sec as c_uint + c_uint::from(rem.tv_nsec >= 500_000_000)
    }
}

/// Hook: a cooperative wait inside a scheduled coroutine when every listed fd is a socket this
/// process created (see the module docs); libc's `poll` otherwise.
#[unsafe(no_mangle)]
unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    if timeout != 0 && scheduler::in_scheduled_coroutine() {
        let list: &mut [libc::pollfd] = if nfds == 0 {
            &mut []
        } else if !fds.is_null() && nfds <= MAX_FDS as libc::nfds_t {
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
    // SAFETY: `ep` is ours, made above.
    unsafe { real::close(ep) };
    r
}
