//! The libc calls evco's I/O layer makes itself: those std and socket2 do not offer, and the
//! `recv`/`send` of its stream sockets, which go to libc past evco's own hooks ([`real`], with
//! the `hook` feature). Each is behind [`cvt`] or [`cvt_size`], which turn `-1` + `errno` into
//! `io::Error`. Nothing above this module calls libc for I/O directly, except the hooks, which
//! call [`real`]'s functions with their callers' arguments.

#[cfg(all(feature = "hook", target_os = "linux"))]
pub(crate) mod real;

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `-1` (with `errno` set) to the last OS error; anything else passes through.
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: the accepted socket is non-blocking from the start
/// (no extra `ioctl`), and its peer address comes back with it.
pub(crate) fn accept_nonblocking(fd: RawFd) -> io::Result<(OwnedFd, socket2::SockAddr)> {
    // SAFETY: `try_init` hands us a zeroed sockaddr_storage and its length to fill, which is
    // exactly accept4's contract; the returned fd is fresh and owned by nobody else.
    unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let new = cvt(libc::accept4(
                fd,
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            ))?;
            Ok(OwnedFd::from_raw_fd(new))
        })
    }
}

/// `recv` into `buf`, one non-blocking attempt on one of evco's own (non-blocking) sockets.
///
/// It calls libc's function past evco's hooks: on an evco socket the hook would only find
/// the socket non-blocking and pass the call on (two table lookups and an indirect call per
/// message, about 50 instructions of an echo's ~1,200 per message), and evco's I/O layer does
/// its own waiting.
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call, and
    // `fd` is a descriptor the caller borrows (a bad one is `EBADF`, not UB).
    let n = unsafe { libc_fns::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    cvt_size(n)
}

/// `send(MSG_NOSIGNAL)`: a write to a closed peer is `EPIPE`, never `SIGPIPE`. Past evco's
/// hooks, as [`recv`].
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call; `fd`
    // as in `recv`.
    let n = unsafe { libc_fns::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    cvt_size(n)
}

/// `-1` (with `errno` set) to the last OS error; a byte count otherwise.
pub(crate) fn cvt_size(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Closes `fd` (past evco's hooks: the caller already did what the `close` hook would).
pub(crate) fn close(fd: RawFd) -> io::Result<()> {
    // SAFETY: closing a descriptor has no memory-safety preconditions; the caller owns `fd`.
    cvt(unsafe { libc_fns::close(fd) }).map(drop)
}

/// libc's `recv`, `send` and `close`: past evco's hooks where they are built in (the executable's own
/// `recv` and `send` are then the hooks), libc's symbols otherwise.
mod libc_fns {
    #[cfg(all(feature = "hook", target_os = "linux"))]
    pub(super) use super::real::{close, recv, send};
    #[cfg(not(all(feature = "hook", target_os = "linux")))]
    pub(super) use libc::{close, recv, send};
}

/// `sendmsg(MSG_NOSIGNAL)`: a vectored write that never raises `SIGPIPE` (`writev` would).
pub(crate) fn send_vectored(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
}

/// Whether `fd` is an open descriptor (`F_GETFD` only inspects the descriptor table).
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no argument and only inspects the descriptor table; a bad fd is
    // EBADF.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1
}

/// What the open file description behind `fd` is, as one word (its device and inode folded
/// together; `None` when `fd` is not open): the same for all its duplicates, and different for
/// whatever fd later takes the number. Async-signal-safe (one `fstat`).
pub(crate) fn file_identity(fd: RawFd) -> Option<u64> {
    // SAFETY: all-zero is a valid `stat` for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer to write.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev as u64).rotate_left(32) ^ st.st_ino as u64)
}

/// Whether `fd` is an open socket: `Ok(false)` for another kind of open fd (`ENOTSOCK`), an
/// error for a closed one.
pub(crate) fn is_socket(fd: RawFd) -> io::Result<bool> {
    let mut ty: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one int into `ty`, whose size `len` gives.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Blocks the thread until `fd` is ready (used outside coroutines, as a blocking socket would).
pub(crate) fn poll(
    fd: RawFd,
    read: bool,
    write: bool,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut pfd = pollfd(fd, read, write);
    let ms = timeout.map_or(-1, |t| {
        t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
    });
    // SAFETY: one valid pollfd on our stack, count 1.
    let n = match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
        // A signal: let the caller retry its operation.
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
        r => r?,
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "operation timed out",
        ));
    }
    Ok(())
}

/// The readiness of `fd` right now (a zero-timeout `poll(2)`): `None` when not ready.
pub(crate) fn ready_now(
    fd: RawFd,
    read: bool,
    write: bool,
) -> io::Result<Option<crate::event::What>> {
    use crate::event::What;
    let mut pfd = pollfd(fd, read, write);
    // SAFETY: one valid pollfd on our stack, count 1, no waiting.
    if cvt(unsafe { libc::poll(&mut pfd, 1, 0) })? == 0 {
        return Ok(None);
    }
    let mut what = What::NONE;
    if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && read {
        what = what | What::READ;
    }
    if pfd.revents & (libc::POLLOUT | libc::POLLERR) != 0 && write {
        what = what | What::WRITE;
    }
    Ok(Some(what))
}

/// A `pollfd` for `fd` asking for readability and/or writability.
fn pollfd(fd: RawFd, read: bool, write: bool) -> libc::pollfd {
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// An alternate signal stack installed for a thread that had none, for as long as this lives.
///
/// generator reports a coroutine's stack overflow from its `SIGSEGV` handler, which runs with
/// `SA_ONSTACK`: on a thread without an alternate stack (one made with `pthread_create`, or
/// by any runtime but std's) the handler would run on the overflowed stack itself, and the
/// kernel kills the process. The scheduler installs one of these on such a thread.
#[derive(Debug)]
pub(crate) struct AltStack {
    /// The mapping: a guard page, then the stack.
    map: *mut libc::c_void,
    len: usize,
}

impl AltStack {
    /// Installs an alternate signal stack on the calling thread if it has none; `None` when it
    /// has one already, or none can be made (then nothing changed).
    pub(crate) fn install_if_missing() -> Option<AltStack> {
        // SAFETY: all-zero is a valid stack_t for sigaltstack to fill.
        let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: queries this thread's alternate stack into `old`.
        if unsafe { libc::sigaltstack(std::ptr::null(), &mut old) } != 0
            || old.ss_flags & libc::SS_DISABLE == 0
        {
            return None;
        }
        let page = 4096;
        let size = libc::SIGSTKSZ.max(64 * 1024);
        let len = size + page;
        // SAFETY: an anonymous private mapping with no address hint.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let alt = AltStack { map, len };
        // SAFETY: the lowest page of the mapping just made becomes its guard.
        if unsafe { libc::mprotect(map, page, libc::PROT_NONE) } != 0 {
            return None;
        }
        let new = libc::stack_t {
            ss_sp: map.wrapping_byte_add(page),
            ss_flags: 0,
            ss_size: size,
        };
        // SAFETY: `new` describes the mapping above the guard page, which lives as long as
        // `alt`, whose drop takes it out of use before unmapping it.
        if unsafe { libc::sigaltstack(&new, std::ptr::null_mut()) } != 0 {
            return None;
        }
        Some(alt)
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: all-zero is a valid stack_t for sigaltstack to fill.
        let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: queries this thread's alternate stack.
        let ok = unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) } == 0;
        let ours = ok && cur.ss_sp.wrapping_byte_sub(4096) == self.map;
        if ours {
            if cur.ss_flags & libc::SS_ONSTACK != 0 {
                // Dropped from a handler running on it: leave it (and the mapping) in place.
                return;
            }
            let off = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disables this thread's alternate stack, which is ours and not in use.
            unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) };
        }
        // SAFETY: the mapping made in `install_if_missing`, no longer this thread's alternate
        // stack (disabled above, or replaced by another since, which leaves ours unused).
        unsafe { libc::munmap(self.map, self.len) };
    }
}
