//! evco::hook: unmodified blocking std::net code inside coroutines suspends the coroutine, not
//! the thread; everywhere else the calls behave exactly as libc's.
//!
//! Most tests here would hang without the hooks (a blocking call would stop the only thread
//! before the coroutine that unblocks it could run): the watchdog turns that into a failure.
#![cfg(all(feature = "hook", target_os = "linux"))]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use common::{Log, note, watchdog};
use evco::coroutine::Cancelled;

struct DropFlag(Rc<std::cell::Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// `setsockopt(fd, SOL_SOCKET, name, value)`, which must succeed.
fn set_socket_option<T>(fd: i32, name: libc::c_int, value: &T) {
    // SAFETY: `value` is a live `T` and the length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

fn nonblocking_flag(fd: i32) -> bool {
    // SAFETY: F_GETFL only reads the fd's status flags.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(fl >= 0, "F_GETFL: {}", std::io::Error::last_os_error());
    fl & libc::O_NONBLOCK != 0
}

#[test]
fn std_accept_connect_read_and_write_suspend_only_their_coroutine() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(evco::hook::is_tracked(listener.as_raw_fd()));
        let ls = l.clone();
        let server = evco::spawn(move || {
            note(&ls, "accepting");
            let (mut conn, _) = listener.accept().unwrap(); // would block the thread unhooked
            note(&ls, "accepted");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            note(&ls, "read");
            conn.write_all(&buf).unwrap();
            // Neither the listener nor the accepted socket was left non-blocking.
            assert!(!nonblocking_flag(listener.as_raw_fd()));
            assert!(!nonblocking_flag(conn.as_raw_fd()));
        });
        evco::yield_now().unwrap(); // the server parks in accept
        note(&l, "connecting");
        let mut client = TcpStream::connect(addr).unwrap();
        note(&l, "connected");
        evco::yield_now().unwrap(); // the server parks in read
        note(&l, "writing");
        client.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert!(!nonblocking_flag(client.as_raw_fd()));
        server.join().unwrap();
    });
    let log = log.borrow();
    let at = |s: &str| log.iter().position(|x| x == s).unwrap();
    assert!(at("accepting") < at("connecting"), "{log:?}");
    assert!(
        at("accepted") < at("writing") && at("writing") < at("read"),
        "{log:?}"
    );
}

#[test]
fn a_megabyte_each_way_through_blocking_std_streams_between_two_coroutines() {
    let _w = watchdog(30);
    const LEN: usize = 1 << 20;
    let echoed = evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = evco::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n]).unwrap();
            }
        });
        let client = TcpStream::connect(addr).unwrap();
        let mut reader = client.try_clone().unwrap();
        // The writer blocks (cooperatively) on full socket buffers until the reader drains the
        // echo: unhooked, the first full buffer would stop the thread for good.
        let writer = evco::spawn(move || {
            let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
            let mut c = client;
            c.write_all(&data).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(LEN);
        reader.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        echo.join().unwrap();
        got
    });
    assert_eq!(echoed.len(), LEN);
    assert!(
        echoed
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8)
    );
}

#[test]
fn thread_sleep_usleep_and_sleep_in_a_coroutine_suspend_only_that_coroutine() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        // Sleeps far longer than the watchdog allows: unhooked, the first one would hold the
        // thread and the test would abort.
        let (la, lb) = (l.clone(), l.clone());
        let long_nanosleep = evco::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            note(&la, "thread::sleep returned");
        });
        let long_usleep = evco::spawn(move || {
            // SAFETY: usleep has no memory preconditions.
            unsafe { libc::usleep(60_000_000) };
            note(&lb, "usleep returned");
        });
        let lc = l.clone();
        let yielder = evco::spawn(move || {
            // SAFETY: as above; sleep(0) yields.
            assert_eq!(unsafe { libc::sleep(0) }, 0);
            note(&lc, "sleep(0) returned");
        });
        // A short sleep ends on its timer while the long ones are still suspended.
        let ld = l.clone();
        evco::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            note(&ld, "short sleep returned");
        })
        .join()
        .unwrap();
        yielder.join().unwrap();
        assert!(!long_nanosleep.is_finished() && !long_usleep.is_finished());
        // Cancelled, a hooked sleep returns at once (std's thread::sleep would abort the
        // process if a cancellation unwound through its libc call) and the coroutine ends.
        for h in [long_nanosleep, long_usleep] {
            h.cancel().unwrap();
            assert!(h.join().unwrap_err().downcast_ref::<Cancelled>().is_some());
        }
    });
    let mut log = log.borrow().clone();
    log.sort();
    assert_eq!(
        log,
        [
            "short sleep returned",
            "sleep(0) returned",
            "thread::sleep returned",
            "usleep returned"
        ]
    );
}

#[test]
fn a_cancelled_hooked_call_fails_with_ecanceled_and_later_ones_fail_fast() {
    let _w = watchdog(20);
    let seen: Log = Rc::default();
    let s = seen.clone();
    evco::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let victim = evco::spawn(move || {
            // Suspended here when cancelled: the call returns instead of unwinding through
            // std's libc call.
            let e = conn.read(&mut [0u8; 1]).unwrap_err();
            note(
                &s,
                format!("read: {:?}", e.raw_os_error() == Some(libc::ECANCELED)),
            );
            // Retrying loops end: read_exact retries EINTR, and thread::sleep resumes from the
            // time left in `rem`; both would spin if the hooks said EINTR.
            std::thread::sleep(Duration::from_secs(60));
            let e = conn.read_exact(&mut [0u8; 1]).unwrap_err();
            note(
                &s,
                format!(
                    "read_exact: {:?}",
                    e.raw_os_error() == Some(libc::ECANCELED)
                ),
            );
        });
        evco::yield_now().unwrap();
        victim.cancel().unwrap();
        assert!(
            victim
                .join()
                .unwrap_err()
                .downcast_ref::<Cancelled>()
                .is_some()
        );
    });
    assert_eq!(*seen.borrow(), ["read: true", "read_exact: true"]);
}

#[test]
fn a_socket_the_program_made_nonblocking_still_reports_wouldblock() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_nonblocking(true).unwrap();
        let e = conn.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        listener.set_nonblocking(true).unwrap();
        assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
        // Back to blocking: cooperative again.
        conn.set_nonblocking(false).unwrap();
        let reader = evco::spawn(move || {
            let mut b = [0u8; 2];
            conn.read_exact(&mut b).unwrap();
            b
        });
        evco::yield_now().unwrap();
        (&client).write_all(b"ok").unwrap();
        assert_eq!(&reader.join().unwrap(), b"ok");
    });
}

#[test]
fn so_rcvtimeo_bounds_a_cooperative_read_and_others_run_meanwhile() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let lo = l.clone();
        let other = evco::spawn(move || note(&lo, "other ran"));
        let e = conn.read(&mut [0u8; 8]).unwrap_err();
        note(&l, format!("read: {:?}", e.kind()));
        other.join().unwrap();
    });
    // A blocking socket's SO_RCVTIMEO expiry is EAGAIN, which std reports as WouldBlock.
    assert_eq!(*log.borrow(), ["other ran", "read: WouldBlock"]);
}

/// `read` of 0 bytes on a socket is the kernel's answer at once, 0, even on a drained socket in
/// a coroutine (a `recv` of 0 bytes waits for data; a `read` does not).
#[test]
fn a_hooked_read_of_zero_bytes_returns_zero_at_once_on_a_drained_socket() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        // The bound of the waiting it must not do: a cooperative wait would end in EAGAIN.
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.write_all(b"abc").unwrap();
        let mut buf = [0u8; 16];
        // A short read: the socket is drained until the next edge.
        assert_eq!(conn.read(&mut buf).unwrap(), 3);
        // SAFETY: a valid buffer and a count of 0 on an fd this test owns.
        let n = unsafe { libc::read(conn.as_raw_fd(), buf.as_mut_ptr().cast(), 0) };
        assert_eq!(n, 0, "errno {}", std::io::Error::last_os_error());
    });
}

#[test]
fn udp_recv_from_waits_cooperatively_for_a_datagram() {
    let _w = watchdog(20);
    evco::run(|| {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = rx.local_addr().unwrap();
        let receiver = evco::spawn(move || {
            let mut buf = [0u8; 16];
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            buf[..n].to_vec()
        });
        evco::yield_now().unwrap(); // parks in recv_from
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"datagram", addr).unwrap();
        assert_eq!(receiver.join().unwrap(), b"datagram");
    });
}

/// Runs `receive(fd)` in a coroutine on the accepted end of a loopback TCP connection while
/// the other end sends `parts` one at a time, each taken by the waiting receiver before the
/// next goes (so a receive that returned with what it had would return short); returns what
/// `receive` returned.
fn waitall_receiver<T: 'static>(
    parts: &'static [&'static [u8]],
    receive: impl FnOnce(i32) -> T + 'static,
) -> T {
    evco::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let fd = conn.as_raw_fd();
        // `conn` goes back with the result: the fd stays open for `until_taken`.
        let reader = evco::spawn(move || (receive(fd), conn));
        for part in parts {
            client.write_all(part).unwrap();
            until_taken(client.as_raw_fd(), fd, &reader);
        }
        reader.join().unwrap().0
    })
}

#[test]
fn recv_with_msg_waitall_waits_for_every_byte() {
    let _w = watchdog(20);
    let (n, buf) = waitall_receiver(&[b"one", b"two", b"six"], |fd| {
        let mut buf = [0u8; 9];
        // SAFETY: `buf` is 9 writable bytes; the caller keeps the fd open.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), 9, libc::MSG_WAITALL) };
        (n, buf)
    });
    assert_eq!(n, 9);
    assert_eq!(&buf, b"onetwosix");
}

#[test]
fn closing_an_fd_wakes_a_coroutine_blocked_on_it_with_ebadf() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = listener.accept().unwrap().0.into_raw_fd();
        let reader = evco::spawn(move || {
            let mut b = [0u8; 1];
            // SAFETY: `b` is one writable byte.
            let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
            (n, std::io::Error::last_os_error().raw_os_error())
        });
        evco::yield_now().unwrap(); // parks in read
        // SAFETY: `fd` is ours (into_raw_fd above); C code closing a socket another part of
        // the program still reads is exactly what this guards against.
        assert_eq!(unsafe { libc::close(fd) }, 0);
        assert_eq!(reader.join().unwrap(), (-1, Some(libc::EBADF)));
    });
}

#[test]
fn a_coroutine_cancelled_in_a_hooked_read_ends_and_leaves_no_event() {
    let _w = watchdog(20);
    evco::run(|| {
        let base = evco::scheduler::base().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let before = base.added_events();
        let dropped = Rc::new(std::cell::Cell::new(false));
        let d = dropped.clone();
        let reader = evco::spawn(move || {
            let _flag = DropFlag(d);
            conn.read(&mut [0u8; 1]).map(drop)
        });
        evco::yield_now().unwrap();
        assert!(base.added_events() > before, "the reader waits on an event");
        reader.cancel().unwrap();
        let p = reader.join().unwrap_err();
        assert!(p.downcast_ref::<Cancelled>().is_some());
        // The read failed (ECANCELED), the body returned and dropped its locals, the stream
        // with them, and the stream's close removed its registration (the one event a hooked
        // socket keeps).
        assert!(dropped.get());
        assert_eq!(base.added_events(), before);
    });
}

#[test]
fn outside_coroutines_and_on_other_fds_every_call_is_libcs() {
    let _w = watchdog(20);
    // Plain thread code: a blocking std round trip, unchanged.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    client.write_all(b"plain").unwrap();
    let mut b = [0u8; 5];
    conn.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"plain");
    assert!(!nonblocking_flag(conn.as_raw_fd()));
    // Pipes, files and stdio are never tracked, inside a coroutine or not.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    assert!(!evco::hook::is_tracked(fds[0]) && !evco::hook::is_tracked(0));
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert!(!evco::hook::is_tracked(file.as_raw_fd()));
    let read_in_coroutine = evco::run(move || {
        // SAFETY: writes 3 bytes from a static buffer to the pipe we own.
        assert_eq!(unsafe { libc::write(fds[1], b"abc".as_ptr().cast(), 3) }, 3);
        let mut b = [0u8; 3];
        // SAFETY: reads 3 bytes into `b`.
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 3) };
        // SAFETY: both fds are ours.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        (n, b)
    });
    assert_eq!(read_in_coroutine, (3, *b"abc"));
}

#[test]
fn fcntl_and_ioctl_pass_their_argument_through_and_track_nonblocking() {
    let _w = watchdog(20);
    let s = TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = s.as_raw_fd();
    // SAFETY: fcntl/ioctl on an fd we own, with the argument each command expects.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
        assert!(nonblocking_flag(fd));
    }
    // The table saw F_SETFL: in a coroutine, an accept on the now non-blocking listener says
    // WouldBlock at once, as the program asked, instead of waiting.
    let s = evco::run(move || {
        assert_eq!(s.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
        s
    });
    // SAFETY: as above.
    unsafe {
        let dup = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
        assert!(dup >= 100, "F_DUPFD_CLOEXEC honours its minimum: {dup}");
        assert!(evco::hook::is_tracked(dup));
        assert!(libc::fcntl(dup, libc::F_GETFD) & libc::FD_CLOEXEC != 0);
        libc::close(dup);
        let off: libc::c_int = 0;
        assert_eq!(libc::ioctl(fd, libc::FIONBIO, &off), 0);
        assert!(!nonblocking_flag(fd));
    }
    // Back to blocking as far as the table knows too: an accept in a coroutine waits (and a
    // connect from another coroutine completes it).
    let addr = s.local_addr().unwrap();
    evco::run(move || {
        let acceptor = evco::spawn(move || s.accept().map(|_| ()).unwrap());
        evco::yield_now().unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        acceptor.join().unwrap();
    });
}

#[test]
fn a_blocking_connect_waits_cooperatively_and_honours_so_sndtimeo() {
    let _w = watchdog(30);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        // Nobody accepts and the queue is full: SYNs are dropped, the connect cannot finish.
        let (_listener, addr, _fillers) = common::full_backlog_listener();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let lo = l.clone();
        let other = evco::spawn(move || note(&lo, "other ran"));
        let err = s.connect(&addr.into()).unwrap_err();
        // What a blocking connect says when SO_SNDTIMEO expires.
        note(
            &l,
            format!(
                "connect: {:?}",
                err.raw_os_error().map(|e| e == libc::EINPROGRESS)
            ),
        );
        assert!(!nonblocking_flag(s.as_raw_fd()));
        other.join().unwrap();
    });
    assert_eq!(*log.borrow(), ["other ran", "connect: Some(true)"]);
}

#[test]
fn connections_accepted_on_an_inherited_listener_are_cooperative() {
    let _w = watchdog(20);
    use std::os::fd::FromRawFd;
    // SAFETY: a raw socket syscall, past the hooks, as a listener inherited from a parent
    // (socket activation) would be: evco did not see it created.
    let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    let fd = fd as i32;
    assert!(!evco::hook::is_tracked(fd));
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let sock = socket2::SockRef::from(&listener);
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    evco::run(move || {
        let mut client = TcpStream::connect(addr).unwrap();
        // The listener is untracked, so this accept is libc's: the connection is queued.
        let (mut conn, _) = listener.accept().unwrap();
        assert!(evco::hook::is_tracked(conn.as_raw_fd()));
        let reader = evco::spawn(move || {
            let mut b = [0u8; 3];
            conn.read_exact(&mut b).unwrap(); // cooperative: the writer runs meanwhile
            b
        });
        evco::yield_now().unwrap();
        client.write_all(b"hey").unwrap();
        assert_eq!(&reader.join().unwrap(), b"hey");
    });
}

#[test]
fn poll_on_hooked_sockets_waits_cooperatively_and_reports_the_ready_one() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c1 = TcpStream::connect(addr).unwrap();
        let (s1, _) = listener.accept().unwrap();
        let mut c2 = TcpStream::connect(addr).unwrap();
        let (s2, _) = listener.accept().unwrap();
        let (f1, f2) = (s1.as_raw_fd(), s2.as_raw_fd());
        // One fd: waits until the other coroutine writes.
        let one = evco::spawn(move || {
            let mut p = [libc::pollfd {
                fd: f1,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(p.as_mut_ptr(), 1, -1) };
            (n, p[0].revents & libc::POLLIN != 0)
        });
        evco::yield_now().unwrap();
        c1.write_all(b"1").unwrap();
        assert_eq!(one.join().unwrap(), (1, true));
        (&s1).read_exact(&mut [0u8; 1]).unwrap();
        // Several fds (one negative, ignored): only the second becomes ready.
        let many = evco::spawn(move || {
            let mut p = [
                libc::pollfd {
                    fd: -1,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: f2,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: f1,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three valid pollfds.
            let n = unsafe { libc::poll(p.as_mut_ptr(), 3, 10_000) };
            (n, p.map(|p| p.revents & libc::POLLIN != 0))
        });
        evco::yield_now().unwrap();
        c2.write_all(b"2").unwrap();
        assert_eq!(many.join().unwrap(), (1, [false, true, false]));
        // A timeout: 0 after it, others ran meanwhile.
        let log: Log = Rc::default();
        let l = log.clone();
        let other = evco::spawn(move || note(&l, "other ran"));
        let mut p = [libc::pollfd {
            fd: f1,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(p.as_mut_ptr(), 1, 20) }, 0);
        other.join().unwrap();
        assert_eq!(*log.borrow(), ["other ran"]);
        drop((s1, s2));
    });
}

#[test]
fn std_connect_timeout_in_a_coroutine_lets_the_others_run() {
    let _w = watchdog(30);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        // std's connect_timeout: a non-blocking connect, then poll with the timeout.
        let (_listener, addr, _fillers) = common::full_backlog_listener();
        let lo = l.clone();
        let other = evco::spawn(move || note(&lo, "other ran"));
        let e = TcpStream::connect_timeout(&addr, Duration::from_millis(50)).unwrap_err();
        note(&l, format!("connect_timeout: {:?}", e.kind()));
        other.join().unwrap();
    });
    assert_eq!(*log.borrow(), ["other ran", "connect_timeout: TimedOut"]);
}

#[test]
fn a_socket_replaced_on_another_thread_is_not_left_deaf_by_its_old_registration() {
    let _w = watchdog(30);
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixStream;
    evco::run(|| {
        let (a, _a_peer) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        // A wait in a coroutine registers `a` with this thread's scheduler (under epoll).
        assert_eq!(
            (&a).read(&mut [0u8; 1]).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        // Another thread takes the fd number over for a new socket; this scheduler sees none
        // of it (std's sockets are Send).
        let (b, mut b_peer) = std::thread::spawn(move || {
            let fd = a.into_raw_fd();
            let (x, y) = UnixStream::pair().unwrap();
            // SAFETY: both fds are open and owned here; `fd` now names x's socket.
            assert_eq!(unsafe { libc::dup2(x.as_raw_fd(), fd) }, fd);
            drop(x);
            // SAFETY: `fd` is open and owned by nothing else.
            (unsafe { UnixStream::from_raw_fd(fd) }, y)
        })
        .join()
        .unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let reader = evco::spawn(move || {
            let mut got = [0u8; 2];
            (&b).read_exact(&mut got).map(|()| got)
        });
        evco::yield_now().unwrap();
        b_peer.write_all(b"ok").unwrap();
        // With the old registration reused, epoll would never report this socket: TimedOut.
        assert_eq!(&reader.join().unwrap().unwrap(), b"ok");
    });
}

/// A connection accepted in a coroutine keeps the listener's `SO_RCVTIMEO`, as the kernel
/// copies it: a silent peer ends the read with `WouldBlock` instead of parking the coroutine
/// for good (the watchdog's failure).
#[test]
fn an_accepted_connection_keeps_the_listeners_receive_timeout() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        set_socket_option(listener.as_raw_fd(), libc::SO_RCVTIMEO, &tv);
        // Connected before the accept, which then finds it queued (the 20 ms would bound an
        // accept that had to wait, too).
        let _silent = TcpStream::connect(addr).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let e = conn.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
    });
}

/// `O_NONBLOCK` belongs to the file description a `try_clone` shares: a cooperative accept on
/// the blocking original must not clear it under the clone the program made non-blocking.
#[test]
fn a_cooperative_accept_leaves_a_clones_nonblocking_mode_alone() {
    let _w = watchdog(20);
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clone = listener.try_clone().unwrap();
        clone.set_nonblocking(true).unwrap();
        let client = evco::spawn(move || TcpStream::connect(addr).unwrap());
        let _ = client.join().unwrap();
        // The original's table entry still says blocking, so this accept is the hooks' own.
        let _conn = listener.accept().unwrap();
        assert!(
            nonblocking_flag(clone.as_raw_fd()),
            "the clone's mode was changed"
        );
        assert_eq!(
            clone.accept().unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "the clone still says WouldBlock"
        );
    });
}

/// Calls that never block in the kernel stay libc's inside coroutines: an error-queue read
/// with nothing queued says `EAGAIN` at once (no readiness edge would ever end a wait for it),
/// and `readv` with a negative count says `EINVAL`.
#[test]
fn error_queue_reads_and_bad_iovec_counts_are_libcs_answers_in_coroutines() {
    let _w = watchdog(20);
    evco::run(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = sock.as_raw_fd();
        let mut buf = [0u8; 16];
        // SAFETY: a valid buffer of the length given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_ERRQUEUE) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one valid iovec; the count is the invalid input under test.
        let n = unsafe { libc::readv(fd, &iov, -1) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
    });
}

/// Waits (letting the loop poll) until everything `sender` sent has reached `receiver` (its
/// send queue is empty: acknowledged, for TCP) and `receiver`'s receive queue is empty too: a
/// reader blocked in a `MSG_WAITALL` receive on it has taken what was sent so far and waits for
/// the rest. Returns early when `reader` has finished (a receive that returned short ends it
/// too soon).
fn until_taken<T>(sender: i32, receiver: i32, reader: &evco::JoinHandle<T>) {
    let queued = |fd: i32, request| {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) and FIONREAD write one int.
        let rc = unsafe { libc::ioctl(fd, request, &mut n) };
        assert_eq!(rc, 0, "ioctl: {}", std::io::Error::last_os_error());
        n
    };
    while !reader.is_finished() {
        if queued(sender, libc::TIOCOUTQ) == 0 && queued(receiver, libc::FIONREAD) == 0 {
            return;
        }
        evco::time::sleep(Duration::from_millis(1));
    }
}

/// One `recvmsg` into `buf` with room for ancillary data: the bytes it received and how many
/// descriptors came with them (closed here).
fn recvmsg_counting_fds(fd: i32, buf: &mut [u8], flags: libc::c_int) -> (usize, usize) {
    // u64s: aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes `buf` and `control`, both alive and writable.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    assert_eq!(
        msg.msg_flags & libc::MSG_CTRUNC,
        0,
        "ancillary data was cut"
    );
    let mut fds = 0;
    // SAFETY: walking the control messages the kernel wrote into `control`; each SCM_RIGHTS
    // payload is an array of fds now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c) as *const libc::c_int;
                for k in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    libc::close(*data.add(k));
                    fds += 1;
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    (n as usize, fds)
}

/// `sendmsg(fd)` of the bytes `iov` points at, with a descriptor of /dev/null as ancillary
/// data.
fn sendmsg_with_fd(fd: i32, iov: &mut [libc::iovec]) -> isize {
    let passed = std::fs::File::open("/dev/null").unwrap();
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as _;
    // SAFETY: `control` has room for one cmsghdr carrying one int (CMSG_SPACE above); `msg`
    // points at the caller's iovecs and at `control`, all alive.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        *(libc::CMSG_DATA(c) as *mut libc::c_int) = passed.as_raw_fd();
        libc::sendmsg(fd, &msg, 0)
    }
}

/// A `MSG_WAITALL` `recvmsg` with room for ancillary data loses no descriptor that arrives
/// after its first bytes: it returns what it has before such data (as the kernel's stops at
/// data that carries descriptors), and the next receive gets the descriptor with its bytes.
#[test]
fn a_waitall_recvmsg_taking_descriptors_loses_none() {
    let _w = watchdog(20);
    evco::run(|| {
        let (a, z) = std::os::unix::net::UnixStream::pair().unwrap();
        let zfd = z.as_raw_fd();
        let reader = evco::spawn(move || {
            let mut buf = [0u8; 6];
            let (first, mut fds) = recvmsg_counting_fds(zfd, &mut buf, libc::MSG_WAITALL);
            let mut got = buf[..first].to_vec();
            while got.len() < 6 {
                let (n, passed) = recvmsg_counting_fds(zfd, &mut buf, 0);
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
                fds += passed;
            }
            (got, fds, z)
        });
        let mut writer = &a;
        writer.write_all(b"abc").unwrap();
        until_taken(a.as_raw_fd(), zfd, &reader);
        let mut iov = [libc::iovec {
            iov_base: b"def".as_ptr() as *mut libc::c_void,
            iov_len: 3,
        }];
        assert_eq!(sendmsg_with_fd(a.as_raw_fd(), &mut iov), 3);
        let (got, fds, _z) = reader.join().unwrap();
        assert_eq!(&got, b"abcdef");
        assert_eq!(fds, 1, "the descriptor was lost");
    });
}

/// The byte at offset `i` of the streams the vectored tests send.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A blocking `writev` or `sendmsg` on a stream queues every byte before it returns (the kernel
/// blocks until then), so programs that call it once, without a loop, lose nothing: the hooked
/// calls go on through as many transfers as the socket buffer needs, the ancillary data of a
/// `sendmsg` going with the first only.
#[test]
fn writev_and_sendmsg_on_a_blocking_stream_queue_every_byte() {
    let _w = watchdog(30);
    // Three iovecs of odd lengths, many times a 64 KiB send buffer, for each call.
    const PARTS: [usize; 3] = [300_001, 7, 700_003];
    const TOTAL: usize = 300_001 + 7 + 700_003;
    evco::run(|| {
        let (a, z) = std::os::unix::net::UnixStream::pair().unwrap();
        set_socket_option(a.as_raw_fd(), libc::SO_SNDBUF, &(64 * 1024 as libc::c_int));
        // Reads to the end with recvmsg, counting the descriptors that arrive (and closing them).
        let reader = evco::spawn(move || {
            let mut got = Vec::with_capacity(2 * TOTAL);
            let mut fds = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let (n, passed) = recvmsg_counting_fds(z.as_raw_fd(), &mut buf, 0);
                fds += passed;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            (got, fds)
        });
        let data: Vec<u8> = (0..2 * TOTAL).map(pattern).collect();
        let iovecs = |base: usize| {
            let mut off = base;
            PARTS.map(|len| {
                let v = libc::iovec {
                    iov_base: data[off..].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                off += len;
                v
            })
        };
        let fd = a.as_raw_fd();
        let first = iovecs(0);
        // SAFETY: three iovecs over `data`, which outlives the call.
        let n = unsafe { libc::writev(fd, first.as_ptr(), 3) };
        assert_eq!(n, TOTAL as isize, "writev returned early");
        let mut second = iovecs(TOTAL);
        let n = sendmsg_with_fd(fd, &mut second);
        assert_eq!(n, TOTAL as isize, "sendmsg returned early");
        drop(a);
        let (got, fds) = reader.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the stream arrived altered");
        assert_eq!(fds, 1, "the descriptor was not passed exactly once");
    });
}

/// `MSG_WAITALL` makes a blocking stream receive wait for every byte it asked for, whichever
/// call carries it: `recvfrom` and `recvmsg` (into two iovecs) as well as `recv`.
#[test]
fn recvfrom_and_recvmsg_with_msg_waitall_wait_for_every_byte() {
    let _w = watchdog(20);
    let parts: &[&[u8]] = &[b"one", b"two", b"six", b"ten", b"red", b"sky"];
    let (n1, first, n2, head, tail) = waitall_receiver(parts, |fd| {
        let mut first = [0u8; 9];
        // SAFETY: `first` is 9 writable bytes; the caller keeps the fd open.
        let n1 = unsafe {
            libc::recvfrom(
                fd,
                first.as_mut_ptr().cast(),
                9,
                libc::MSG_WAITALL,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let (mut head, mut tail) = ([0u8; 4], [0u8; 5]);
        let mut iov = [
            libc::iovec {
                iov_base: head.as_mut_ptr().cast(),
                iov_len: 4,
            },
            libc::iovec {
                iov_base: tail.as_mut_ptr().cast(),
                iov_len: 5,
            },
        ];
        // SAFETY: msghdr is plain data; all-zero is an empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = 2;
        // SAFETY: `msg` points at two iovecs over `head` and `tail`.
        let n2 = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_WAITALL) };
        (n1, first, n2, head, tail)
    });
    assert_eq!((n1, &first), (9, b"onetwosix"));
    assert_eq!((n2, &head, &tail), (9, b"tenr", b"edsky"));
}

/// `clock_nanosleep` in a coroutine on a clock it cannot sleep on (an unknown id, the calling
/// thread's CPU-time clock) returns libc's error, as outside coroutines. Before, the hook slept
/// cooperatively and returned 0.
#[test]
fn clock_nanosleep_on_a_clock_it_cannot_sleep_on_is_libcs_error_in_a_coroutine() {
    let _w = watchdog(20);
    let sleep_on = |clock: libc::clockid_t| {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { libc::clock_nanosleep(clock, 0, &ts, std::ptr::null_mut()) }
    };
    let outside = (sleep_on(12_345), sleep_on(libc::CLOCK_THREAD_CPUTIME_ID));
    assert_eq!(outside, (libc::EINVAL, libc::EINVAL), "libc's own answers");
    let inside = evco::run(move || {
        let h = evco::spawn(move || (sleep_on(12_345), sleep_on(libc::CLOCK_THREAD_CPUTIME_ID)));
        h.join().unwrap()
    });
    assert_eq!(inside, outside);
    // A clock it can sleep on still sleeps cooperatively (and returns 0).
    assert_eq!(
        evco::run(move || evco::spawn(move || sleep_on(libc::CLOCK_MONOTONIC))
            .join()
            .unwrap()),
        0
    );
}

/// Signals the thread that starts it with SIGUSR1, handled by `handler` (with `SA_RESTART`:
/// interrupted system calls resume), every ~50 us from another thread, until dropped. For
/// child processes: the handler stays installed.
struct SignalStorm {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    signaller: Option<std::thread::JoinHandle<()>>,
}

impl SignalStorm {
    fn start(handler: extern "C" fn(libc::c_int)) -> SignalStorm {
        use std::sync::atomic::{AtomicBool, Ordering};
        // SAFETY: installs a handler for SIGUSR1 in this (child) process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let signaller = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // SAFETY: signals a thread of this process, which joins this one (in `drop`)
                // before it can end.
                unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        SignalStorm {
            stop,
            signaller: Some(signaller),
        }
    }
}

impl Drop for SignalStorm {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.signaller.take() {
            t.join().unwrap();
        }
    }
}

/// A signal handler that calls hooked sleeps (`usleep`, `nanosleep`, `sleep(0)`: all
/// async-signal-safe in POSIX) while the thread runs coroutines does not switch coroutines out
/// of a context that is not one. Another thread signals the scheduler's thread every ~50 us
/// (5,000 signals, or 2 s) while 32 coroutines yield and sleep. Before, the process aborted within
/// milliseconds ("yield from none generator context") or died of SIGSEGV: a handler that
/// interrupted the scheduler's own code, or the middle of a switch, was taken for coroutine
/// code (run in a child).
#[test]
fn hooked_sleeps_in_a_signal_handler_never_switch_out_of_a_non_coroutine_context() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let Some(_w) = common::in_child(
        "hooked_sleeps_in_a_signal_handler_never_switch_out_of_a_non_coroutine_context",
        20,
    ) else {
        return;
    };
    static HANDLED: AtomicU64 = AtomicU64::new(0);
    extern "C" fn on_usr1(_: libc::c_int) {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000,
        };
        // SAFETY: async-signal-safe sleeps with valid arguments.
        unsafe {
            libc::usleep(1);
            libc::nanosleep(&ts, std::ptr::null_mut());
            libc::sleep(0);
        }
        HANDLED.fetch_add(1, Ordering::Relaxed);
    }
    let storm = SignalStorm::start(on_usr1);
    let rounds = evco::run(|| {
        let start = std::time::Instant::now();
        let hs: Vec<_> = (0..32)
            .map(|i| {
                evco::spawn(move || {
                    let mut n = 0u64;
                    // Bounded by the signals handled (a loaded machine takes longer), and 2 s.
                    while HANDLED.load(Ordering::Relaxed) < 5_000
                        && start.elapsed() < Duration::from_secs(2)
                    {
                        if i % 2 == 0 {
                            evco::yield_now().unwrap();
                        } else {
                            evco::time::sleep(Duration::from_micros(50));
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    drop(storm);
    let handled = HANDLED.load(Ordering::Relaxed);
    println!("rounds {rounds}, signals handled {handled}");
    assert!(handled > 100, "only {handled} signals handled");
    println!("child-finished");
}

/// A listening socket the process inherited (made here with raw system calls, past the hooks,
/// as socket activation or a parent would hand it over) is adopted by its first `accept` in a
/// coroutine: the accept suspends the coroutine, and the one that connects runs. Before, the
/// accept blocked the thread and the connecting coroutine never ran (the child's watchdog
/// ended it).
#[test]
fn accept_on_an_inherited_listener_suspends_the_coroutine_not_the_thread() {
    use std::os::fd::FromRawFd;
    let Some(_w) = common::in_child(
        "accept_on_an_inherited_listener_suspends_the_coroutine_not_the_thread",
        10,
    ) else {
        return;
    };
    // SAFETY: raw socket, bind and listen system calls on a fresh fd and a local sockaddr_in.
    let fd = unsafe {
        let fd = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) as i32;
        assert!(fd >= 0);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::syscall(libc::SYS_bind, fd, &sin as *const _, len), 0);
        assert_eq!(libc::syscall(libc::SYS_listen, fd, 16), 0);
        fd
    };
    assert!(!evco::hook::is_tracked(fd), "the hooks did not see it made");
    // SAFETY: `fd` is an open listening socket owned by nothing else.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let addr = listener.local_addr().unwrap();
    evco::run(move || {
        let acceptor = evco::spawn(move || {
            let accepted = listener.accept().map(|(s, _)| s.peer_addr().is_ok());
            assert!(evco::hook::is_tracked(fd), "adopted");
            accepted
        });
        evco::yield_now().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        assert!(acceptor.join().unwrap().unwrap());
        drop(client);
    });
    println!("child-finished");
}

/// `close` (and `dup`) called from a signal handler, as POSIX allows, ends the waits on the
/// closed socket with `EBADF` wherever the handler interrupted the thread: the scheduler, a
/// switch, one of evco's waits or a coroutine's own code. Another thread signals the
/// scheduler's thread every ~50 us (2,000 closes, or 2 s); its handler closes a socket that a coroutine waits
/// to read (16 such coroutines, each making a new pair once its wait ended), while 16 others
/// ping-pong over socket pairs. Every wait must end with `EBADF`, and the run must end. Before,
/// a handler that interrupted evco's own code ended the waits itself: it met the scheduler's
/// queue or the reactor's states borrowed (the process aborted) or skipped them (the wait never
/// ended) (run in a child).
#[test]
fn close_in_a_signal_handler_ends_the_waits_on_the_socket_wherever_it_interrupted() {
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
    let Some(_w) = common::in_child(
        "close_in_a_signal_handler_ends_the_waits_on_the_socket_wherever_it_interrupted",
        30,
    ) else {
        return;
    };
    const VICTIMS: usize = 16;
    static SLOTS: [AtomicI32; VICTIMS] = [const { AtomicI32::new(-1) }; VICTIMS];
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static CLOSED: AtomicU64 = AtomicU64::new(0);
    extern "C" fn on_usr1(_: libc::c_int) {
        let i = NEXT.fetch_add(1, Ordering::Relaxed) as usize % VICTIMS;
        let fd = SLOTS[i].swap(-1, Ordering::AcqRel);
        // SAFETY: async-signal-safe calls; `fd` was published by a coroutine that owns it and
        // never closes it itself once published (it takes it back with a swap first).
        unsafe {
            if fd >= 0 {
                libc::close(fd);
                CLOSED.fetch_add(1, Ordering::Relaxed);
            }
            let d = libc::dup(2);
            if d >= 0 {
                libc::close(d);
            }
        }
    }
    let storm = SignalStorm::start(on_usr1);
    let (ended, other, pongs) = evco::run(|| {
        let start = std::time::Instant::now();
        let busy = move || {
            CLOSED.load(Ordering::Relaxed) < 2_000 && start.elapsed() < Duration::from_secs(2)
        };
        let victims: Vec<_> = (0..VICTIMS)
            .map(|i| {
                evco::spawn(move || {
                    let (mut ended, mut other) = (0u64, Vec::new());
                    while busy() {
                        let (mut a, _b) = UnixStream::pair().unwrap();
                        SLOTS[i].store(a.as_raw_fd(), Ordering::Release);
                        let r = a.read(&mut [0u8; 8]);
                        // Still published: the handler has not closed it (the read can only
                        // fail as below then, never succeed: nothing writes to `_b`).
                        let mine = SLOTS[i].swap(-1, Ordering::AcqRel) >= 0;
                        match r {
                            Err(e) if e.raw_os_error() == Some(libc::EBADF) && !mine => ended += 1,
                            r => other.push(format!("{r:?} (closed by the handler: {})", !mine)),
                        }
                        if mine {
                            drop(a);
                        } else {
                            // The handler closed it: its number may be another fd's now.
                            let _ = a.into_raw_fd();
                        }
                    }
                    (ended, other)
                })
            })
            .collect();
        let pingers: Vec<_> = (0..16)
            .map(|_| {
                evco::spawn(move || {
                    let (mut a, mut b) = UnixStream::pair().unwrap();
                    let echo = evco::spawn(move || {
                        let mut buf = [0u8; 1];
                        while b.read(&mut buf).unwrap() == 1 {
                            b.write_all(&buf).unwrap();
                        }
                    });
                    let mut n = 0u64;
                    while busy() {
                        a.write_all(b"x").unwrap();
                        a.read_exact(&mut [0u8; 1]).unwrap();
                        n += 1;
                    }
                    drop(a);
                    echo.join().unwrap();
                    n
                })
            })
            .collect();
        let pongs: u64 = pingers.into_iter().map(|h| h.join().unwrap()).sum();
        // Waits the handler did not reach before the end: ended by a close here.
        for s in &SLOTS {
            let fd = s.swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                // SAFETY: a published fd, taken back from the slot: nothing else closes it.
                unsafe { libc::close(fd) };
            }
        }
        let (mut ended, mut other) = (0, Vec::new());
        for h in victims {
            let (e, o) = h.join().unwrap();
            ended += e;
            other.extend(o);
        }
        (ended, other, pongs)
    });
    drop(storm);
    let closed = CLOSED.load(Ordering::Relaxed);
    println!("waits ended by the handler's close: {ended}, closes {closed}, pongs {pongs}");
    assert!(other.is_empty(), "waits that ended otherwise: {other:?}");
    assert!(closed > 100, "only {closed} closes in the handler");
    println!("child-finished");
}

/// As `urgent_data_does_not_stall_the_reader_at_the_mark` in tests/tcp.rs, for a hooked std
/// `TcpStream` in a coroutine: before, its read at the mark left it waiting for its 5 s read
/// timeout.
#[test]
fn urgent_data_does_not_stall_a_hooked_std_reader_at_the_mark() {
    let _w = watchdog(20);
    let peer = common::UrgentPeer::start();
    let addr = peer.addr;
    let got = evco::run(move || {
        evco::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            peer.read_past_the_mark(&s, |s, t| s.set_read_timeout(Some(t)).unwrap())
        })
        .join()
        .unwrap()
    });
    assert_eq!(got.unwrap(), b"aaaacccc");
}

/// A read of a pipe made in the process suspends only its coroutine: the writer, another
/// coroutine on the same thread, runs and the read returns its bytes. Two readers of one pipe
/// each wait: the one that finds the pipe empty after the other took the data waits again
/// (instead of blocking the thread in libc's read), and gets EOF when the writer closes. Before,
/// the first read blocked the thread, and the writer never ran (the watchdog ended it).
#[test]
fn a_pipe_read_suspends_only_its_coroutine_and_two_readers_share_a_pipe() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _w = watchdog(20);
    let (got, order) = evco::run(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(evco::hook::is_piped(fds[0]), "the hook recorded the pipe");
        // SAFETY: two fresh fds this coroutine owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let r = Rc::new(r);
        let log: Log = Rc::default();
        let readers: Vec<_> = (0..2)
            .map(|i| {
                let (r, log) = (r.clone(), log.clone());
                evco::spawn(move || {
                    note(&log, format!("reader {i} waits"));
                    let mut b = [0u8; 8];
                    // SAFETY: reads into a live buffer from an open pipe.
                    let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
                    note(&log, format!("reader {i} read {n}"));
                    n
                })
            })
            .collect();
        let writer = evco::spawn(move || {
            evco::yield_now().unwrap();
            // SAFETY: writes 2 bytes from a live buffer to an open pipe.
            assert_eq!(
                unsafe { libc::write(w.as_raw_fd(), b"hi".as_ptr().cast(), 2) },
                2
            );
            evco::yield_now().unwrap();
            evco::yield_now().unwrap();
            drop(w);
        });
        writer.join().unwrap();
        let mut got: Vec<isize> = readers.into_iter().map(|h| h.join().unwrap()).collect();
        got.sort();
        (got, log.borrow().clone())
    });
    assert_eq!(
        got,
        vec![0, 2],
        "one reader got the bytes, the other EOF: {order:?}"
    );
}

/// `O_NONBLOCK` set through a duplicate of a pipe end (it belongs to the shared open file
/// description) makes a read of the original in a coroutine fail with `EAGAIN`, as the
/// kernel's does, and cleared again through the duplicate makes it wait cooperatively; a
/// zero-length `readv` of an empty pipe returns 0 at once. Before (found in review), the hooks
/// trusted the original fd's own bit: the first read waited forever, and a zero-length readv
/// waited for data.
#[test]
fn a_pipes_nonblocking_flag_set_through_a_dup_and_a_zero_length_readv_are_the_kernels() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _w = watchdog(20);
    evco::run(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: two fresh fds this coroutine owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let read_one = move |fd: i32| {
            let mut b = [0u8; 1];
            // SAFETY: reads into a live buffer from an open fd.
            let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
            (n, std::io::Error::last_os_error().raw_os_error())
        };
        // SAFETY: an iovec of no bytes; readv reads no memory through it.
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: one valid iovec.
        assert_eq!(
            unsafe { libc::readv(r.as_raw_fd(), &iov, 1) },
            0,
            "zero-length readv"
        );
        // SAFETY: dup of an open fd.
        let d = unsafe { OwnedFd::from_raw_fd(libc::dup(r.as_raw_fd())) };
        // SAFETY: F_SETFL on an open fd.
        assert_eq!(
            unsafe { libc::fcntl(d.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) },
            0
        );
        assert_eq!(read_one(r.as_raw_fd()), (-1, Some(libc::EAGAIN)));
        // SAFETY: F_SETFL on an open fd.
        assert_eq!(unsafe { libc::fcntl(d.as_raw_fd(), libc::F_SETFL, 0) }, 0);
        let rfd = r.as_raw_fd();
        let reader = evco::spawn(move || read_one(rfd));
        evco::yield_now().unwrap();
        assert!(!reader.is_finished(), "the read waits, cooperatively");
        // SAFETY: writes 1 byte from a live buffer to an open pipe.
        assert_eq!(
            unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) },
            1
        );
        assert_eq!(reader.join().unwrap().0, 1);
        drop((r, w, d));
    });
}

/// `poll` over an eventfd and a socket, `select` over a pipe, and `epoll_wait` on an epoll fd
/// over a pipe, each in a coroutine, suspend only that coroutine: a second coroutine, spawned
/// after the waiters and run only once they suspended, makes them ready. Before, `poll` was
/// cooperative only over sockets the process made, and `select`/`epoll_wait` not at all: the
/// first waiter blocked the thread and the watchdog ended the test.
#[test]
fn poll_select_and_epoll_wait_over_any_fds_suspend_only_their_coroutine() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _w = watchdog(20);
    evco::run(|| {
        let own = |fd: i32| {
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: a fresh fd owned by nothing else.
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        // SAFETY: eventfd and epoll_create1 have no memory preconditions.
        let efd = own(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) });
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p1 = [0; 2];
        let mut p2 = [0; 2];
        // SAFETY: pipe writes two fds.
        assert_eq!(
            unsafe { libc::pipe(p1.as_mut_ptr()) + libc::pipe(p2.as_mut_ptr()) },
            0
        );
        let (r1, w1, r2, w2) = (own(p1[0]), own(p1[1]), own(p2[0]), own(p2[1]));
        // SAFETY: epoll_create1 has no memory preconditions.
        let ep = own(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) });
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 7,
        };
        // SAFETY: a valid epoll_event on open fds.
        assert_eq!(
            unsafe {
                libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, r2.as_raw_fd(), &mut ev)
            },
            0
        );
        let (e, s) = (efd.as_raw_fd(), sock.as_raw_fd());
        let poller = evco::spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: e,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: s,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 10_000) };
            (n, fds[0].revents & libc::POLLIN != 0)
        });
        let r1fd = r1.as_raw_fd();
        let selector = evco::spawn(move || {
            // SAFETY: an fd_set filled by FD_ZERO/FD_SET for an fd below FD_SETSIZE.
            unsafe {
                let mut set: libc::fd_set = std::mem::zeroed();
                libc::FD_ZERO(&mut set);
                libc::FD_SET(r1fd, &mut set);
                let n = libc::select(
                    r1fd + 1,
                    &mut set,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                (n, libc::FD_ISSET(r1fd, &set))
            }
        });
        let epfd = ep.as_raw_fd();
        let epoller = evco::spawn(move || {
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: room for 4 events.
            let n = unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), 4, 10_000) };
            (n, out[0].u64)
        });
        let (w1fd, w2fd) = (w1.as_raw_fd(), w2.as_raw_fd());
        let waker = evco::spawn(move || {
            let one = 1u64;
            // SAFETY: 8 bytes to an eventfd, 1 byte to each pipe, from live buffers.
            unsafe {
                assert_eq!(libc::write(e, (&one as *const u64).cast(), 8), 8);
                assert_eq!(libc::write(w1fd, b"x".as_ptr().cast(), 1), 1);
                assert_eq!(libc::write(w2fd, b"x".as_ptr().cast(), 1), 1);
            }
        });
        waker.join().unwrap();
        assert_eq!(poller.join().unwrap(), (1, true), "poll saw the eventfd");
        assert_eq!(selector.join().unwrap(), (1, true), "select saw the pipe");
        assert_eq!(epoller.join().unwrap(), (1, 7), "epoll_wait saw the pipe");
        drop((efd, r1, w1, r2, w2, ep));
    });
}

/// `poll` for `POLLRDNORM` alone (no `POLLIN`), over a pipe and over a socket the process
/// made, with no timeout, in a coroutine: a later coroutine's write ends each wait. Before, the
/// hook's temporary epoll instance registered such an fd for no event at all, so only a
/// hang-up or the timeout ended the wait: here, never (the watchdog ended the test).
#[test]
fn poll_for_pollrdnorm_alone_is_woken_by_data() {
    let _w = watchdog(20);
    evco::run(|| {
        let (r, w) = common::pipe();
        let (sock, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        for (what, rfd, wfd) in [
            ("pipe", r.as_raw_fd(), w.as_raw_fd()),
            ("socket", sock.as_raw_fd(), peer.as_raw_fd()),
        ] {
            let waiter = evco::spawn(move || {
                let mut fds = [libc::pollfd {
                    fd: rfd,
                    events: libc::POLLRDNORM,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
                (n, fds[0].revents)
            });
            evco::yield_now().unwrap();
            assert!(!waiter.is_finished(), "{what}: the poll waits");
            // SAFETY: writes 1 byte from a live buffer to an open fd.
            assert_eq!(unsafe { libc::write(wfd, b"x".as_ptr().cast(), 1) }, 1);
            assert_eq!(
                waiter.join().unwrap(),
                (1, libc::POLLRDNORM),
                "{what}: poll saw the data"
            );
            let mut b = [0u8; 1];
            // SAFETY: reads 1 byte into a 1-byte buffer from an open fd.
            assert_eq!(unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 1) }, 1);
        }
        drop((r, w, sock, peer));
    });
}

/// `poll` over a list that names one fd twice, for `POLLIN` and for `POLLOUT`, with no
/// timeout, in a coroutine: the pipe's write end is full, so only the second entry can become
/// ready, and it does when a later coroutine drains the pipe. Before, the hook's temporary
/// epoll instance kept only the first entry's events (the second `EPOLL_CTL_ADD` failed with
/// `EEXIST`), so writability never woke the wait: here, never (the watchdog ended the test).
#[test]
fn poll_naming_one_fd_twice_is_woken_by_either_entrys_events() {
    let _w = watchdog(20);
    evco::run(|| {
        let (r, w) = common::pipe();
        let wfd = w.as_raw_fd();
        // SAFETY: F_SETFL on an open fd.
        assert_eq!(
            unsafe { libc::fcntl(wfd, libc::F_SETFL, libc::O_NONBLOCK) },
            0
        );
        let chunk = vec![0u8; 4096];
        let mut queued = 0usize;
        loop {
            // SAFETY: writes from a live buffer of `chunk.len()` bytes to an open fd.
            let n = unsafe { libc::write(wfd, chunk.as_ptr().cast(), chunk.len()) };
            if n < 0 {
                break;
            }
            queued += n as usize;
        }
        let waiter = evco::spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: wfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wfd,
                    events: libc::POLLOUT,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            (n, fds[0].revents, fds[1].revents)
        });
        evco::yield_now().unwrap();
        assert!(!waiter.is_finished(), "the poll waits: the pipe is full");
        let mut buf = vec![0u8; 4096];
        while queued > 0 {
            // SAFETY: reads into a live buffer of `buf.len()` bytes from an open fd.
            let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n > 0, "{}", std::io::Error::last_os_error());
            queued -= n as usize;
        }
        assert_eq!(waiter.join().unwrap(), (1, 0, libc::POLLOUT));
        drop((r, w));
    });
}
