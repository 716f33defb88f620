//! evco::runtime: many scheduler threads, spawning across them, serving one address from every
//! thread, and shutting all of it down. Real threads, real loopback sockets.
//!
//! Orders are made certain without sleeps: a runtime thread runs the coroutines it is handed in
//! the order they arrive, each until it first suspends, so a coroutine spawned on a thread after
//! another has run by the time the later one is joined.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use common::{socketpair, watchdog};
use evco::coroutine::Cancelled;
use evco::io::{Interest, wait};
use evco::runtime::{Builder, Handle, JoinHandle, Runtime};
use evco::sync::shared::{Mutex, mpmc, mpsc};

const BOUND: Duration = Duration::from_secs(10);

fn runtime(threads: usize) -> Runtime {
    Builder::new().threads(threads).build().unwrap()
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    common::payload_kind(p)
}

/// The `io::Error` a join's `Err` carries (a closure that never ran, a join that could not
/// wait); a failure naming the payload when it is something else.
fn io_error(p: Box<dyn std::any::Any + Send>) -> std::io::Error {
    *p.downcast::<std::io::Error>()
        .unwrap_or_else(|p| panic!("not an io::Error payload: {}", panic_text(&p)))
}

#[test]
fn a_cross_thread_join_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JoinHandle<u64>>();
    assert_send_sync::<Runtime>();
    assert_send_sync::<Handle>();
}

#[test]
fn spawn_places_coroutines_round_robin_and_each_sees_its_own_thread() {
    let _w = watchdog(30);
    let rt = runtime(3);
    assert_eq!(rt.threads(), 3);
    let handles: Vec<_> = (0..9)
        .map(|i| {
            rt.spawn(move || {
                let h = Handle::current().unwrap();
                (
                    i,
                    h.thread_index().unwrap(),
                    h.threads(),
                    evco::runtime::thread_index(),
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(
            h.thread_index(),
            i % 3,
            "the handle names the thread it placed on"
        );
        let (j, index, threads, free) = h.join().unwrap();
        assert_eq!((j, index, threads, free), (i, i % 3, 3, Some(i % 3)));
    }
    assert!(
        Handle::current().is_err(),
        "the test's thread is no runtime thread"
    );
    assert_eq!(evco::runtime::thread_index(), None);
    assert_eq!(rt.shutdown(BOUND).unwrap(), 0, "nothing was left to cancel");
}

/// A coroutine never moves: across 1,000 suspensions (yields, timers, socket waits) the OS
/// thread it sees is the one `spawn_on` named.
#[test]
fn spawn_on_keeps_a_coroutine_on_its_thread_across_a_thousand_yields_and_waits() {
    let _w = watchdog(60);
    let rt = runtime(2);
    let h = rt
        .spawn_on(1, || {
            let me = std::thread::current().id();
            let name = std::thread::current().name().map(str::to_string);
            let (a, b) = evco::net::UnixStream::pair().unwrap();
            let mut seen = Vec::new();
            for i in 0..1_000 {
                match i % 3 {
                    0 => evco::yield_now().unwrap(),
                    1 => evco::time::sleep(Duration::from_micros(50)),
                    _ => {
                        // The writer runs after this coroutine parks in its read.
                        let mut w = b.try_clone().unwrap();
                        evco::spawn(move || w.write_all(&[7]).unwrap());
                        let mut byte = [0u8];
                        (&a).read_exact(&mut byte).unwrap();
                    }
                }
                seen.push((std::thread::current().id(), evco::runtime::thread_index()));
            }
            (me, name, seen)
        })
        .unwrap();
    let (me, name, seen) = h.join().unwrap();
    assert_eq!(name.as_deref(), Some("evco-1"));
    assert_eq!(seen.len(), 1_000);
    assert!(
        seen.iter().all(|&(t, i)| t == me && i == Some(1)),
        "never moved"
    );
    let err = rt.spawn_on(2, || ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    rt.shutdown(BOUND).unwrap();
}

/// A spawn from a runtime thread onto itself (spawned at once, not through the inbox) runs
/// there, after the spawner parks, and its join parks the spawner until it ends.
#[test]
fn a_spawn_onto_the_calling_runtime_thread_runs_there_and_joins() {
    let _w = watchdog(30);
    let rt = runtime(2);
    let inner = rt
        .spawn_on(1, || {
            let h = Handle::current().unwrap();
            let me = std::thread::current().id();
            let child = h
                .spawn_on(1, move || std::thread::current().id() == me)
                .unwrap();
            assert!(!child.is_finished(), "it runs once the spawner suspends");
            child.join().unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(inner, "the child ran on its spawner's thread");
    rt.shutdown(BOUND).unwrap();
}

/// A cross-thread join parks a coroutine (its thread's other coroutines run meanwhile) and
/// blocks a plain thread; both get the value.
#[test]
fn a_join_from_a_coroutine_parks_it_and_from_a_plain_thread_blocks_it() {
    let _w = watchdog(30);
    let rt = runtime(2);
    // Released only by a coroutine on the joiner's own thread: a join that blocked the thread
    // instead of parking the coroutine would never return.
    let (release_tx, release_rx) = mpsc::channel::<u32>();
    let (got_tx, got_rx) = std::sync::mpsc::channel::<u32>();
    let far = rt
        .spawn_on(1, move || release_rx.recv().unwrap() * 2)
        .unwrap();
    let joiner = std::thread::spawn(move || {
        evco::run(move || {
            let j = evco::spawn(move || far.join().unwrap());
            evco::spawn(move || release_tx.send(21).unwrap());
            got_tx.send(j.join().unwrap()).unwrap();
        })
    });
    assert_eq!(got_rx.recv_timeout(BOUND).unwrap(), 42);
    joiner.join().unwrap();
    // From a plain thread: blocks until the value is there.
    let (tx, rx) = mpsc::channel::<&'static str>();
    let h = rt.spawn(move || rx.recv().unwrap());
    let sender = std::thread::spawn(move || tx.send("hello").unwrap());
    assert_eq!(h.join().unwrap(), "hello");
    sender.join().unwrap();
    rt.shutdown(BOUND).unwrap();
}

#[test]
fn a_panic_reaches_the_joiner_and_the_thread_serves_on() {
    let _w = watchdog(30);
    let rt = runtime(1);
    let h = rt.spawn(|| -> u8 { panic!("boom in a runtime coroutine") });
    let p = h.join().unwrap_err();
    assert!(panic_text(&p).contains("boom"), "{}", panic_text(&p));
    assert_eq!(rt.spawn(|| 5).join().unwrap(), 5, "the thread lives on");
    rt.shutdown(BOUND).unwrap();
}

/// `cancel` ends a parked coroutine: its wait returns, its destructors run, `join` reports
/// `Cancelled`; a handle cancelled before its coroutine started never runs it.
#[test]
fn cancel_unwinds_a_parked_coroutine_and_join_reports_cancelled() {
    let _w = watchdog(30);
    let rt = runtime(2);
    let drops = Arc::new(AtomicUsize::new(0));
    let (_tx, rx) = mpsc::channel::<()>();
    let guard = DropCounter(drops.clone());
    let h = rt
        .spawn_on(1, move || {
            let _g = guard;
            let _ = rx.recv(); // parks: the sender is never used
        })
        .unwrap();
    // The coroutine spawned after it on thread 1 runs once it has parked.
    rt.spawn_on(1, || ()).unwrap().join().unwrap();
    assert!(!h.is_finished());
    h.cancel().unwrap();
    let p = h.join().unwrap_err();
    assert!(
        p.downcast_ref::<Cancelled>().is_some(),
        "{}",
        panic_text(&p)
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1, "its destructors ran");
    rt.shutdown(BOUND).unwrap();
}

struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The process-wide fd table at work across runtime threads: thread 0 closes an fd that a
/// coroutine on thread 1 waits on, and the wait ends at once with `EBADF`.
#[test]
fn a_close_on_one_runtime_thread_wakes_a_waiter_on_another_with_ebadf() {
    let _w = watchdog(30);
    let rt = runtime(2);
    let (a, _b) = socketpair();
    let fd = a.into_raw_fd();
    let waiter = rt
        .spawn_on(1, move || wait(fd, Interest::READABLE, Some(BOUND)))
        .unwrap();
    rt.spawn_on(1, || ()).unwrap().join().unwrap(); // the waiter is parked now
    rt.spawn_on(0, move || evco::io::close(fd))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let e = waiter.join().unwrap().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    rt.shutdown(BOUND).unwrap();
}

/// No polling: four idle threads spend under 1% of one CPU over 2 s (their own CPU time, from
/// getrusage(RUSAGE_THREAD) taken on each thread).
#[test]
fn an_idle_four_thread_runtime_uses_under_one_percent_of_a_cpu() {
    let _w = watchdog(30);
    let rt = runtime(4);
    fn cpu_time() -> Duration {
        // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: see above; RUSAGE_THREAD is the calling thread.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
    let sample = |rt: &Runtime| -> Vec<Duration> {
        rt.on_each_thread(cpu_time)
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    };
    let before = sample(&rt);
    let idle = Duration::from_secs(2);
    std::thread::sleep(idle); // the span measured, not a synchronisation
    let after = sample(&rt);
    let used: Duration = after.iter().zip(&before).map(|(a, b)| *a - *b).sum();
    eprintln!("idle 4-thread runtime: {used:?} of CPU over {idle:?}");
    assert!(
        used < idle / 100,
        "4 idle threads used {used:?} of CPU in {idle:?}: they poll"
    );
    rt.shutdown(BOUND).unwrap();
}

/// `serve` binds one SO_REUSEPORT listener per thread: the kernel spreads 100 connections over
/// both threads of a 2-thread runtime (each serves at least 25; below that happens with
/// probability ~3e-7 under the kernel's hash), and each gets its echo.
#[test]
fn a_two_thread_reuseport_echo_serves_at_least_25_of_100_connections_on_each_thread() {
    let _w = watchdog(60);
    let rt = runtime(2);
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counts = served.clone();
    let addr = rt
        .serve("127.0.0.1:0", move |stream| {
            counts[evco::runtime::thread_index().unwrap()].fetch_add(1, Ordering::SeqCst);
            let _ = common::echo(&stream);
        })
        .unwrap();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(BOUND)).unwrap();
            writeln!(s, "line {i}").unwrap();
            (i, s)
        })
        .collect();
    for (i, s) in clients {
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert_eq!(line, format!("line {i}\n"));
    }
    let per_thread = [0, 1].map(|t| served[t].load(Ordering::SeqCst));
    eprintln!("connections per thread: {per_thread:?}");
    assert_eq!(per_thread[0] + per_thread[1], 100);
    assert!(per_thread.iter().all(|&n| n >= 25), "{per_thread:?}");
    rt.shutdown(BOUND).unwrap();
}

/// `block_on` from one of the runtime's own threads would wait for itself: an error instead.
/// From a plain thread it runs the closure there and returns its value.
#[test]
fn block_on_from_a_runtime_thread_is_an_error_not_a_deadlock() {
    let _w = watchdog(30);
    let rt = Arc::new(runtime(2));
    assert_eq!(rt.block_on(|| 6 * 7).unwrap(), 42);
    let inner = rt.clone();
    let e = rt
        .spawn(move || inner.block_on(|| 1).unwrap_err())
        .join()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Deadlock, "{e}");
    let rt = Arc::into_inner(rt).expect("the coroutine dropped its clone when it ended");
    rt.shutdown(BOUND).unwrap();
}

/// `block_on` re-raises a panic of its closure, whatever the payload: one that panics with an
/// `io::Error` is not mistaken for a closure that never ran (the error `block_on` returns).
#[test]
fn block_on_re_raises_a_panic_even_with_an_io_error_payload() {
    let _w = watchdog(30);
    let rt = runtime(1);
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(|| -> u8 { std::panic::panic_any(std::io::Error::other("the closure's own")) })
    }))
    .expect_err("the closure's panic comes through");
    assert_eq!(io_error(p).to_string(), "the closure's own");
    rt.shutdown(BOUND).unwrap();
}

#[test]
fn a_runtime_of_zero_or_too_many_threads_is_refused() {
    let e = Builder::new().threads(0).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // Before the cap, usize::MAX panicked in Vec::with_capacity ("capacity overflow").
    for n in [evco::runtime::MAX_THREADS + 1, usize::MAX] {
        let e = Builder::new().threads(n).build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{n}: {e}");
    }
}

/// A spawn onto a runtime that has shut down never runs: its handle says so instead of
/// hanging, and the closure (with what it captured) is dropped at once, not kept until the
/// handle goes. (Handles outlive their runtime.)
#[test]
fn a_spawn_after_shutdown_reports_that_it_never_ran() {
    let _w = watchdog(30);
    let rt = runtime(1);
    let handle = rt.handle().clone();
    rt.shutdown(BOUND).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = DropCounter(drops.clone());
    let h = handle.spawn(move || {
        let _g = guard;
        1
    });
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the unrun closure was dropped"
    );
    assert!(h.is_finished());
    let p = h.join().unwrap_err();
    let e = p
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error payload");
    assert!(e.to_string().contains("never ran"), "{e}");
}

/// A spawn whose coroutine cannot be made (a stack size over `MAX_STACK_SIZE`) reports the
/// spawn's own error through the handle, from another thread and from the target thread
/// itself, and drops the closure; the thread goes on serving spawns that fit.
#[test]
fn a_spawn_that_cannot_have_a_stack_reports_why_through_its_handle() {
    let _w = watchdog(30);
    let drops = Arc::new(AtomicUsize::new(0));
    // From thread 1 onto itself (spawned at once, no inbox in between), in `on_thread_start`:
    // every coroutine of this runtime would need the oversized stack.
    let (tx, rx) = std::sync::mpsc::channel::<JoinHandle<()>>();
    let tx = StdMutex::new(tx);
    let own_drops = drops.clone();
    let rt = Builder::new()
        .threads(2)
        .stack_size(evco::coroutine::MAX_STACK_SIZE + 4096)
        .on_thread_start(move || {
            if evco::runtime::thread_index() == Some(1) {
                let guard = DropCounter(own_drops.clone());
                let h = Handle::current().expect("a runtime thread");
                let j = h.spawn_on(1, move || drop(guard)).expect("thread 1 exists");
                tx.lock().unwrap().send(j).unwrap();
            }
        })
        .build()
        .unwrap();
    let check = |p: Box<dyn std::any::Any + Send>| {
        let e = p
            .downcast_ref::<std::io::Error>()
            .unwrap_or_else(|| panic!("an io::Error payload, not {}", panic_text(&p)));
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("stack"), "{e}");
    };
    let own = rx.recv().unwrap();
    assert!(own.is_finished(), "reported before spawn_on returned");
    check(own.join().unwrap_err());
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the closure was dropped");
    // From outside, through thread 1's inbox.
    let guard = DropCounter(drops.clone());
    let from_outside = rt.spawn_on(1, move || drop(guard)).unwrap();
    check(from_outside.join().unwrap_err());
    assert_eq!(drops.load(Ordering::SeqCst), 2, "the closure was dropped");
    assert_eq!(rt.shutdown(BOUND).unwrap(), 0);
}

/// 4 threads x 10,000 coroutines (in waves of 1,000 per thread at once: 40,000 live stacks
/// would pass vm.max_map_count) pass every message across threads through shared channels,
/// each received once, and bump one counter under the shared Mutex to an exact total.
#[test]
fn four_runtime_threads_of_ten_thousand_coroutines_pass_every_message_once() {
    let _w = watchdog(120);
    const THREADS: usize = 4;
    const PER_THREAD: usize = 10_000;
    const WAVE: usize = 1_000;
    let rt = runtime(THREADS);
    let total = THREADS * PER_THREAD;
    let (tx, rx) = mpmc::bounded::<usize>(256);
    let counter = Arc::new(Mutex::new(0usize));
    let seen = Arc::new(StdMutex::new(vec![0u8; total]));
    // Receivers: one coroutine per thread drains the shared channel.
    let receivers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (rx, seen) = (rx.clone(), seen.clone());
            rt.spawn_on(t, move || {
                let mut n = 0;
                for v in &rx {
                    seen.lock().unwrap()[v] += 1;
                    n += 1;
                }
                n
            })
            .unwrap()
        })
        .collect();
    drop(rx);
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let (tx, counter) = (tx.clone(), counter.clone());
            rt.spawn_on(t, move || {
                for wave in 0..PER_THREAD / WAVE {
                    let hs: Vec<_> = (0..WAVE)
                        .map(|k| {
                            let (tx, counter) = (tx.clone(), counter.clone());
                            let id = t * PER_THREAD + wave * WAVE + k;
                            evco::spawn(move || {
                                tx.send(id).unwrap();
                                let mut g = counter.lock().unwrap();
                                let v = *g;
                                evco::yield_now().unwrap(); // hold it across a suspension
                                *g = v + 1;
                            })
                        })
                        .collect();
                    for h in hs {
                        h.join().unwrap();
                    }
                }
            })
            .unwrap()
        })
        .collect();
    drop(tx);
    for s in senders {
        s.join().unwrap();
    }
    let received: usize = receivers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(received, total);
    assert!(seen.lock().unwrap().iter().all(|&n| n == 1), "each once");
    assert_eq!(*counter.lock().unwrap(), total, "the counter is exact");
    rt.shutdown(BOUND).unwrap();
}

/// Shutdown with 10,000 coroutines parked on sockets, timers and channels across 4 threads and
/// 150 served connections (100 mid-conversation, 50 silent): shutdown cancels what the
/// deadline leaves, every destructor runs, every thread ends with no event left on its base,
/// the process has the fds it had before, and each client got its echo and then a reset, never
/// a silent end of stream. In a child process: it counts the process's fds.
#[test]
fn shutdown_cancels_ten_thousand_parked_coroutines_and_leaves_no_fd_or_event() {
    let Some(_w) = common::in_child(
        "shutdown_cancels_ten_thousand_parked_coroutines_and_leaves_no_fd_or_event",
        60,
    ) else {
        return;
    };
    const THREADS: usize = 4;
    const ON_SOCKETS: usize = 2_000;
    const ON_TIMERS: usize = 4_000;
    const ON_CHANNELS: usize = 4_000;
    const PARKED: usize = ON_SOCKETS + ON_TIMERS + ON_CHANNELS;
    // Each thread that waits on an fd claims one of the process's reactor doorbells, whose
    // eventfd stays for the process's life and is reused by the next thread (see
    // reactor::close). A first runtime of as many threads claims them; what is counted is
    // what the second one leaves.
    let warm_up = Builder::new().threads(THREADS).build().unwrap();
    for h in warm_up.on_each_thread(|| {
        let (a, _b) = evco::net::UnixStream::pair().unwrap();
        wait(a.as_raw_fd(), Interest::READABLE, Some(Duration::ZERO)).unwrap_err();
    }) {
        h.join().unwrap();
    }
    warm_up.shutdown(BOUND).unwrap();
    let fds_before = common::open_fds();
    let events = Arc::new(StdMutex::new(Vec::new()));
    let (at_start, at_stop) = (events.clone(), events.clone());
    let rt = Builder::new()
        .threads(THREADS)
        .on_thread_start(move || {
            let i = evco::runtime::thread_index().unwrap();
            at_start
                .lock()
                .unwrap()
                .push(("start", i, common::added_events()));
        })
        .on_thread_stop(move || {
            let i = evco::runtime::thread_index().unwrap();
            at_stop
                .lock()
                .unwrap()
                .push(("stop", i, common::added_events()));
        })
        .build()
        .unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let (chan_tx, chan_rx) = mpmc::channel::<()>();
    // Each thread spawns its share of parked coroutines; the setup returns once all are
    // spawned (they park on their first turn, or are cancelled before it: either way their
    // captured guard drops).
    let setups = rt.on_each_thread({
        let drops = drops.clone();
        move || {
            let t = evco::runtime::thread_index().unwrap();
            let share = |n: usize| n / THREADS + usize::from(t < n % THREADS);
            for _ in 0..share(ON_SOCKETS) / 2 {
                let (a, b) = evco::net::UnixStream::pair().unwrap();
                for mut s in [a, b] {
                    let g = DropCounter(drops.clone());
                    evco::spawn(move || {
                        let _g = g;
                        let _ = s.read(&mut [0u8; 1]);
                    });
                }
            }
            for _ in 0..share(ON_TIMERS) {
                let g = DropCounter(drops.clone());
                evco::spawn(move || {
                    let _g = g;
                    evco::time::sleep(Duration::from_secs(3600));
                });
            }
            for _ in 0..share(ON_CHANNELS) {
                let (g, rx) = (DropCounter(drops.clone()), chan_rx.clone());
                evco::spawn(move || {
                    let _g = g;
                    let _ = rx.recv();
                });
            }
        }
    });
    for s in setups {
        s.join().unwrap();
    }
    let addr = rt
        .serve("127.0.0.1:0", |stream| {
            let _ = common::echo(&stream);
        })
        .unwrap();
    let talking: Vec<_> = (0..100)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(BOUND)).unwrap();
            writeln!(s, "line {i}").unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(line, format!("line {i}\n"), "echoed before the shutdown");
            s
        })
        .collect();
    let silent: Vec<_> = (0..50)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(BOUND)).unwrap();
            s
        })
        .collect();
    let timeout = Duration::from_millis(500);
    let start = Instant::now();
    let cancelled = rt.shutdown(timeout).unwrap();
    let took = start.elapsed();
    drop(chan_tx); // kept until now: its receivers stay parked
    println!(
        "shutdown of {PARKED} parked coroutines: {took:?} (timeout {timeout:?}), {cancelled} cancelled"
    );
    assert!(took < timeout + BOUND, "shutdown took {took:?}");
    assert!(
        cancelled >= PARKED + 100,
        "{cancelled} cancelled: the parked ones and the talking connections' handlers at least"
    );
    assert_eq!(
        drops.load(Ordering::SeqCst),
        PARKED,
        "every parked coroutine's destructors ran"
    );
    // Every client: a reset, never a clean end of stream (a silent loss), never a hang. A
    // silent client may have been reset in the listen queue before it was accepted.
    for mut s in talking.into_iter().chain(silent) {
        match s.read(&mut [0u8; 16]) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("a client saw {other:?} instead of a reset"),
        }
    }
    let mut events = events.lock().unwrap().clone();
    events.sort_by_key(|&(what, i, _)| (i, what == "stop"));
    println!("events added at thread start and stop: {events:?}");
    assert_eq!(events.len(), 2 * THREADS, "each thread started and stopped");
    for pair in events.chunks(2) {
        assert_eq!(
            pair[0].2, pair[1].2,
            "thread {}: an event left behind",
            pair[0].1
        );
    }
    assert_eq!(common::open_fds(), fds_before, "no fd left behind");
    println!("child-finished");
}

/// A panic in `on_thread_start` fails `build` with the panic's message, and leaves no thread
/// running: before, `build` returned a runtime one thread short, whose spawns there never ran
/// and whose shutdown blamed a panic "while shutting down".
#[test]
fn a_panic_in_on_thread_start_fails_build_and_leaves_no_thread() {
    let _w = watchdog(30);
    let started = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let (s, t) = (started.clone(), stopped.clone());
    let e = Builder::new()
        .threads(3)
        .on_thread_start(move || {
            s.fetch_add(1, Ordering::SeqCst);
            if evco::runtime::thread_index() == Some(1) {
                panic!("no config for thread 1");
            }
        })
        .on_thread_stop(move || {
            t.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect_err("build must fail when on_thread_start panics");
    assert!(e.to_string().contains("no config for thread 1"), "{e}");
    assert!(e.to_string().contains("on_thread_start"), "{e}");
    assert_eq!(started.load(Ordering::SeqCst), 3);
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        3,
        "every thread went through its stop before build returned"
    );
}

/// `serve` on an address something already listens on is refused, as a plain bind would be,
/// even when that listener set `SO_REUSEPORT` too (an earlier `serve`, another server's
/// `bind_reuseport`): joining its group would silently split the connections between the two.
/// Nothing is left listening by the refused call.
#[test]
fn serve_on_an_address_already_served_is_refused() {
    let _w = watchdog(30);
    let rt = runtime(2);
    let addr = rt.serve("127.0.0.1:0", |_| {}).unwrap();
    let e = rt.serve(addr, |_| panic!("never served")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    let other = evco::net::TcpListener::bind_reuseport("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap();
    let e = rt.serve(taken, |_| panic!("never served")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = rt
        .serve(plain.local_addr().unwrap(), |_| panic!("never served"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    // Once the other listener is gone, its port can be served.
    drop(other);
    let served = rt
        .serve(taken, |mut c| {
            let _ = c.write_all(b"hi");
        })
        .unwrap();
    assert_eq!(served, taken);
    let mut got = String::new();
    let mut c = std::net::TcpStream::connect(taken).unwrap();
    c.set_read_timeout(Some(BOUND)).unwrap();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hi");
    rt.shutdown(BOUND).unwrap();
}

/// A cancel that lands while the target thread is spawning the coroutine (after it looked for an
/// early cancel, before the handle learnt the coroutine's key) is not lost: the coroutine, which
/// would sleep for an hour, is cancelled. The cancel is sent after a varying spin so that some
/// land in that window.
#[test]
fn a_cancel_racing_the_spawn_on_the_target_thread_is_never_lost() {
    let _w = watchdog(120);
    // Big stacks: each spawn maps one, which widens the window.
    let rt = Builder::new()
        .threads(1)
        .stack_size(16 << 20)
        .build()
        .unwrap();
    for i in 0..20_000u32 {
        let h = rt.spawn(|| evco::time::sleep(Duration::from_secs(3600)));
        for _ in 0..(i % 256) * 16 {
            std::hint::spin_loop();
        }
        h.cancel().unwrap();
        match h.join_timeout(BOUND) {
            Ok(Err(p)) => assert!(p.is::<Cancelled>(), "{}", panic_text(&p)),
            Ok(Ok(())) => panic!("round {i}: slept an hour"),
            Err(_) => panic!("round {i}: the cancel was lost, the coroutine sleeps on"),
        }
    }
    rt.shutdown(BOUND).unwrap();
}

/// A joiner that gives up (a zero or tiny `join_timeout`) while the coroutine finishes on its
/// thread, and waits again, neither loses the outcome nor misses the wake-up of its final
/// `join` (a waiter left listed, or unlisted after the finish took it). Joined from a plain
/// thread and from a coroutine on the other runtime thread; a lost wake-up hangs the final
/// `join` (the watchdog fails the test).
#[test]
fn a_join_that_times_out_as_the_coroutine_finishes_still_gets_its_outcome() {
    let _w = watchdog(120);
    let rt = runtime(2);
    fn rounds(h: &Handle, n: u64) {
        for i in 0..n {
            let j = h
                .spawn_on(1, move || {
                    for _ in 0..(i % 64) * 8 {
                        std::hint::spin_loop();
                    }
                    i
                })
                .unwrap();
            let mut pending = Some(j);
            let mut outcome = None;
            for k in 0..(i % 4) {
                match pending
                    .take()
                    .unwrap()
                    .join_timeout(Duration::from_micros(k * 3))
                {
                    Ok(r) => {
                        outcome = Some(r);
                        break;
                    }
                    Err(again) => pending = Some(again),
                }
            }
            let r = outcome.unwrap_or_else(|| pending.take().unwrap().join());
            assert_eq!(r.unwrap(), i, "round {i}: another coroutine's outcome");
        }
    }
    let h = rt.handle();
    rounds(h, 20_000);
    let h2 = h.clone();
    rt.spawn_on(0, move || rounds(&h2, 20_000))
        .unwrap()
        .join()
        .unwrap();
    rt.shutdown(BOUND).unwrap();
}

/// A coroutine joining one it spawned on its own thread: a job that ends in its first turn,
/// one that waits on a channel (fed after the joiner is parked), a `join_timeout` that passes
/// while the job waits (then a `join`), and a joiner cancelled while it waits, each gets what
/// a cross-thread join gets. A join that returned early would see another round's value; a
/// lost wake-up hangs (the watchdog fails the test).
#[test]
fn joining_a_coroutine_spawned_on_the_joiners_own_thread_waits_for_its_outcome() {
    let _w = watchdog(60);
    let rt = runtime(2);
    rt.spawn_on(0, || {
        let h = Handle::current().unwrap();
        for i in 0..1_000u64 {
            // Ends in its first turn.
            assert_eq!(h.spawn_on(0, move || i).unwrap().join().unwrap(), i);
            // Waits for a message sent from the other thread once the job is parked.
            let (tx, rx) = mpsc::channel::<u64>();
            let job = h.spawn_on(0, move || rx.recv().unwrap() + 1).unwrap();
            let sender = h.spawn_on(1, move || tx.send(i).unwrap()).unwrap();
            let job = if i % 2 == 0 {
                job
            } else {
                // Gives up while the job may still wait, then joins for good.
                match job.join_timeout(Duration::ZERO) {
                    Ok(r) => {
                        assert_eq!(r.unwrap(), i + 1);
                        sender.join().unwrap();
                        continue;
                    }
                    Err(job) => job,
                }
            };
            assert_eq!(job.join().unwrap(), i + 1, "round {i}");
            sender.join().unwrap();
        }
        // A joiner cancelled while it waits for a job on its own thread (the turns below
        // take it into its join) unwinds.
        let (tx, rx) = mpsc::channel::<()>();
        let job = h.spawn_on(0, move || rx.recv().map(|()| 7u8)).unwrap();
        let joiner = h.spawn_on(0, move || job.join()).unwrap();
        for _ in 0..3 {
            evco::yield_now().unwrap();
        }
        assert!(!joiner.is_finished());
        joiner.cancel().unwrap();
        let e = joiner.join().unwrap_err();
        assert!(
            e.downcast_ref::<Cancelled>().is_some(),
            "the joiner was cancelled"
        );
        drop(tx); // the job's recv fails; it ends, detached
    })
    .unwrap()
    .join()
    .unwrap();
    rt.shutdown(BOUND).unwrap();
}

/// Spawns still queued when a runtime thread's inbox closes are abandoned, each handle told
/// that its job never ran, even when one closure's destructor panics there. Before, that
/// panic left the drain, stranded the spawn queued behind it (its `join` waited for ever) and
/// failed the shutdown. The two are posted from another thread while `on_thread_stop` holds
/// the thread: after its loop, before its scheduler (and inbox) goes.
#[test]
fn queued_spawns_are_abandoned_even_when_a_closures_destructor_panics() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("a closure's destructor panics");
            }
        }
    }
    let _w = watchdog(30);
    let (stopping_tx, stopping_rx) = std::sync::mpsc::channel::<()>();
    let (posted_tx, posted_rx) = std::sync::mpsc::channel::<()>();
    let (stopping_tx, posted_rx) = (StdMutex::new(stopping_tx), StdMutex::new(posted_rx));
    let rt = Builder::new()
        .threads(1)
        .on_thread_stop(move || {
            stopping_tx.lock().unwrap().send(()).unwrap();
            posted_rx.lock().unwrap().recv().unwrap();
        })
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let poster = std::thread::spawn(move || {
        stopping_rx.recv().unwrap();
        let p = PanicOnDrop;
        let bad = handle.spawn(move || drop(p));
        let good = handle.spawn(|| 7u32);
        posted_tx.send(()).unwrap();
        (bad, good)
    });
    assert_eq!(rt.shutdown(BOUND).unwrap(), 0);
    let (bad, good) = poster.join().unwrap();
    for p in [bad.join().unwrap_err(), good.join().map(drop).unwrap_err()] {
        let e = io_error(p);
        assert!(e.to_string().contains("never ran"), "{e}");
    }
}

/// Bad builder input and hooks that misbehave get errors, not panics or hangs: a thread name
/// prefix with a NUL byte (std's thread builder would panic on it); an `on_thread_stop` that
/// panics (the threads still wind down, and `shutdown` still counts); a coroutine joining its
/// own cross-thread handle (it would wait for itself until shutdown).
#[test]
fn a_nul_in_the_name_prefix_a_panicking_stop_hook_and_a_self_join_are_errors() {
    let _w = watchdog(30);
    let e = Builder::new()
        .threads(2)
        .name_prefix("a\0b")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let stops = Arc::new(AtomicUsize::new(0));
    let counted = stops.clone();
    let rt = Builder::new()
        .threads(2)
        .on_thread_stop(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            panic!("a stop hook panics");
        })
        .build()
        .unwrap();
    let (me_tx, me_rx) = std::sync::mpsc::channel::<JoinHandle<u8>>();
    let me_rx = StdMutex::new(me_rx);
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<std::io::Error>();
    let this = rt.spawn(move || {
        let me = me_rx.lock().unwrap().recv().unwrap();
        let e = match me.join_timeout(BOUND) {
            Ok(Err(p)) => io_error(p),
            Ok(Ok(_)) => panic!("joined itself"),
            Err(_) => panic!("a self-join waited for its timeout"),
        };
        seen_tx.send(e).unwrap();
        3
    });
    // A second handle of the same coroutine cannot be had: it joins the one it is given.
    me_tx.send(this).unwrap();
    let e = seen_rx.recv().unwrap();
    assert_eq!(e.kind(), ErrorKind::Deadlock, "{e}");
    // A parked coroutine, cancelled at the deadline, still counted despite the hooks' panics.
    let (_keep, rx) = mpsc::channel::<()>();
    let parked = rt.spawn(move || rx.recv().is_ok());
    assert_eq!(rt.shutdown(Duration::ZERO).unwrap(), 1);
    assert_eq!(
        stops.load(Ordering::SeqCst),
        2,
        "the hook ran on both threads"
    );
    assert!(parked.join().is_err());
}

/// A child forked from a runtime coroutine has that one runtime thread: the coroutine goes on
/// there (a spawn onto the runtime fails, as everywhere in the child), and once it returns
/// the thread winds down (its stop hook runs) and the child exits. Before, its loop waited for
/// a stop nobody could post, and the child never exited.
#[test]
fn a_child_forked_from_a_runtime_coroutine_exits_when_its_coroutine_returns() {
    let Some(_w) = common::in_child(
        "a_child_forked_from_a_runtime_coroutine_exits_when_its_coroutine_returns",
        30,
    ) else {
        return;
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rfd, wfd) = (fds[0], fds[1]);
    let rt = Builder::new()
        .threads(1)
        .on_thread_stop(move || {
            // SAFETY: writes one byte from a static to the pipe's write end.
            unsafe { libc::write(wfd, b"s".as_ptr().cast(), 1) };
        })
        .build()
        .unwrap();
    let pid = rt
        .spawn(move || {
            // SAFETY: the child runs this coroutine's Rust code on its one thread; the
            // allocator's locks are the C library's to take care of.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: bounds the child: SIGALRM's default action ends it.
                unsafe { libc::alarm(20) };
                let h = Handle::current().unwrap();
                let forked = h
                    .spawn_on(0, || ())
                    .unwrap()
                    .join()
                    .unwrap_err()
                    .downcast::<std::io::Error>()
                    .is_ok_and(|e| e.to_string().contains("forked"));
                let msg: &[u8] = if forked { b"f" } else { b"?" };
                // SAFETY: writes one byte to the pipe's write end.
                unsafe { libc::write(wfd, msg.as_ptr().cast(), 1) };
            }
            pid
        })
        .join()
        .unwrap();
    assert!(pid > 0);
    let mut status = 0;
    // SAFETY: waits for the child forked above; writes its status to `status`.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child ended by itself (status {status:#x}; SIGALRM is 0xe)"
    );
    rt.shutdown(BOUND).unwrap();
    // SAFETY: closes our write end (the child's copy is gone), then reads what both wrote.
    unsafe { libc::close(wfd) };
    let mut got = [0u8; 8];
    // SAFETY: reads at most 8 bytes into `got`.
    let n = unsafe { libc::read(rfd, got.as_mut_ptr().cast(), got.len()) };
    // SAFETY: closes the read end.
    unsafe { libc::close(rfd) };
    assert_eq!(
        &got[..n as usize],
        b"fss",
        "the child's spawn failed, both stop hooks ran"
    );
    println!("child-finished");
}

/// `shutdown` called inside a coroutine of another scheduler parks that coroutine, not its
/// thread: a sibling coroutine there, spawned just before, runs meanwhile and sends what the
/// runtime's last coroutine waits for, so it ends by itself and none is cancelled. Before,
/// the join blocked the thread, the sibling never ran, and the shutdown waited out its hour
/// (the watchdog fails the test).
#[test]
fn shutdown_inside_a_coroutine_parks_it_and_its_thread_runs_on() {
    let _w = watchdog(30);
    let rt = runtime(1);
    let (tx, rx) = mpsc::channel::<u8>();
    let waiter = rt.spawn(move || rx.recv().unwrap());
    let cancelled = evco::run(move || {
        evco::spawn(move || tx.send(9).unwrap());
        rt.shutdown(Duration::from_secs(3600)).unwrap()
    });
    assert_eq!(cancelled, 0);
    assert_eq!(waiter.join().unwrap(), 9);
}

/// A spawn whose post fails (the runtime was shut down) drops its closure on the posting
/// coroutine; a destructor that waits there, and the coroutine is cancelled meanwhile: the
/// cancellation goes on unwinding, the coroutine does not carry on after the spawn. Before,
/// the drop's catch (there for panicking destructors) took the cancellation for a panic,
/// logged it and let the cancelled coroutine run on.
#[test]
fn a_cancellation_inside_a_never_run_closures_drop_goes_on_unwinding() {
    struct WaitingDrop;
    impl Drop for WaitingDrop {
        fn drop(&mut self) {
            evco::time::sleep(Duration::from_secs(60));
        }
    }
    let _w = watchdog(30);
    let rt = runtime(1);
    let h = rt.handle().clone();
    rt.shutdown(BOUND).unwrap();
    evco::run(move || {
        let after = std::rc::Rc::new(std::cell::Cell::new(false));
        let seen = after.clone();
        let waiting = WaitingDrop;
        let c = evco::spawn(move || {
            let never = h.spawn(move || drop(waiting));
            seen.set(true);
            drop(never);
        });
        evco::yield_now().unwrap(); // `c` parks in the closure's drop
        c.cancel().unwrap();
        let p = c.join().unwrap_err();
        assert!(
            p.downcast_ref::<Cancelled>().is_some(),
            "{}",
            panic_text(&p)
        );
        assert!(
            !after.get(),
            "the cancelled coroutine ran on after the spawn"
        );
    });
}

/// The same drop, reached from a guard's destructor while the coroutine unwinds a panic: a
/// cancellation there is not re-raised (a second panic out of a destructor aborts the
/// process); the coroutine ends. Before, the process aborted ("panic in a destructor during
/// cleanup"). Runs in a child: the failure is an abort.
#[test]
fn a_cancellation_inside_a_never_run_closures_drop_during_an_unwind_does_not_abort() {
    struct WaitingDrop;
    impl Drop for WaitingDrop {
        fn drop(&mut self) {
            evco::time::sleep(Duration::from_secs(60));
        }
    }
    struct SpawnOnDrop(Option<Handle>);
    impl Drop for SpawnOnDrop {
        fn drop(&mut self) {
            let waiting = WaitingDrop;
            let never = self.0.take().unwrap().spawn(move || drop(waiting));
            assert!(never.join().is_err());
        }
    }
    let Some(_w) = common::in_child(
        "a_cancellation_inside_a_never_run_closures_drop_during_an_unwind_does_not_abort",
        30,
    ) else {
        return;
    };
    let rt = runtime(1);
    let h = rt.handle().clone();
    rt.shutdown(BOUND).unwrap();
    evco::run(move || {
        let c = evco::spawn(move || {
            let _g = SpawnOnDrop(Some(h));
            panic!("the first panic");
        });
        evco::yield_now().unwrap(); // `c` panics and parks in WaitingDrop's drop
        c.cancel().unwrap();
        // Ended, as cancelled (the cancel was asked for) or with its panic, not aborted.
        let p = c.join().unwrap_err();
        let text = panic_text(&p);
        assert!(
            p.downcast_ref::<Cancelled>().is_some() || text == "the first panic",
            "{text}"
        );
    });
    println!("child-finished");
}

/// `shutdown` inside a coroutine that cannot park (a bare `Coroutine`) joins the threads in
/// place, as outside coroutines. Before, it took the helper-thread path, whose wait failed
/// at once: it returned an error while the threads still ran.
#[test]
fn shutdown_inside_a_bare_coroutine_joins_the_threads() {
    let _w = watchdog(30);
    let rt = runtime(1);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let ended = Arc::new(AtomicUsize::new(0));
    let e = ended.clone();
    let _job = rt.spawn(move || {
        started_tx.send(()).unwrap();
        evco::time::sleep(Duration::from_millis(50));
        e.store(1, Ordering::SeqCst);
    });
    started_rx.recv().unwrap();
    let out = std::rc::Rc::new(std::cell::RefCell::new(None));
    let o = out.clone();
    let mut co = evco::coroutine::Coroutine::new(move || {
        *o.borrow_mut() = Some(rt.shutdown(BOUND));
    })
    .unwrap();
    co.resume().unwrap();
    assert!(co.is_finished());
    assert_eq!(out.borrow_mut().take().unwrap().unwrap(), 0);
    assert_eq!(
        ended.load(Ordering::SeqCst),
        1,
        "shutdown returned before the job ended"
    );
}

/// In a child forked after a runtime was built, none of its threads exist. Before, a spawn there
/// was posted to a queue nobody takes from (its join waited for ever), a join of a coroutine
/// still running in the parent waited for ever, and shutting the runtime down (or dropping it)
/// panicked in std's join. Now each reports an error at once, and `evco::run` works as ever.
#[test]
fn a_forked_child_gets_errors_from_its_parents_runtime_not_hangs() {
    let Some(_w) = common::in_child(
        "a_forked_child_gets_errors_from_its_parents_runtime_not_hangs",
        30,
    ) else {
        return;
    };
    let rt = runtime(2);
    assert_eq!(rt.spawn(|| 1).join().unwrap(), 1);
    let (tx, rx) = mpsc::channel::<()>();
    let running = rt.spawn(move || {
        let _ = rx.recv();
    });
    // SAFETY: the child only runs Rust code that allocates and makes its own threads; the
    // parent's locks it could meet (the allocator's) are taken care of by the C library.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _w = watchdog(20); // the parent's watchdog thread is not here
            let e = io_error(rt.spawn(|| 2).join().unwrap_err());
            assert!(e.to_string().contains("forked"), "{e}");
            let e = io_error(running.join().unwrap_err());
            assert!(e.to_string().contains("forked"), "{e}");
            let e = rt.serve("127.0.0.1:0", |_| {}).unwrap_err();
            assert!(e.to_string().contains("forked"), "{e}");
            // A closure that never ran is block_on's error.
            let e = rt.block_on(|| 4).unwrap_err();
            assert!(e.to_string().contains("forked"), "{e}");
            assert_eq!(evco::run(|| evco::spawn(|| 3).join().unwrap()), 3);
            let e = rt.shutdown(BOUND).unwrap_err();
            assert!(e.to_string().contains("forked"), "{e}");
        }));
        // SAFETY: ends the forked child at once, running nothing of the parent's.
        unsafe { libc::_exit(i32::from(code.is_err())) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; writes its status to `status`.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child failed (status {status:#x})"
    );
    drop(tx);
    running.join().unwrap();
    rt.shutdown(BOUND).unwrap();
    println!("child-finished");
}

/// A `serve` that reaches a thread after its shutdown closed the listeners (while it waits for
/// its coroutines) starts no accept loop there: one would be a coroutine that never ends, and a
/// shutdown with no deadline would wait for it for ever.
#[test]
fn a_serve_that_arrives_during_shutdown_does_not_keep_the_thread_alive() {
    let _w = watchdog(30);
    let rt = runtime(1);
    let handle = rt.handle().clone();
    let first = rt.serve("127.0.0.1:0", |_| {}).unwrap();
    // Keeps the thread in its shutdown's wait for coroutines until released.
    let (release, held) = evco::sync::shared::oneshot::channel::<()>();
    let holder = rt.spawn(move || {
        let _ = held.recv();
    });
    let stopper = std::thread::spawn(move || rt.shutdown(Duration::MAX));
    // The listeners are closed once a connect is refused.
    loop {
        match std::net::TcpStream::connect(first) {
            Ok(_) => std::thread::yield_now(),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("connect: {e}"),
        }
    }
    let late = handle.serve("127.0.0.1:0", |_| {});
    drop(release);
    holder.join().unwrap();
    assert_eq!(
        stopper.join().unwrap().unwrap(),
        0,
        "nothing was left to cancel"
    );
    if let Ok(addr) = late {
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    }
}

/// `shutdown` from one of the runtime's own coroutines cannot join the threads; it says so, but
/// it does stop them, with the timeout it was given (before, its error said the runtime could
/// not be shut down, and the runtime's drop then stopped it anyway with the default timeout).
#[test]
fn shutdown_from_a_runtime_thread_stops_it_with_its_timeout_and_says_so() {
    let _w = watchdog(30);
    let rt = runtime(2);
    let handle = rt.handle().clone();
    let sleeper = rt
        .spawn_on(1, || evco::time::sleep(Duration::from_secs(3600)))
        .unwrap();
    let e = handle
        .spawn_on(0, move || rt.shutdown(Duration::ZERO).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Deadlock);
    assert!(
        e.to_string().contains("stops (with the timeout given)"),
        "{e}"
    );
    let p = sleeper.join().unwrap_err();
    assert!(p.is::<Cancelled>(), "{}", panic_text(&p));
}
