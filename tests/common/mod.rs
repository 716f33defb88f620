//! Helpers shared by the integration tests: a watchdog deadline, socket pairs, /proc readings,
//! child processes, and what the fault suites (`faults_*.rs`) share: loopback TCP pairs, an echo
//! loop and how it ended, payload patterns, panic payloads.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use evco::JoinHandle;
use evco::coroutine::{Cancelled, StackOverflow};
use evco::net::{TcpListener, TcpStream};

/// Aborts the whole test process if it is still alive after `secs` seconds: every test is
/// bounded in time even when the code under test hangs. Dropping the guard disarms it.
pub struct Watchdog(Option<mpsc::Sender<()>>);

pub fn watchdog(secs: u64) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = std::thread::current().name().unwrap_or("?").to_string();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            eprintln!("watchdog: test '{name}' still running after {secs}s, aborting");
            std::process::abort();
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A connected pair of non-blocking Unix stream sockets.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`, an array of two.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created by socketpair and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A pipe, blocking: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`, an array of two.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created by pipe2 and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn write_byte(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: writes 1 byte from a 1-byte static buffer to an fd we borrow.
    let n = unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert_eq!(n, 1, "write: {}", std::io::Error::last_os_error());
}

pub fn read_byte(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: reads at most 1 byte into `b`, which is 1 byte long.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1 }
}

/// Events added to the current thread's scheduler's base (pending waits, timers, persistent
/// registrations): what a test compares before and after to show that no wait was left behind.
pub fn added_events() -> usize {
    evco::scheduler::base().unwrap().added_events()
}

/// The reactor's doorbell: one event (an eventfd that a close on another thread rings) that is
/// added while the thread's reactor keeps state for any fd, i.e. while a coroutine waits on an
/// fd or a socket is registered.
pub const DOORBELL: usize = 1;

/// A log of what happened in which order, shared by the coroutines of one thread.
pub type Log = Rc<RefCell<Vec<String>>>;

/// Appends `s` to `log`.
pub fn note(log: &Log, s: impl Into<String>) {
    log.borrow_mut().push(s.into());
}

/// Adds one to its counter when dropped: shows that a coroutine's destructors ran, and how often.
pub struct DropCount(pub Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Resident set size of this process in KiB, from /proc/self/status.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Number of open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs the named test of the current test binary in a child process with `env` set, bounded by
/// the watchdog of the caller; returns its output. The child sees `EVCO_TEST_CHILD=1`.
pub fn run_child(test: &str, env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("EVCO_TEST_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Whether this process is a child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os("EVCO_TEST_CHILD").is_some()
}

/// Runs `test` of this binary alone in a child process (see [`run_child`]), asserts that it
/// succeeded and printed `child-finished`, and returns its stdout.
pub fn child_passes(test: &str, env: &[(&str, &str)]) -> String {
    let out = run_child(test, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child '{test}' failed ({:?}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("child-finished"),
        "child '{test}' did not reach its end:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Shows the child's lines that carry `marker` (libtest may have put its own text before it).
pub fn report_lines(out: &str, marker: &str) {
    for l in out.lines() {
        if let Some(i) = l.find(marker) {
            eprintln!("{}", &l[i..]);
        }
    }
}

/// For a test that must run alone in a child process (it crashes or hangs when it fails, or
/// changes process-wide state): in the parent, runs `test` in a child (see [`child_passes`],
/// under a 60 s watchdog) and returns `None`; in the child, returns the child's own watchdog of
/// `secs`. Use as `let Some(_w) = common::in_child("name", 20) else { return };`.
pub fn in_child(test: &str, secs: u64) -> Option<Watchdog> {
    if is_child() {
        return Some(watchdog(secs));
    }
    let _w = watchdog(60);
    child_passes(test, &[]);
    None
}

/// Keeps the CPU busy for `d` without suspending or sleeping: stands for a coroutine's CPU work
/// (a `thread::sleep` would suspend the coroutine instead, through evco's hooks).
pub fn busy_for(d: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A listener whose accept queue is full: further SYNs are dropped, so a connect hangs until
/// its timeout — an unroutable target without leaving loopback.
pub fn full_backlog_listener() -> (
    socket2::Socket,
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 admits one or two) with connections nobody accepts.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (l, addr, fillers)
}

// ---------------------------------------------------------------------------------------------
// Loopback connections for the fault suites (faults_*.rs)

/// A connected loopback TCP pair (client, server side). Works inside a coroutine (the connect
/// and accept suspend) and outside one (they block, as std's would).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// `len` bytes that depend on `seed`, so that a byte from the wrong connection or offset shows.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// How a server-side connection coroutine ended: EOF after echoing `n` bytes, or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof(u64),
    Err(ErrorKind, u64),
}

/// The echo loop of a connection coroutine; errors are values, as a server would treat them.
pub fn echo(stream: &TcpStream) -> End {
    let mut buf = vec![0u8; 4096];
    let mut total = 0u64;
    loop {
        let n = match (&*stream).read(&mut buf) {
            Ok(0) => return End::Eof(total),
            Ok(n) => n,
            Err(e) => return End::Err(e.kind(), total),
        };
        if let Err(e) = (&*stream).write_all(&buf[..n]) {
            return End::Err(e.kind(), total);
        }
        total += n as u64;
    }
}

/// The join handles of the connection coroutines an accept loop spawned.
pub type Handles<T> = Rc<RefCell<Vec<JoinHandle<T>>>>;

/// What a coroutine's panic payload says, for an assertion message.
pub fn payload_kind(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = p.downcast_ref::<std::io::Error>() {
        format!("io::Error: {e}")
    } else if p.downcast_ref::<Cancelled>().is_some() {
        "Cancelled".into()
    } else if let Some(o) = p.downcast_ref::<StackOverflow>() {
        format!("{o}")
    } else {
        "(unknown payload)".into()
    }
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    (unsafe { libc::fcntl(fd, libc::F_GETFD) }) != -1
}

/// A peer on a plain thread for the urgent-data tests: once told to go (the [`UrgentPeer`]'s
/// `read_past_the_mark`), it sends `aaaa`, one urgent (`MSG_OOB`) byte `b`, then `cccc` to
/// whoever connected to `addr` (with `TCP_NODELAY`: three segments, sent at once), and keeps
/// the connection open until the other side closes it.
pub struct UrgentPeer {
    pub addr: std::net::SocketAddr,
    go: mpsc::Sender<()>,
    sent: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UrgentPeer {
    pub fn start() -> UrgentPeer {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (go, go_rx) = mpsc::channel::<()>();
        let (sent_tx, sent) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            if go_rx.recv().is_err() {
                return;
            }
            s.write_all(b"aaaa").unwrap();
            // SAFETY: sends one byte from a live buffer on an open socket.
            let n = unsafe {
                libc::send(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    b"b".as_ptr().cast(),
                    1,
                    libc::MSG_OOB,
                )
            };
            assert_eq!(n, 1);
            s.write_all(b"cccc").unwrap();
            sent_tx.send(()).unwrap();
            // Until the reader closes.
            let _ = s.read(&mut [0u8; 16]);
        });
        UrgentPeer {
            addr,
            go,
            sent,
            thread: Some(thread),
        }
    }

    /// In a coroutine, with `r` connected to the peer: makes `r` wait once (a 1 ms read
    /// timeout that expires, so the socket is registered and known drained, as a reader that
    /// waited for the peer is), has the peer send, and once it has (on loopback a send has
    /// reached the receiver's queue when it returns) reads every byte but the urgent one with
    /// a 5 s read timeout (`set_timeout` sets `r`'s). The read that stops at the urgent mark
    /// comes back short; the data behind the mark must still be read without waiting for more.
    pub fn read_past_the_mark<R: std::io::Read>(
        &self,
        mut r: R,
        set_timeout: impl Fn(&R, Duration),
    ) -> std::io::Result<Vec<u8>> {
        set_timeout(&r, Duration::from_millis(1));
        let e = r.read(&mut [0u8; 8]).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        );
        set_timeout(&r, Duration::from_secs(5));
        self.go.send(()).unwrap();
        while self.sent.try_recv().is_err() {
            evco::yield_now().unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 8 {
            let mut buf = [0u8; 64];
            let n = r.read(&mut buf)?;
            assert_ne!(n, 0, "EOF after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    }
}

impl Drop for UrgentPeer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let (go, _) = mpsc::channel();
            drop(std::mem::replace(&mut self.go, go));
            t.join().unwrap();
        }
    }
}

/// What a C program linked with `libevco.a` needs besides it: libevent's runtime libraries by
/// soname (all that a machine without libevent's development files has), then what rustc
/// reports for the staticlib (`cargo rustc --lib --crate-type staticlib -- --print
/// native-static-libs`).
pub const C_LIBS: &[&str] = &[
    "-l:libevent_core-2.1.so.7",
    "-l:libevent-2.1.so.7",
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// The repository's root.
pub fn repo_root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The question of a DNS query: its name (lower case, dot-separated), type, and where the
/// question section ends (the test name servers of `dns.rs` and `resolve.rs`).
pub fn dns_question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}
