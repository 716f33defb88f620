//! The parts of std's socket surface that evco::net mirrors (issue 18): socket options,
//! `peek`, `incoming`, non-blocking mode, abstract and `SocketAddr` forms, and fd passing.

mod common;

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use common::watchdog;
use evco::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixListener, UnixStream};

fn tmp_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("evco-surface-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// `TcpStream::{set_ttl, ttl, set_linger, linger}` and `TcpListener::{set_ttl, ttl}` set and
/// read back the options, as std's `ttl` and `linger` tests do.
#[test]
fn tcp_ttl_and_linger_round_trip() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_ttl(100).unwrap();
        assert_eq!(listener.ttl().unwrap(), 100);
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_ttl(42).unwrap();
        assert_eq!(stream.ttl().unwrap(), 42);
        assert_eq!(stream.linger().unwrap(), None);
        stream.set_linger(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(stream.linger().unwrap(), Some(Duration::from_secs(1)));
        stream.set_linger(None).unwrap();
        assert_eq!(stream.linger().unwrap(), None);
    });
}

/// `UdpSocket::{set_ttl, ttl}` round-trip, and `peek`/`peek_from` return the next datagram
/// (and its sender) without consuming it: the following `recv_from` sees the same one.
#[test]
fn udp_ttl_peek_and_peek_from() {
    let _w = watchdog(20);
    evco::run(|| {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_ttl(7).unwrap();
        assert_eq!(b.ttl().unwrap(), 7);
        let baddr = b.local_addr().unwrap();
        let aaddr = a.local_addr().unwrap();
        // The sender runs only once the reader has suspended in peek_from.
        let sender = evco::spawn(move || {
            a.send_to(b"one", baddr).unwrap();
            a
        });
        let mut buf = [0u8; 16];
        let (n, from) = b.peek_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"one"[..], aaddr));
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"one"[..], aaddr));
        let a = sender.join().unwrap();
        b.connect(aaddr).unwrap();
        a.send_to(b"two", baddr).unwrap();
        assert_eq!(b.peek(&mut buf[..2]).unwrap(), 2);
        assert_eq!(&buf[..2], b"tw");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
    });
}

/// `UnixStream::peek` leaves the bytes for the next read; `UnixDatagram::peek` leaves the
/// datagram for the next `recv`.
#[test]
fn unix_peek_does_not_consume() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, mut b) = UnixStream::pair().unwrap();
        let writer = evco::spawn(move || (&a).write_all(b"hello").unwrap());
        let mut buf = [0u8; 5];
        let n = b.peek(&mut buf).unwrap();
        assert_eq!(&buf[..n], &b"hello"[..n]);
        writer.join().unwrap();
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        let (x, y) = UnixDatagram::pair().unwrap();
        x.send(b"dgram").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(y.peek(&mut buf).unwrap(), 5);
        assert_eq!(y.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"dgram");
    });
}

/// `UnixListener::incoming` yields one stream per connection, like std's `Incoming`.
#[test]
fn unix_incoming_yields_accepted_streams() {
    let _w = watchdog(20);
    let path = tmp_path("incoming.sock");
    evco::run(move || {
        let listener = UnixListener::bind(&path).unwrap();
        let p = path.clone();
        let clients = evco::spawn(move || {
            for i in 0..3u8 {
                let mut s = UnixStream::connect(&p).unwrap();
                s.write_all(&[i]).unwrap();
            }
        });
        for (i, stream) in listener.incoming().take(3).enumerate() {
            let mut b = [0u8; 1];
            stream.unwrap().read_exact(&mut b).unwrap();
            assert_eq!(b[0] as usize, i);
        }
        clients.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    });
}

/// The shared body of the `set_nonblocking` tests: with `set(true)`, `read` (a call that would
/// wait) on `reader` fails with `WouldBlock` at once; after `set(false)` it suspends until
/// `writer`, in a coroutine that runs only then, makes it ready.
fn assert_nonblocking_then_cooperative<S: 'static>(
    reader: S,
    writer: impl FnOnce() + 'static,
    read: impl Fn(&S) -> std::io::Result<usize> + 'static,
    set: impl Fn(&S, bool) -> std::io::Result<()>,
) {
    set(&reader, true).unwrap();
    assert_eq!(read(&reader).unwrap_err().kind(), ErrorKind::WouldBlock);
    set(&reader, false).unwrap();
    // The writer is spawned first but runs only when the reader suspends: the read gets its
    // data only by waiting cooperatively.
    let suspended = Rc::new(Cell::new(false));
    let s = suspended.clone();
    let w = evco::spawn(move || {
        s.set(true);
        writer();
    });
    assert!(read(&reader).unwrap() > 0);
    assert!(suspended.get());
    w.join().unwrap();
}

/// `set_nonblocking(true)` on a TCP stream makes an empty read return `WouldBlock` at once
/// inside a coroutine; `set_nonblocking(false)` makes it wait (suspend) again.
#[test]
fn tcp_stream_set_nonblocking_means_would_block() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_nonblocking_then_cooperative(
            server,
            move || (&client).write_all(b"x").unwrap(),
            |s| (&*s).read(&mut [0u8; 4]),
            TcpStream::set_nonblocking,
        );
    });
}

/// `TcpListener::set_nonblocking(true)`: `accept` with no pending connection is `WouldBlock`;
/// with `false` it waits for the connection a later coroutine makes.
#[test]
fn tcp_listener_set_nonblocking_means_would_block() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_nonblocking_then_cooperative(
            listener,
            move || drop(TcpStream::connect(addr).unwrap()),
            |l| l.accept().map(|_| 1),
            TcpListener::set_nonblocking,
        );
    });
}

/// `UdpSocket::set_nonblocking(true)`: `recv_from` on an empty socket is `WouldBlock`.
#[test]
fn udp_set_nonblocking_means_would_block() {
    let _w = watchdog(20);
    evco::run(|| {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let baddr = b.local_addr().unwrap();
        assert_nonblocking_then_cooperative(
            b,
            move || {
                a.send_to(b"x", baddr).unwrap();
            },
            |b| b.recv_from(&mut [0u8; 4]).map(|(n, _)| n),
            UdpSocket::set_nonblocking,
        );
    });
}

/// `UnixStream::set_nonblocking(true)`: an empty `peek` is `WouldBlock`.
#[test]
fn unix_stream_set_nonblocking_means_would_block() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        assert_nonblocking_then_cooperative(
            b,
            move || (&a).write_all(b"x").unwrap(),
            |b| b.peek(&mut [0u8; 4]),
            UnixStream::set_nonblocking,
        );
    });
}

/// `UnixDatagram::set_nonblocking(true)`: an empty `recv` is `WouldBlock`.
#[test]
fn unix_datagram_set_nonblocking_means_would_block() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixDatagram::pair().unwrap();
        assert_nonblocking_then_cooperative(
            b,
            move || {
                a.send(b"x").unwrap();
            },
            |b| b.recv(&mut [0u8; 4]),
            UnixDatagram::set_nonblocking,
        );
    });
}

/// `UnixListener::set_nonblocking(true)`: `accept` with no pending connection is
/// `WouldBlock`, and `incoming` yields that error too.
#[test]
fn unix_listener_set_nonblocking_means_would_block() {
    let _w = watchdog(20);
    let path = tmp_path("nonblocking.sock");
    evco::run(move || {
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let e = listener.incoming().next().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        let p = path.clone();
        assert_nonblocking_then_cooperative(
            listener,
            move || drop(UnixStream::connect(&p).unwrap()),
            |l| l.accept().map(|_| 1),
            UnixListener::set_nonblocking,
        );
        std::fs::remove_file(&path).unwrap();
    });
}

/// An abstract-namespace name unique to this process and `tag`.
fn abstract_addr(tag: &str) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("evco-surface-{}-{tag}", std::process::id());
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
}

/// `UnixListener::bind_addr` and `UnixStream::connect_addr` work with an abstract-namespace
/// address (as std's `abstract_namespace` tests do), and the accepted stream carries bytes.
#[test]
fn unix_stream_abstract_bind_addr_and_connect_addr() {
    use std::os::linux::net::SocketAddrExt;
    let _w = watchdog(20);
    evco::run(|| {
        let addr = abstract_addr("stream");
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let local = listener.local_addr().unwrap();
        assert_eq!(local.as_abstract_name(), addr.as_abstract_name());
        let server = evco::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"abstract").unwrap();
        });
        let mut client = UnixStream::connect_addr(&addr).unwrap();
        let mut buf = [0u8; 8];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abstract");
        server.join().unwrap();
    });
}

/// `UnixDatagram::{bind_addr, send_to_addr, connect_addr, peek_from}`: a datagram sent to an
/// abstract address arrives, `peek_from` names its sender (pathname, or unnamed for an unbound
/// socket) without consuming it.
#[test]
fn unix_datagram_addr_forms_and_peek_from() {
    use std::os::linux::net::SocketAddrExt;
    let _w = watchdog(20);
    let path = tmp_path("dgram-sender.sock");
    evco::run(move || {
        let addr = abstract_addr("dgram");
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let named =
            UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_pathname(&path).unwrap())
                .unwrap();
        let unbound = UnixDatagram::unbound().unwrap();
        // The sender runs only once the server has suspended in peek_from.
        let sender = evco::spawn(move || {
            named.send_to_addr(b"from named", &addr).unwrap();
            unbound.connect_addr(&addr).unwrap();
            unbound.send(b"from unbound").unwrap();
        });
        let mut buf = [0u8; 32];
        let (n, from) = server.peek_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from named");
        assert_eq!(from.as_pathname(), Some(path.as_path()));
        let (n, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from named");
        sender.join().unwrap();
        let (n, from) = server.peek_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from unbound");
        assert!(from.is_unnamed());
        assert_eq!(from.as_abstract_name(), None);
        assert_eq!(server.recv(&mut buf).unwrap(), 12);
        std::fs::remove_file(&path).unwrap();
    });
}

/// A pipe whose ends are close-on-exec.
fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut p = [0; 2];
    // SAFETY: `p` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded: two new descriptors that nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(p[0]),
            std::fs::File::from_raw_fd(p[1]),
        )
    }
}

/// Whether `fd` has `FD_CLOEXEC`.
fn is_cloexec(fd: &impl std::os::fd::AsRawFd) -> bool {
    // SAFETY: F_GETFD on an open descriptor reads its flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags >= 0);
    flags & libc::FD_CLOEXEC != 0
}

/// `UnixStream::{send_fds, recv_fds}` pass a pipe's write end: the receiver, suspended in
/// `recv_fds` until the sender coroutine runs, gets the data and a close-on-exec copy of the
/// descriptor, and what it writes through that copy comes out of the pipe.
#[test]
fn unix_stream_passes_fds_cooperatively() {
    use std::os::fd::AsFd;
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = pipe();
        let sender = evco::spawn(move || {
            assert_eq!(a.send_fds(b"fd", &[w.as_fd()]).unwrap(), 2);
        });
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        let n = b.recv_fds(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"fd");
        assert_eq!(fds.len(), 1);
        assert!(is_cloexec(&fds[0]));
        sender.join().unwrap();
        let mut w = std::fs::File::from(fds.pop().unwrap());
        w.write_all(b"through").unwrap();
        drop(w);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "through");
        // Plain data (no descriptors) comes back with none.
        let (c, d) = UnixStream::pair().unwrap();
        c.send_fds(b"none", &[]).unwrap();
        assert_eq!(d.recv_fds(&mut buf, &mut fds).unwrap(), 4);
        assert!(fds.is_empty());
    });
}

/// `UnixDatagram::{send_fds, recv_fds}` carry several descriptors in one datagram, and an
/// empty datagram may carry them too.
#[test]
fn unix_datagram_passes_several_fds() {
    use std::os::fd::AsFd;
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixDatagram::pair().unwrap();
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        assert_eq!(a.send_fds(b"", &[w1.as_fd(), w2.as_fd()]).unwrap(), 0);
        let mut fds = Vec::new();
        assert_eq!(b.recv_fds(&mut [0u8; 4], &mut fds).unwrap(), 0);
        assert_eq!(fds.len(), 2);
        drop((w1, w2));
        for (fd, mut r) in fds.into_iter().zip([r1, r2]) {
            std::fs::File::from(fd).write_all(b"k").unwrap();
            let mut byte = [0u8; 1];
            r.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"k");
        }
    });
}

/// Bad input to `send_fds` is an error, not a panic: descriptors with no data on a stream,
/// and more descriptors than one message holds.
#[test]
fn send_fds_rejects_bad_input() {
    use std::os::fd::AsFd;
    let _w = watchdog(20);
    evco::run(|| {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = a.send_fds(b"", &[a.as_fd()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let (c, _d) = UnixDatagram::pair().unwrap();
        let many = vec![c.as_fd(); 254];
        let e = c.send_fds(b"x", &many).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    });
}

/// The handles `try_clone` makes share the non-blocking mode, as `dup`s share `O_NONBLOCK` in
/// std: setting it on the clone makes the original's empty read `WouldBlock`, and clearing it
/// on the original makes the clone wait again.
#[test]
fn try_clone_shares_nonblocking_mode() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let b2 = b.try_clone().unwrap();
        b2.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            (&b).read(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        b.set_nonblocking(false).unwrap();
        let w = evco::spawn(move || (&a).write_all(b"x").unwrap());
        assert_eq!((&b2).read(&mut buf).unwrap(), 1);
        w.join().unwrap();
    });
}
