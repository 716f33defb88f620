//! evco::sync::shared: channels, locks and counters across real threads, each with its own
//! scheduler, and plain threads.
//!
//! Waits are made certain without sleeps: a rendezvous send (`bounded(0)`) returns only once a
//! receiver is listed, and a condition variable tells a test when its waiters are all listed.
//! Cancellation tests run on one thread, where the order of wake-ups is deterministic.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::watchdog;
use evco::coroutine::Builder;
use evco::sync::shared::{Condvar, Mutex, Semaphore, WaitGroup, mpmc, mpsc, oneshot};

/// Runs `f` as the root coroutine of a scheduler on a new thread.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::spawn(move || evco::run(f))
}

/// Long enough never to pass in a test that works; only a bound on one that does not.
const BOUND: Duration = Duration::from_secs(10);

const THREADS: usize = 4;
const PER_THREAD: usize = 10_000;
/// Coroutines of one thread alive at once: 4 threads x 10,000 at once would need 80,000 stack
/// mappings (a stack and its guard page), over vm.max_map_count's usual 65,530.
const WAVE: usize = 1_000;

#[test]
fn four_threads_of_ten_thousand_coroutines_deliver_every_message_once_and_count_exactly() {
    let _w = watchdog(120);
    let total = THREADS * PER_THREAD;
    // Thread t's coroutines send to thread t+1's receiver: every message crosses a thread.
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::bounded::<usize>(64)).unzip();
    // Requests that any thread's workers serve, each answered through its own oneshot.
    let (requests, served) = mpmc::bounded::<(usize, oneshot::Sender<usize>)>(16);
    let seen_direct: Arc<Vec<AtomicBool>> =
        Arc::new((0..total).map(|_| AtomicBool::new(false)).collect());
    let seen_served: Arc<Vec<AtomicBool>> =
        Arc::new((0..total).map(|_| AtomicBool::new(false)).collect());
    let counter = Arc::new(Mutex::new(0usize));
    let mut rxs: Vec<_> = rxs.into_iter().map(Some).collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = txs[(t + 1) % THREADS].clone();
            let rx = rxs[t].take().unwrap();
            let (requests, served) = (requests.clone(), served.clone());
            let (seen_direct, seen_served) = (seen_direct.clone(), seen_served.clone());
            let counter = counter.clone();
            on_thread(move || {
                let direct = evco::spawn(move || {
                    let mut n = 0;
                    for id in &rx {
                        assert!(!seen_direct[id].swap(true, Ordering::SeqCst), "{id} twice");
                        n += 1;
                    }
                    n
                });
                let workers: Vec<_> = (0..4)
                    .map(|_| {
                        let (served, seen_served) = (served.clone(), seen_served.clone());
                        evco::spawn(move || {
                            for (id, reply) in &served {
                                assert!(
                                    !seen_served[id].swap(true, Ordering::SeqCst),
                                    "{id} twice"
                                );
                                reply.send(id * 2).unwrap();
                            }
                        })
                    })
                    .collect();
                drop(served);
                for wave in 0..PER_THREAD / WAVE {
                    let handles: Vec<_> = (0..WAVE)
                        .map(|i| {
                            let id = t * PER_THREAD + wave * WAVE + i;
                            let (tx, requests, counter) =
                                (tx.clone(), requests.clone(), counter.clone());
                            Builder::new()
                                .stack_size(evco::coroutine::MIN_STACK_SIZE)
                                .spawn(move || {
                                    tx.send(id).unwrap();
                                    let (reply, answer) = oneshot::channel();
                                    requests.send((id, reply)).unwrap();
                                    assert_eq!(answer.recv().unwrap(), id * 2);
                                    let mut n = counter.lock().unwrap();
                                    evco::yield_now().unwrap(); // held across a suspension
                                    *n += 1;
                                })
                                .unwrap()
                        })
                        .collect();
                    handles.into_iter().for_each(|h| h.join().unwrap());
                }
                drop((tx, requests));
                workers.into_iter().for_each(|w| w.join().unwrap());
                direct.join().unwrap()
            })
        })
        .collect();
    drop((txs, requests, served));
    let received: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(received, vec![PER_THREAD; THREADS]);
    assert!(seen_direct.iter().all(|s| s.load(Ordering::SeqCst)));
    assert!(seen_served.iter().all(|s| s.load(Ordering::SeqCst)));
    assert_eq!(*counter.lock().unwrap(), total);
}

#[test]
fn the_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<mpsc::Sender<String>>();
    send_sync::<mpsc::Receiver<String>>();
    send_sync::<mpmc::Receiver<String>>();
    send_sync::<oneshot::Sender<String>>();
    send_sync::<oneshot::Receiver<String>>();
    send_sync::<Mutex<String>>();
    send_sync::<Condvar>();
    send_sync::<Semaphore>();
    send_sync::<WaitGroup>();
}

// ---- channels ----

#[test]
fn a_coroutine_parked_in_recv_is_woken_by_a_send_from_another_thread() {
    let _w = watchdog(20);
    for cap in [0, 1, usize::MAX] {
        let (tx, rx) = if cap == usize::MAX {
            mpsc::channel()
        } else {
            mpsc::bounded(cap)
        };
        let (ready_tx, ready_rx) = mpsc::bounded::<()>(0);
        let receiver = on_thread(move || {
            // The value is sent once this returns: usually after the receive below parked.
            ready_rx.recv().unwrap();
            rx.recv().unwrap()
        });
        ready_tx.send(()).unwrap(); // returns once the receiver waits for it

        tx.send(7u32).unwrap();
        assert_eq!(receiver.join().unwrap(), 7, "capacity {cap}");
    }
}

#[test]
fn a_rendezvous_send_waits_for_a_parked_receiver_on_another_thread() {
    let _w = watchdog(20);
    let (tx, rx) = mpmc::bounded::<u32>(0);
    assert_eq!(
        tx.try_send(1).unwrap_err().into_inner(),
        1,
        "no receiver waits yet"
    );
    let receiver = on_thread(move || rx.recv().unwrap());
    // Blocks this plain thread until the coroutine is listed; then hands the value over.
    tx.send(2).unwrap();
    assert_eq!(receiver.join().unwrap(), 2);
}

#[test]
fn a_plain_thread_blocked_in_recv_is_woken_by_a_coroutine() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::bounded::<u32>(0);
    let plain = thread::spawn(move || rx.recv().unwrap());
    on_thread(move || {
        // Parks this coroutine until the plain thread waits, then wakes it with the value.
        tx.send(5).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(plain.join().unwrap(), 5);
}

#[test]
fn a_sender_parked_on_a_full_channel_is_woken_by_a_receive_on_another_thread() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::bounded::<u32>(1);
    let (ready_tx, ready_rx) = mpsc::bounded::<()>(0);
    let sender = on_thread(move || {
        tx.send(1).unwrap();
        ready_rx.recv().unwrap();
        tx.send(2).unwrap(); // full: parks until the receive below
        tx.len()
    });
    ready_tx.send(()).unwrap();
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(sender.join().unwrap(), 1);
    assert_eq!(rx.recv().unwrap(), 2);
}

#[test]
fn recv_timeout_returns_timeout_in_a_coroutine_and_on_a_plain_thread() {
    let _w = watchdog(20);
    let (tx, rx) = mpmc::channel::<u32>();
    let rx2 = rx.clone();
    let in_coroutine = on_thread(move || {
        matches!(
            rx2.recv_timeout(Duration::from_millis(20)),
            Err(mpmc::RecvTimeoutError::Timeout)
        )
    });
    assert!(in_coroutine.join().unwrap());
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(mpmc::RecvTimeoutError::Timeout)
    ));
    assert_eq!(rx.try_recv(), Err(mpmc::TryRecvError::Empty));
    tx.send(3).unwrap();
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), 3);
}

#[test]
fn dropping_the_last_sender_on_another_thread_wakes_every_parked_receiver() {
    let _w = watchdog(20);
    let (tx, rx) = mpmc::channel::<u32>();
    tx.send(9).unwrap();
    let (ready_tx, ready_rx) = mpmc::bounded::<()>(0);
    let receivers: Vec<_> = (0..3)
        .map(|_| {
            let (rx, ready_rx) = (rx.clone(), ready_rx.clone());
            on_thread(move || {
                ready_rx.recv().unwrap();
                rx.iter().collect::<Vec<_>>()
            })
        })
        .collect();
    drop(rx);
    for _ in 0..3 {
        ready_tx.send(()).unwrap();
    }
    drop(tx);
    let mut got: Vec<u32> = receivers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [9],
        "the value queued before the drop is still received, once"
    );
}

#[test]
fn dropping_the_receiver_wakes_a_parked_sender_with_its_value_back() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::bounded::<String>(0);
    let (ready_tx, ready_rx) = mpsc::bounded::<()>(0);
    let sender = on_thread(move || {
        ready_tx.send(()).unwrap();
        match tx.send("kept".to_string()) {
            Err(mpsc::SendError::Disconnected(v)) => (v, tx.is_closed()),
            other => panic!("expected Disconnected, got {other:?}"),
        }
    });
    // The sender is about to send; the rendezvous keeps it parked until this drop.
    ready_rx.recv().unwrap();
    drop(rx);
    assert_eq!(sender.join().unwrap(), ("kept".to_string(), true));
}

#[test]
fn a_cancelled_receiver_that_was_notified_passes_the_value_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpmc::channel::<u32>();
        let (rx1, rx2) = (rx.clone(), rx.clone());
        let first = evco::spawn(move || rx1.recv().unwrap());
        let second = evco::spawn(move || rx2.recv().unwrap());
        evco::yield_now().unwrap(); // both park, `first` ahead
        tx.send(1).unwrap(); // notifies `first`: queued to run, not run yet
        first.cancel().unwrap();
        assert!(first.join().is_err(), "cancelled");
        evco::yield_now().unwrap(); // `second`, if notified, runs
        assert!(second.is_finished(), "the value went on to `second`");
        assert_eq!(second.join().unwrap(), 1);
        assert!(rx.try_recv().is_err());
    });
}

#[test]
fn a_cancelled_receiver_takes_itself_off_the_wait_list() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpmc::channel::<u32>();
        let (rx1, rx2) = (rx.clone(), rx.clone());
        let first = evco::spawn(move || rx1.recv().unwrap());
        let second = evco::spawn(move || rx2.recv().unwrap());
        evco::yield_now().unwrap();
        first.cancel().unwrap();
        // Were `first` still listed, this send would notify it, and nobody would take it.
        tx.send(2).unwrap();
        evco::yield_now().unwrap();
        assert!(second.is_finished(), "the send woke `second`");
        assert_eq!(second.join().unwrap(), 2);
    });
}

#[test]
fn a_cancelled_sender_that_was_notified_passes_the_room_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = mpsc::bounded::<u32>(1);
        tx.send(0).unwrap();
        let (tx1, tx2) = (tx.clone(), tx.clone());
        let first = evco::spawn(move || tx1.send(1).unwrap());
        let second = evco::spawn(move || tx2.send(2).unwrap());
        evco::yield_now().unwrap(); // both park on the full channel
        assert_eq!(rx.recv().unwrap(), 0); // notifies `first`
        first.cancel().unwrap();
        assert!(first.join().is_err());
        evco::yield_now().unwrap();
        assert!(second.is_finished(), "the room went on to `second`");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [2]);
    });
}

// ---- oneshot ----

#[test]
fn oneshot_wakes_a_parked_coroutine_from_another_thread() {
    let _w = watchdog(20);
    let (tx, rx) = oneshot::channel::<String>();
    let (ready_tx, ready_rx) = mpsc::bounded::<()>(0);
    let receiver = on_thread(move || {
        ready_rx.recv().unwrap();
        rx.recv().unwrap()
    });
    ready_tx.send(()).unwrap();
    tx.send("hi".to_string()).unwrap();
    assert_eq!(receiver.join().unwrap(), "hi");
}

#[test]
fn oneshot_wakes_a_plain_thread_from_a_coroutine_and_closes_on_sender_drop() {
    let _w = watchdog(20);
    let (tx, rx) = oneshot::channel::<u32>();
    let (tx2, rx2) = oneshot::channel::<u32>();
    let plain = thread::spawn(move || (rx.recv().unwrap(), rx2.recv()));
    on_thread(move || {
        tx.send(4).unwrap();
        drop(tx2); // closes the second, which the plain thread waits on
    })
    .join()
    .unwrap();
    let (v, closed) = plain.join().unwrap();
    assert_eq!(v, 4);
    assert!(matches!(closed, Err(oneshot::RecvError::Closed)));
}

#[test]
fn oneshot_timeout_and_a_send_to_a_dropped_receiver() {
    let _w = watchdog(20);
    let (tx, rx) = oneshot::channel::<u32>();
    let rx = on_thread(move || {
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(oneshot::RecvTimeoutError::Timeout)
        ));
        assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Empty));
        rx
    })
    .join()
    .unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(oneshot::RecvTimeoutError::Timeout)
    ));
    drop(rx);
    assert!(tx.is_closed());
    assert_eq!(tx.send(8), Err(8));
}

#[test]
fn a_oneshot_receive_cancelled_after_the_send_leaves_the_value() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = oneshot::channel::<u32>();
        let rx = std::rc::Rc::new(rx);
        let r = rx.clone();
        let waiter = evco::spawn(move || r.recv().unwrap());
        evco::yield_now().unwrap(); // parks
        tx.send(6).unwrap(); // notifies it
        waiter.cancel().unwrap();
        assert!(waiter.join().is_err());
        assert_eq!(rx.try_recv(), Ok(6));
        assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Closed));
    });
}

/// A `Receiver` is `Sync`: two waiters may share it. One takes the value; the other must learn
/// that the sender is gone, not stay parked for ever.
#[test]
fn a_oneshot_send_wakes_every_waiter_of_a_shared_receiver() {
    let _w = watchdog(20);
    evco::run(|| {
        let (tx, rx) = oneshot::channel::<u32>();
        let rx = std::rc::Rc::new(rx);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let r = rx.clone();
                evco::spawn(move || r.recv())
            })
            .collect();
        evco::yield_now().unwrap(); // both park
        tx.send(7).unwrap();
        let mut got: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort_by_key(|r| r.is_err());
        assert!(matches!(got[0], Ok(7)), "{got:?}");
        assert!(
            matches!(got[1], Err(oneshot::RecvError::Closed)),
            "the other waiter: {got:?}"
        );
    });
}

// ---- Mutex ----

#[test]
fn a_coroutine_and_a_plain_thread_share_a_mutex() {
    let _w = watchdog(30);
    let m = Arc::new(Mutex::new(0u64));
    let m2 = m.clone();
    let coroutines = on_thread(move || {
        let hs: Vec<_> = (0..100)
            .map(|_| {
                let m = m2.clone();
                evco::spawn(move || {
                    for _ in 0..10 {
                        let mut g = m.lock().unwrap();
                        let v = *g;
                        evco::yield_now().unwrap(); // another coroutine or the thread may try
                        *g = v + 1;
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    });
    for _ in 0..1_000 {
        let mut g = m.lock().unwrap();
        let v = *g;
        thread::yield_now();
        *g = v + 1;
    }
    coroutines.join().unwrap();
    assert_eq!(*m.lock().unwrap(), 2_000);
}

#[test]
fn unlocking_on_a_plain_thread_wakes_a_parked_coroutine() {
    let _w = watchdog(20);
    let m = Arc::new(Mutex::new(Vec::new()));
    let g = m.lock().unwrap();
    let (ready_tx, ready_rx) = mpsc::bounded::<()>(0);
    let m2 = m.clone();
    let locker = on_thread(move || {
        ready_rx.recv().unwrap();
        m2.lock().unwrap().push("coroutine");
    });
    ready_tx.send(()).unwrap();
    assert!(m.try_lock().is_none());
    drop(g);
    locker.join().unwrap();
    assert_eq!(*m.lock().unwrap(), ["coroutine"]);
}

#[test]
fn a_cancelled_locker_that_was_handed_the_lock_hands_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let m = Arc::new(Mutex::new(0));
        let g = m.lock().unwrap();
        let (m1, m2) = (m.clone(), m.clone());
        let first = evco::spawn(move || *m1.lock().unwrap() += 1);
        let second = evco::spawn(move || *m2.lock().unwrap() += 10);
        evco::yield_now().unwrap(); // both park, `first` ahead
        drop(g); // hands the lock to `first`
        first.cancel().unwrap();
        assert!(first.join().is_err());
        evco::yield_now().unwrap(); // `second`, handed the lock on, runs
        assert!(second.is_finished(), "the lock went on to `second`");
        assert_eq!(*m.lock().unwrap(), 10);
        assert!(!m.is_locked() || m.try_lock().is_none());
    });
}

#[test]
fn a_cancelled_locker_takes_itself_off_the_wait_list() {
    let _w = watchdog(20);
    evco::run(|| {
        let m = Arc::new(Mutex::new(0));
        let g = m.lock().unwrap();
        let (m1, m2) = (m.clone(), m.clone());
        let first = evco::spawn(move || *m1.lock().unwrap() += 1);
        let second = evco::spawn(move || *m2.lock().unwrap() += 10);
        evco::yield_now().unwrap();
        first.cancel().unwrap();
        drop(g); // were `first` still listed, the lock would go to it and stay held
        evco::yield_now().unwrap();
        assert!(second.is_finished());
        assert_eq!(*m.try_lock().expect("free"), 10);
    });
}

// ---- Condvar ----

struct Flag {
    state: Mutex<(usize, bool)>, // (waiters listed, go)
    go: Condvar,
    listed: Condvar,
}

#[test]
fn notify_all_wakes_coroutines_on_two_threads_and_a_plain_thread() {
    let _w = watchdog(20);
    let f = Arc::new(Flag {
        state: Mutex::new((0, false)),
        go: Condvar::new(),
        listed: Condvar::new(),
    });
    let wait = |f: &Flag| {
        let mut g = f.state.lock().unwrap();
        g.0 += 1;
        f.listed.notify_one();
        let g = f.go.wait_while(g, |s| !s.1).unwrap();
        assert!(g.1);
    };
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let f = f.clone();
            on_thread(move || {
                let hs: Vec<_> = (0..3)
                    .map(|_| {
                        let f = f.clone();
                        evco::spawn(move || wait(&f))
                    })
                    .collect();
                hs.into_iter().for_each(|h| h.join().unwrap());
            })
        })
        .collect();
    let f2 = f.clone();
    let plain = thread::spawn(move || wait(&f2));
    let mut g = f
        .listed
        .wait_while(f.state.lock().unwrap(), |s| s.0 < 7)
        .unwrap();
    // All seven are listed on `go` (each lists before it unlocks the mutex this holds now).
    g.1 = true;
    f.go.notify_all();
    drop(g);
    threads.into_iter().for_each(|t| t.join().unwrap());
    plain.join().unwrap();
}

#[test]
fn condvar_wait_timeout_reports_the_timeout() {
    let _w = watchdog(20);
    let pair = Arc::new((Mutex::new(()), Condvar::new()));
    let p = pair.clone();
    let in_coroutine = on_thread(move || {
        let (_, timed_out) =
            p.1.wait_timeout(p.0.lock().unwrap(), Duration::from_millis(20))
                .unwrap();
        timed_out
    });
    assert!(in_coroutine.join().unwrap());
    let (g, timed_out) = pair
        .1
        .wait_timeout(pair.0.lock().unwrap(), Duration::from_millis(20))
        .unwrap();
    assert!(timed_out);
    drop(g);
    assert!(!pair.0.is_locked(), "the guard given back unlocks");
}

#[test]
fn a_cancelled_condvar_waiter_that_was_notified_passes_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let s = Arc::new((Mutex::new(false), Condvar::new()));
        let waiter = |s: Arc<(Mutex<bool>, Condvar)>| {
            move || {
                let g = s.1.wait(s.0.lock().unwrap()).unwrap();
                *g
            }
        };
        let first = evco::spawn(waiter(s.clone()));
        let second = evco::spawn(waiter(s.clone()));
        evco::yield_now().unwrap(); // both wait, `first` ahead
        *s.0.lock().unwrap() = true;
        s.1.notify_one(); // `first`
        first.cancel().unwrap();
        assert!(first.join().is_err());
        evco::yield_now().unwrap();
        assert!(second.is_finished(), "the notification went on to `second`");
        assert!(second.join().unwrap());
        assert!(!s.0.is_locked());
    });
}

/// The same, cancelled later: the notified waiter wakes and parks relocking the mutex (held
/// here), and is cancelled there. Before, the notification ended with it and `second` was
/// never woken.
#[test]
fn a_notified_condvar_waiter_cancelled_while_relocking_passes_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let s = Arc::new((Mutex::new(0u32), Condvar::new()));
        let waiter = |s: Arc<(Mutex<u32>, Condvar)>| {
            move || {
                let g = s.1.wait(s.0.lock().unwrap()).unwrap();
                *g
            }
        };
        let first = evco::spawn(waiter(s.clone()));
        let second = evco::spawn(waiter(s.clone()));
        evco::yield_now().unwrap(); // both listed, `first` ahead
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

// ---- Semaphore ----

/// Adding permits past `usize::MAX` panics with the count unchanged, in release builds too;
/// before, a release build wrapped the count (to 0 for one permit too many) and lost them all.
#[test]
fn adding_permits_past_usize_max_panics_and_keeps_the_count() {
    let sem = Semaphore::new(usize::MAX - 1);
    sem.add_permits(1);
    assert_eq!(sem.available_permits(), usize::MAX);
    let p = std::panic::catch_unwind(|| sem.add_permits(1)).unwrap_err();
    let msg = p.downcast_ref::<String>().map_or("", String::as_str);
    assert!(msg.contains("more than usize::MAX permits"), "{msg}");
    assert_eq!(sem.available_permits(), usize::MAX);
    let permit = sem.acquire().unwrap();
    assert_eq!(sem.available_permits(), usize::MAX - 1);
    drop(permit);
    assert_eq!(sem.available_permits(), usize::MAX);
    // Permits taken count too: filling up the free ones while one is out would overflow
    // when it comes back. Before, that give-back panicked in debug and wrapped to 0 free
    // in release. A forgotten permit no longer counts.
    let sem = Semaphore::new(2);
    let out = sem.try_acquire().unwrap();
    sem.try_acquire().unwrap().forget();
    std::panic::catch_unwind(|| sem.add_permits(usize::MAX)).unwrap_err();
    sem.add_permits(usize::MAX - 1);
    drop(out);
    assert_eq!(sem.available_permits(), usize::MAX);
}

#[test]
fn a_permit_released_on_another_thread_wakes_a_parked_coroutine() {
    let _w = watchdog(20);
    let sem = Arc::new(Semaphore::new(1));
    let permit = sem.acquire().unwrap();
    assert!(sem.try_acquire().is_none());
    let (ready_tx, ready_rx) = mpsc::bounded::<()>(0);
    let s = sem.clone();
    let acquirer = on_thread(move || {
        ready_rx.recv().unwrap();
        let p = s.acquire().unwrap();
        let free = s.available_permits();
        drop(p);
        free
    });
    ready_tx.send(()).unwrap();
    drop(permit);
    assert_eq!(acquirer.join().unwrap(), 0, "handed over, never free");
    assert_eq!(sem.available_permits(), 1);
}

#[test]
fn add_permits_wakes_a_blocked_plain_thread_and_timeouts_return_none() {
    let _w = watchdog(20);
    let sem = Arc::new(Semaphore::new(0));
    let s = sem.clone();
    let timed_out = on_thread(move || {
        s.acquire_timeout(Duration::from_millis(20))
            .unwrap()
            .is_none()
    });
    assert!(timed_out.join().unwrap());
    assert!(
        sem.acquire_timeout(Duration::from_millis(20))
            .unwrap()
            .is_none()
    );
    let s = sem.clone();
    let plain = thread::spawn(move || s.acquire().unwrap().forget());
    let s = sem.clone();
    on_thread(move || s.add_permits(2)).join().unwrap();
    plain.join().unwrap();
    assert_eq!(sem.available_permits(), 1, "two added, one kept for good");
}

#[test]
fn a_cancelled_acquirer_that_was_handed_a_permit_hands_it_on() {
    let _w = watchdog(20);
    evco::run(|| {
        let sem = Arc::new(Semaphore::new(1));
        let p = sem.acquire().unwrap();
        let (s1, s2) = (sem.clone(), sem.clone());
        let first = evco::spawn(move || s1.acquire().unwrap().forget());
        let second = evco::spawn(move || s2.acquire().unwrap().forget());
        evco::yield_now().unwrap();
        drop(p); // to `first`
        first.cancel().unwrap();
        assert!(first.join().is_err());
        evco::yield_now().unwrap();
        assert!(second.is_finished(), "the permit went on to `second`");
        assert_eq!(sem.available_permits(), 0);
    });
}

// ---- WaitGroup ----

#[test]
fn a_wait_group_wakes_a_coroutine_when_threads_are_done() {
    let _w = watchdog(20);
    let wg = WaitGroup::new();
    let done = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(5));
    for _ in 0..4 {
        let (wg, done, barrier) = (wg.clone(), done.clone(), barrier.clone());
        thread::spawn(move || {
            barrier.wait();
            done.fetch_add(1, Ordering::SeqCst);
            drop(wg);
        });
    }
    assert_eq!(wg.members(), 5);
    let d = done.clone();
    let waiter = on_thread(move || {
        barrier.wait();
        wg.wait().unwrap();
        d.load(Ordering::SeqCst)
    });
    assert_eq!(waiter.join().unwrap(), 4);
}

#[test]
fn a_wait_group_wakes_a_plain_thread_when_coroutines_are_done_and_times_out() {
    let _w = watchdog(20);
    let wg = WaitGroup::new();
    let held = wg.clone();
    assert!(!wg.clone().wait_timeout(Duration::from_millis(20)).unwrap());
    let members = wg.clone();
    let workers = on_thread(move || {
        for _ in 0..10 {
            let m = members.clone();
            evco::spawn(move || {
                evco::yield_now().unwrap();
                drop(m);
            });
        }
        drop(members);
        let timed_out = !held
            .clone()
            .wait_timeout(Duration::from_millis(20))
            .unwrap();
        drop(held);
        timed_out
    });
    wg.wait().unwrap();
    assert!(
        workers.join().unwrap(),
        "a waiter in a coroutine times out while `held` lives"
    );
}

// ---- a thread with a scheduler, outside coroutines ----

#[test]
fn a_caller_outside_coroutines_runs_its_loop_while_it_waits() {
    let _w = watchdog(20);
    let (tx, rx) = mpsc::bounded::<u32>(0);
    let (go_tx, go_rx) = mpsc::bounded::<()>(0);
    let waiter = thread::spawn(move || {
        let _sched = evco::scheduler::enter(evco::event::EventBase::new().unwrap()).unwrap();
        // A coroutine of this thread that must run while its thread waits below: the value
        // comes only after it ran.
        let local = evco::spawn(move || {
            evco::yield_now().unwrap();
            go_tx.send(()).unwrap();
        });
        let v = rx.recv().unwrap();
        (v, local.join().is_ok())
    });
    go_rx.recv().unwrap();
    tx.send(1).unwrap();
    assert_eq!(waiter.join().unwrap(), (1, true));
}
