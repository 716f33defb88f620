//! Shutdown with coroutines parked on every kind of wait (fd read, fd write on a full socket,
//! timer, join, accept, a yield loop, connects in progress): by dropping the scheduler guard, by
//! `scheduler::shutdown` from a libevent callback, and by the thread exiting.
//!
//! What it proves: every parked coroutine is cancelled, its destructors run once, what it held is
//! closed and every wait's event is deleted; `run`'s root survives a shutdown from a callback; a
//! thread exiting with parked coroutines does not crash (their stacks are leaked, as documented);
//! and `loop_nonblock` returns while a coroutine yields in a loop.
//!
//! Every test is bounded by the watchdog and talks to 127.0.0.1 only. Like every `faults_*` file,
//! this one also runs under `EVENT_NOEPOLL=1` (libevent's poll backend) in `scripts/ci-faults`.

mod common;

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use common::{DropCount, payload_kind, socketpair, tcp_pair, watchdog};
use evco::JoinHandle;
use evco::coroutine::Cancelled;
use evco::io::{Interest, wait};
use evco::net::{TcpListener, TcpStream};

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
