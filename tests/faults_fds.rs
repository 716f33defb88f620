//! Fault injection on the descriptors under evco: an fd closed or `dup2`'d over while coroutines
//! wait on it, an accept loop under an exhausted fd limit (`EMFILE`), and fds above 100,000.
//!
//! What it proves: `io::close` wakes every waiter of the fd with `EBADF` and leaves no event; a
//! `dup2` over a waited fd ends the wait in bounded time (by its timeout under epoll, by the new
//! socket's readiness under poll, with `EBADF` through the hooked `dup2`) and never hangs a read
//! that has a timeout; accept backs off while no fd is free (no spin), the connections already
//! accepted keep being served, and accept takes every client once fds are free again; fds
//! numbered above 100,000 (or as high as the hard limit allows) can be waited on, used and closed.
//!
//! Every test is bounded by the watchdog and talks to 127.0.0.1 only. The two that change the fd
//! limit (process-wide) run alone in a child process. Like every `faults_*` file, this one also
//! runs under `EVENT_NOEPOLL=1` (libevent's poll backend) in `scripts/ci-faults`.

mod common;

use std::cell::Cell;
use std::io::{self, ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    DOORBELL, End, Handles, added_events, child_passes, echo, is_child, pattern, report_lines,
    socketpair, tcp_pair, watchdog, write_byte,
};
use evco::io::{Interest, wait};
use evco::net::{TcpListener, TcpStream, UnixStream};

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
        // Under epoll the reader and the writer share the socket's one persistent registration
        // and the bare wait adds a timer; under poll every wait is one-shot, and libevent
        // counts an event with an fd and a timeout twice (I/O and timer lists).
        let edge = evco::scheduler::base().unwrap().supports_edge_triggered();
        assert_eq!(
            added_events(),
            before + DOORBELL + if edge { 2 } else { 4 },
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
        assert_eq!(base.added_events(), before + 2 + DOORBELL);
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
        assert_eq!(added_events(), before + 1 + DOORBELL);
        evco::io::close(hfd).unwrap();
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(added_events(), before);
    });
    println!("child-finished");
}

/// `accept` under `EMFILE` on a scheduler that never made a timed wait before keeps the other
/// coroutines running: its back-off sleeps suspend it. Before, the scheduler's timer was made on
/// the first timed wait, which under `EMFILE` failed, `time::sleep` fell back to sleeping the
/// thread, and the accept loop never yielded: the other coroutines froze (the child's watchdog
/// ended it).
#[test]
fn accept_under_emfile_with_no_timed_wait_before_leaves_the_other_coroutines_running() {
    let _w = watchdog(if is_child() { 20 } else { 40 });
    if !is_child() {
        child_passes(
            "accept_under_emfile_with_no_timed_wait_before_leaves_the_other_coroutines_running",
            &[],
        );
        return;
    }
    let got = evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // Every fd the limit allows, taken.
        let mut fillers = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fillers.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        let acceptor = evco::spawn(move || listener.accept().map(|_| ()));
        let ticker = evco::spawn(move || {
            let mut ticks = 0u32;
            while ticks < 100 {
                evco::yield_now().unwrap();
                ticks += 1;
            }
            drop(fillers);
            ticks
        });
        let ticks = ticker.join().unwrap();
        acceptor.join().unwrap().unwrap();
        ticks
    });
    assert_eq!(got, 100);
    println!("child-finished");
}
