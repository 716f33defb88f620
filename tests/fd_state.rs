//! Per-fd state has one owner: a close on any thread, by any path, ends every wait on the fd
//! and leaves nothing a later fd with the same number could meet; a hook that finds an fd's
//! entry stale repairs it instead of failing the caller; the hooks never change an open file
//! description others share; the hooked `poll` leaks nothing and blocks no thread.
//!
//! Each test that names a defect in its doc failed before the reactor redesign.

// Most tests here need the hooks; their helpers are unused without them.
#![cfg_attr(
    not(all(feature = "hook", target_os = "linux")),
    allow(unused_imports, dead_code)
)]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use common::{socketpair, watchdog, write_byte};
use evco::io::{Interest, wait};

/// The tests here close fds past the hooks and put other fds at the freed numbers: run alone,
/// so that no other test's fd takes a number in between (and gets replaced).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves `fd` to the number `to` with the raw system call, past evco's hooks (as code that
/// does not go through libc would), and returns `to`.
fn raw_dup3(fd: RawFd, to: RawFd) -> RawFd {
    if fd == to {
        return to;
    }
    // SAFETY: dup3 on two fd numbers; `to` is free or ours to replace.
    let r = unsafe { libc::syscall(libc::SYS_dup3, fd, to, libc::O_CLOEXEC) };
    assert_eq!(
        r,
        to as libc::c_long,
        "dup3: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is ours, now duplicated at `to`.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    to
}

/// A pipe whose read end has the number `at` (which must be free): (read end, write end).
fn pipe_at(at: RawFd) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // The write end may have taken `at` itself (the two lowest free numbers): move it well
    // away first, past the hooks.
    // SAFETY: F_DUPFD_CLOEXEC of an open fd to a number at or above `at + 1000`.
    let w = unsafe { libc::syscall(libc::SYS_fcntl, fds[1], libc::F_DUPFD_CLOEXEC, at + 1000) };
    assert!(w >= 0, "F_DUPFD: {}", std::io::Error::last_os_error());
    // SAFETY: closes the original write end, which `w` duplicates.
    unsafe { libc::syscall(libc::SYS_close, fds[1]) };
    let r = raw_dup3(fds[0], at);
    // SAFETY: both are open pipe ends owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w as RawFd)) }
}

/// A wait on a thread's fd ends with `EBADF` when another thread closes the fd (`io::close`,
/// evco's one close path), instead of sleeping until its timeout: the closer rings the waiting
/// thread's reactor. Before, the waiter slept on (epoll forgets a closed description without a
/// word) and the test's 5 s timeout ended it.
#[test]
fn a_close_on_another_thread_ends_a_wait_here_with_ebadf() {
    let _serial = serial();
    let _w = watchdog(30);
    let (a, _b) = socketpair();
    let fd = a.into_raw_fd();
    evco::run(move || {
        let waiter =
            evco::spawn(move || wait(fd, Interest::READABLE, Some(Duration::from_secs(5))));
        evco::yield_now().unwrap();
        std::thread::spawn(move || evco::io::close(fd).unwrap())
            .join()
            .unwrap();
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(common::added_events(), 0, "nothing left registered");
    });
}

/// A socket that coroutines of thread A used (so A's reactor registered it under epoll),
/// closed on thread B through the hooked `close`: a pipe that then gets the number is waited on
/// normally on A. Before, A's stale edge registration was taken for the pipe's, epoll never
/// reported the pipe, and `io::wait` timed out after 2 s with data waiting.
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn a_pipe_reusing_a_socket_closed_on_another_thread_is_waited_on_normally() {
    let _serial = serial();
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let _w = watchdog(30);
    evco::run(|| {
        let (s, _peer) = UnixStream::pair().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        // A cooperative read that has to wait: the socket gets its registration.
        let e = (&s).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        let fd = s.as_raw_fd();
        // std's sockets are Send: another thread closes it (libc's close: the hook).
        std::thread::spawn(move || drop(s)).join().unwrap();
        let (r, w) = pipe_at(fd);
        // The data comes while the wait waits (a level check before it would hide the bug).
        let waiter = evco::spawn(move || {
            wait(
                r.as_raw_fd(),
                Interest::READABLE,
                Some(Duration::from_secs(2)),
            )
            .map(|_| r)
        });
        evco::yield_now().unwrap();
        write_byte(&w);
        let r = waiter.join().unwrap().expect("the pipe is readable");
        assert!(common::read_byte(&r));
    });
}

/// A socket closed where the hooks cannot see it (the raw system call, `close_range`,
/// `fclose(fdopen(fd))`) leaves its table entry; a file that then gets the number is written
/// in full and a pipe read, inside coroutines. Before, the stale entry sent them down the
/// socket path: `ENOTSOCK`, and a `write_all` to a log file was lost.
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn a_file_reusing_a_socket_closed_behind_the_hooks_is_written_and_read_normally() {
    let _serial = serial();
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let _w = watchdog(30);
    let dir = std::env::temp_dir().join(format!("evco-fd-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    type Closer = (&'static str, fn(RawFd));
    let closers: [Closer; 3] = [
        ("syscall(SYS_close)", |fd| {
            // SAFETY: closes an fd this test owns, past the hooks.
            assert_eq!(unsafe { libc::syscall(libc::SYS_close, fd) }, 0);
        }),
        ("close_range", |fd| {
            // SAFETY: as above, a range of one fd.
            let r = unsafe { libc::syscall(libc::SYS_close_range, fd, fd, 0) };
            assert_eq!(r, 0, "close_range: {}", std::io::Error::last_os_error());
        }),
        ("fclose(fdopen(fd))", |fd| {
            // SAFETY: wraps the fd in a stdio stream and closes both: glibc's fclose closes
            // the fd with its internal call, which no hook sees.
            unsafe {
                let f = libc::fdopen(fd, c"r+".as_ptr());
                assert!(!f.is_null(), "fdopen: {}", std::io::Error::last_os_error());
                libc::fclose(f);
            }
        }),
    ];
    for (how, close) in closers {
        let dir = dir.clone();
        evco::run(move || {
            let (s, peer) = UnixStream::pair().unwrap();
            let fd = s.into_raw_fd();
            assert!(
                evco::hook::is_tracked(fd),
                "{how}: a socket the hooks saw made"
            );
            close(fd);
            drop(peer);
            let path = dir.join(format!("log-{fd}"));
            let file = File::create(&path).unwrap();
            let at = raw_dup3(file.into_raw_fd(), fd);
            // SAFETY: `at` is the open file, owned by nothing else.
            let mut log = unsafe { File::from_raw_fd(at) };
            let line = format!("written through fd {at} after {how}\n");
            let writer = evco::spawn(move || log.write_all(line.as_bytes()).map(|()| line));
            let line = writer
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{how}: {e}"));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), line, "{how}");

            // Once more with a pipe, read in a coroutine.
            let (s, peer) = UnixStream::pair().unwrap();
            let fd = s.into_raw_fd();
            close(fd);
            drop(peer);
            let (r, w) = pipe_at(fd);
            write_byte(&w);
            let reader = evco::spawn(move || {
                let mut f = File::from(r);
                let mut b = [0u8; 1];
                f.read(&mut b).map(|n| (n, b[0]))
            });
            let got = reader
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{how}: {e}"));
            assert_eq!(got, (1, b'x'), "{how}");
        });
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A coroutine's accept on a blocking listener never makes the listener's open file
/// description non-blocking, which a `try_clone` shares with a plain thread blocking in
/// `accept` on it (that thread got `WouldBlock`). An observer thread reads the description's
/// flags throughout; before, it caught `O_NONBLOCK` set on every run.
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn a_cooperative_accept_never_makes_the_shared_listener_non_blocking() {
    let _serial = serial();
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _w = watchdog(60);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clone = listener.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicBool::new(false));
    let observer = {
        let (done, seen) = (done.clone(), seen.clone());
        let fd = clone.as_raw_fd();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                // SAFETY: F_GETFL only reads the description's status flags.
                let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                if fl != -1 && fl & libc::O_NONBLOCK != 0 {
                    seen.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let n = 300;
    evco::run(move || {
        let server = evco::spawn(move || {
            for _ in 0..n {
                // Each accept waits first: the client connects only after it is parked.
                listener.accept().unwrap();
            }
        });
        for _ in 0..n {
            evco::yield_now().unwrap();
            drop(TcpStream::connect(addr).unwrap());
        }
        server.join().unwrap();
    });
    done.store(true, Ordering::Relaxed);
    observer.join().unwrap();
    assert!(
        !seen.load(Ordering::Relaxed),
        "the listener was made non-blocking"
    );
}

/// Cancelling a coroutine blocked in a hooked `poll` over several sockets leaks nothing.
/// Before, each cancel left the temporary epoll fd open (100 cancels: 100 fds more).
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn cancelling_a_poll_over_several_sockets_leaks_no_fd() {
    let _serial = serial();
    let _w = watchdog(30);
    evco::run(|| {
        let (a, _pa) = socketpair_blocking();
        let (b, _pb) = socketpair_blocking();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let before = common::open_fds();
        for _ in 0..100 {
            let poller = evco::spawn(move || {
                let mut fds = [
                    libc::pollfd {
                        fd: fa,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: fb,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) }
            });
            evco::yield_now().unwrap();
            poller.cancel().unwrap();
        }
        // At most as many: the previous test's thread may close its scheduler's fds as it
        // exits, meanwhile; a leak would be 100 more.
        let after = common::open_fds();
        assert!(
            after <= before,
            "no epoll fd left behind: {before} fds, then {after}"
        );
    });
}

/// A hooked `poll` whose socket is closed during its wait reports `POLLNVAL` for it, as
/// libc's reports a closed fd, instead of failing with `EBADF`.
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn a_poll_whose_socket_is_closed_during_the_wait_reports_pollnval() {
    let _serial = serial();
    let _w = watchdog(30);
    evco::run(|| {
        let (a, _pa) = socketpair_blocking();
        let fd = a.into_raw_fd();
        let poller = evco::spawn(move || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, 10_000) };
            (n, p.revents, std::io::Error::last_os_error())
        });
        evco::yield_now().unwrap();
        // SAFETY: `fd` is ours (the hooked close: evco's close path).
        assert_eq!(unsafe { libc::close(fd) }, 0);
        let (n, revents, err) = poller.join().unwrap();
        assert_eq!((n, revents), (1, libc::POLLNVAL), "poll said {n} ({err})");
    });
}

/// `poll(NULL, 0, -1)` in a coroutine suspends it, not the thread: another coroutine runs,
/// and cancelling it ends the call with `ECANCELED`. Before, it blocked the thread for good
/// (the child process's watchdog aborted it).
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn poll_with_no_fds_and_no_timeout_suspends_only_its_coroutine() {
    let _serial = serial();
    let Some(_w) = common::in_child(
        "poll_with_no_fds_and_no_timeout_suspends_only_its_coroutine",
        5,
    ) else {
        return;
    };
    let outcome = std::rc::Rc::new(std::cell::Cell::new(None));
    let out = outcome.clone();
    evco::run(move || {
        let poller = evco::spawn(move || {
            // SAFETY: no fds: poll reads nothing.
            let r = unsafe { libc::poll(std::ptr::null_mut(), 0, -1) };
            out.set(Some((r, std::io::Error::last_os_error().raw_os_error())));
        });
        let other = evco::spawn(|| 7);
        assert_eq!(other.join().unwrap(), 7, "another coroutine ran");
        poller.cancel().unwrap();
        assert!(poller.is_finished());
    });
    // The cancelled call returned to its caller, which went on to its end.
    assert_eq!(outcome.get(), Some((-1, Some(libc::ECANCELED))));
    println!("child-finished");
}

/// A connected pair of blocking Unix stream sockets made through libc (so the hooks track
/// them).
#[cfg(all(feature = "hook", target_os = "linux"))]
fn socketpair_blocking() -> (OwnedFd, OwnedFd) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (a.into(), b.into())
}

/// A wait on an fd that is not a registered socket keeps its state only while it waits: after
/// it, nothing of the fd is left added to the loop (not even the reactor's doorbell).
#[test]
fn an_fd_waited_on_and_closed_leaves_no_state_for_its_number() {
    let _serial = serial();
    let _w = watchdog(30);
    evco::run(|| {
        for _ in 0..3 {
            let (a, b) = socketpair();
            let fd = a.as_raw_fd();
            let waiter = evco::spawn(move || wait(fd, Interest::READABLE, None).map(|_| a));
            evco::yield_now().unwrap();
            write_byte(&b);
            let a = waiter.join().unwrap().unwrap();
            drop(a);
            assert_eq!(common::added_events(), 0, "no event, no doorbell left");
        }
    });
}

/// A close on another thread that races the start of a wait (the closer's `forget` before the
/// waiter's state claims the fd, the real close after) still ends the wait (with `EBADF`).
/// Before (found in review), the waiter's state looked current, nobody rang its thread, and
/// epoll dropped the closed fd silently: 14-28 of ~200,000 waits slept to their timeout. A
/// stress test: 4 s of rounds, each close delayed by a random spin.
#[test]
fn a_close_racing_the_start_of_a_wait_on_another_thread_still_ends_it() {
    use std::sync::mpsc;
    use std::time::Instant;
    let _serial = serial();
    let _w = watchdog(60);
    let (to_closer, from_waiter) = mpsc::channel::<RawFd>();
    let closer = std::thread::spawn(move || {
        let mut n = 0u32;
        while let Ok(fd) = from_waiter.recv() {
            n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            for _ in 0..(n >> 16) % 400 {
                std::hint::spin_loop();
            }
            evco::io::close(fd).unwrap();
        }
    });
    let (rounds, late) = evco::run(move || {
        let start = Instant::now();
        let (mut rounds, mut late) = (0, Vec::new());
        while start.elapsed() < Duration::from_secs(4) {
            let (a, b) = socketpair();
            let fd = a.into_raw_fd();
            let w = evco::spawn(move || wait(fd, Interest::READABLE, Some(Duration::from_secs(2))));
            to_closer.send(fd).unwrap();
            match w.join().unwrap() {
                Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
                // A readiness the close's race let through (about 1 in 80,000 here) is a
                // spurious wake-up, which a readiness wait may have: the caller's next call on
                // the fd says EBADF. What must not happen is the wait sleeping on.
                Ok(_) => {}
                other => late.push(format!("round {rounds}: {other:?}")),
            }
            // The number must not come back before the closer is done with it.
            while common::fd_is_open(fd) {
                evco::yield_now().unwrap();
            }
            drop(b);
            rounds += 1;
        }
        drop(to_closer);
        (rounds, late)
    });
    closer.join().unwrap();
    assert!(rounds > 100, "only {rounds} rounds");
    assert!(
        late.is_empty(),
        "{} of {rounds} waits did not end with EBADF: {late:?}",
        late.len()
    );
}

/// A socket evco makes (here `UnixStream::pair`, and every 8th round a `TcpStream::connect`,
/// which waits before it wraps its socket) may take the number of an fd another thread is
/// closing, between that close's system call and the end of evco's close path, which marks
/// the number `CLOSING` until then: the new socket's first wait must not read the mark as its
/// own close. Four threads (on two CPUs, so they are preempted anywhere) make, wait on and
/// close sockets. Before, without the hooks (whose `socket` hook already forgot the old fd's
/// mark), 29 of 80,000 waits failed `EBADF` (found by CI: 1 of tcp.rs's 1,000 clients).
#[test]
fn a_socket_that_takes_a_number_being_closed_on_another_thread_waits_normally() {
    use evco::net::{TcpListener, TcpStream, UnixStream};
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _serial = serial();
    let _w = watchdog(120);
    let failed = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and closes the connections (on a scheduler: its accept waits too).
    let server = std::thread::spawn(move || {
        evco::run(move || {
            let l = TcpListener::from_std(listener).unwrap();
            for _ in 0..4 * 20_000 / 8 {
                drop(l.accept().unwrap());
            }
        })
    });
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let failed = failed.clone();
            std::thread::spawn(move || {
                evco::run(move || {
                    for round in 0..20_000 {
                        if round % 8 == 0 {
                            if let Err(e) = TcpStream::connect(addr) {
                                eprintln!("a connect failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let (mut a, mut b) = UnixStream::pair().unwrap();
                        // The read below waits: the byte comes a turn later.
                        let w = evco::spawn(move || {
                            evco::yield_now().unwrap();
                            b.write_all(b"x").map(|()| b)
                        });
                        if let Err(e) = a.read_exact(&mut [0u8; 1]) {
                            eprintln!("a wait on a new socket failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(w.join().unwrap().unwrap());
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        // The server waits for connects that failed: it is left to the process's end.
        panic!("{failures} waits or connects on new sockets failed");
    }
    server.join().unwrap();
}

/// Wrapping an open fd in an evco socket (`from_std`) is no new fd: a wait on its number
/// goes on and sees the data. (The first fix of the test above forgot every state of the
/// number in `Sock::new`, ending this wait with `EBADF` without the hooks.)
#[test]
fn from_std_leaves_the_waits_on_its_fd_alone() {
    use std::io::Write;
    let _serial = serial();
    let _w = watchdog(30);
    evco::run(|| {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fd = a.as_raw_fd();
        let w = evco::spawn(move || wait(fd, Interest::READABLE, Some(Duration::from_secs(10))));
        evco::yield_now().unwrap(); // `w` waits on the fd
        let adopted = evco::net::UnixStream::from_std(a).unwrap();
        b.write_all(b"x").unwrap();
        assert!(w.join().unwrap().is_ok());
        drop(adopted);
    });
}

/// A doorbell eventfd closed behind evco's back (`close_range`, `closefrom`) whose number a
/// program's pipe then takes never gets evco's 8 bytes when a close on another thread rings
/// it. Before (found in review), the pipe received `[1, 0, 0, 0, 0, 0, 0, 0]`. Runs in a child:
/// it closes the doorbell of the only other scheduler.
#[test]
fn a_doorbell_closed_behind_evcos_back_never_writes_into_its_successor() {
    use std::sync::mpsc;
    let _serial = serial();
    let Some(_w) = common::in_child(
        "a_doorbell_closed_behind_evcos_back_never_writes_into_its_successor",
        20,
    ) else {
        return;
    };
    let eventfds = || -> Vec<RawFd> {
        let mut v: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("eventfd"))
            })
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect();
        v.sort();
        v
    };
    let before = eventfds();
    let (a, b) = socketpair();
    let fd = a.into_raw_fd();
    let (ready_tx, ready_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        evco::run(move || {
            let w =
                evco::spawn(move || wait(fd, Interest::READABLE, Some(Duration::from_millis(300))));
            evco::yield_now().unwrap();
            ready_tx.send(()).unwrap();
            w.join().unwrap().map(drop)
        })
    });
    ready_rx.recv().unwrap();
    let new: Vec<RawFd> = eventfds()
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(new.len(), 1, "the waiting thread's doorbell: {new:?}");
    let efd = new[0];
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    assert_eq!(
        unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: closes the doorbell past the hooks, as closefrom would.
    unsafe { libc::syscall(libc::SYS_close, efd) };
    raw_dup3(p[1], efd);
    // The close rings the waiting thread's doorbell: its number is now the pipe's write end.
    evco::io::close(fd).unwrap();
    let _ = waiter.join().unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: reads at most 64 bytes into `buf` from the pipe's read end.
    let n = unsafe { libc::read(p[0], buf.as_mut_ptr().cast(), 64) };
    drop(b);
    assert!(n <= 0, "evco wrote {n} bytes into an fd it does not own");
    println!("child-finished");
}

/// A hooked `accept` on a socket that is no listener (a datagram socket, a connected stream)
/// fails at once as libc's does, instead of waiting for a connection that never comes (found
/// in review: it waited forever).
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn a_hooked_accept_on_a_socket_that_is_no_listener_fails_at_once() {
    let _serial = serial();
    let _w = watchdog(20);
    evco::run(|| {
        let accept = |fd: RawFd| {
            // SAFETY: accept with null address arguments.
            let r = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
            (r, std::io::Error::last_os_error().raw_os_error())
        };
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (stream, _peer) = socketpair_blocking();
        let h = evco::spawn(move || (accept(udp.as_raw_fd()), accept(stream.as_raw_fd())));
        let ticker = evco::spawn(|| evco::time::sleep(Duration::from_millis(500)));
        ticker.join().unwrap();
        assert!(h.is_finished(), "still in accept after 500 ms");
        let (on_udp, on_stream) = h.join().unwrap();
        assert_eq!(on_udp, (-1, Some(libc::EOPNOTSUPP)));
        assert_eq!(on_stream, (-1, Some(libc::EINVAL)));
    });
}

/// A TCP socket (a raw fd) whose close lingers: `SO_LINGER` of `secs` with unsent data its peer
/// never reads. Linux frees the number at the start of `close(2)`, then waits up to `secs`, so
/// the window between a close's system call and the end of evco's close path (the number's
/// `CLOSING` mark) lasts until the returned peer is dropped (its reset ends the linger).
fn lingering_socket(secs: i32) -> (RawFd, std::net::TcpStream) {
    use socket2::{Domain, Socket, Type};
    use std::io::Write;
    // A small receive buffer on the peer (an accepted socket inherits the listener's), so
    // that little of what is queued here can ever be delivered.
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.set_recv_buffer_size(4096).unwrap();
    l.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    l.listen(1).unwrap();
    let l: std::net::TcpListener = l.into();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (peer, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 1 << 16];
    loop {
        match (&c).write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    c.set_nonblocking(false).unwrap();
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: secs,
    };
    // SAFETY: sets SO_LINGER from `lg`, a linger of the size given.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    (c.into_raw_fd(), peer)
}

/// A [`lingering_socket`] closed through evco's close path on another thread: returns its
/// number once it is free, with the close still lingering (past its system call's start,
/// before `reactor::closed`), the peer whose drop ends the linger, and the closing thread.
/// A close that did not linger (the suite saw one in ~30 runs of these tests, under load; the
/// cause is the kernel's) leaves nothing to test: it is made again, with a new socket.
fn lingering_close_elsewhere() -> (RawFd, std::net::TcpStream, std::thread::JoinHandle<()>) {
    for _ in 0..10 {
        let (fd, peer) = lingering_socket(20);
        let closer = std::thread::spawn(move || {
            let _ = evco::io::close(fd);
        });
        while common::fd_is_open(fd) {
            std::thread::yield_now();
        }
        if !closer.is_finished() {
            return (fd, peer, closer);
        }
        closer.join().unwrap();
    }
    panic!("no close of 10 lingered");
}

/// An fd made by `make` (past the hooks, or by a call they do not see) at the number `at`,
/// the lowest free one or near it: the fds made on the way are closed again.
fn unhooked_fd_at(at: RawFd, make: impl Fn() -> RawFd) -> RawFd {
    let mut extra = Vec::new();
    let fd = loop {
        let fd = make();
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        if fd == at {
            break fd;
        }
        assert!(fd < at && extra.len() < 10_000, "{at} was taken");
        extra.push(fd);
    };
    for e in extra {
        // SAFETY: closes an fd made above, owned by nothing else.
        unsafe { libc::syscall(libc::SYS_close, e) };
    }
    fd
}

/// A hooked `epoll_wait` on an epoll fd that took the number of a socket another thread is
/// still closing (its close lingers) suspends its coroutine: another coroutine of the thread
/// runs and makes an fd in the set ready, and the call reports it. Before (found in review),
/// each wait on the epoll fd failed `EBADF` at once on the close's `CLOSING` mark, and the
/// hook looked again without yielding: the thread spun until the call's own timeout (0
/// events), the other coroutine never ran.
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn a_hooked_epoll_wait_on_a_number_still_being_closed_elsewhere_lets_its_thread_run() {
    let _serial = serial();
    let _w = watchdog(60);
    // The close lingers (20 s) for longer than the epoll_wait below waits (10 s).
    let (n, peer, closer) = lingering_close_elsewhere();
    // The raw system call: an epoll fd made past the hooks (whose `epoll_create1` would end
    // the mark, as for every fd they see made).
    // SAFETY: epoll_create1 makes an fd of ours.
    let ep = unhooked_fd_at(n, || unsafe {
        libc::syscall(libc::SYS_epoll_create1, libc::EPOLL_CLOEXEC) as RawFd
    });
    // SAFETY: eventfd makes an fd of ours.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(efd >= 0);
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 7,
    };
    // SAFETY: adds `efd` to `ep` with a valid event.
    assert_eq!(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) },
        0
    );
    let (r, first) = evco::run(move || {
        let writer = evco::spawn(move || {
            let one = 1u64;
            // SAFETY: writes 8 bytes from `one` to the eventfd.
            unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
        });
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: room for 4 events in `evs`.
        let r = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 10_000) };
        writer.join().unwrap();
        (r, evs[0].u64)
    });
    drop(peer);
    closer.join().unwrap();
    // SAFETY: closes the two fds made above.
    unsafe {
        libc::close(efd);
        libc::close(ep);
    }
    assert_eq!(
        (r, first),
        (1, 7),
        "the eventfd's readiness, made by the other coroutine while the call waited"
    );
}

/// An eventfd, an epoll fd, a timerfd and a signalfd made through libc (the hooks) at a number
/// another thread is still closing are waited on normally: the hooks tell the reactor each
/// number is a new fd's. Before, nothing saw them made, and each wait read the close's
/// `CLOSING` mark as its own fd's close: `EBADF` until the close ended (seconds, here).
#[test]
#[cfg(all(feature = "hook", target_os = "linux"))]
fn pollable_fds_the_hooks_see_made_at_a_number_still_being_closed_wait_normally() {
    let _serial = serial();
    let _w = watchdog(60);
    type Maker = fn() -> RawFd;
    let makers: [(&str, Maker); 4] = [
        // SAFETY (each): makes an fd of ours, already readable or not.
        ("eventfd", || unsafe { libc::eventfd(1, libc::EFD_CLOEXEC) }),
        ("epoll_create1", || unsafe {
            libc::epoll_create1(libc::EPOLL_CLOEXEC)
        }),
        ("timerfd_create", || unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC)
        }),
        ("signalfd", || unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
        }),
    ];
    for (name, make) in makers {
        let (n, peer, closer) = lingering_close_elsewhere();
        let fd = unhooked_fd_at(n, make);
        // Readable at once for the eventfd; a 10 ms wait that times out for the others.
        let got = evco::run(move || {
            wait(fd, Interest::READABLE, Some(Duration::from_millis(10)))
                .map(drop)
                .map_err(|e| (e.kind(), e.raw_os_error()))
        });
        drop(peer);
        closer.join().unwrap();
        // SAFETY: closes the fd made above.
        unsafe { libc::close(fd) };
        match got {
            Ok(()) => assert_eq!(name, "eventfd", "{name}: ready"),
            Err((std::io::ErrorKind::TimedOut, _)) => assert_ne!(name, "eventfd"),
            Err(e) => panic!("{name}: {e:?}: the wait took the close's mark for its own"),
        }
    }
}

/// A child forked while another thread's close is under way (past its system call, the number
/// free) can wait on a later fd with that number: the mark is that thread's to end, and the
/// thread is not in the child. Before (found in review), the child kept the mark for good,
/// and every wait on an fd made there at the number (an eventfd, which no hook sees made)
/// failed `EBADF`.
#[test]
fn a_child_forked_during_a_close_on_another_thread_can_wait_on_the_number() {
    let _serial = serial();
    let _w = watchdog(60);
    let (n, peer, closer) = lingering_close_elsewhere();
    // SAFETY: the child makes an fd, runs a scheduler and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: a 20 s alarm bounds the child (its default action ends it).
        unsafe { libc::alarm(20) };
        // SAFETY: eventfd2 (the raw system call, past the hooks) makes an fd of the child's.
        let efd = unhooked_fd_at(n, || unsafe {
            libc::syscall(libc::SYS_eventfd2, 1, libc::EFD_CLOEXEC) as RawFd
        });
        let ok =
            evco::run(move || wait(efd, Interest::READABLE, Some(Duration::from_secs(10))).is_ok());
        // SAFETY: ends the child without running the parent's test harness's exit paths.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child made above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    drop(peer);
    closer.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's wait on a readable eventfd at the number failed (status {status:#x})"
    );
}
