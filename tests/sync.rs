//! evco::sync::mpsc: channels between coroutines of one thread, on a real scheduler and loop.

mod common;

use std::cell::RefCell;
use std::io::ErrorKind;
use std::rc::Rc;
use std::time::Duration;

use common::{Log, added_events, note, watchdog};
use evco::coroutine::Cancelled;
use evco::sync::mpsc::{self, RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

#[test]
fn unbounded_channel_delivers_in_order_and_send_never_waits() {
    let _w = watchdog(20);
    let got = evco::run(|| {
        let (tx, rx) = mpsc::channel();
        let producer = evco::spawn(move || {
            for i in 0..10_000u32 {
                tx.send(i).unwrap();
            }
            // Everything was queued without the receiver running once.
            tx.len()
        });
        let queued = producer.join().unwrap();
        (queued, rx.iter().collect::<Vec<_>>())
    });
    assert_eq!(got.0, 10_000);
    assert_eq!(got.1, (0..10_000).collect::<Vec<_>>());
}

#[test]
fn bounded_send_parks_while_full_and_resumes_when_the_receiver_makes_room() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        let (tx, rx) = mpsc::bounded(2);
        let lp = l.clone();
        let producer = evco::spawn(move || {
            for i in 0..4 {
                tx.send(i).unwrap();
                note(&lp, format!("sent {i}"));
            }
        });
        // Let the producer fill the channel and park on the third send.
        evco::yield_now().unwrap();
        note(&l, format!("queued {}", rx.len()));
        for _ in 0..4 {
            let v = rx.recv().unwrap();
            note(&l, format!("got {v}"));
        }
        producer.join().unwrap();
    });
    let log = log.borrow();
    assert_eq!(
        log[..3],
        ["sent 0", "sent 1", "queued 2"],
        "a full channel parks its sender: {log:?}"
    );
    // Each receive makes room for exactly one more send.
    let sent = |i| log.iter().position(|s| *s == format!("sent {i}")).unwrap();
    let got = |i| log.iter().position(|s| *s == format!("got {i}")).unwrap();
    assert!(got(0) < sent(2), "{log:?}");
    assert!(got(1) < sent(3), "{log:?}");
}

#[test]
fn rendezvous_send_returns_only_once_a_receiver_takes_the_value() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        let (tx, rx) = mpsc::bounded::<u32>(0);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1))));
        let lp = l.clone();
        let producer = evco::spawn(move || {
            note(&lp, "send");
            tx.send(7).unwrap();
            note(&lp, "sent");
        });
        // The producer runs first and must stay parked: nobody receives yet.
        evco::yield_now().unwrap();
        evco::yield_now().unwrap();
        note(&l, "recv");
        assert_eq!(rx.recv().unwrap(), 7);
        producer.join().unwrap();
        assert_eq!(rx.len(), 0);
    });
    assert_eq!(*log.borrow(), ["send", "recv", "sent"]);
}

#[test]
fn recv_reports_disconnected_only_after_the_last_sender_is_gone_and_the_queue_is_drained() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "tx2 still lives");
        let waiter = evco::spawn(move || (rx.recv().map_err(|e| e.to_string()), rx));
        evco::yield_now().unwrap();
        tx2.send(2).unwrap();
        let (first, rx) = waiter.join().unwrap();
        assert_eq!(first, Ok(2));
        // A parked receiver is woken by the last sender's drop.
        let waiter = evco::spawn(move || matches!(rx.recv(), Err(RecvError::Disconnected)));
        evco::yield_now().unwrap();
        drop(tx2);
        assert!(waiter.join().unwrap());
    });
}

#[test]
fn send_gives_the_value_back_when_the_receiver_is_gone_even_to_a_parked_sender() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::bounded(1);
        tx.send(String::from("queued")).unwrap();
        let parked = evco::spawn(move || match tx.send(String::from("blocked")) {
            Err(SendError::Disconnected(v)) => (v, tx),
            other => panic!("expected Disconnected, got {other:?}"),
        });
        evco::yield_now().unwrap();
        drop(rx);
        let (back, tx) = parked.join().unwrap();
        assert_eq!(back, "blocked");
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_send(String::new()),
            Err(TrySendError::Disconnected(_))
        ));
    });
}

#[test]
fn values_still_queued_are_dropped_with_the_receiver() {
    let _w = watchdog(20);
    let token = Rc::new(());
    let (tx, rx) = mpsc::channel();
    for _ in 0..3 {
        tx.send(token.clone()).unwrap();
    }
    assert_eq!(Rc::strong_count(&token), 4);
    drop(rx);
    assert_eq!(Rc::strong_count(&token), 1);
    drop(tx);
}

#[test]
fn recv_timeout_times_out_on_an_empty_channel_and_leaves_no_timer_behind() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::channel::<u8>();
        let before = added_events();
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        ));
        assert_eq!(added_events(), before);
        // A value that comes before the timeout is received, and its timer deleted.
        let sender = evco::spawn(move || {
            evco::time::sleep(Duration::from_millis(1));
            tx.send(9).unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 9);
        assert_eq!(added_events(), before, "the 60 s timer must be gone");
        sender.join().unwrap();
    });
}

#[test]
fn a_notified_receiver_cancelled_before_it_runs_passes_the_value_to_the_next() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::channel::<u32>();
        let rx = Rc::new(rx);
        let (r1, r2) = (rx.clone(), rx.clone());
        let first = evco::spawn(move || r1.recv().ok());
        let second = evco::spawn(move || r2.recv().ok());
        evco::yield_now().unwrap(); // both park, `first` ahead of `second`
        tx.send(5).unwrap(); // notifies `first` ...
        first.cancel().unwrap(); // ... which is cancelled before it runs
        assert!(
            first
                .join()
                .unwrap_err()
                .downcast_ref::<Cancelled>()
                .is_some()
        );
        // Without the hand-on `second` would stay parked and run would report a deadlock.
        assert_eq!(second.join().unwrap(), Some(5));
    });
}

#[test]
fn a_cancelled_parked_sender_leaves_the_wait_list_and_others_keep_going() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::bounded(1);
        tx.send(0).unwrap();
        let (t1, t2) = (tx.clone(), tx.clone());
        let doomed = evco::spawn(move || t1.send(1).is_ok());
        let survivor = evco::spawn(move || t2.send(2).is_ok());
        evco::yield_now().unwrap(); // both park on the full channel
        doomed.cancel().unwrap();
        assert_eq!(rx.recv().unwrap(), 0); // makes room: must go to `survivor`
        assert!(survivor.join().unwrap());
        assert_eq!(rx.recv().unwrap(), 2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    });
    assert_eq!(evco::scheduler::live_coroutines(), 0);
}

#[test]
fn a_cancelled_recv_timeout_deletes_its_timer() {
    let _w = watchdog(20);
    evco::run(|| {
        let (_tx, rx) = mpsc::channel::<u8>();
        let before = added_events();
        let h = evco::spawn(move || rx.recv_timeout(Duration::from_secs(60)).is_ok());
        evco::yield_now().unwrap();
        assert_eq!(added_events(), before + 1, "the parked receiver's timer");
        h.cancel().unwrap();
        assert_eq!(added_events(), before);
    });
}

#[test]
fn many_producers_and_a_bounded_channel_deliver_every_value_exactly_once() {
    let _w = watchdog(30);
    let (count, sum) = evco::run(|| {
        let (tx, rx) = mpsc::bounded(3);
        for p in 0..8u64 {
            let tx = tx.clone();
            evco::spawn(move || {
                for i in 0..500u64 {
                    tx.send(p * 1_000_000 + i).unwrap();
                    if i % 7 == p % 7 {
                        evco::yield_now().unwrap();
                    }
                }
            });
        }
        drop(tx);
        let mut last = [None::<u64>; 8];
        let (mut count, mut sum) = (0u64, 0u64);
        for v in &rx {
            let p = (v / 1_000_000) as usize;
            assert!(last[p].is_none_or(|l| l < v), "per-producer order");
            last[p] = Some(v);
            count += 1;
            sum += v;
        }
        (count, sum)
    });
    assert_eq!(count, 8 * 500);
    let expected: u64 = (0..8u64)
        .map(|p| 500 * p * 1_000_000 + (0..500).sum::<u64>())
        .sum();
    assert_eq!(sum, expected);
}

#[test]
fn recv_outside_a_coroutine_runs_the_loop_until_a_value_comes() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::channel();
    let h = evco::spawn(move || {
        evco::time::sleep(Duration::from_millis(2));
        tx.send("from a coroutine").unwrap();
    });
    assert_eq!(rx.recv().unwrap(), "from a coroutine");
    h.join().unwrap();
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

#[test]
fn rendezvous_with_a_receiver_outside_any_coroutine() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::bounded(0);
    let h = evco::spawn(move || {
        tx.send(1).unwrap();
        tx.send(2).unwrap();
    });
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(rx.recv().unwrap(), 2);
    h.join().unwrap();
}

#[test]
fn blocking_outside_a_coroutine_with_nothing_that_could_wake_it_is_an_error_not_a_hang() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::bounded::<u8>(1);
    // A receive on the empty channel and a send on the full one both say Deadlock, with what
    // the error says, and lose nothing: the value already sent is still there.
    let check = |v: u8, says: &str| {
        match rx.recv() {
            Err(RecvError::Wait(e)) => {
                assert_eq!(e.kind(), ErrorKind::Deadlock, "{e}");
                assert!(e.to_string().contains(says), "{e}");
            }
            other => panic!("expected a Wait error, got {other:?}"),
        }
        tx.send(v).unwrap();
        match tx.send(v + 1) {
            Err(SendError::Wait(w, e)) => {
                assert_eq!(w, v + 1);
                assert_eq!(e.kind(), ErrorKind::Deadlock, "{e}");
            }
            other => panic!("expected a Wait error, got {other:?}"),
        }
        assert_eq!(rx.try_recv(), Ok(v));
    };
    // No scheduler on the thread: nothing could ever run.
    check(1, "would block forever");
    // The same with a scheduler on the thread: the loop runs, finds nothing that could ever
    // make progress, and says so (a second path to the same error).
    evco::spawn(|| ()).join().unwrap();
    check(3, "no event can wake");
}

#[test]
fn recv_in_a_bare_coroutine_is_an_error() {
    let _w = watchdog(20);
    let (_tx, rx) = mpsc::channel::<u8>();
    let saw = Rc::new(RefCell::new(None));
    let s = saw.clone();
    let mut co = evco::coroutine::Coroutine::new(move || {
        *s.borrow_mut() = Some(matches!(rx.recv(), Err(RecvError::Wait(_))));
    })
    .unwrap();
    assert!(matches!(co.resume(), Ok(evco::coroutine::Status::Finished)));
    assert_eq!(*saw.borrow(), Some(true));
}

// ---- Mutex and Condvar ----

use evco::sync::{Condvar, Mutex};

#[test]
fn a_mutex_keeps_critical_sections_that_suspend_from_interleaving() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        let m = Rc::new(Mutex::new(()));
        let hs: Vec<_> = (0..3)
            .map(|id| {
                let (m, l) = (m.clone(), l.clone());
                evco::spawn(move || {
                    let _held = m.lock().unwrap();
                    note(&l, format!("{id} in"));
                    evco::time::sleep(Duration::from_millis(1));
                    evco::yield_now().unwrap();
                    note(&l, format!("{id} out"));
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert!(!m.is_locked());
    });
    assert_eq!(
        *log.borrow(),
        ["0 in", "0 out", "1 in", "1 out", "2 in", "2 out"]
    );
}

#[test]
fn unlocking_hands_the_mutex_to_the_first_waiter_so_newcomers_cannot_barge() {
    let _w = watchdog(20);
    evco::run(|| {
        let m = Rc::new(Mutex::new(Vec::new()));
        let held = m.lock().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|id| {
                let m = m.clone();
                evco::spawn(move || m.lock().unwrap().push(id))
            })
            .collect();
        evco::yield_now().unwrap(); // all three park, in order
        drop(held);
        // Handed to waiter 0, which has not run yet: the lock is not free for a newcomer.
        assert!(m.is_locked());
        assert!(m.try_lock().is_none());
        waiters.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(*m.try_lock().unwrap(), [0, 1, 2]);
    });
}

#[test]
fn a_waiter_cancelled_after_it_was_handed_the_mutex_passes_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let m = Rc::new(Mutex::new(0));
        let held = m.lock().unwrap();
        let (m1, m2) = (m.clone(), m.clone());
        let first = evco::spawn(move || *m1.lock().unwrap() += 1);
        let second = evco::spawn(move || *m2.lock().unwrap() += 10);
        evco::yield_now().unwrap();
        drop(held); // hands the lock to `first` ...
        first.cancel().unwrap(); // ... which is cancelled before it runs
        // Without the hand-on `second` would wait forever and run would report a deadlock.
        second.join().unwrap();
        assert_eq!(*m.lock().unwrap(), 10);
        assert!(!m.is_locked());
    });
}

#[test]
fn lock_outside_a_coroutine_runs_the_loop_until_the_holder_unlocks() {
    let _w = watchdog(20);
    let m = Rc::new(Mutex::new(String::new()));
    let m2 = m.clone();
    let h = evco::spawn(move || {
        let mut s = m2.lock().unwrap();
        evco::time::sleep(Duration::from_millis(2));
        s.push_str("written under the lock");
    });
    // Let the coroutine take the lock first.
    while !m.is_locked() {
        evco::scheduler::base().unwrap().loop_once().unwrap();
    }
    assert_eq!(*m.lock().unwrap(), "written under the lock");
    h.join().unwrap();
    // Holding it and locking again outside a coroutine: nothing could unlock it.
    let held = m.lock().unwrap();
    assert_eq!(m.lock().unwrap_err().kind(), ErrorKind::Deadlock);
    drop(held);
}

#[test]
fn condvar_notify_one_wakes_waiters_in_order_and_notify_all_wakes_the_rest() {
    let _w = watchdog(20);
    let log: Log = Rc::default();
    let l = log.clone();
    evco::run(move || {
        let state = Rc::new((Mutex::new(0u32), Condvar::new()));
        let hs: Vec<_> = (0..3)
            .map(|id| {
                let (s, l) = (state.clone(), l.clone());
                evco::spawn(move || {
                    let (m, cv) = &*s;
                    let g = m.lock().unwrap();
                    let g = cv.wait(g).unwrap();
                    note(&l, format!("{id} woke at {}", *g));
                })
            })
            .collect();
        evco::yield_now().unwrap(); // all wait
        *state.0.lock().unwrap() = 1;
        state.1.notify_one();
        evco::yield_now().unwrap();
        evco::yield_now().unwrap();
        note(&l, "notify_all");
        *state.0.lock().unwrap() = 2;
        state.1.notify_all();
        hs.into_iter().for_each(|h| h.join().unwrap());
    });
    assert_eq!(
        *log.borrow(),
        ["0 woke at 1", "notify_all", "1 woke at 2", "2 woke at 2"]
    );
}

#[test]
fn condvar_wait_timeout_reports_the_timeout_and_holds_the_lock_again() {
    let _w = watchdog(20);
    evco::run(|| {
        let (m, cv) = (Mutex::new(5), Condvar::new());
        let before = added_events();
        let (g, timed_out) = cv
            .wait_timeout(m.lock().unwrap(), Duration::from_millis(2))
            .unwrap();
        assert!(timed_out);
        assert_eq!(*g, 5);
        assert!(m.is_locked());
        drop(g);
        assert!(!m.is_locked());
        assert_eq!(added_events(), before);
    });
}

#[test]
fn a_coroutine_cancelled_in_condvar_wait_leaves_the_mutex_usable() {
    let _w = watchdog(20);
    evco::run(|| {
        let state = Rc::new((Mutex::new(0), Condvar::new()));
        let s = state.clone();
        let doomed = evco::spawn(move || {
            let g = s.0.lock().unwrap();
            let _g = s.1.wait(g).unwrap();
        });
        evco::yield_now().unwrap();
        assert!(!state.0.is_locked(), "a waiter releases the lock");
        // Held here while the waiter is cancelled: an unlock on its way out would free it.
        let held = state.0.lock().unwrap();
        doomed.cancel().unwrap();
        assert!(
            state.0.is_locked(),
            "cancellation unlocks nothing it does not hold"
        );
        drop(held);
        assert!(!state.0.is_locked());
        *state.0.lock().unwrap() += 1;
        state.1.notify_all(); // nobody is left to wake
        assert_eq!(*state.0.lock().unwrap(), 1);
    });
}

/// A waiter notified and then cancelled while it waits to relock the mutex (held here)
/// passes the notification on: the other waiter wakes. Before, nobody did.
#[test]
fn a_notified_condvar_waiter_cancelled_while_relocking_passes_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let s = Rc::new((Mutex::new(0u32), Condvar::new()));
        let waiter = |s: Rc<(Mutex<u32>, Condvar)>| {
            move || {
                let g = s.1.wait(s.0.lock().unwrap()).unwrap();
                *g
            }
        };
        let first = evco::spawn(waiter(s.clone()));
        let second = evco::spawn(waiter(s.clone()));
        evco::yield_now().unwrap(); // both wait, `first` ahead
        let mut g = s.0.lock().unwrap();
        *g = 1;
        s.1.notify_one(); // to `first`
        evco::yield_now().unwrap(); // `first` wakes and parks relocking: the mutex is held
        let dbg = format!("{:?}", s.0);
        assert!(
            dbg.contains("waiters: 1"),
            "`first` waits for the mutex: {dbg}"
        );
        first.cancel().unwrap();
        assert!(first.join().is_err());
        drop(g);
        assert_eq!(
            second.join().unwrap(),
            1,
            "the notification went on to `second`"
        );
        assert!(!s.0.is_locked());
    });
}

#[test]
fn condvar_wait_outside_a_coroutine_is_an_error_and_releases_the_lock() {
    let _w = watchdog(20);
    let (m, cv) = (Mutex::new(()), Condvar::new());
    let err = cv.wait(m.lock().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!m.is_locked());
}

/// A timeout too long for `Instant` (`Duration::MAX`, what "no limit" often becomes) means no
/// timeout: the calls wait or succeed instead of panicking on the deadline's overflow.
#[test]
fn timeouts_too_long_for_instant_mean_no_timeout() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::channel();
        tx.send(5).unwrap();
        assert_eq!(rx.recv_timeout(Duration::MAX).unwrap(), 5);

        let state = Rc::new((Mutex::new(false), Condvar::new()));
        let s = state.clone();
        let notifier = evco::spawn(move || {
            *s.0.lock().unwrap() = true;
            s.1.notify_one();
        });
        let mut g = state.0.lock().unwrap();
        while !*g {
            let (g2, timed_out) = state.1.wait_timeout(g, Duration::MAX).unwrap();
            assert!(!timed_out);
            g = g2;
        }
        drop(g);
        notifier.join().unwrap();

        let (a, b) = evco::net::UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::MAX)).unwrap();
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &a, &mut byte).unwrap(), 1);
    });
}

/// The hand-on for senders and condition variables: a notified sender of a full channel, or a
/// notified `Condvar` waiter, that is cancelled before it runs passes the room or the
/// notification to the next waiter (without it the next stays parked: a deadlock error).
#[test]
fn a_notified_sender_or_condvar_waiter_cancelled_before_it_runs_passes_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::bounded::<u32>(1);
        tx.send(0).unwrap(); // full
        let (t1, t2) = (tx.clone(), tx.clone());
        let first = evco::spawn(move || t1.send(1).is_ok());
        let second = evco::spawn(move || t2.send(2).is_ok());
        evco::yield_now().unwrap(); // both park, `first` ahead of `second`
        assert_eq!(rx.try_recv().unwrap(), 0); // room: notifies `first` ...
        first.cancel().unwrap(); // ... which is cancelled before it runs
        assert!(second.join().unwrap());
        assert_eq!(rx.try_recv().unwrap(), 2);

        let state = Rc::new((Mutex::new(0u32), Condvar::new()));
        let waiter = |s: Rc<(Mutex<u32>, Condvar)>| {
            move || {
                let mut g = s.0.lock().unwrap();
                while *g == 0 {
                    g = s.1.wait(g).unwrap();
                }
                *g
            }
        };
        let first = evco::spawn(waiter(state.clone()));
        let second = evco::spawn(waiter(state.clone()));
        evco::yield_now().unwrap(); // both wait, `first` ahead
        *state.0.lock().unwrap() = 7;
        state.1.notify_one(); // notifies `first` ...
        first.cancel().unwrap(); // ... which is cancelled before it runs
        assert_eq!(second.join().unwrap(), 7);
    });
}
