//! libc's own functions, found with `dlsym(RTLD_NEXT)`, past evco's hooks.
//!
//! With the `hook` feature the executable defines `read`, `send`, `close` and the other hooked
//! names itself, so a call of `libc::read` anywhere in the process reaches the hook. The hooks
//! and evco's own I/O layer, which do their own waiting, call libc's functions through this
//! module instead: each [`Real`] finds its function on first use (or before `main`, through the
//! constructor below, so that no hook calls `dlsym` later, e.g. from a signal handler) and
//! calls it, failing with `ENOSYS` when no later object defines the name.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libc::{iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t, timespec};

/// A libc function found with `dlsym(RTLD_NEXT)`, on first use or by the constructor below.
pub(crate) struct Real {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Real {
    pub(crate) const fn new(name: &'static CStr) -> Real {
        Real {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The function's address, or 0 when no later object defines it.
    pub(crate) fn get(&self) -> usize {
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

/// Declares, for every listed libc function, a `Real` in `sym` and a typed caller of the same
/// name here that fails with `ENOSYS` when libc has no such function.
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

        $(
            /// libc's function of this name.
            ///
            /// # Safety
            ///
            /// libc's contract for it.
            #[allow(clippy::too_many_arguments)] // libc's signatures (gethostbyaddr_r has 8)
            pub(crate) unsafe fn $name($($a: $t),*) -> $r {
                let addr = sym::$name.get();
                if addr == 0 {
                    set_errno(libc::ENOSYS);
                    return -1 as $r;
                }
                // SAFETY: `addr` is what dlsym returned for this name: libc's function, whose
                // C prototype the listed signature copies.
                let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute(addr) };
                // SAFETY: the caller keeps libc's contract.
                unsafe { f($($a),*) }
            }
        )*
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
    pipe(fds: *mut c_int) -> c_int;
    pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    eventfd(initval: libc::c_uint, flags: c_int) -> c_int;
    epoll_create(size: c_int) -> c_int;
    epoll_create1(flags: c_int) -> c_int;
    timerfd_create(clock: libc::clockid_t, flags: c_int) -> c_int;
    signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int;
    ppoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, tmo: *const timespec, mask: *const libc::sigset_t) -> c_int;
    select(nfds: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tmo: *mut libc::timeval) -> c_int;
    pselect(nfds: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tmo: *const timespec, mask: *const libc::sigset_t) -> c_int;
    epoll_wait(ep: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait(ep: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    getaddrinfo(node: *const c_char, service: *const c_char, hints: *const libc::addrinfo, res: *mut *mut libc::addrinfo) -> c_int;
    getnameinfo(sa: *const sockaddr, salen: socklen_t, host: *mut c_char, hostlen: socklen_t, serv: *mut c_char, servlen: socklen_t, flags: c_int) -> c_int;
    gethostbyname_r(name: *const c_char, ret: *mut libc::hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
    gethostbyname2_r(name: *const c_char, af: c_int, ret: *mut libc::hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
    gethostbyaddr_r(addr: *const c_void, len: socklen_t, ty: c_int, ret: *mut libc::hostent, buf: *mut c_char, buflen: size_t, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
}

/// libc's `gethostbyname` and `gethostbyname2` (they return pointers: not expressible in
/// `real_fns!`, whose failure value is -1).
static REAL_GETHOSTBYNAME: Real = Real::new(c"gethostbyname");
static REAL_GETHOSTBYNAME2: Real = Real::new(c"gethostbyname2");

/// libc's `gethostbyname2` (`gethostbyname` when `af` is `None`); NULL with `ENOSYS` when libc
/// has none.
///
/// # Safety
///
/// libc's contract for it.
pub(crate) unsafe fn gethostbyname2(name: *const c_char, af: Option<c_int>) -> *mut libc::hostent {
    let real = if af.is_some() {
        &REAL_GETHOSTBYNAME2
    } else {
        &REAL_GETHOSTBYNAME
    };
    let addr = real.get();
    if addr == 0 {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    }
    match af {
        Some(af) => {
            // SAFETY: libc's gethostbyname2, found by dlsym.
            let f: unsafe extern "C" fn(*const c_char, c_int) -> *mut libc::hostent =
                unsafe { std::mem::transmute(addr) };
            // SAFETY: the caller's arguments, under libc's contract.
            unsafe { f(name, af) }
        }
        None => {
            // SAFETY: libc's gethostbyname, found by dlsym.
            let f: unsafe extern "C" fn(*const c_char) -> *mut libc::hostent =
                unsafe { std::mem::transmute(addr) };
            // SAFETY: the caller's argument, under libc's contract.
            unsafe { f(name) }
        }
    }
}

static REAL_GETHOSTBYADDR: Real = Real::new(c"gethostbyaddr");

/// libc's `gethostbyaddr`; NULL with `ENOSYS` when libc has none.
///
/// # Safety
///
/// libc's contract for it.
pub(crate) unsafe fn gethostbyaddr(
    addr: *const c_void,
    len: socklen_t,
    ty: c_int,
) -> *mut libc::hostent {
    let real = REAL_GETHOSTBYADDR.get();
    if real == 0 {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    }
    // SAFETY: libc's gethostbyaddr, found by dlsym.
    let f: unsafe extern "C" fn(*const c_void, socklen_t, c_int) -> *mut libc::hostent =
        unsafe { std::mem::transmute(real) };
    // SAFETY: the caller's arguments, under libc's contract.
    unsafe { f(addr, len, ty) }
}

/// libc's `fcntl` and `ioctl` (variadic: not expressible in `real_fns!`).
static REAL_FCNTL: Real = Real::new(c"fcntl");
static REAL_IOCTL: Real = Real::new(c"ioctl");

/// libc's `fcntl` with one argument word.
///
/// # Safety
///
/// libc's contract for `fcntl(fd, cmd, arg)`.
pub(crate) unsafe fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
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

/// libc's `ioctl` with one argument word.
///
/// # Safety
///
/// libc's contract for `ioctl(fd, request, arg)`.
pub(crate) unsafe fn ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    let addr = REAL_IOCTL.get();
    if addr == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: libc's variadic ioctl, found by dlsym.
    let f: unsafe extern "C" fn(c_int, libc::c_ulong, ...) -> c_int =
        unsafe { std::mem::transmute(addr) };
    // SAFETY: as in `fcntl`.
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
    REAL_GETHOSTBYNAME.get();
    REAL_GETHOSTBYNAME2.get();
}

/// Sets this thread's `errno`.
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: errno is this thread's; the location is always valid.
    unsafe { *libc::__errno_location() = e };
}
