//! Fault injection over loopback: resets, half-closes, fds closed or replaced under a waiter,
//! descriptor exhaustion, SIGPIPE, panics and overflows among many connections, shutdown with
//! coroutines parked on every kind of wait, misuse, fds above 100,000 and slow readers.
//!
//! Every test is bounded by the watchdog and talks to 127.0.0.1 only. Tests that change
//! process-wide state (rlimits, signal dispositions) or measure it (RSS) run alone in a child
//! process. The whole file also runs under `EVENT_NOEPOLL=1` (libevent's poll backend):
//! `scripts/ci-faults` does that, and `the_backend_is_the_one_the_environment_asks_for` checks
//! that the switch took effect.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    DropCount, added_events, child_passes, is_child, rss_kib, run_child, socketpair, watchdog,
    write_byte,
};
use evco::JoinHandle;
use evco::coroutine::{Builder, Cancelled, StackOverflow};
use evco::io::{Interest, wait};
use evco::net::{TcpListener, TcpStream, UnixStream};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Shows the child's lines that carry `marker` (libtest may have put its own text before it).
fn report_lines(out: &str, marker: &str) {
    for l in out.lines() {
        if let Some(i) = l.find(marker) {
            eprintln!("{}", &l[i..]);
        }
    }
}

/// A connected loopback TCP pair (client, server side). Works inside a coroutine (the connect
/// and accept suspend) and outside one (they block, as std's would).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// `len` bytes that depend on `seed`, so that a byte from the wrong connection or offset shows.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
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
enum End {
    Eof(u64),
    Err(ErrorKind, u64),
}

/// The echo loop of a connection coroutine; errors are values, as a server would treat them.
fn echo(stream: &TcpStream) -> End {
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
type Handles<T> = Rc<RefCell<Vec<JoinHandle<T>>>>;

/// Closes with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

fn payload_kind(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = p.downcast_ref::<io::Error>() {
        format!("io::Error: {e}")
    } else if p.downcast_ref::<Cancelled>().is_some() {
        "Cancelled".into()
    } else if let Some(o) = p.downcast_ref::<StackOverflow>() {
        format!("{o}")
    } else {
        "(unknown payload)".into()
    }
}

// ---------------------------------------------------------------------------------------------
// Backend

#[test]
fn the_backend_is_the_one_the_environment_asks_for() {
    let _w = watchdog(20);
    let backend = evco::scheduler::base().unwrap().backend().to_string();
    if std::env::var_os("EVENT_NOEPOLL").is_some() {
        assert_eq!(
            backend, "poll",
            "EVENT_NOEPOLL=1 must select the poll backend"
        );
    } else {
        // "epoll (with changelist)"
        assert!(backend.starts_with("epoll"), "{backend}");
    }
}

// ---------------------------------------------------------------------------------------------
// Peer resets across 1,000 connections

/// What a client of the reset test does to its connection; the first byte it sends (if any)
/// tells the server which one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    /// 32 KiB echoed and checked, then a clean close.
    Echo,
    /// 1,000 bytes echoed, then an RST while the server is parked in `read`.
    ResetWhileServerReads,
    /// The server streams until it fails; the client reads 64 KiB, then resets while the
    /// server is parked in `write`.
    ResetWhileServerWrites,
    /// An RST right after connecting, before any byte.
    ResetAtOnce,
}

impl Script {
    fn of(i: usize) -> Script {
        match i % 8 {
            0..=3 => Script::Echo,
            4 | 5 => Script::ResetWhileServerReads,
            6 => Script::ResetWhileServerWrites,
            _ => Script::ResetAtOnce,
        }
    }
}

const TAG_ECHO: u8 = 1;
const TAG_STREAM: u8 = 2;

fn reset_test_server(stream: TcpStream) -> (Option<u8>, End) {
    let mut tag = [0u8; 1];
    if let Err(e) = (&stream).read_exact(&mut tag) {
        let end = if e.kind() == ErrorKind::UnexpectedEof {
            End::Eof(0)
        } else {
            End::Err(e.kind(), 0)
        };
        return (None, end);
    }
    match tag[0] {
        TAG_STREAM => {
            // Keep the kernel's share small: 125 of these connections stall at once.
            socket2::SockRef::from(&stream)
                .set_send_buffer_size(64 * 1024)
                .unwrap();
            let chunk = vec![0x5a; 16 * 1024];
            let mut total = 0u64;
            loop {
                match (&stream).write(&chunk) {
                    Ok(n) => total += n as u64,
                    Err(e) => return (Some(TAG_STREAM), End::Err(e.kind(), total)),
                }
            }
        }
        t => (Some(t), echo(&stream)),
    }
}

fn reset_test_client(i: usize, addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    match Script::of(i) {
        Script::Echo => {
            let data = pattern(i, 32 * 1024);
            s.write_all(&[TAG_ECHO])?;
            s.write_all(&data)?;
            let mut back = vec![0u8; data.len()];
            s.read_exact(&mut back)?;
            assert!(back == data, "connection {i}: echo differs");
        }
        Script::ResetWhileServerReads => {
            let data = pattern(i, 1000);
            s.write_all(&[TAG_ECHO])?;
            s.write_all(&data)?;
            let mut back = vec![0u8; data.len()];
            s.read_exact(&mut back)?;
            assert!(back == data, "connection {i}: echo differs");
            // The server echoed everything and, since this coroutine runs, it is suspended:
            // in its next read. The RST lands there.
            reset(s);
        }
        Script::ResetWhileServerWrites => {
            s.write_all(&[TAG_STREAM])?;
            let mut sink = vec![0u8; 64 * 1024];
            s.read_exact(&mut sink)?;
            // The server is suspended in a write (it only ever writes): the RST lands there,
            // with unread data in this socket's buffer.
            reset(s);
        }
        Script::ResetAtOnce => reset(s),
    }
    Ok(())
}

#[test]
fn peer_resets_mid_read_and_mid_write_across_1000_connections_end_only_those_connections() {
    let _w = watchdog(120);
    const CONNS: usize = 1000;
    evco::run(|| {
        let baseline = added_events();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handlers: Handles<(Option<u8>, End)> = Rc::default();
        let acceptor = {
            let handlers = handlers.clone();
            evco::spawn(move || -> io::Result<()> {
                loop {
                    let (s, _) = listener.accept()?;
                    handlers
                        .borrow_mut()
                        .push(evco::spawn(move || reset_test_server(s)));
                }
            })
        };
        let clients: Vec<_> = (0..CONNS)
            .map(|i| evco::spawn(move || reset_test_client(i, addr)))
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            match c.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("client {i} ({:?}): {e}", Script::of(i)),
                Err(p) => panic!(
                    "client {i} ({:?}) panicked: {}",
                    Script::of(i),
                    payload_kind(&p)
                ),
            }
        }
        // One more connection after all that: the server still serves, and since the listen
        // queue is FIFO, every earlier connection has been accepted once this one is.
        reset_test_client(0, addr).unwrap();
        assert!(!acceptor.is_finished(), "the accept loop ended");
        acceptor.cancel().unwrap();

        let mut echo = Vec::new();
        let mut streamed = Vec::new();
        let mut untagged = Vec::new();
        for h in handlers.take() {
            match h.join() {
                Ok((Some(TAG_ECHO), end)) => echo.push(end),
                Ok((Some(TAG_STREAM), end)) => streamed.push(end),
                Ok((tag, end)) => {
                    assert_eq!(tag, None, "unknown tag");
                    untagged.push(end)
                }
                Err(p) => panic!("a server coroutine panicked: {}", payload_kind(&p)),
            }
        }
        let clean = echo.iter().filter(|e| **e == End::Eof(32 * 1024)).count();
        let reset_in_read = echo
            .iter()
            .filter(|e| **e == End::Err(ErrorKind::ConnectionReset, 1000))
            .count();
        assert_eq!(
            clean + reset_in_read,
            echo.len(),
            "echo connections ended otherwise: {:?}",
            echo.iter()
                .filter(|e| **e != End::Eof(32 * 1024)
                    && **e != End::Err(ErrorKind::ConnectionReset, 1000))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            clean,
            CONNS / 2 + 1,
            "every clean echo (and the last one) completed"
        );
        assert_eq!(
            reset_in_read,
            CONNS / 4,
            "every reset in read was ConnectionReset"
        );
        assert_eq!(streamed.len(), CONNS / 8);
        for end in &streamed {
            assert!(
                matches!(
                    end,
                    End::Err(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe, n) if *n >= 64 * 1024
                ),
                "a reset in write ended as {end:?}"
            );
        }
        // Reset before the first byte: accept may never return them (ECONNABORTED is skipped),
        // and those it returns end in an error or EOF at once.
        assert!(untagged.len() <= CONNS / 8, "{}", untagged.len());
        for end in &untagged {
            assert!(
                matches!(end, End::Eof(0) | End::Err(ErrorKind::ConnectionReset, 0)),
                "{end:?}"
            );
        }
        assert_eq!(added_events(), baseline, "no wait left registered");
    });
    assert_eq!(evco::scheduler::live_coroutines(), 0);
}

// ---------------------------------------------------------------------------------------------
// Half-close

#[test]
fn half_close_the_server_sends_the_rest_after_the_clients_eof_then_eof() {
    let _w = watchdog(30);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = evco::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let end = echo(&s);
            let End::Eof(n) = end else {
                panic!("server: {end:?}")
            };
            // The client's write side is shut; this side still sends.
            (&s).write_all(format!("END {n}\n").as_bytes()).unwrap();
            n
        });
        let conn = TcpStream::connect(addr).unwrap();
        let data = pattern(7, 1024 * 1024);
        let writer = {
            let w = conn.try_clone().unwrap();
            let data = data.clone();
            evco::spawn(move || {
                (&w).write_all(&data).unwrap();
                // On the dup: shutdown acts on the connection, not the fd.
                w.shutdown(Shutdown::Write).unwrap();
                let err = (&w).write(b"late").unwrap_err();
                assert_eq!(err.kind(), ErrorKind::BrokenPipe, "{err}");
            })
        };
        let mut got = Vec::new();
        (&conn).read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        let trailer = format!("END {}\n", data.len());
        assert_eq!(got.len(), data.len() + trailer.len());
        assert!(got[..data.len()] == data[..], "echo differs");
        assert_eq!(&got[data.len()..], trailer.as_bytes());
        // EOF stays EOF.
        assert_eq!((&conn).read(&mut [0u8; 16]).unwrap(), 0);
        assert_eq!(server.join().unwrap(), data.len() as u64);
    });
}

// ---------------------------------------------------------------------------------------------
// An fd closed or replaced under its waiters

#[test]
fn io_close_wakes_every_coroutine_waiting_on_the_fd_with_ebadf() {
    let _w = watchdog(30);
    evco::run(|| {
        let before = added_events();
        let (peer, server) = tcp_pair();
        let raw = server.into_raw_fd();
        // A reader through the net layer's retry loop; the stream must not close `raw` itself.
        let reader = evco::spawn(move || {
            // SAFETY: `raw` is an open TCP socket; ManuallyDrop leaves closing it to io::close.
            let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(raw) });
            (&*s).read(&mut [0u8; 64]).unwrap_err()
        });
        // A writer on the same fd, parked once the socket's buffers are full (the peer never
        // reads): two waits with different interests on one fd.
        let writer = evco::spawn(move || {
            // SAFETY: as above.
            let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(raw) });
            let chunk = vec![1u8; 64 * 1024];
            loop {
                if let Err(e) = (&*s).write_all(&chunk) {
                    return e;
                }
            }
        });
        // A bare wait with a (long) timeout.
        let waiter =
            evco::spawn(move || wait(raw, Interest::READABLE, Some(Duration::from_secs(3600))));
        evco::yield_now().unwrap();
        // libevent counts an event with an fd and a timeout twice (I/O and timer lists).
        // Under epoll the reader and the writer share the socket's one persistent registration
        // and the bare wait adds a timer; under poll every wait is one-shot, and libevent
        // counts an event with an fd and a timeout twice (I/O and timer lists).
        let edge = evco::scheduler::base().unwrap().supports_edge_triggered();
        assert_eq!(
            added_events(),
            before + if edge { 2 } else { 4 },
            "three waits on one fd"
        );
        let closer = evco::spawn(move || evco::io::close(raw));
        closer.join().unwrap().unwrap();
        for (who, err) in [
            ("reader", reader.join().unwrap()),
            ("writer", writer.join().unwrap()),
            ("waiter", waiter.join().unwrap().unwrap_err()),
        ] {
            assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{who}: {err}");
        }
        assert_eq!(added_events(), before, "no wait left registered");
        // The peer sees the connection go (after the data the writer got into the buffer).
        let mut sink = vec![0u8; 1 << 16];
        loop {
            match (&peer).read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
}

/// `dup2(new, fd)` while a coroutine waits on `fd`. With the `hook` feature evco's `dup2`
/// treats it as a close of `fd`: the waiter gets `EBADF` at once, on every backend. Without it
/// nothing in evco sees it, so what the waiter sees is the backend's:
///
/// - epoll registers the *open file description*: `dup2` releases the old one, which silently
///   drops it from the epoll set, and the new one was never added. The waiter is woken by
///   nothing: without a timeout it would sleep until cancelled. With one, it times out.
/// - poll looks the fd number up on every dispatch, so it reports the new socket's readiness.
///
/// Either way the wait ends in bounded time when it has a timeout, its event is removed, and
/// the fd number, now the new socket, can be waited on normally afterwards.
#[test]
fn dup2_over_a_waited_fd_ends_the_wait_by_its_timeout_with_epoll_or_by_readiness_with_poll() {
    let _w = watchdog(30);
    evco::run(|| {
        let base = evco::scheduler::base().unwrap();
        let before = base.added_events();
        let (old, _old_peer) = socketpair();
        let (new, new_peer) = socketpair();
        let fd = old.as_raw_fd();
        let waiter = evco::spawn(move || {
            let r = wait(fd, Interest::READABLE, Some(Duration::from_millis(200)));
            (r, old)
        });
        evco::yield_now().unwrap();
        // libevent counts an event with an fd and a timeout twice (I/O and timer lists).
        assert_eq!(base.added_events(), before + 2);
        // Make sure the waiter's registration reached the kernel (the epoll backend applies
        // changes when it next polls): wait once on something that is ready.
        let (ready, ready_peer) = socketpair();
        write_byte(&ready_peer);
        wait(ready.as_raw_fd(), Interest::READABLE, None).unwrap();

        // SAFETY: both fds are open and ours; `fd` stays owned by `old` (in the waiter), which
        // now refers to the new socket's description.
        assert_eq!(unsafe { libc::dup2(new.as_raw_fd(), fd) }, fd);
        write_byte(&new_peer);

        let (result, old) = waiter.join().unwrap();
        let backend = base.backend().split(' ').next().unwrap();
        match if cfg!(feature = "hook") {
            "hook"
        } else {
            backend
        } {
            "hook" => {
                let err = result.expect_err("the hooked dup2 closes what the waiter waits on");
                assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
            }
            "epoll" => {
                let err = result.expect_err("epoll cannot see the new socket behind the old fd");
                assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
            }
            "poll" => {
                let ready = result.expect("poll sees the new socket's readiness");
                assert!(ready.is_readable());
            }
            other => panic!("backend {other} not covered"),
        }
        assert_eq!(base.added_events(), before, "the wait's event is gone");
        // The fd number works normally afterwards (epoll: the stale registration is replaced).
        let again = wait(fd, Interest::READABLE, Some(Duration::from_secs(10))).unwrap();
        assert!(again.is_readable());
        assert!(common::read_byte(&old), "`old`'s fd is now the new socket");
        assert_eq!(base.added_events(), before);
    });
}

/// The same through an evco stream, whose fd has (under epoll) one persistent edge-triggered
/// registration: after `dup2` over its fd the kernel has dropped that registration, so no edge
/// ever comes again, and reads wait for one (they skip the `recv` that would say `EAGAIN`):
/// without the `hook` feature, under epoll the stream stays deaf until it is dropped, even
/// with data queued; under poll, or with the hooked `dup2` (which removes the registration),
/// it reads the new socket. (`dup2` over an fd a stream owns breaks I/O safety: this documents
/// what happens, it does not bless it.) What must hold: with a read timeout no read hangs.
#[test]
fn dup2_over_an_evco_streams_fd_never_hangs_a_read_that_has_a_timeout() {
    let _w = watchdog(30);
    evco::run(|| {
        let (a, _a_peer) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // A first read registers the stream (epoll) and finds nothing.
        let e = (&a).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        let (new, new_peer) = socketpair();
        // SAFETY: both fds are open; `a` keeps owning its fd number, now the new socket's.
        assert_eq!(
            unsafe { libc::dup2(new.as_raw_fd(), a.as_raw_fd()) },
            a.as_raw_fd()
        );
        write_byte(&new_peer);
        let backend = evco::scheduler::base().unwrap().backend().to_string();
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            match (&a).read(&mut [0u8; 1]) {
                Ok(n) => outcomes.push(format!("Ok({n})")),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::TimedOut, "{backend}: {e}");
                    outcomes.push("TimedOut".into());
                }
            }
        }
        println!("dup2 over a stream's fd, {backend}: reads gave {outcomes:?}");
        if backend == "poll" || cfg!(feature = "hook") {
            assert_eq!(
                outcomes,
                ["Ok(1)", "TimedOut"],
                "{backend}: reads the new socket"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Descriptor exhaustion

/// Counts accept's "retrying" warnings: one per accept attempt that failed with EMFILE/ENFILE.
struct AcceptRetries;
static ACCEPT_RETRIES: AtomicUsize = AtomicUsize::new(0);

impl log::Log for AcceptRetries {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("evco")
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.target().starts_with("evco") && r.args().to_string().contains("accept") {
            ACCEPT_RETRIES.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

/// The fds open now (without the one used to list them).
fn open_fd_numbers() -> Vec<RawFd> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    listed
        .into_iter()
        // SAFETY: F_GETFD only inspects the descriptor table.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

fn set_nofile(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain out-parameter calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft;
        if lim.rlim_max < soft {
            lim.rlim_max = soft;
        }
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            0,
            "setrlimit(RLIMIT_NOFILE, {soft}): {} (raising the hard limit needs root or \
             CAP_SYS_RESOURCE)",
            io::Error::last_os_error()
        );
    }
}

#[test]
fn accept_under_an_exhausted_fd_limit_backs_off_keeps_serving_and_resumes() {
    // The child gives up first, so that its output reaches the parent.
    let _w = watchdog(if is_child() { 75 } else { 90 });
    if !is_child() {
        let out = child_passes(
            "accept_under_an_exhausted_fd_limit_backs_off_keeps_serving_and_resumes",
            &[],
        );
        report_lines(&out, "emfile:");
        return;
    }
    log::set_logger(&AcceptRetries).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    const CLIENTS: usize = 48;
    const FREE: usize = 8;
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Every client connects before the limit drops (connect needs no fd afterwards, and
        // the kernel completes the handshakes in the listen queue without accept).
        let clients: Vec<std::net::TcpStream> = (0..CLIENTS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // Fill every hole below the highest open fd (inherited fds can leave gaps), so that
        // exactly FREE numbers stay free under the new limit.
        let highest = *open_fd_numbers().iter().max().unwrap();
        let mut fillers = Vec::new();
        loop {
            let f = std::fs::File::open("/dev/null").unwrap();
            if f.as_raw_fd() > highest {
                break;
            }
            fillers.push(f);
        }
        let limit = highest as usize + 1 + FREE;
        set_nofile(limit as u64);

        let accepted = Rc::new(Cell::new(0usize));
        let handlers: Handles<End> = Rc::default();
        let acceptor = {
            let (accepted, handlers) = (accepted.clone(), handlers.clone());
            evco::spawn(move || -> io::Error {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted.set(accepted.get() + 1);
                            handlers.borrow_mut().push(evco::spawn(move || echo(&s)));
                        }
                        Err(e) => return e,
                    }
                }
            })
        };
        // Each client: one echo; the ones served before the release keep echoing (the
        // server keeps serving them while accept fails) until released.
        let release = Rc::new(Cell::new(false));
        let rounds_during_storm = Rc::new(Cell::new(0u64));
        let storm_started = Rc::new(Cell::new(false));
        let client_handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let (release, rounds, started) = (
                    release.clone(),
                    rounds_during_storm.clone(),
                    storm_started.clone(),
                );
                evco::spawn(move || {
                    let s = TcpStream::from_std(s).unwrap();
                    let mut b = [0u8; 1];
                    loop {
                        (&s).write_all(&[i as u8]).unwrap();
                        (&s).read_exact(&mut b).unwrap();
                        assert_eq!(b[0], i as u8);
                        if release.get() {
                            return;
                        }
                        if started.get() {
                            rounds.set(rounds.get() + 1);
                        }
                    }
                })
            })
            .collect();

        // Wait for the storm: the first failed accept. (Polling a condition: no event tells.)
        while ACCEPT_RETRIES.load(Ordering::SeqCst) == 0 {
            assert!(
                !acceptor.is_finished(),
                "accept failed instead of backing off"
            );
            evco::time::sleep(Duration::from_millis(1));
        }
        storm_started.set(true);
        let served = accepted.get();
        assert!(
            (1..CLIENTS).contains(&served),
            "{served} accepted before the storm"
        );
        let t0 = Instant::now();
        let a0 = ACCEPT_RETRIES.load(Ordering::SeqCst);
        // Let the storm blow for a while: accept keeps failing, the served keep echoing.
        evco::time::sleep(Duration::from_millis(300));
        let storm_ms = t0.elapsed().as_millis() as usize;
        let attempts = ACCEPT_RETRIES.load(Ordering::SeqCst) - a0;
        assert!(
            attempts <= storm_ms + 2,
            "accept retried {attempts} times in {storm_ms} ms: more than once per ms is a spin"
        );
        assert!(attempts >= 1, "accept stopped retrying");
        assert_eq!(
            accepted.get(),
            served,
            "nothing can be accepted while no fd is free"
        );
        assert!(
            rounds_during_storm.get() >= served as u64,
            "the served connections stalled during the storm ({} rounds)",
            rounds_during_storm.get()
        );
        assert!(!acceptor.is_finished());

        // Free fds: the served clients finish and close, their server sides see EOF and close,
        // and accept picks up the rest, wave after wave.
        release.set(true);
        for h in client_handles {
            h.join().unwrap();
        }
        let total_ms = t0.elapsed().as_millis() as usize;
        let total_attempts = ACCEPT_RETRIES.load(Ordering::SeqCst) - a0;
        assert_eq!(
            accepted.get(),
            CLIENTS,
            "accept resumed and took every client"
        );
        assert!(
            total_attempts <= total_ms + 2,
            "{total_attempts} failed accepts in {total_ms} ms"
        );
        acceptor.cancel().unwrap();
        for h in handlers.take() {
            assert!(matches!(h.join().unwrap(), End::Eof(_)));
        }
        println!(
            "emfile: {served} served before the storm, {attempts} failed accepts in {storm_ms} ms \
             of storm, {total_attempts} in {total_ms} ms until all {CLIENTS} were served"
        );
    });
    println!("child-finished");
}

// ---------------------------------------------------------------------------------------------
// SIGPIPE

/// Writes until the error a closed peer causes; never more than `limit` writes.
fn write_until_error(mut w: impl FnMut() -> io::Result<usize>, limit: usize) -> io::Error {
    for _ in 0..limit {
        match w() {
            Ok(_) => evco::yield_now().unwrap(),
            Err(e) => return e,
        }
    }
    panic!("{limit} writes to a closed peer all succeeded");
}

fn assert_pipe_error(what: &str, e: &io::Error) {
    assert!(
        matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
        "{what}: {e}"
    );
    println!("sigpipe: {what}: {e}");
}

#[test]
fn writes_to_a_closed_peer_are_errors_and_never_raise_sigpipe() {
    // The child gives up first, so that its output reaches the parent.
    let _w = watchdog(if is_child() { 15 } else { 30 });
    if !is_child() {
        let out = run_child(
            "writes_to_a_closed_peer_are_errors_and_never_raise_sigpipe",
            &[],
        );
        use std::os::unix::process::ExitStatusExt;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.signal(),
            None,
            "the child was killed by signal {:?} (13 = SIGPIPE); it got this far:\n{stdout}",
            out.status.signal()
        );
        child_passes(
            "writes_to_a_closed_peer_are_errors_and_never_raise_sigpipe",
            &[],
        );
        return;
    }
    // Rust programs start with SIGPIPE ignored; a C host program (or one that resets it) does
    // not. Every write below would kill this process if it could raise SIGPIPE.
    // SAFETY: restoring a default disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    evco::run(|| {
        let chunk = vec![0u8; 4096];
        let two = [IoSlice::new(&chunk), IoSlice::new(&chunk)];

        println!("step: tcp write to a closed peer");
        let (c, s) = tcp_pair();
        drop(s);
        let e = write_until_error(|| (&c).write(&chunk), 1000);
        assert_pipe_error("tcp write", &e);

        println!("step: tcp write_vectored to a closed peer");
        let (c, s) = tcp_pair();
        drop(s);
        let e = write_until_error(|| (&c).write_vectored(&two), 1000);
        assert_pipe_error("tcp write_vectored", &e);

        println!("step: tcp write after shutdown(Write)");
        let (c, _s) = tcp_pair();
        c.shutdown(Shutdown::Write).unwrap();
        assert_pipe_error("tcp write after shutdown", &(&c).write(&chunk).unwrap_err());
        println!("step: tcp write_vectored after shutdown(Write)");
        assert_pipe_error(
            "tcp write_vectored after shutdown",
            &(&c).write_vectored(&two).unwrap_err(),
        );

        println!("step: unix write to a closed peer");
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = write_until_error(|| (&a).write(&chunk), 1000);
        assert_pipe_error("unix write", &e);

        println!("step: unix write_vectored to a closed peer");
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = write_until_error(|| (&a).write_vectored(&two), 1000);
        assert_pipe_error("unix write_vectored", &e);
    });
    println!("child-finished");
}

// ---------------------------------------------------------------------------------------------
// A panic and a stack overflow among 1,000 connections

const TAG_PANIC: u8 = 0xEE;
const TAG_OVERFLOW: u8 = 0xEF;

fn recurse(n: u64) -> u64 {
    let frame = [n as u8; 512];
    std::hint::black_box(&frame);
    if n == 0 {
        0
    } else {
        recurse(n - 1).wrapping_add(frame[3] as u64)
    }
}

#[test]
fn a_panic_and_a_stack_overflow_among_1000_connection_coroutines_end_only_those_two() {
    let _w = watchdog(120);
    const CONNS: usize = 1000;
    const PANICKER: usize = 333;
    const OVERFLOWER: usize = 666;
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handlers: Handles<End> = Rc::default();
        let acceptor = {
            let handlers = handlers.clone();
            evco::spawn(move || -> io::Result<()> {
                loop {
                    let (s, _) = listener.accept()?;
                    let h = Builder::new().stack_size(32 * 1024).spawn(move || {
                        let mut tag = [0u8; 1];
                        (&s).read_exact(&mut tag).unwrap();
                        match tag[0] {
                            TAG_PANIC => panic!("deliberate panic in one connection"),
                            TAG_OVERFLOW => {
                                std::hint::black_box(recurse(u64::MAX));
                                unreachable!()
                            }
                            _ => echo(&s),
                        }
                    })?;
                    handlers.borrow_mut().push(h);
                }
            })
        };
        let clients: Vec<_> = (0..CONNS)
            .map(|i| {
                evco::spawn(move || -> Option<TcpStream> {
                    let s = TcpStream::connect(addr).unwrap();
                    match i {
                        PANICKER => {
                            (&s).write_all(&[TAG_PANIC]).unwrap();
                            // The panic unwinds the server coroutine: its stream is dropped.
                            let n = (&s).read(&mut [0u8; 16]).unwrap();
                            assert_eq!(n, 0, "EOF after the server side panicked");
                            None
                        }
                        OVERFLOWER => {
                            // An overflowed stack is not unwound (see the report): the server's
                            // stream is never dropped, so no EOF comes. Keep the socket.
                            (&s).write_all(&[TAG_OVERFLOW]).unwrap();
                            Some(s)
                        }
                        _ => {
                            (&s).write_all(&[1]).unwrap();
                            for round in 0..4 {
                                let data = pattern(i * 4 + round, 4096);
                                (&s).write_all(&data).unwrap();
                                let mut back = vec![0u8; data.len()];
                                (&s).read_exact(&mut back).unwrap();
                                assert!(back == data, "connection {i} round {round}");
                            }
                            None
                        }
                    }
                })
            })
            .collect();
        let mut kept = Vec::new();
        for (i, c) in clients.into_iter().enumerate() {
            match c.join() {
                Ok(s) => kept.extend(s),
                Err(p) => panic!("client {i}: {}", payload_kind(&p)),
            }
        }
        // Still serving afterwards.
        let s = TcpStream::connect(addr).unwrap();
        (&s).write_all(&[1, 42]).unwrap();
        let mut b = [0u8; 1];
        (&s).read_exact(&mut b).unwrap();
        assert_eq!(b[0], 42);
        drop(s);
        drop(kept);
        assert!(!acceptor.is_finished());
        acceptor.cancel().unwrap();

        let (mut ok, mut panicked, mut overflowed) = (0, 0, 0);
        for h in handlers.take() {
            match h.join() {
                Ok(End::Eof(_)) => ok += 1,
                Ok(other) => panic!("a healthy connection ended with {other:?}"),
                Err(p) if p.downcast_ref::<StackOverflow>().is_some() => overflowed += 1,
                Err(p) => {
                    assert_eq!(
                        p.downcast_ref::<&str>(),
                        Some(&"deliberate panic in one connection")
                    );
                    panicked += 1;
                }
            }
        }
        assert_eq!((ok, panicked, overflowed), (CONNS - 2 + 1, 1, 1));
    });
}

// ---------------------------------------------------------------------------------------------
// Shutdown with coroutines parked on every kind of wait

/// A listener whose queue is full, so a further connect stays in progress (its SYN is dropped
/// and retried). Returns the listener, the connection filling its queue, and its address.
fn full_backlog() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (l, filler, addr)
}

/// Coroutines parked on each kind of wait, with what proves each one was torn down.
struct Parked {
    handles: Vec<(&'static str, JoinHandle<()>)>,
    connectors: Vec<JoinHandle<()>>,
    drops: Rc<Cell<u32>>,
    /// The peer of the reader's and of the writer's stream: they see EOF once torn down.
    reader_peer: TcpStream,
    writer_peer: TcpStream,
    /// The accepting listener's address: refused once torn down.
    accept_addr: SocketAddr,
    _backlog: (socket2::Socket, std::net::TcpStream),
    _pair: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
}

/// Coroutines `park_every_kind` spawns: six in `handles`, the join's target, two connectors.
const PARKED: usize = 9;

fn park_every_kind() -> Parked {
    let drops = Rc::new(Cell::new(0u32));
    let flag = || DropCount(drops.clone());
    let mut handles = Vec::new();

    let (reader_peer, rs) = tcp_pair();
    let f = flag();
    handles.push((
        "fd read",
        evco::spawn(move || {
            let _f = f;
            let _ = (&rs).read(&mut [0u8; 16]);
            unreachable!("nothing is ever sent");
        }),
    ));

    let (writer_peer, ws) = tcp_pair();
    let f = flag();
    handles.push((
        "fd write on a full socket",
        evco::spawn(move || {
            let _f = f;
            let chunk = vec![0u8; 64 * 1024];
            loop {
                if (&ws).write_all(&chunk).is_err() {
                    unreachable!("the peer neither reads nor closes");
                }
            }
        }),
    ));

    let f = flag();
    handles.push((
        "timer",
        evco::spawn(move || {
            let _f = f;
            evco::time::sleep(Duration::from_secs(3600));
        }),
    ));

    let pair = socketpair();
    let fd = pair.0.as_raw_fd();
    let f = flag();
    let blocker = evco::spawn(move || {
        let _f = f;
        let _ = wait(fd, Interest::READABLE, Some(Duration::from_secs(3600)));
    });
    let f = flag();
    handles.push((
        "join",
        evco::spawn(move || {
            let _f = f;
            let _ = blocker.join();
        }),
    ));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let accept_addr = listener.local_addr().unwrap();
    let f = flag();
    handles.push((
        "accept",
        evco::spawn(move || {
            let _f = f;
            let _ = listener.accept();
            unreachable!("nobody connects");
        }),
    ));

    let f = flag();
    handles.push((
        "yield loop",
        evco::spawn(move || {
            let _f = f;
            loop {
                if evco::yield_now().is_err() {
                    return;
                }
            }
        }),
    ));

    let (bl, filler, full_addr) = full_backlog();
    let connectors = (0..2)
        .map(|_| {
            let f = flag();
            evco::spawn(move || {
                let _f = f;
                let _ = TcpStream::connect(full_addr);
            })
        })
        .collect();
    Parked {
        handles,
        connectors,
        drops,
        reader_peer,
        writer_peer,
        accept_addr,
        _backlog: (bl, filler),
        _pair: pair,
    }
}

impl Parked {
    /// Checks that every parked coroutine was cancelled (its destructors ran once) and that
    /// what it held is closed. `spare` coroutines are the caller's own, not counted.
    fn check_torn_down(self) {
        for (kind, h) in self.handles {
            assert!(h.is_finished(), "{kind}: still alive");
            let p = h.join().expect_err(kind);
            assert!(
                p.downcast_ref::<Cancelled>().is_some(),
                "{kind}: {}",
                payload_kind(&p)
            );
        }
        let mut cancelled_connects = 0;
        for h in self.connectors {
            assert!(h.is_finished());
            if let Err(p) = h.join() {
                assert!(
                    p.downcast_ref::<Cancelled>().is_some(),
                    "{}",
                    payload_kind(&p)
                );
                cancelled_connects += 1;
            }
        }
        assert!(cancelled_connects >= 1, "no connect was in progress");
        assert_eq!(
            self.drops.get() as usize,
            PARKED,
            "each destructor ran once"
        );
        // The reader's and writer's streams were dropped by the unwinding.
        assert_eq!((&self.reader_peer).read(&mut [0u8; 16]).unwrap(), 0);
        let mut sink = vec![0u8; 1 << 16];
        while (&self.writer_peer).read(&mut sink).unwrap() != 0 {}
        // The listener was dropped too.
        let refused = std::net::TcpStream::connect(self.accept_addr).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    }
}

#[test]
fn dropping_the_scheduler_guard_cancels_coroutines_parked_on_every_kind_of_wait() {
    let _w = watchdog(30);
    let base = evco::event::EventBase::new().unwrap();
    let guard = evco::scheduler::enter(base.clone()).unwrap();
    let parked = park_every_kind();
    // One pass runs every spawned coroutine to its first wait.
    base.loop_nonblock().unwrap();
    assert_eq!(evco::scheduler::live_coroutines(), PARKED);
    // read, write, timer, the join's target, accept, and at least one connect.
    assert!(base.added_events() >= 6, "{} events", base.added_events());
    drop(guard);
    assert_eq!(base.added_events(), 0, "every wait's event is gone");
    parked.check_torn_down();
    // The base is still usable and nothing stale fires.
    base.loop_nonblock().unwrap();
}

#[test]
fn shutdown_from_a_callback_cancels_coroutines_parked_on_every_kind_of_wait_and_spares_run() {
    let _w = watchdog(30);
    let survived = evco::run(|| {
        let base = evco::scheduler::base().unwrap();
        let baseline = base.added_events();
        let parked = park_every_kind();
        // One more, joined below: the root parks in that join until shutdown cancels it.
        let sentinel = evco::spawn(|| evco::time::sleep(Duration::from_secs(3600)));
        evco::yield_now().unwrap();
        assert_eq!(
            evco::scheduler::live_coroutines(),
            PARKED + 2,
            "the parked ones, the sentinel and this one"
        );
        // As a signal handler would: from a libevent callback, outside every coroutine.
        let stop = evco::event::Event::timer(&base, |_| {
            evco::scheduler::shutdown().unwrap();
        })
        .unwrap();
        stop.add(Some(Duration::ZERO)).unwrap();
        let p = sentinel.join().unwrap_err();
        assert!(
            p.downcast_ref::<Cancelled>().is_some(),
            "{}",
            payload_kind(&p)
        );
        drop(stop);
        assert_eq!(
            evco::scheduler::live_coroutines(),
            1,
            "only the root is left"
        );
        assert_eq!(base.added_events(), baseline, "every wait's event is gone");
        parked.check_torn_down();
        "root survived"
    });
    assert_eq!(survived, "root survived");
    assert_eq!(evco::scheduler::live_coroutines(), 0);
}

#[test]
fn a_thread_exiting_with_coroutines_parked_on_every_kind_of_wait_does_not_crash() {
    let _w = watchdog(30);
    // Documented behaviour: the scheduler's thread-local drop deletes every wait event, then
    // leaks the parked coroutines' stacks (unwinding them is impossible once the thread's other
    // thread-locals may be gone). What must hold: no callback fires into freed memory, no crash.
    std::thread::spawn(|| {
        let base = evco::scheduler::base().unwrap();
        let parked = park_every_kind();
        base.loop_nonblock().unwrap();
        assert_eq!(evco::scheduler::live_coroutines(), PARKED);
        drop(parked);
    })
    .join()
    .expect("the thread exits cleanly");
}

/// Regression: `loop_nonblock` used plain `EVLOOP_NONBLOCK`, which libevent repeats for as long
/// as callbacks are active; the ready-queue drain of a coroutine that yields in a loop always
/// is, so a host polling its loop without blocking never got control back.
#[test]
fn loop_nonblock_returns_while_a_coroutine_yields_in_a_loop() {
    let _w = watchdog(30);
    let base = evco::event::EventBase::new().unwrap();
    let guard = evco::scheduler::enter(base.clone()).unwrap();
    let spins = Rc::new(Cell::new(0u64));
    let s = spins.clone();
    let spinner = evco::spawn(move || {
        loop {
            s.set(s.get() + 1);
            if evco::yield_now().is_err() {
                return;
            }
        }
    });
    for round in 1..=3 {
        let before = spins.get();
        base.loop_nonblock().unwrap();
        assert!(
            spins.get() > before,
            "round {round}: the spinner did not run"
        );
    }
    drop(guard);
    assert!(
        spinner
            .join()
            .unwrap_err()
            .downcast_ref::<Cancelled>()
            .is_some()
    );
}

// ---------------------------------------------------------------------------------------------
// Misuse

#[test]
fn misuse_outside_and_inside_coroutines_is_an_error_not_a_crash() {
    let _w = watchdog(30);
    // Outside any coroutine.
    let (a, _b) = socketpair();
    let e = wait(a.as_raw_fd(), Interest::READABLE, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = wait(
        a.as_raw_fd(),
        Interest::WRITABLE,
        Some(Duration::from_millis(1)),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(
        evco::yield_now().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(evco::coroutine::suspend().is_err());
    assert!(
        evco::scheduler::shutdown().is_ok(),
        "shutdown outside is allowed"
    );
    // Closing an unknown fd through evco is EBADF, not a panic.
    assert_eq!(
        evco::io::close(1_000_000).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    // The net types work outside coroutines as blocking sockets; their timeouts hold.
    let (c, _s) = tcp_pair();
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    assert_eq!(
        (&c).read(&mut [0u8; 4]).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    assert_eq!(
        c.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    // Inside one.
    evco::run(|| {
        let e = evco::scheduler::shutdown().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let base = evco::event::EventBase::new().unwrap();
        assert_eq!(
            evco::scheduler::enter(base).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert!(
            evco::coroutine::suspend().is_err(),
            "suspend in a scheduled coroutine would never be resumed"
        );
        // A nested run is a panic of this coroutine (documented), caught like any other.
        let nested = std::panic::catch_unwind(|| evco::run(|| 1));
        assert!(nested.is_err());
        // Waiting on a bad fd.
        assert_eq!(
            wait(-1, Interest::READABLE, None)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EBADF)
        );
        // Cancelling a finished coroutine is fine; joining twice is impossible (join takes
        // self), cancelling oneself is an error.
        let done = evco::spawn(|| 5);
        evco::yield_now().unwrap();
        assert!(done.is_finished());
        done.cancel().unwrap();
        assert_eq!(done.join().unwrap(), 5);
        let me: Rc<RefCell<Option<JoinHandle<io::Result<()>>>>> = Rc::default();
        let m = me.clone();
        let h = evco::spawn(move || {
            evco::yield_now().unwrap();
            m.borrow().as_ref().unwrap().cancel()
        });
        *me.borrow_mut() = Some(h);
        while !me.borrow().as_ref().unwrap().is_finished() {
            evco::yield_now().unwrap();
        }
        let e = me.take().unwrap().join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
    });
}

// ---------------------------------------------------------------------------------------------
// fds above 100,000

/// Raises RLIMIT_NOFILE to `want` (the hard limit too, which needs CAP_SYS_RESOURCE); without
/// that privilege, to the hard limit. Returns the soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain out-parameter calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let asked = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &asked) == 0 {
            return want;
        }
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        lim.rlim_cur
    }
}

/// fd 100,500 where the hard limit allows it (or can be raised); where it cannot (no
/// CAP_SYS_RESOURCE and a lower hard limit, as in this project's sandbox), the highest fds the
/// hard limit allows, said on stderr.
#[test]
fn fds_numbered_above_100000_can_be_waited_on_used_and_closed() {
    // The child gives up first, so that its output reaches the parent.
    let _w = watchdog(if is_child() { 45 } else { 60 });
    if !is_child() {
        let out = child_passes(
            "fds_numbered_above_100000_can_be_waited_on_used_and_closed",
            &[],
        );
        report_lines(&out, "highfd:");
        return;
    }
    let limit = raise_nofile(100_600);
    let high: RawFd = if limit >= 100_600 {
        100_500
    } else {
        println!(
            "highfd: the hard fd limit is {limit} and cannot be raised here (no \
             CAP_SYS_RESOURCE): testing fd {} instead of 100500",
            limit - 100
        );
        (limit - 100) as RawFd
    };
    println!("highfd: testing fds {}..={high}", high - 2);
    evco::run(move || {
        let before = added_events();
        // A listener, a connection and a socketpair end, each moved to a high number.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let move_high = |fd: RawFd, to: RawFd| {
            // SAFETY: `fd` is open and ours; `to` is free (far above anything else open).
            assert_eq!(
                unsafe { libc::dup2(fd, to) },
                to,
                "{}",
                io::Error::last_os_error()
            );
            // SAFETY: `fd` is ours and no longer used.
            unsafe { libc::close(fd) };
            to
        };
        let lfd = move_high(listener.into_raw_fd(), high - 2);
        // SAFETY: `lfd` is an open listening TCP socket we own.
        let listener = unsafe { TcpListener::from_raw_fd(lfd) };
        let server = evco::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let sfd = move_high(s.into_raw_fd(), high);
            // A bare wait on the high fd, then I/O through a stream built from it.
            let ready = wait(sfd, Interest::READABLE, Some(Duration::from_secs(20))).unwrap();
            assert!(ready.is_readable());
            // SAFETY: `sfd` is an open connected TCP socket we own.
            let s = unsafe { TcpStream::from_raw_fd(sfd) };
            assert_eq!(s.as_raw_fd(), high);
            echo(&s)
        });
        let c = TcpStream::connect(addr).unwrap();
        let data = pattern(3, 256 * 1024);
        let w = c.try_clone().unwrap();
        let d = data.clone();
        let writer = evco::spawn(move || {
            (&w).write_all(&d).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&c).read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == data);
        assert_eq!(server.join().unwrap(), End::Eof(data.len() as u64));
        // Its registration (a persistent event under epoll) goes with it.
        drop(c);

        // io::close wakes a waiter on a high fd.
        let (a, _b) = socketpair();
        let hfd = move_high(a.into_raw_fd(), high - 1);
        let waiter = evco::spawn(move || wait(hfd, Interest::READABLE, None));
        evco::yield_now().unwrap();
        assert_eq!(added_events(), before + 1);
        evco::io::close(hfd).unwrap();
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(added_events(), before);
    });
    println!("child-finished");
}

// ---------------------------------------------------------------------------------------------
// Slow readers

/// Where a slow-reader server coroutine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Reading,
    Writing,
}

/// A slow-reader server coroutine and where it is.
type ServerAt = (Rc<Cell<At>>, JoinHandle<End>);

/// Writes until a write cannot progress for `stall` (the pipeline is full); returns how much
/// went in.
fn push_until_stalled(s: &TcpStream, stall: Duration) -> u64 {
    s.set_write_timeout(Some(stall)).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut pushed = 0u64;
    loop {
        match (&*s).write(&chunk) {
            Ok(n) => pushed += n as u64,
            Err(e) if e.kind() == ErrorKind::TimedOut => return pushed,
            Err(e) => panic!("push: {e}"),
        }
    }
}

#[test]
fn slow_readers_park_the_echo_server_in_write_and_its_memory_stays_bounded() {
    // The child gives up first, so that its output reaches the parent.
    let _w = watchdog(if is_child() { 75 } else { 90 });
    if !is_child() {
        let out = child_passes(
            "slow_readers_park_the_echo_server_in_write_and_its_memory_stays_bounded",
            &[],
        );
        report_lines(&out, "slow:");
        return;
    }
    const SLOW: usize = 20;
    evco::run(|| {
        // Part 1: no timeouts. The server echoes into clients that never read.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let states: Rc<RefCell<Vec<ServerAt>>> = Rc::default();
        let acceptor = {
            let states = states.clone();
            evco::spawn(move || -> io::Result<()> {
                loop {
                    let (s, _) = listener.accept()?;
                    let at = Rc::new(Cell::new(At::Reading));
                    let a = at.clone();
                    let h = evco::spawn(move || {
                        let mut buf = vec![0u8; 4096];
                        let mut total = 0;
                        loop {
                            a.set(At::Reading);
                            let n = match (&s).read(&mut buf) {
                                Ok(0) => return End::Eof(total),
                                Ok(n) => n,
                                Err(e) => return End::Err(e.kind(), total),
                            };
                            a.set(At::Writing);
                            if let Err(e) = (&s).write_all(&buf[..n]) {
                                return End::Err(e.kind(), total);
                            }
                            total += n as u64;
                        }
                    });
                    states.borrow_mut().push((at, h));
                }
            })
        };
        let clients: Vec<TcpStream> = (0..SLOW)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let clients = Rc::new(clients);
        while states.borrow().len() < SLOW {
            evco::yield_now().unwrap();
        }
        let rss0 = rss_kib();
        let push_all = |stall| -> Vec<u64> {
            let hs: Vec<_> = (0..SLOW)
                .map(|i| {
                    let clients = clients.clone();
                    evco::spawn(move || push_until_stalled(&clients[i], stall))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        };
        let first = push_all(Duration::from_millis(100));
        // A second round confirms the stall: nothing (or next to nothing) more goes in.
        let second = push_all(Duration::from_millis(100));
        let rss1 = rss_kib();
        for (i, (at, h)) in states.borrow().iter().enumerate() {
            assert!(!h.is_finished(), "server {i} ended");
            assert_eq!(at.get(), At::Writing, "server {i} is not parked in write");
        }
        // What the kernel holds in flight per connection is bounded by four socket buffers
        // (client send, server receive, server send, client receive: tcp_wmem/tcp_rmem maxima,
        // 4 + 32 + 4 + 32 MiB here); the kernel may still take a little after a stall (it
        // collapses queued buffers). None of it is the server's memory.
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            assert!(
                a + b < 96 << 20,
                "client {i} pushed {} bytes into a server that cannot write",
                a + b
            );
        }
        let growth = rss1.saturating_sub(rss0);
        assert!(
            growth < 32 * 1024,
            "RSS grew by {growth} KiB while {SLOW} slow readers held {} bytes in flight",
            first.iter().chain(&second).sum::<u64>()
        );
        println!(
            "slow: {SLOW} clients pushed {} KiB before stalling ({} KiB more after), server \
             parked in write, RSS {rss0} -> {rss1} KiB",
            first.iter().sum::<u64>() / 1024,
            second.iter().sum::<u64>() / 1024
        );
        acceptor.cancel().unwrap();
        // Cancelling the parked servers closes their streams.
        for (_, h) in states.take() {
            h.cancel().unwrap();
            assert!(h.join().unwrap_err().downcast_ref::<Cancelled>().is_some());
        }
        drop(clients);

        // Part 2: with a write timeout, the server sheds a slow reader instead of waiting.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = evco::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            echo(&s)
        });
        let c = TcpStream::connect(addr).unwrap();
        c.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let err = loop {
            // Keep pushing until the server gives up on us and the connection fails.
            match (&c).write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    if server.is_finished() {
                        break None;
                    }
                }
                Err(e) => break Some(e),
            }
        };
        let end = server.join().unwrap();
        assert!(
            matches!(end, End::Err(ErrorKind::TimedOut, _)),
            "server ended with {end:?}"
        );
        println!(
            "slow: with a 200 ms write timeout the server ended with {end:?}; client saw {err:?}"
        );
    });
    println!("child-finished");
}
