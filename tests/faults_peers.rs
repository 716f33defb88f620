//! Fault injection over loopback from the peer's side: resets mid-read, mid-write and before the
//! first byte across 1,000 connections, a half-close, and slow readers that never drain.
//!
//! What it proves: a peer's reset ends only its own connection, as an error (or EOF) the server
//! coroutine gets from the call it was parked in, and leaves no wait registered; after a
//! half-close the server still sends the rest, then EOF; an echo server whose clients never read
//! parks in `write` with bounded memory, and with a write timeout sheds such a client.
//!
//! Every test is bounded by the watchdog and talks to 127.0.0.1 only. The slow-reader test
//! measures RSS, so it runs alone in a child process. Like every `faults_*` file, this one also
//! runs under `EVENT_NOEPOLL=1` (libevent's poll backend) in `scripts/ci-faults`.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use common::{
    End, Handles, added_events, child_passes, echo, is_child, pattern, payload_kind, report_lines,
    rss_kib, watchdog,
};
use evco::JoinHandle;
use evco::coroutine::Cancelled;
use evco::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Peer resets across 1,000 connections

/// Closes with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

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
