//! A property test of the scheduler's life cycle.
//!
//! proptest generates a driver script: spawn coroutines that run scripts of their own (wait for
//! an fd to be readable or writable, with or without a timeout; sleep; yield; join an earlier
//! coroutine; panic), make fds readable, close waited fds with `io::close`, cancel coroutines,
//! drop their handles, let the others run. Some fds are raw socketpair ends waited on with
//! `io::wait` (one-shot events); the others belong to evco `UnixStream`s read and written
//! through the net layer (under epoll, one persistent edge-triggered registration per socket). After each case the invariants are checked:
//!
//! - every coroutine ended exactly once, and in the way its history allows (finished its
//!   script, panicked at its `Panic` step, or was cancelled by a `Cancel` of the driver);
//! - every coroutine's captured values were dropped exactly once;
//! - every join saw the same ending;
//! - every wait returned what its kind allows (readiness, `TimedOut` only with a timeout,
//!   `EBADF` only on a closed fd);
//! - no event stays registered (`added_events` back to its baseline), and after the run, fresh
//!   fds that reuse the closed numbers and become readable wake nothing (a callback into a
//!   finished coroutine would crash, or show under valgrind).
//!
//! Nothing is asserted inside `evco::run` (a failed assertion there would leave the other
//! coroutines running): violations are collected and checked after it returns.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{socketpair, watchdog, write_byte};
use evco::JoinHandle;
use evco::coroutine::Cancelled;
use evco::io::{Interest, wait};
use evco::net::UnixStream;
use proptest::prelude::*;

/// Pairs `0..RAW_PAIRS` are raw fds waited on with `io::wait`; the rest are evco `UnixStream`s.
const RAW_PAIRS: usize = 3;
const PAIRS: usize = 5;
const PANIC_MSG: &str = "scripted panic";

/// One step of a coroutine's script.
#[derive(Clone, Debug)]
enum Step {
    /// Wait for `pairs[pair]` to be readable (then take a byte if one is there).
    Read {
        pair: usize,
        timeout_ms: Option<u64>,
    },
    /// Wait for `pairs[pair]` to be writable (it always is: ends by readiness at once).
    Writable {
        pair: usize,
    },
    Sleep {
        ms: u64,
    },
    Yield,
    /// Join the coroutine spawned `back` places earlier, if its handle is still there.
    Join {
        back: usize,
    },
    /// Cancel coroutine `nth % spawned` (not itself), if its handle is still there, and drop
    /// the handle (after a join, so that the ending is recorded).
    Cancel {
        nth: usize,
    },
    Panic,
}

/// One action of the driver (the root coroutine).
#[derive(Clone, Debug)]
enum Op {
    Spawn(Vec<Step>),
    /// Make `pairs[pair]` readable.
    Poke(usize),
    /// `io::close` the fd of `pairs[pair]` (its waiters get EBADF).
    Close(usize),
    /// Cancel coroutine `n % spawned`.
    Cancel(usize),
    /// Drop the handle of coroutine `n % spawned` (detach it).
    DropHandle(usize),
    /// Let the others run: yield `n` times (even `n`) or sleep `n` ms (odd `n`).
    Run(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Reads lean on the stream pairs: their edges wake several waiters at once.
        2 => (0..PAIRS, prop::option::of(1u64..6)).prop_map(|(pair, timeout_ms)| Step::Read { pair, timeout_ms }),
        3 => (RAW_PAIRS..PAIRS, prop::option::of(1u64..6)).prop_map(|(pair, timeout_ms)| Step::Read { pair, timeout_ms }),
        1 => (0..PAIRS).prop_map(|pair| Step::Writable { pair }),
        2 => (0u64..4).prop_map(|ms| Step::Sleep { ms }),
        2 => Just(Step::Yield),
        2 => (1usize..4).prop_map(|back| Step::Join { back }),
        2 => any::<usize>().prop_map(|nth| Step::Cancel { nth }),
        1 => Just(Step::Panic),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(step(), 0..5).prop_map(Op::Spawn),
        3 => (0..PAIRS).prop_map(Op::Poke),
        1 => (0..PAIRS).prop_map(Op::Close),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::DropHandle),
        3 => any::<u8>().prop_map(|n| Op::Run(n % 6)),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Finished,
    Panicked,
    Cancelled,
}

/// What the coroutines and the driver share. Single-threaded: `Rc` and cells.
#[derive(Default)]
struct World {
    /// The waited end of each pair (closed through `io::close`), and the end that pokes it.
    fds: Vec<RawFd>,
    /// The evco stream owning `fds[p]` for the stream pairs; never dropped (`io::close` closes
    /// its fd, and deregisters it): `World`'s drop hands each one's fd out instead.
    streams: Vec<Option<ManuallyDrop<UnixStream>>>,
    pokers: Vec<OwnedFd>,
    closed: Vec<Cell<bool>>,
    handles: RefCell<Vec<Option<JoinHandle<()>>>>,
    scripts: RefCell<Vec<Vec<Step>>>,
    /// How each coroutine ended, set once (by itself, or by its guard when cancelled).
    ends: RefCell<Vec<Option<End>>>,
    /// Destructor runs of the guard each coroutine's closure owns.
    drops: RefCell<Vec<u32>>,
    cancel_requested: RefCell<Vec<bool>>,
    /// What joins saw, per coroutine (each handle is joined at most once).
    joined: RefCell<Vec<Option<End>>>,
    violations: RefCell<Vec<String>>,
}

impl World {
    fn violation(&self, v: String) {
        self.violations.borrow_mut().push(v);
    }

    fn set_end(&self, i: usize, end: End) {
        let mut ends = self.ends.borrow_mut();
        if let Some(old) = ends[i] {
            drop(ends);
            self.violation(format!("coroutine {i} ended twice: {old:?} then {end:?}"));
        } else {
            ends[i] = Some(end);
        }
    }

    fn record_join(&self, i: usize, r: std::thread::Result<()>) {
        let end = match r {
            Ok(()) => End::Finished,
            Err(p) if p.downcast_ref::<Cancelled>().is_some() => End::Cancelled,
            Err(p) if p.downcast_ref::<&str>() == Some(&PANIC_MSG) => End::Panicked,
            Err(p) => {
                let what = p
                    .downcast_ref::<std::io::Error>()
                    .map_or("unknown payload".to_string(), |e| e.to_string());
                self.violation(format!(
                    "join of coroutine {i}: unexpected payload ({what})"
                ));
                return;
            }
        };
        let mut joined = self.joined.borrow_mut();
        if joined[i].replace(end).is_some() {
            drop(joined);
            self.violation(format!("coroutine {i} joined twice"));
        }
    }
}

/// Owned by each coroutine's closure: counts its drop and classifies an ending the coroutine
/// did not record itself (a cancellation: an unwind, or a closure dropped before it ever ran).
struct Guard {
    world: Rc<World>,
    i: usize,
}

impl Drop for World {
    fn drop(&mut self) {
        // Each stream's fd was closed by `io::close`: take the streams apart without closing it
        // again (their number may be another fd's by now), so that what they hold goes.
        for s in self.streams.drain(..).flatten() {
            let _ = ManuallyDrop::into_inner(s).into_raw_fd();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let w = &self.world;
        w.drops.borrow_mut()[self.i] += 1;
        let recorded = w.ends.borrow()[self.i];
        if recorded.is_none() {
            if w.cancel_requested.borrow()[self.i] {
                w.set_end(self.i, End::Cancelled);
            } else {
                w.violation(format!(
                    "coroutine {} ended without finishing, panicking or being cancelled",
                    self.i
                ));
            }
        }
    }
}

fn run_script(world: &Rc<World>, i: usize, script: &[Step]) {
    for (k, step) in script.iter().enumerate() {
        match *step {
            Step::Read { pair, timeout_ms } if world.streams[pair].is_some() => {
                if world.closed[pair].get() {
                    continue;
                }
                let s = world.streams[pair].as_deref().unwrap();
                let timeout = timeout_ms.map(Duration::from_millis);
                s.set_read_timeout(timeout).unwrap();
                match (&*s).read(&mut [0u8; 1]) {
                    Ok(1) => {}
                    Ok(n) => world.violation(format!("{i}/{k}: stream read gave {n} bytes")),
                    Err(e) if e.kind() == ErrorKind::TimedOut && timeout.is_some() => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBADF) && world.closed[pair].get() => {
                    }
                    Err(e) => world.violation(format!("{i}/{k}: stream read on {pair}: {e}")),
                }
            }
            Step::Writable { pair } if world.streams[pair].is_some() => {
                if world.closed[pair].get() {
                    continue;
                }
                let s = world.streams[pair].as_deref().unwrap();
                match (&*s).write(b"y") {
                    Ok(1) => {}
                    Ok(n) => world.violation(format!("{i}/{k}: stream write wrote {n} bytes")),
                    Err(e) if e.raw_os_error() == Some(libc::EBADF) && world.closed[pair].get() => {
                    }
                    Err(e) => world.violation(format!("{i}/{k}: stream write on {pair}: {e}")),
                }
            }
            Step::Read { pair, timeout_ms } => {
                if world.closed[pair].get() {
                    continue;
                }
                let fd = world.fds[pair];
                let timeout = timeout_ms.map(Duration::from_millis);
                match wait(fd, Interest::READABLE, timeout) {
                    Ok(r) if r.is_readable() => {
                        // Take a byte if it is still there (another reader may have won).
                        let mut b = [0u8; 1];
                        // SAFETY: `fd` is open (not closed: checked above, and nothing
                        // switched since the wait returned); a non-blocking read of one byte.
                        unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
                    }
                    Ok(r) => world.violation(format!("{i}/{k}: read wait woke with {r:?}")),
                    Err(e) if e.kind() == ErrorKind::TimedOut && timeout.is_some() => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBADF) && world.closed[pair].get() => {
                    }
                    Err(e) => world.violation(format!("{i}/{k}: read wait on pair {pair}: {e}")),
                }
            }
            Step::Writable { pair } => {
                if world.closed[pair].get() {
                    continue;
                }
                match wait(world.fds[pair], Interest::WRITABLE, None) {
                    Ok(r) if r.is_writable() => {}
                    Ok(r) => world.violation(format!("{i}/{k}: write wait woke with {r:?}")),
                    Err(e) if e.raw_os_error() == Some(libc::EBADF) && world.closed[pair].get() => {
                    }
                    Err(e) => world.violation(format!("{i}/{k}: write wait: {e}")),
                }
            }
            Step::Sleep { ms } => evco::time::sleep(Duration::from_millis(ms)),
            Step::Yield => {
                if let Err(e) = evco::yield_now() {
                    world.violation(format!("{i}/{k}: yield: {e}"));
                }
            }
            Step::Join { back } => {
                if back > i {
                    continue;
                }
                let t = i - back;
                let h = world.handles.borrow_mut()[t].take();
                if let Some(h) = h {
                    world.record_join(t, h.join());
                }
            }
            Step::Cancel { nth } => {
                let n = world.handles.borrow().len();
                let t = nth % n;
                if t == i {
                    continue;
                }
                let h = world.handles.borrow_mut()[t].take();
                if let Some(h) = h {
                    if !h.is_finished() {
                        world.cancel_requested.borrow_mut()[t] = true;
                    }
                    if let Err(e) = h.cancel() {
                        world.violation(format!("{i}/{k}: cancel of {t}: {e}"));
                    }
                    world.record_join(t, h.join());
                }
            }
            Step::Panic => {
                world.set_end(i, End::Panicked);
                std::panic::panic_any(PANIC_MSG);
            }
        }
    }
    world.set_end(i, End::Finished);
}

fn spawn_scripted(world: &Rc<World>, script: Vec<Step>) {
    let i = world.handles.borrow().len();
    world.scripts.borrow_mut().push(script.clone());
    world.ends.borrow_mut().push(None);
    world.drops.borrow_mut().push(0);
    world.cancel_requested.borrow_mut().push(false);
    world.joined.borrow_mut().push(None);
    let guard = Guard {
        world: world.clone(),
        i,
    };
    let h = evco::spawn(move || {
        let guard = guard;
        run_script(&guard.world, i, &script);
    });
    world.handles.borrow_mut().push(Some(h));
}

fn drive(world: &Rc<World>, ops: &[Op]) {
    for op in ops {
        let spawned = world.handles.borrow().len();
        match op {
            Op::Spawn(script) => spawn_scripted(world, script.clone()),
            Op::Poke(p) => {
                if !world.closed[*p].get() {
                    // Non-blocking; a full buffer (EAGAIN) is fine.
                    // SAFETY: one byte from a local to an fd we own.
                    unsafe {
                        libc::send(
                            world.pokers[*p].as_raw_fd(),
                            b"x".as_ptr().cast(),
                            1,
                            libc::MSG_DONTWAIT,
                        )
                    };
                }
            }
            Op::Close(p) => close_pair(world, *p),
            Op::Cancel(n) if spawned > 0 => {
                let t = n % spawned;
                let handles = world.handles.borrow();
                if let Some(h) = handles[t].as_ref() {
                    if !h.is_finished() {
                        world.cancel_requested.borrow_mut()[t] = true;
                    }
                    if let Err(e) = h.cancel() {
                        world.violation(format!("cancel of {t}: {e}"));
                    }
                    if !h.is_finished() {
                        world.violation(format!("coroutine {t} still alive after cancel"));
                    }
                }
            }
            Op::DropHandle(n) if spawned > 0 => {
                let h = world.handles.borrow_mut()[n % spawned].take();
                drop(h);
            }
            Op::Cancel(_) | Op::DropHandle(_) => {}
            Op::Run(n) if n % 2 == 0 => {
                for _ in 0..*n {
                    evco::yield_now().unwrap();
                }
            }
            Op::Run(n) => evco::time::sleep(Duration::from_millis(u64::from(*n))),
        }
    }
    // Wind down: closing every fd wakes every fd waiter, and later steps skip closed fds, so
    // every coroutine reaches its end; join those whose handles are left.
    for p in 0..PAIRS {
        close_pair(world, p);
    }
    let left: Vec<(usize, JoinHandle<()>)> = world
        .handles
        .borrow_mut()
        .iter_mut()
        .enumerate()
        .filter_map(|(i, h)| Some((i, h.take()?)))
        .collect();
    for (i, h) in left {
        world.record_join(i, h.join());
    }
}

fn close_pair(world: &World, p: usize) {
    if !world.closed[p].replace(true) {
        if let Err(e) = evco::io::close(world.fds[p]) {
            world.violation(format!("io::close of pair {p}: {e}"));
        }
    }
}

/// Runs one case; returns the violations found.
fn check(ops: Vec<Op>) -> Vec<String> {
    let baseline = evco::scheduler::base().unwrap().added_events();
    let mut world = World::default();
    for p in 0..PAIRS {
        let (a, b) = socketpair();
        if p < RAW_PAIRS {
            world.fds.push(a.into_raw_fd());
            world.streams.push(None);
        } else {
            let s = UnixStream::from_std(std::os::unix::net::UnixStream::from(a)).unwrap();
            world.fds.push(s.as_raw_fd());
            world.streams.push(Some(ManuallyDrop::new(s)));
        }
        world.pokers.push(b);
        world.closed.push(Cell::new(false));
    }
    let world = Rc::new(world);
    let w = world.clone();
    evco::run(move || drive(&w, &ops));

    let mut v = world.violations.take();
    if evco::scheduler::live_coroutines() != 0 {
        v.push(format!(
            "{} coroutines alive after run",
            evco::scheduler::live_coroutines()
        ));
    }
    let added = evco::scheduler::base().unwrap().added_events();
    if added != baseline {
        v.push(format!(
            "{added} events registered after run, {baseline} before"
        ));
    }
    let scripts = world.scripts.borrow();
    let ends = world.ends.borrow();
    for (i, script) in scripts.iter().enumerate() {
        let drops = world.drops.borrow()[i];
        if drops != 1 {
            v.push(format!(
                "coroutine {i}: its closure was dropped {drops} times"
            ));
        }
        let has_panic = script.iter().any(|s| matches!(s, Step::Panic));
        match ends[i] {
            None => v.push(format!("coroutine {i} never ended")),
            Some(End::Finished) if has_panic => {
                v.push(format!("coroutine {i} finished past its Panic step"))
            }
            Some(End::Panicked) if !has_panic => {
                v.push(format!("coroutine {i} panicked without a Panic step"))
            }
            Some(End::Cancelled) if !world.cancel_requested.borrow()[i] => {
                v.push(format!("coroutine {i} cancelled without a Cancel"))
            }
            Some(_) => {}
        }
        if let Some(j) = world.joined.borrow()[i] {
            if Some(j) != ends[i] {
                v.push(format!(
                    "coroutine {i}: join saw {j:?}, it ended {:?}",
                    ends[i]
                ));
            }
        }
    }
    drop((scripts, ends));

    // Aftermath: fresh fds take the closed numbers and become readable; one more loop pass must
    // wake nothing (no event of the finished coroutines may still be registered for them).
    let fresh: Vec<_> = (0..PAIRS).map(|_| socketpair()).collect();
    for (_, b) in &fresh {
        write_byte(b);
    }
    evco::run(|| evco::time::sleep(Duration::from_millis(1)));
    let added = evco::scheduler::base().unwrap().added_events();
    if added != baseline {
        v.push(format!("{added} events registered after the aftermath run"));
    }
    v
}

/// Regression: libevent measures a timeout from the time it cached when the loop iteration
/// began, so a timed wait started late in a long drain pass got a deadline in the past and
/// returned at once (a 20 ms sleep after 50 ms of work in the same pass took 23 µs). Only a
/// lower bound is checked: a wait may end late, never early.
#[test]
fn a_timed_wait_started_late_in_a_long_pass_waits_its_full_duration() {
    let _w = watchdog(30);
    const D: Duration = Duration::from_millis(20);
    evco::run(|| {
        let (a, _b) = socketpair();
        let fd = a.as_raw_fd();
        // 50 ms of CPU work without suspending, in the same pass as the two waits below (it
        // synchronises nothing).
        let busy = evco::spawn(|| common::busy_for(Duration::from_millis(50)));
        let sleeper = evco::spawn(|| {
            let t = Instant::now();
            evco::time::sleep(D);
            t.elapsed()
        });
        let waiter = evco::spawn(move || {
            let t = Instant::now();
            let e = wait(fd, Interest::READABLE, Some(D)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TimedOut);
            t.elapsed()
        });
        busy.join().unwrap();
        let slept = sleeper.join().unwrap();
        let waited = waiter.join().unwrap();
        assert!(slept >= D, "sleep({D:?}) returned after {slept:?}");
        assert!(
            waited >= D,
            "a wait with a {D:?} timeout timed out after {waited:?}"
        );
    });
}

/// libevent's clock is CLOCK_MONOTONIC_COARSE (one tick, 4 ms here; evco does not pay for its
/// precise timers, a `timerfd_settime` per loop turn), so a timer fires up to a tick early by
/// `Instant`'s clock whenever a tick falls between adding it and the loop's next poll (about one
/// try in seven below). Every kind of timed wait must wait again for what is left: a sleep, a
/// one-shot fd wait, a registered socket's read timeout, a timed park (`recv_timeout`) and an
/// `Event` timer, all started together in each try. Sixty tries make a miss unlikely (under 1 in
/// 10,000) if the bug is back for any of them; none can fail when it is not.
#[test]
fn no_timed_wait_ends_early_by_a_clock_tick() {
    let _w = watchdog(60);
    const D: Duration = Duration::from_millis(20);
    let early = evco::run(|| {
        let early: Rc<RefCell<Vec<(&str, Duration)>>> = Rc::default();
        let (a, _b) = socketpair();
        let (stream, _peer) = UnixStream::pair().unwrap();
        stream.set_read_timeout(Some(D)).unwrap();
        let stream = Rc::new(stream);
        let (_tx, rx) = evco::sync::mpsc::channel::<()>();
        let rx = Rc::new(rx);
        let base = evco::scheduler::base().unwrap();
        for _ in 0..60 {
            let mut waits: Vec<JoinHandle<()>> = Vec::new();
            let timed = |what: &'static str, f: Box<dyn FnOnce()>| {
                let early = early.clone();
                evco::spawn(move || {
                    let t = Instant::now();
                    f();
                    let took = t.elapsed();
                    if took < D {
                        early.borrow_mut().push((what, took));
                    }
                })
            };
            waits.push(timed("sleep", Box::new(|| evco::time::sleep(D))));
            let fd = a.as_raw_fd();
            waits.push(timed(
                "fd wait",
                Box::new(move || {
                    let e = wait(fd, Interest::READABLE, Some(D)).unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::TimedOut);
                }),
            ));
            let s = stream.clone();
            waits.push(timed(
                "read timeout",
                Box::new(move || {
                    let e = (&*s).read(&mut [0u8; 8]).unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::TimedOut);
                }),
            ));
            let r = rx.clone();
            waits.push(timed(
                "recv_timeout",
                Box::new(move || assert!(r.recv_timeout(D).is_err())),
            ));
            let base = base.clone();
            waits.push(timed(
                "Event timer",
                Box::new(move || {
                    let (tx, fired) = evco::sync::mpsc::channel::<()>();
                    let ev =
                        evco::event::Event::timer(&base, move |_| tx.send(()).unwrap()).unwrap();
                    ev.add(Some(D)).unwrap();
                    fired.recv().unwrap();
                }),
            ));
            // 5 ms of work in the same pass, so that a tick passes before the loop polls.
            evco::spawn(|| common::busy_for(Duration::from_millis(5)))
                .join()
                .unwrap();
            for w in waits {
                w.join().unwrap();
            }
        }
        early.take()
    });
    assert!(
        early.is_empty(),
        "{} timed waits of {D:?} ended early, first: {:?}",
        early.len(),
        &early[..early.len().min(8)]
    );
}

/// The scheduler's timer heap: timed waits of many lengths, started in a scrambled order and of
/// every kind (sleep, fd wait, registered read, timed park), all end by their timeouts and none
/// before its own, while waits that end first (data arrives, a value is sent) leave the heap
/// without disturbing the others. (The order in which they end is the unit tests' business, in
/// `src/timer.rs`: here it would depend on how fast the coroutines start, and under valgrind a
/// later start can outweigh a shorter timeout.)
#[test]
fn timed_waits_of_every_kind_end_by_their_timeouts_and_never_early() {
    let _w = watchdog(60);
    let order = evco::run(|| {
        let order: Rc<RefCell<Vec<u64>>> = Rc::default();
        let (a, _b) = socketpair();
        let (stream, _peer) = UnixStream::pair().unwrap();
        let stream = Rc::new(stream);
        let (_tx, rx) = evco::sync::mpsc::channel::<u64>();
        let rx = Rc::new(rx);
        let mut waits = Vec::new();
        for i in 0..24u64 {
            let ms = 2 + (i * 7) % 24;
            let d = Duration::from_millis(ms);
            let order = order.clone();
            let fd = a.as_raw_fd();
            let (s, r) = (stream.clone(), rx.clone());
            waits.push(evco::spawn(move || {
                let t = Instant::now();
                match i % 4 {
                    0 => evco::time::sleep(d),
                    1 => {
                        let e = wait(fd, Interest::READABLE, Some(d)).unwrap_err();
                        assert_eq!(e.kind(), ErrorKind::TimedOut);
                    }
                    2 => {
                        s.set_read_timeout(Some(d)).unwrap();
                        let e = (&*s).read(&mut [0u8; 8]).unwrap_err();
                        assert_eq!(e.kind(), ErrorKind::TimedOut);
                    }
                    _ => assert!(r.recv_timeout(d).is_err()),
                }
                let took = t.elapsed();
                assert!(took >= d, "a {d:?} wait ended after {took:?}");
                order.borrow_mut().push(ms);
            }));
        }
        // Waits on other sockets and another channel that end before their timeouts, in
        // between: their entries must leave quietly. Each parks with its 60 s timeout before
        // the data that ends it is sent.
        let (c, d) = socketpair();
        let (stream2, peer2) = UnixStream::pair().unwrap();
        let (tx2, rx2) = evco::sync::mpsc::channel::<u64>();
        let fd = c.as_raw_fd();
        let minute = Duration::from_secs(60);
        let early = [
            evco::spawn(move || assert!(wait(fd, Interest::READABLE, Some(minute)).is_ok())),
            evco::spawn(move || {
                stream2.set_read_timeout(Some(minute)).unwrap();
                assert_eq!((&stream2).read(&mut [0u8; 8]).unwrap(), 1);
            }),
            evco::spawn(move || assert_eq!(rx2.recv_timeout(minute).unwrap(), 7)),
        ];
        evco::yield_now().unwrap();
        assert!(
            early.iter().all(|h| !h.is_finished()),
            "the early waits parked"
        );
        write_byte(&d);
        (&peer2).write_all(b"x").unwrap();
        tx2.send(7).unwrap();
        for h in early {
            h.join().unwrap();
        }
        for w in waits {
            w.join().unwrap();
        }
        // Every wait is over and its sockets closed: no timer entry (whose alarm event would
        // still be pending) and no event is left.
        drop((a, c, d, stream));
        assert_eq!(
            evco::scheduler::base().unwrap().added_events(),
            0,
            "a timed wait that ended left its timer or event behind"
        );
        order.take()
    });
    let mut ended = order;
    ended.sort();
    let want: Vec<u64> = {
        let mut w: Vec<u64> = (0..24u64).map(|i| 2 + (i * 7) % 24).collect();
        w.sort();
        w
    };
    assert_eq!(ended, want, "every timed wait ended once, by its timeout");
}

/// With every timer gone, a blocking call outside coroutines that nothing can complete reports a
/// deadlock at once instead of hanging: the alarm's event is not left pending.
#[test]
fn a_finished_timed_wait_leaves_no_event_that_hides_a_deadlock() {
    let _w = watchdog(30);
    // A timer that expires...
    evco::spawn(|| evco::time::sleep(Duration::from_millis(3)))
        .join()
        .unwrap();
    // ...and one that is taken out when its coroutine is cancelled mid-wait.
    let (_tx, rx) = evco::sync::mpsc::channel::<u8>();
    let long = evco::spawn(move || {
        let _ = rx.recv_timeout(Duration::from_secs(3600));
    });
    evco::spawn(|| ()).join().unwrap();
    long.cancel().unwrap();
    // A pending alarm would keep this call in epoll_wait for an hour (the watchdog's failure).
    let (_tx2, rx2) = evco::sync::mpsc::channel::<u8>();
    let e = rx2.recv().unwrap_err();
    assert!(matches!(e, evco::sync::mpsc::RecvError::Wait(_)), "{e:?}");
}

/// Regression: under epoll an evco socket has one persistent edge-triggered registration, and
/// its callback resumed the waiters it had listed one after the other, holding plain pointers
/// to the rest. A resumed waiter that cancels another waiter of the same edge and drops its
/// handle frees that task: the callback then read freed memory (Memcheck: "Invalid read"; a
/// crash once the memory is reused).
#[test]
fn a_waiter_woken_by_an_edge_may_cancel_and_drop_another_waiter_of_the_same_edge() {
    let _w = watchdog(30);
    let cancelled = Rc::new(Cell::new(0));
    let c = cancelled.clone();
    evco::run(move || {
        let (a, b) = evco::net::UnixStream::pair().unwrap();
        let a = Rc::new(a);
        // Two readers of one byte; whichever the edge resumes first (epoll and poll order them
        // differently) cancels the other and drops the last handle on it.
        let handles: Rc<RefCell<[Option<JoinHandle<()>>; 2]>> = Rc::default();
        for k in 0..2 {
            let (a, slots, c) = (a.clone(), handles.clone(), c.clone());
            let h = evco::spawn(move || {
                let mut byte = [0u8; 1];
                std::io::Read::read(&mut &*a, &mut byte).unwrap();
                let other = slots.borrow_mut()[1 - k].take().unwrap();
                other.cancel().unwrap();
                // The last reference to the other task goes here.
                let p = other.join().unwrap_err();
                assert!(p.downcast_ref::<Cancelled>().is_some());
                c.set(c.get() + 1);
            });
            handles.borrow_mut()[k] = Some(h);
        }
        // Both wait for the same readable edge.
        evco::yield_now().unwrap();
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        // `run` returns once both have ended.
    });
    assert_eq!(cancelled.get(), 1, "exactly one reader cancelled the other");
    assert_eq!(evco::scheduler::live_coroutines(), 0);
}

#[test]
fn several_readers_of_one_socket_all_wake_after_the_first_waiter_was_cancelled() {
    let _w = watchdog(30);
    evco::run(|| {
        let (a, b) = evco::net::UnixStream::pair().unwrap();
        let a = Rc::new(a);
        let reader = |a: &Rc<evco::net::UnixStream>| {
            let a = a.clone();
            evco::spawn(move || {
                let mut byte = [0u8; 1];
                (&*a).read_exact(&mut byte).map(|_| byte[0])
            })
        };
        // Three readers of one direction: the first waits in the registration's cell, the
        // other two in its list.
        let first = reader(&a);
        let (second, third) = (reader(&a), reader(&a));
        evco::yield_now().unwrap();
        assert!(!first.is_finished() && !second.is_finished() && !third.is_finished());
        // Cancelling the first empties the cell while the list still holds two.
        first.cancel().unwrap();
        assert!(first.join().is_err());
        (&b).write_all(b"xy").unwrap();
        let mut got = [
            second.join().unwrap().unwrap(),
            third.join().unwrap().unwrap(),
        ];
        got.sort();
        assert_eq!(&got, b"xy");
        // A new lone reader takes the cell again and is woken by the next edge.
        let fourth = reader(&a);
        evco::yield_now().unwrap();
        assert!(!fourth.is_finished());
        (&b).write_all(b"z").unwrap();
        assert_eq!(fourth.join().unwrap().unwrap(), b'z');
    });
    assert_eq!(evco::scheduler::live_coroutines(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 64 in CI; LIFECYCLE_CASES=N for a longer hunt.
        cases: std::env::var("LIFECYCLE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_scheduler_life_cycle_keeps_its_invariants(ops in prop::collection::vec(op(), 1..32)) {
        let _w = watchdog(60);
        let violations = check(ops);
        prop_assert!(violations.is_empty(), "{:#?}", violations);
    }
}
