//! The safe libevent layer: `EventBase` and `Event` against real fds and timers.

mod common;

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{read_byte, socketpair, watchdog, write_byte};
use evco::event::{Event, EventBase, LoopExit, What};

#[test]
fn a_one_shot_read_event_fires_exactly_once() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let (a, b) = socketpair();
    let fired = Rc::new(Cell::new(0));
    let f = fired.clone();
    let ev = Event::new(&base, a.as_raw_fd(), What::READ, move |what| {
        assert!(what.contains(What::READ));
        f.set(f.get() + 1);
    })
    .unwrap();
    ev.add(None).unwrap();
    write_byte(&b);
    base.dispatch().unwrap();
    assert_eq!(fired.get(), 1);
    // Still readable (we never read), but a one-shot event is no longer pending.
    assert!(!ev.is_pending());
    assert_eq!(base.added_events(), 0);
    assert_eq!(base.loop_nonblock().unwrap(), LoopExit::NoEvents);
    assert_eq!(fired.get(), 1);
}

#[test]
fn a_persistent_read_event_fires_on_every_readiness() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let (a, b) = socketpair();
    let fired = Rc::new(Cell::new(0));
    let f = fired.clone();
    let base2 = base.clone();
    let a2 = a.as_raw_fd();
    let writer = Rc::new(b);
    let w2 = writer.clone();
    let ev = Event::new(&base, a2, What::READ | What::PERSIST, move |_| {
        // SAFETY: `a2` is the fd of `a`, which outlives the event and its callbacks.
        let a = unsafe { std::os::fd::BorrowedFd::borrow_raw(a2) };
        let mut buf = [0u8; 1];
        assert_eq!(
            // SAFETY: reads at most 1 byte into `buf`, which is 1 byte long.
            unsafe { libc::read(a.as_raw_fd(), buf.as_mut_ptr().cast(), 1) },
            1
        );
        f.set(f.get() + 1);
        if f.get() < 5 {
            write_byte(&w2);
        } else {
            base2.loopbreak().unwrap();
        }
    })
    .unwrap();
    ev.add(None).unwrap();
    write_byte(&writer);
    base.dispatch().unwrap();
    assert_eq!(fired.get(), 5);
    assert!(
        ev.is_pending(),
        "a persistent event stays pending after it fires"
    );
    drop(ev);
    assert_eq!(base.added_events(), 0);
}

#[test]
fn a_timer_fires_after_its_timeout_and_not_before() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let fired_at = Rc::new(Cell::new(None));
    let f = fired_at.clone();
    let ev = Event::timer(&base, move |what| {
        assert!(what.contains(What::TIMEOUT));
        f.set(Some(Instant::now()));
    })
    .unwrap();
    let start = Instant::now();
    ev.add(Some(Duration::from_millis(30))).unwrap();
    // A non-blocking pass right away must not run it.
    base.loop_nonblock().unwrap();
    assert!(fired_at.get().is_none(), "timer fired before its timeout");
    base.dispatch().unwrap();
    let at = fired_at.get().expect("timer never fired");
    assert!(at.duration_since(start) >= Duration::from_millis(30));
}

#[test]
fn an_fd_wait_that_times_out_reports_ev_timeout() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let (a, _b) = socketpair();
    let got = Rc::new(Cell::new(What::NONE));
    let g = got.clone();
    let ev = Event::new(&base, a.as_raw_fd(), What::READ, move |what| g.set(what)).unwrap();
    ev.add(Some(Duration::from_millis(5))).unwrap();
    base.dispatch().unwrap();
    assert!(got.get().contains(What::TIMEOUT));
    assert!(!got.get().contains(What::READ));
}

/// A one-shot fd event with a timeout that readiness fired first has spent its deadline: a
/// later hand-made `activate(TIMEOUT)` runs the callback (it is not taken for the coarse
/// clock's early timeout and quietly added again).
#[test]
fn a_timeout_activated_by_hand_after_readiness_fired_runs_the_callback() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let (a, b) = socketpair();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let ev = Event::new(&base, a.as_raw_fd(), What::READ, move |what| {
        s.borrow_mut().push(what)
    })
    .unwrap();
    ev.add(Some(Duration::from_secs(60))).unwrap();
    write_byte(&b);
    base.dispatch().unwrap();
    assert_eq!(seen.borrow().len(), 1);
    assert!(seen.borrow()[0].contains(What::READ));
    ev.activate(What::TIMEOUT);
    base.loop_nonblock().unwrap();
    assert_eq!(
        seen.borrow().len(),
        2,
        "the activated timeout was swallowed"
    );
    assert!(seen.borrow()[1].contains(What::TIMEOUT));
    assert!(!ev.is_pending());
}

/// A one-shot timer activated by hand long before its deadline runs its callback then, once:
/// the activation is not taken for the coarse clock's early timeout and added again.
#[test]
fn a_timer_activated_by_hand_before_its_deadline_runs_the_callback_then() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let ev = Event::timer(&base, move |what| s.borrow_mut().push(what)).unwrap();
    ev.add(Some(Duration::from_secs(60))).unwrap();
    ev.activate(What::TIMEOUT);
    base.loop_nonblock().unwrap();
    assert_eq!(
        seen.borrow().len(),
        1,
        "the activated timeout was swallowed"
    );
    assert!(seen.borrow()[0].contains(What::TIMEOUT));
    // libevent deleted the one-shot event before its callback; nothing is left to fire.
    assert!(!ev.is_pending());
}

#[test]
fn dropping_an_event_before_it_fires_means_its_callback_never_runs() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let (a, b) = socketpair();
    let fired = Rc::new(Cell::new(false));
    let dropped = Rc::new(Cell::new(false));
    struct Flag(Rc<Cell<bool>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let flag = Flag(dropped.clone());
    let f = fired.clone();
    let ev = Event::new(&base, a.as_raw_fd(), What::READ, move |_| {
        let _keep = &flag;
        f.set(true);
    })
    .unwrap();
    ev.add(None).unwrap();
    write_byte(&b);
    drop(ev);
    assert!(
        dropped.get(),
        "the closure (and what it owns) is freed with the event"
    );
    assert_eq!(base.added_events(), 0);
    // Run the loop: nothing may fire into the freed closure.
    assert_eq!(base.loop_nonblock().unwrap(), LoopExit::NoEvents);
    assert!(!fired.get());
    assert!(read_byte(&a));
}

#[test]
fn dropping_an_event_inside_its_own_callback_is_safe() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let (a, b) = socketpair();
    let slot: Rc<RefCell<Option<Event>>> = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let ev = Event::new(
        &base,
        a.as_raw_fd(),
        What::READ | What::PERSIST,
        move |_| {
            c.set(c.get() + 1);
            // Drop ourselves (a persistent event) while our closure runs.
            let me = s.borrow_mut().take();
            drop(me);
            // Touch captured state after the drop: still alive until we return.
            c.set(c.get() + 1);
        },
    )
    .unwrap();
    ev.add(None).unwrap();
    *slot.borrow_mut() = Some(ev);
    write_byte(&b);
    base.dispatch().unwrap();
    assert_eq!(
        count.get(),
        2,
        "ran once, and the persistent event stopped after its drop"
    );
    assert_eq!(base.added_events(), 0);
}

#[test]
fn a_borrowed_base_is_not_freed_by_evco() {
    let _w = watchdog(20);
    let owner = EventBase::new().unwrap();
    let raw = owner.as_raw();
    {
        // SAFETY: `owner` outlives the borrowed handle and everything made on it.
        let borrowed = unsafe { EventBase::from_raw(raw) }.unwrap();
        assert!(!borrowed.is_owned());
        let ev = Event::timer(&borrowed, |_| {}).unwrap();
        ev.add(Some(Duration::from_millis(1))).unwrap();
        borrowed.dispatch().unwrap();
    }
    // The base is still alive and usable through its owner.
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    let ev = Event::timer(&owner, move |_| f.set(true)).unwrap();
    ev.add(Some(Duration::from_millis(1))).unwrap();
    owner.dispatch().unwrap();
    assert!(fired.get());
}

#[test]
fn from_raw_rejects_a_null_base() {
    // SAFETY: null is checked, not dereferenced.
    let err = unsafe { EventBase::from_raw(std::ptr::null_mut()) }.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn a_panic_inside_a_callback_is_caught_and_reported_and_the_loop_survives() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let after = Rc::new(Cell::new(false));
    let bad = Event::timer(&base, |_| panic!("boom in callback")).unwrap();
    let a = after.clone();
    let good = Event::timer(&base, move |_| a.set(true)).unwrap();
    bad.add(Some(Duration::from_millis(1))).unwrap();
    good.add(Some(Duration::from_millis(2))).unwrap();
    base.dispatch().unwrap();
    assert!(after.get(), "the loop kept running after the panic");
    let panics = base.take_panics();
    assert_eq!(panics.len(), 1);
    assert_eq!(panics[0].downcast_ref::<&str>(), Some(&"boom in callback"));
}

#[test]
fn the_base_reports_its_backend_and_libevent_version() {
    let base = EventBase::new().unwrap();
    let expected = if std::env::var_os("EVENT_NOEPOLL").is_some() {
        "poll"
    } else {
        "epoll"
    };
    assert!(base.backend().starts_with(expected), "{}", base.backend());
    assert!(
        evco::event::version().starts_with("2."),
        "{}",
        evco::event::version()
    );
}

#[test]
fn a_signal_event_runs_its_closure_on_delivery() {
    let _w = watchdog(20);
    let base = EventBase::new().unwrap();
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    let b2 = base.clone();
    let ev = Event::signal(&base, libc::SIGUSR1, move |what| {
        assert!(what.contains(What::SIGNAL));
        g.set(g.get() + 1);
        b2.loopbreak().unwrap();
    })
    .unwrap();
    ev.add(None).unwrap();
    // SAFETY: raise has no memory-safety preconditions; libevent handles SIGUSR1 now.
    unsafe { libc::raise(libc::SIGUSR1) };
    base.dispatch().unwrap();
    assert_eq!(got.get(), 1);
}
