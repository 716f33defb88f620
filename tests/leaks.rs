//! Long cycles that must leave no trace: 1,000,000 coroutines spawned and finished, 100,000
//! loopback connections made, echoed and closed. Each runs alone in a child process (RSS and the
//! fd table are process-wide) and compares /proc/self readings after a warm-up with the ones at
//! the end.

mod common;

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use common::{is_child, open_fds, rss_kib, socketpair, watchdog, write_byte};
use evco::coroutine::Builder;
use evco::io::{Interest, wait};
use evco::net::{TcpListener, TcpStream};

/// RSS may move by this much (allocator and page-cache noise), no more.
const RSS_SLACK_KIB: u64 = 2048;

fn child_passes(test: &str) {
    let stdout = common::child_passes(test, &[]);
    if let Some(line) = stdout
        .lines()
        .find_map(|l| l.find("child-finished").map(|i| &l[i..]))
    {
        eprintln!("{line}");
    }
}

fn check_flat(what: &str, (rss0, fds0): (u64, usize), (rss1, fds1): (u64, usize)) {
    assert_eq!(fds1, fds0, "{what}: open fds went from {fds0} to {fds1}");
    assert!(
        rss1 <= rss0 + RSS_SLACK_KIB,
        "{what}: RSS grew from {rss0} KiB to {rss1} KiB"
    );
}

#[test]
fn a_million_spawn_finish_cycles_leave_rss_and_fds_flat() {
    // The child gives up first, so that its output reaches the parent.
    let _w = watchdog(if is_child() { 150 } else { 180 });
    if !is_child() {
        child_passes("a_million_spawn_finish_cycles_leave_rss_and_fds_flat");
        return;
    }
    // Batches of 1,000 live at once (the stack pool, the task table and the ready queue all
    // grow and shrink); every coroutine yields once, and every tenth also waits on an fd that
    // is readable, so each cycle registers and removes an event.
    const BATCH: usize = 1000;
    let (before, after) = evco::run(|| {
        let (a, b) = socketpair();
        write_byte(&b);
        let fd = a.as_raw_fd();
        let done = Rc::new(Cell::new(0u64));
        let batch = |n: usize| {
            for _ in 0..n {
                let hs: Vec<_> = (0..BATCH)
                    .map(|i| {
                        let done = done.clone();
                        Builder::new()
                            .stack_size(16 * 1024)
                            .spawn(move || {
                                evco::yield_now().unwrap();
                                if i % 10 == 0 {
                                    wait(fd, Interest::READABLE, None).unwrap();
                                }
                                done.set(done.get() + 1);
                            })
                            .unwrap()
                    })
                    .collect();
                for h in hs {
                    h.join().unwrap();
                }
            }
        };
        batch(20); // warm the stack pool, the task table and the allocator
        let before = (rss_kib(), open_fds());
        batch(1000);
        let after = (rss_kib(), open_fds());
        assert_eq!(done.get(), 1_020_000);
        assert_eq!(
            evco::scheduler::live_coroutines(),
            1,
            "only this one is left"
        );
        drop(a);
        (before, after)
    });
    assert_eq!(evco::scheduler::live_coroutines(), 0);
    check_flat("1,000,000 spawns", before, after);
    println!(
        "child-finished: 1,000,000 spawn/finish cycles: RSS {} -> {} KiB, fds {} -> {}",
        before.0, after.0, before.1, after.1
    );
}

#[test]
fn a_hundred_thousand_connect_echo_close_cycles_leave_rss_and_fds_flat() {
    let _w = watchdog(if is_child() { 150 } else { 180 });
    if !is_child() {
        child_passes("a_hundred_thousand_connect_echo_close_cycles_leave_rss_and_fds_flat");
        return;
    }
    // 16 clients at a time. The server closes first (after its echo), so the TIME_WAIT states
    // are on its side and the clients' ephemeral ports are free again at once.
    const CLIENTS: usize = 16;
    const WARMUP: usize = 2_000;
    const CYCLES: usize = 100_000;
    let (before, after) = evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Rc::new(Cell::new(0usize));
        let acceptor = {
            let served = served.clone();
            evco::spawn(move || -> std::io::Result<()> {
                loop {
                    let (s, _) = listener.accept()?;
                    let served = served.clone();
                    // Detached: nothing keeps the handle.
                    drop(
                        Builder::new()
                            .stack_size(16 * 1024)
                            .spawn(move || {
                                let mut buf = [0u8; 64];
                                (&s).read_exact(&mut buf).unwrap();
                                (&s).write_all(&buf).unwrap();
                                served.set(served.get() + 1);
                            })
                            .unwrap(),
                    );
                }
            })
        };
        let round = |cycles: usize, base: usize| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    evco::spawn(move || {
                        for k in (c..cycles).step_by(CLIENTS) {
                            let s = TcpStream::connect(addr).unwrap();
                            let msg = [((base + k) % 251) as u8; 64];
                            (&s).write_all(&msg).unwrap();
                            let mut back = [0u8; 64];
                            (&s).read_exact(&mut back).unwrap();
                            assert_eq!(back, msg);
                            // The server closes after its echo: EOF.
                            assert_eq!((&s).read(&mut back).unwrap(), 0);
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        };
        round(WARMUP, 0);
        let before = (rss_kib(), open_fds());
        round(CYCLES, WARMUP);
        let after = (rss_kib(), open_fds());
        assert_eq!(served.get(), WARMUP + CYCLES);
        assert!(!acceptor.is_finished(), "the accept loop failed");
        acceptor.cancel().unwrap();
        (before, after)
    });
    check_flat("100,000 connections", before, after);
    println!(
        "child-finished: 100,000 connect/echo/close cycles: RSS {} -> {} KiB, fds {} -> {}",
        before.0, after.0, before.1, after.1
    );
}

/// A thread that exits with coroutines suspended (its scheduler's guard never dropped) gives
/// them up: their stacks are unmapped (the process's mappings do not grow with such threads)
/// and they are counted. Before, each left its stack mapped for good (two mappings and the
/// touched pages per coroutine).
#[test]
fn threads_exiting_with_suspended_coroutines_free_their_stacks_and_count_them() {
    let _w = common::watchdog(60);
    if !common::is_child() {
        common::child_passes(
            "threads_exiting_with_suspended_coroutines_free_their_stacks_and_count_them",
            &[],
        );
        return;
    }
    let mappings = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    };
    let threads = 200;
    let run_one = || {
        std::thread::spawn(|| {
            let base = evco::event::EventBase::new().unwrap();
            let guard = evco::scheduler::enter(base.clone()).unwrap();
            let (a, _b) = common::socketpair();
            evco::spawn(move || {
                let _ = evco::io::wait(a.as_raw_fd(), evco::io::Interest::READABLE, None);
            });
            base.loop_nonblock().unwrap();
            assert_eq!(evco::scheduler::live_coroutines(), 1);
            // Left installed: the thread exits with the coroutine suspended.
            std::mem::forget(guard);
        })
        .join()
        .unwrap();
    };
    // Warm up (thread stacks, pools, lazily made mappings), then measure.
    for _ in 0..20 {
        run_one();
    }
    let before = mappings();
    let counted = evco::scheduler::abandoned_coroutines();
    for _ in 0..threads {
        run_one();
    }
    let after = mappings();
    assert_eq!(evco::scheduler::abandoned_coroutines() - counted, threads);
    assert!(
        after < before + threads / 4,
        "mappings {before} -> {after} over {threads} threads"
    );
    println!("child-finished: mappings {before} -> {after}");
}
