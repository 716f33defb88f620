//! The scheduler: spawn, run, join, yield, waits on real fds and timers, cancellation.

mod common;

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use common::{DOORBELL, DropCount, added_events, read_byte, socketpair, watchdog, write_byte};
use evco::coroutine::{Builder, Cancelled};
use evco::io::{Interest, wait};

#[test]
fn run_returns_the_result_after_every_spawned_coroutine_finished() {
    let _w = watchdog(20);
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    let v = evco::run(move || {
        for i in 0..10 {
            let d = d.clone();
            // Detached: run must still wait for them.
            drop(evco::spawn(move || {
                evco::time::sleep(Duration::from_millis(i));
                d.set(d.get() + 1);
            }));
        }
        42
    });
    assert_eq!(v, 42);
    assert_eq!(done.get(), 10);
    assert_eq!(evco::scheduler::live_coroutines(), 0);
}

#[test]
fn coroutines_interleave_through_sleep_in_timer_order() {
    let _w = watchdog(20);
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    evco::run(move || {
        let mut hs = Vec::new();
        for (name, ms) in [("c", 30u64), ("a", 10), ("b", 20)] {
            let l = l.clone();
            hs.push(evco::spawn(move || {
                l.borrow_mut().push(format!("{name}-start"));
                evco::time::sleep(Duration::from_millis(ms));
                l.borrow_mut().push(format!("{name}-end"));
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_eq!(
        *log.borrow(),
        ["c-start", "a-start", "b-start", "a-end", "b-end", "c-end"]
    );
}

#[test]
fn yield_now_round_robins_in_spawn_order() {
    let _w = watchdog(20);
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    evco::run(move || {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let l = l.clone();
                evco::spawn(move || {
                    for round in 0..3 {
                        l.borrow_mut().push((round, i));
                        evco::yield_now().unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let expected: Vec<_> = (0..3).flat_map(|r| (0..3).map(move |i| (r, i))).collect();
    assert_eq!(*log.borrow(), expected);
}

#[test]
fn fd_waits_interleave_between_a_reader_and_a_writer() {
    let _w = watchdog(20);
    let (a, b) = socketpair();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2) = (log.clone(), log.clone());
    evco::run(move || {
        let reader = evco::spawn(move || {
            for i in 0..3 {
                wait(a.as_raw_fd(), Interest::READABLE, None).unwrap();
                assert!(read_byte(&a));
                l1.borrow_mut().push(format!("read{i}"));
            }
        });
        let writer = evco::spawn(move || {
            for i in 0..3 {
                l2.borrow_mut().push(format!("write{i}"));
                write_byte(&b);
                evco::time::sleep(Duration::from_millis(1));
            }
        });
        reader.join().unwrap();
        writer.join().unwrap();
    });
    assert_eq!(
        *log.borrow(),
        ["write0", "read0", "write1", "read1", "write2", "read2"]
    );
}

#[test]
fn a_wait_is_resumed_exactly_once_and_leaves_no_event_registered() {
    let _w = watchdog(20);
    let (a, b) = socketpair();
    let resumed = Rc::new(Cell::new(0));
    let r = resumed.clone();
    evco::run(move || {
        let before = added_events();
        let waiter = evco::spawn(move || {
            let ready = wait(a.as_raw_fd(), Interest::READABLE, None).unwrap();
            assert!(ready.is_readable());
            r.set(r.get() + 1);
            // Do not read: the fd stays readable. A stale persistent event would fire again.
            evco::time::sleep(Duration::from_millis(5));
            a
        });
        evco::yield_now().unwrap();
        assert_eq!(
            added_events(),
            before + 1 + DOORBELL,
            "the waiter registered one event"
        );
        write_byte(&b);
        let a = waiter.join().unwrap();
        assert_eq!(added_events(), before, "no event left registered");
        assert!(read_byte(&a));
    });
    assert_eq!(resumed.get(), 1);
}

#[test]
fn a_wait_times_out_with_timed_out_and_removes_its_event() {
    let _w = watchdog(20);
    let (a, _b) = socketpair();
    evco::run(move || {
        let before = added_events();
        let err = wait(
            a.as_raw_fd(),
            Interest::READABLE,
            Some(Duration::from_millis(5)),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert_eq!(added_events(), before);
    });
}

#[test]
fn waiting_on_an_fd_another_coroutine_closes_is_an_error_without_a_stale_callback() {
    let _w = watchdog(20);
    let (a, b) = socketpair();
    let raw = a.into_raw_fd();
    evco::run(move || {
        let before = added_events();
        let waiter = evco::spawn(move || wait(raw, Interest::READABLE, None));
        let closer = evco::spawn(move || evco::io::close(raw));
        closer.join().unwrap().unwrap();
        let err = waiter.join().unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(added_events(), before);
        drop(b);
        // The fd number is reused by a new socket that becomes readable: nothing registered
        // for the old fd may fire.
        let (c, d) = socketpair();
        assert_eq!(c.as_raw_fd(), raw, "the closed fd number is reused");
        write_byte(&d);
        evco::time::sleep(Duration::from_millis(2));
        assert_eq!(added_events(), before);
        assert!(read_byte(&c));
    });
}

#[test]
fn waiting_on_a_bad_fd_is_ebadf() {
    let _w = watchdog(20);
    evco::run(|| {
        let err = wait(1_000_000, Interest::READABLE, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = wait(-1, Interest::READABLE, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    });
}

#[test]
fn a_panic_in_one_coroutine_leaves_the_others_running_and_join_returns_the_payload() {
    let _w = watchdog(20);
    let finished = Rc::new(Cell::new(0));
    let f = finished.clone();
    evco::run(move || {
        let others: Vec<_> = (0..5)
            .map(|i| {
                let f = f.clone();
                evco::spawn(move || {
                    evco::time::sleep(Duration::from_millis(i));
                    f.set(f.get() + 1);
                })
            })
            .collect();
        let bad = evco::spawn(|| -> u32 { panic!("deliberate") });
        let payload = bad.join().unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"deliberate"));
        for h in others {
            h.join().unwrap();
        }
    });
    assert_eq!(finished.get(), 5);
}

#[test]
fn cancelling_a_suspended_coroutine_runs_its_destructors_and_removes_its_event() {
    let _w = watchdog(20);
    let (a, b) = socketpair();
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let fd = a.as_raw_fd();
    evco::run(move || {
        let before = added_events();
        let h = evco::spawn(move || {
            let _flag = DropCount(d);
            let _ = wait(fd, Interest::READABLE, None);
            unreachable!("a cancelled coroutine never returns from its wait");
        });
        evco::yield_now().unwrap();
        assert_eq!(added_events(), before + 1 + DOORBELL);
        h.cancel().unwrap();
        assert!(h.is_finished());
        assert_eq!(added_events(), before, "cancel removed the wait event");
        // Make the old fd readable and run the loop: nothing may fire into the freed coroutine.
        write_byte(&b);
        evco::time::sleep(Duration::from_millis(2));
        let payload = h.join().unwrap_err();
        assert!(payload.downcast_ref::<Cancelled>().is_some());
        assert!(read_byte(&a));
    });
    assert_eq!(drops.get(), 1, "destructor ran exactly once");
}

#[test]
fn shutdown_cancels_coroutines_parked_on_every_kind_of_wait() {
    let _w = watchdog(20);
    let drops = Rc::new(Cell::new(0));
    let base = evco::event::EventBase::new().unwrap();
    let guard = evco::scheduler::enter(base.clone()).unwrap();
    let (a, _b) = socketpair();
    let a = Rc::new(a);
    let mut handles = Vec::new();
    // fd wait, timer, park (join on a never-finishing coroutine), and a yield.
    let blocker = {
        let (d, a) = (drops.clone(), a.clone());
        evco::spawn(move || {
            let _f = DropCount(d);
            let _ = wait(a.as_raw_fd(), Interest::READABLE, None);
        })
    };
    {
        let d = drops.clone();
        handles.push(evco::spawn(move || {
            let _f = DropCount(d);
            evco::time::sleep(Duration::from_secs(3600));
        }));
    }
    {
        let d = drops.clone();
        handles.push(evco::spawn(move || {
            let _f = DropCount(d);
            let _ = blocker.join();
        }));
    }
    // Run until all three are suspended.
    base.loop_nonblock().unwrap();
    assert_eq!(evco::scheduler::live_coroutines(), 3);
    // The fd wait's event, the timer alarm, and the reactor's doorbell.
    assert_eq!(base.added_events(), 2 + DOORBELL);
    drop(guard);
    assert_eq!(drops.get(), 3, "every parked coroutine was unwound");
    assert_eq!(base.added_events(), 0, "and its event removed");
    for h in handles {
        assert!(h.is_finished());
        // Its scheduler is gone: cancelling a finished coroutine is Ok, and reads nothing of
        // the freed scheduler (Memcheck in CI sees it if it does).
        h.cancel().unwrap();
        assert!(h.join().unwrap_err().downcast_ref::<Cancelled>().is_some());
    }
    // The base is still ours and runs nothing stale.
    base.loop_nonblock().unwrap();
}

#[test]
fn a_host_running_its_own_loop_drives_spawned_coroutines() {
    let _w = watchdog(20);
    let base = evco::event::EventBase::new().unwrap();
    // SAFETY: `base` outlives the borrowed handle and the scheduler.
    let borrowed = unsafe { evco::event::EventBase::from_raw(base.as_raw()) }.unwrap();
    let guard = evco::scheduler::enter(borrowed).unwrap();
    let out = Rc::new(Cell::new(0));
    let o = out.clone();
    let _h = evco::spawn(move || {
        evco::time::sleep(Duration::from_millis(2));
        o.set(7);
    });
    // The host's own dispatch, not evco's.
    base.dispatch().unwrap();
    assert_eq!(out.get(), 7);
    drop(guard);
}

#[test]
fn misuse_outside_a_coroutine_is_an_error() {
    let (a, _b) = socketpair();
    assert_eq!(
        wait(a.as_raw_fd(), Interest::READABLE, None)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        evco::yield_now().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(evco::coroutine::suspend().is_err());
    assert!(!evco::coroutine::is_coroutine());
    assert!(evco::coroutine::current().is_none());
}

#[test]
fn a_coroutine_joining_itself_gets_an_error() {
    let _w = watchdog(20);
    evco::run(|| {
        let slot: Rc<RefCell<Option<evco::JoinHandle<bool>>>> = Rc::new(RefCell::new(None));
        let s = slot.clone();
        let probe = evco::spawn(move || {
            evco::yield_now().unwrap();
            let me = s.borrow_mut().take().unwrap();
            let err = me.join().unwrap_err();
            err.downcast_ref::<std::io::Error>().unwrap().kind() == ErrorKind::Deadlock
        });
        let observer = evco::spawn(move || ());
        // The probe gets its own handle; the observer only lets the loop run.
        let id = probe.id();
        *slot.borrow_mut() = Some(probe);
        observer.join().unwrap();
        assert!(id.as_u64() > 0);
    });
}

#[test]
fn current_reports_id_and_name_inside_a_coroutine() {
    let _w = watchdog(20);
    evco::run(|| {
        let h = Builder::new()
            .name("worker")
            .stack_size(128 * 1024)
            .spawn(|| {
                let me = evco::coroutine::current().unwrap();
                (me.id(), me.name().map(str::to_owned), me.stack_size())
            })
            .unwrap();
        let id = h.id();
        let (got_id, name, size) = h.join().unwrap();
        assert_eq!(got_id, id);
        assert_eq!(name.as_deref(), Some("worker"));
        assert_eq!(size, 128 * 1024);
        assert!(evco::coroutine::is_coroutine());
    });
}

#[test]
fn join_outside_a_coroutine_drives_the_loop() {
    let _w = watchdog(20);
    let h = evco::spawn(|| {
        evco::time::sleep(Duration::from_millis(1));
        5
    });
    assert_eq!(h.join().unwrap(), 5);
}

#[test]
fn a_deadlock_is_reported_not_hung() {
    let _w = watchdog(20);
    let r = std::thread::spawn(|| {
        evco::run(|| {
            // Two coroutines joining each other: nothing can ever wake either.
            let slot: Rc<RefCell<Option<evco::JoinHandle<()>>>> = Rc::new(RefCell::new(None));
            let s = slot.clone();
            let first = evco::spawn(move || {
                evco::yield_now().unwrap();
                let second = s.borrow_mut().take().unwrap();
                second.join().unwrap();
            });
            let second = evco::spawn(move || first.join().unwrap());
            *slot.borrow_mut() = Some(second);
        })
    })
    .join();
    let payload = r.unwrap_err();
    let msg = evco_panic_message(&payload);
    assert!(msg.contains("deadlock"), "{msg}");
}

fn evco_panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A panic of `run`'s root coroutine ends the run at once, as a panic in `main` ends a program:
/// the coroutines still alive are cancelled (their destructors run) and the panic reaches
/// `run`'s caller. Before, `run` waited for every other coroutine (here, one sleeping an hour)
/// before it re-raised the panic (the child's watchdog ended it).
#[test]
fn a_panic_of_runs_root_ends_the_run_and_cancels_the_rest() {
    let Some(_w) = common::in_child("a_panic_of_runs_root_ends_the_run_and_cancels_the_rest", 10)
    else {
        return;
    };
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        evco::run(move || {
            evco::spawn(move || {
                let _f = DropCount(d);
                evco::time::sleep(Duration::from_secs(3600));
            });
            evco::yield_now().unwrap();
            panic!("root gives up");
        })
    }));
    let payload = r.expect_err("run re-raises the root's panic");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"root gives up"));
    assert_eq!(
        drops.get(),
        1,
        "the sleeper was cancelled and its destructors ran"
    );
    assert_eq!(evco::scheduler::live_coroutines(), 0);
    println!("child-finished");
}
