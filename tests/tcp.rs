//! `evco::net::TcpListener` and `TcpStream`: parity with std, timeouts, resets, and load.

mod common;

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use common::{added_events, watchdog};
use evco::coroutine::Builder;
use evco::net::{TcpListener, TcpStream};

/// Events a socket that has waited keeps while it lives: its persistent edge-triggered
/// registration under epoll, none under poll (one-shot waits only).
fn registration() -> usize {
    usize::from(evco::scheduler::base().unwrap().supports_edge_triggered())
}

#[test]
fn bind_accept_read_exact_write_all_and_eof_after_shutdown() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let server = evco::spawn(move || {
            let (mut conn, peer) = listener.accept().unwrap();
            assert_eq!(peer, conn.peer_addr().unwrap());
            let mut buf = [0u8; 11];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
            // After the client's shutdown(Write): EOF is Ok(0).
            assert_eq!(conn.read(&mut buf).unwrap(), 0);
            conn.write_all(b"bye").unwrap();
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"hello world").unwrap();
        let mut back = [0u8; 11];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello world");
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        client.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "bye");
        server.join().unwrap();
    });
}

/// An accepted stream's first read waits for the edge epoll reports when the socket is added
/// (no `recv` first): data and FIN that were queued before the accept must be in that report.
#[test]
fn data_and_eof_queued_before_accept_are_read_after_it() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A plain blocking client: connected, written and half-closed before anyone accepts.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"sent before accept").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"sent before accept");
        // And a stream accepted before its data arrives still wakes when it does.
        let server = evco::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
        });
        let mut late = TcpStream::connect(addr).unwrap();
        evco::yield_now().unwrap(); // let the server accept and wait first
        late.write_all(b"later").unwrap();
        let mut back = [0u8; 5];
        late.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"later");
        server.join().unwrap();
    });
}

#[test]
fn connect_to_a_closed_port_is_connection_refused() {
    let _w = watchdog(20);
    evco::run(|| {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    });
}

#[test]
fn connect_timeout_to_a_full_backlog_times_out_and_leaves_no_event() {
    let _w = watchdog(30);
    evco::run(|| {
        let (_l, addr, _fillers) = common::full_backlog_listener();
        let before = added_events();
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert_eq!(added_events(), before);
    });
}

#[test]
fn read_timeout_returns_timed_out_and_leaves_no_event() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = evco::spawn(move || listener.accept().unwrap());
        let mut client = TcpStream::connect(addr).unwrap();
        let _server_side = silent.join().unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let before = added_events();
        let err = client.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        // The timer is gone; under epoll the socket keeps its persistent registration until
        // it is dropped.
        assert_eq!(added_events(), before + registration());
        assert!(client.set_read_timeout(Some(Duration::ZERO)).is_err());
        drop(client);
        assert_eq!(added_events(), before);
    });
}

#[test]
fn write_timeout_against_a_peer_that_never_reads_returns_timed_out() {
    let _w = watchdog(30);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = evco::spawn(move || listener.accept().unwrap());
        let mut client = TcpStream::connect(addr).unwrap();
        let _never_reads = acceptor.join().unwrap();
        client
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let before = added_events();
        let chunk = vec![7u8; 64 * 1024];
        let err = loop {
            if let Err(e) = client.write(&chunk) {
                break e;
            }
        };
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert_eq!(added_events(), before + registration());
        drop(client);
        assert_eq!(added_events(), before);
    });
}

#[test]
fn a_peer_that_resets_mid_transfer_affects_only_its_own_connection() {
    let _w = watchdog(30);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = evco::spawn(move || {
            let mut results = Vec::new();
            let mut hs = Vec::new();
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().unwrap();
                hs.push(evco::spawn(move || {
                    let mut total = 0usize;
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) => return Ok(total),
                            Ok(n) => {
                                total += n;
                                conn.write_all(&buf[..n]).map_err(|e| e.kind())?;
                            }
                            Err(e) => return Err(e.kind()),
                        }
                    }
                }));
            }
            for h in hs {
                results.push(h.join().unwrap());
            }
            results
        });
        let mut good = TcpStream::connect(addr).unwrap();
        let bad = TcpStream::connect(addr).unwrap();
        (&bad).write_all(&[1u8; 1000]).unwrap();
        evco::time::sleep(Duration::from_millis(20)); // let the server echo into bad's buffer
        bad.set_linger(Some(Duration::ZERO)).unwrap();
        drop(bad); // unread data + linger 0: RST
        let payload = vec![9u8; 100_000];
        let reader = {
            let mut r = good.try_clone().unwrap();
            evco::spawn(move || {
                let mut back = vec![0u8; 100_000];
                r.read_exact(&mut back).unwrap();
                back
            })
        };
        good.write_all(&payload).unwrap();
        assert_eq!(reader.join().unwrap(), payload);
        good.shutdown(Shutdown::Write).unwrap();
        let results = server.join().unwrap();
        assert_eq!(results.len(), 2);
        assert!(results.contains(&Ok(100_000)), "{results:?}");
        let reset = results
            .iter()
            .find(|r| r.is_err())
            .expect("one connection saw the reset");
        assert!(
            matches!(
                reset,
                Err(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
            ),
            "{reset:?}"
        );
    });
}

/// xorshift: deterministic sizes and contents without a dependency.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn a_thousand_concurrent_clients_echo_random_sizes_up_to_64k_byte_exact() {
    let _w = watchdog(240);
    let errors = Rc::new(Cell::new(0u32));
    let bytes = Rc::new(Cell::new(0u64));
    let (e2, b2) = (errors.clone(), bytes.clone());
    evco::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = evco::spawn(move || {
            let mut conns = Vec::new();
            for _ in 0..1000 {
                let (mut s, _) = listener.accept().unwrap();
                conns.push(
                    Builder::new()
                        .stack_size(32 * 1024)
                        .spawn(move || {
                            let mut buf = [0u8; 4096];
                            loop {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        })
                        .unwrap(),
                );
            }
            for c in conns {
                c.join().unwrap();
            }
        });
        let clients: Vec<_> = (0..1000u64)
            .map(|id| {
                let (errors, bytes) = (e2.clone(), b2.clone());
                Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let run = || -> std::io::Result<u64> {
                            let stream = TcpStream::connect(addr)?;
                            let mut reader = stream.try_clone()?;
                            let mut writer = stream;
                            let mut seed = id * 7919 + 1;
                            let mut total = 0u64;
                            for _ in 0..100 {
                                let len = (rng(&mut seed) % (64 * 1024)) as usize + 1;
                                let msg: Vec<u8> = (0..len)
                                    .map(|i| (rng(&mut seed) as usize ^ i) as u8)
                                    .collect();
                                // Write and read concurrently: a 64 KiB echo does not fit the
                                // socket buffers of both directions at once.
                                let out = msg.clone();
                                let w = evco::spawn(move || writer.write_all(&out).map(|_| writer));
                                let mut back = vec![0u8; len];
                                reader.read_exact(&mut back)?;
                                writer = w.join().unwrap()?;
                                if back != msg {
                                    return Err(std::io::Error::other("corrupted echo"));
                                }
                                total += len as u64;
                            }
                            Ok(total)
                        };
                        match run() {
                            Ok(n) => bytes.set(bytes.get() + n),
                            Err(e) => {
                                eprintln!("client {id}: {e}");
                                errors.set(errors.get() + 1);
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        acceptor.join().unwrap();
    });
    assert_eq!(errors.get(), 0);
    assert!(bytes.get() > 1000 * 100);
}

#[test]
fn the_stream_types_work_outside_coroutines_as_blocking_sockets() {
    let _w = watchdog(20);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"plain thread").unwrap();
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "plain thread");
    t.join().unwrap();
}

#[test]
fn into_std_from_std_round_trip_keeps_the_connection() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listener = TcpListener::from_std(listener.into_std()).unwrap();
        listener.set_ttl(64).unwrap();
        assert_eq!(listener.ttl().unwrap(), 64);
        let addr = listener.local_addr().unwrap();
        let h = evco::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            assert!(s.nodelay().unwrap());
            let mut s = TcpStream::from_std(s.into_std()).unwrap();
            s.write_all(b"x").unwrap();
        });
        let (mut c, _) = listener
            .incoming()
            .next()
            .map(|r| {
                let s = r.unwrap();
                let a = s.peer_addr().unwrap();
                (s, a)
            })
            .unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        h.join().unwrap();
    });
}

#[test]
fn a_socket_handed_out_as_a_raw_fd_leaves_no_registration_for_the_next_owner_of_its_number() {
    let _w = watchdog(30);
    if !common::is_child() {
        // Alone in a process, so that the fd number is reused deterministically.
        let name = "a_socket_handed_out_as_a_raw_fd_leaves_no_registration_for_the_next_owner_of_its_number";
        common::child_passes(name, &[]);
        return;
    }
    evco::run(|| {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = evco::spawn(move || {
            let a = listener.accept().unwrap().0;
            let b = listener.accept().unwrap().0;
            (a, b)
        });
        let first = TcpStream::connect(addr).unwrap();
        first
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        // Waits once (times out): the socket is now registered (under epoll).
        assert_eq!(
            (&first).read(&mut [0u8; 1]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        let raw = first.into_raw_fd();
        // Closed behind evco's back, as a raw fd may be.
        // SAFETY: `raw` came from `into_raw_fd` and is owned by nothing else.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) });
        let second = TcpStream::connect(addr).unwrap();
        assert_eq!(second.as_raw_fd(), raw, "the fd number is reused");
        let (_a, mut b) = acceptor.join().unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = evco::spawn(move || {
            let mut buf = [0u8; 5];
            (&second).read_exact(&mut buf).map(|_| buf)
        });
        evco::yield_now().unwrap();
        b.write_all(b"fresh").unwrap();
        assert_eq!(&reader.join().unwrap().unwrap(), b"fresh");
    });
    println!("child-finished");
}

#[test]
fn a_reader_and_a_writer_coroutine_share_one_stream() {
    let _w = watchdog(60);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = evco::spawn(move || listener.accept().unwrap().0);
        let stream = Rc::new(TcpStream::connect(addr).unwrap());
        let mut peer = peer.join().unwrap();
        const N: usize = 4 * 1024 * 1024;
        // The writer fills the socket buffers and parks; the reader parks on an empty socket:
        // two waits on one fd, one each way.
        let writer = {
            let s = stream.clone();
            evco::spawn(move || (&*s).write_all(&vec![3u8; N]))
        };
        let reader = {
            let s = stream.clone();
            evco::spawn(move || {
                let mut buf = [0u8; 4];
                (&*s).read_exact(&mut buf).map(|_| buf)
            })
        };
        evco::yield_now().unwrap();
        assert!(!writer.is_finished() && !reader.is_finished());
        peer.write_all(b"pong").unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < N {
            got += peer.read(&mut buf).unwrap();
        }
        writer.join().unwrap().unwrap();
        assert_eq!(&reader.join().unwrap().unwrap(), b"pong");
    });
}

/// One urgent (`MSG_OOB`) byte in the stream does not stall the reader: the read that stops at
/// the urgent mark comes back short, and the data behind the mark is read at once. Before, that
/// short read counted as "receive queue drained", so the reader waited for an edge that never
/// came (until the peer sent more or closed): here, its 5 s read timeout.
#[test]
fn urgent_data_does_not_stall_the_reader_at_the_mark() {
    let _w = watchdog(20);
    let peer = common::UrgentPeer::start();
    let got = evco::run(move || {
        let s = TcpStream::connect(peer.addr).unwrap();
        let got = peer.read_past_the_mark(&s, |s, t| s.set_read_timeout(Some(t)).unwrap());
        drop(s);
        // The urgent watch leaves the loop with the last state, as the doorbell does.
        assert_eq!(added_events(), 0);
        got
    });
    assert_eq!(got.unwrap(), b"aaaacccc");
}
