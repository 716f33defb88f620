//! `evco::net::UdpSocket` and the Unix-domain socket types: round trips inside coroutines.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::watchdog;
use evco::net::{UdpSocket, UnixDatagram, UnixListener, UnixStream};

#[test]
fn udp_send_to_recv_from_and_connected_send_recv_round_trip() {
    let _w = watchdog(20);
    evco::run(|| {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let saddr = server.local_addr().unwrap();
        let echo = evco::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"one", saddr).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"one"[..], saddr));
        client.connect(saddr).unwrap();
        client.send(b"two").unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
        echo.join().unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        assert_eq!(
            client.recv(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::TimedOut
        );
    });
}

/// A fresh socket path in a directory of its own for this process and `tag`; the caller
/// removes the directory.
fn socket_path(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("evco-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    (dir, path)
}

#[test]
fn unix_stream_listener_round_trip() {
    let _w = watchdog(20);
    let (dir, p2) = socket_path("unix");
    evco::run(move || {
        let listener = UnixListener::bind(&p2).unwrap();
        let server = evco::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let mut c = UnixStream::connect(&p2).unwrap();
        c.write_all(b"unix!").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"unix!");
        server.join().unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As for TCP: an accepted Unix stream's first read relies on the edge reported when it is
/// registered, so bytes and EOF queued before the accept must arrive through it.
#[test]
fn unix_data_and_eof_queued_before_accept_are_read_after_it() {
    let _w = watchdog(20);
    let (dir, p2) = socket_path("unix-early");
    evco::run(move || {
        let listener = UnixListener::bind(&p2).unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&p2).unwrap();
        client.write_all(b"early").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"early");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unix_datagram_pair_round_trip_across_coroutines() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixDatagram::pair().unwrap();
        let h = evco::spawn(move || {
            let mut buf = [0u8; 16];
            let n = b.recv(&mut buf).unwrap();
            b.send(&buf[..n]).unwrap();
        });
        // The receiver runs first and parks in recv; our send wakes it.
        evco::yield_now().unwrap();
        a.send(b"dgram").unwrap();
        let mut buf = [0u8; 16];
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"dgram");
        h.join().unwrap();
    });
}

#[test]
fn writes_to_a_closed_peer_are_an_error_not_sigpipe() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut a = a;
        // Rust's runtime ignores SIGPIPE in test binaries; the fault suite proves it with
        // SIG_DFL in a child. Here: the error kind.
        let err = a.write_all(b"into the void").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    });
}

#[test]
fn a_short_read_followed_by_an_eof_that_came_with_it_returns_the_eof() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let reader = evco::spawn(move || {
            let mut buf = [0u8; 64];
            // Parks first (nothing sent yet), so the socket gets registered.
            let n = (&b).read(&mut buf).unwrap();
            let m = (&b).read(&mut buf[n..]).unwrap();
            (n, m)
        });
        evco::yield_now().unwrap();
        // Data and EOF arrive together: the reader's short read leaves only the EOF, which no
        // further edge announces.
        (&a).write_all(b"abc").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), (3, 0));
    });
}
