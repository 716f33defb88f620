//! Faults the host program brings: the backend its environment selects, `SIGPIPE` restored to
//! its default disposition (as a C host may leave it), and evco called from the wrong place.
//!
//! What it proves: `EVENT_NOEPOLL=1` selects libevent's poll backend (so the poll run of the
//! `faults_*` files really is one); writes to a closed or shut-down peer, TCP or Unix, plain or
//! vectored, are errors and never raise `SIGPIPE`; misuse outside or inside coroutines (waits and
//! yields outside one, `suspend` in a scheduled one, a nested `run`, a coroutine cancelling
//! itself, ...) is an error or a catchable panic, never a crash.
//!
//! Every test is bounded by the watchdog. The `SIGPIPE` test changes a process-wide disposition,
//! so it runs alone in a child process. `scripts/ci-faults` runs every `faults_*` file under
//! `EVENT_NOEPOLL=1`, and `the_backend_is_the_one_the_environment_asks_for` checks that the switch
//! took effect.

mod common;

use std::cell::RefCell;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use common::{child_passes, is_child, run_child, socketpair, tcp_pair, watchdog};
use evco::JoinHandle;
use evco::io::{Interest, wait};
use evco::net::UnixStream;

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
