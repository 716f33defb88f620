//! Coroutines themselves: asymmetric resume/suspend, panics, overflow, cancellation, stack
//! reuse and limits.

mod common;

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::rc::Rc;
use std::time::Duration;

use common::{DOORBELL, DropCount, child_passes, is_child, rss_kib, socketpair, watchdog};
use evco::coroutine::{Builder, Coroutine, StackOverflow, Status, suspend};

#[test]
fn suspend_returns_control_to_whoever_resumed_the_coroutine() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let mut co = Coroutine::new(move || {
        l.borrow_mut().push("a1");
        suspend().unwrap();
        l.borrow_mut().push("a2");
    })
    .unwrap();
    log.borrow_mut().push("main1");
    assert!(matches!(co.resume().unwrap(), Status::Suspended));
    log.borrow_mut().push("main2");
    assert!(matches!(co.resume().unwrap(), Status::Finished));
    assert!(co.is_finished());
    assert_eq!(*log.borrow(), ["main1", "a1", "main2", "a2"]);
}

#[test]
fn a_coroutine_can_create_and_resume_another_directly() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let mut outer = Coroutine::new(move || {
        let l2 = l.clone();
        let mut inner = Coroutine::new(move || {
            l2.borrow_mut().push("inner1");
            suspend().unwrap(); // back to outer, not to main
            l2.borrow_mut().push("inner2");
        })
        .unwrap();
        inner.resume().unwrap();
        l.borrow_mut().push("outer-between");
        suspend().unwrap(); // back to main
        inner.resume().unwrap();
        l.borrow_mut().push("outer-end");
    })
    .unwrap();
    outer.resume().unwrap();
    log.borrow_mut().push("main");
    outer.resume().unwrap();
    assert_eq!(
        *log.borrow(),
        ["inner1", "outer-between", "main", "inner2", "outer-end"]
    );
}

#[test]
fn resuming_a_finished_or_running_coroutine_is_an_error() {
    let mut co = Coroutine::new(|| ()).unwrap();
    co.resume().unwrap();
    assert_eq!(co.resume().unwrap_err().kind(), ErrorKind::InvalidInput);

    // A coroutine that tries to resume itself through a shared slot.
    let slot: Rc<RefCell<Option<Coroutine>>> = Rc::new(RefCell::new(None));
    let s = slot.clone();
    let result = Rc::new(Cell::new(None));
    let r = result.clone();
    let me = Coroutine::new(move || {
        // Take ourselves out of the slot while we run: the owner's `resume` keeps our core.
        let taken = s.borrow_mut().take();
        if let Some(mut me) = taken {
            r.set(Some(me.resume().unwrap_err().kind()));
            std::mem::forget(me);
        }
    })
    .unwrap();
    *slot.borrow_mut() = Some(me);
    // Resume through a raw pointer to the slot's coroutine, as an owner would.
    let ptr: *mut Coroutine = slot.borrow_mut().as_mut().unwrap();
    // SAFETY: the coroutine forgets (does not drop) the value it takes out of the slot, so the
    // pointee stays valid for the whole call.
    unsafe { (*ptr).resume().unwrap() };
    assert_eq!(result.get(), Some(ErrorKind::WouldBlock));
}

#[test]
fn a_panic_in_a_bare_coroutine_is_returned_by_resume() {
    let mut co = Coroutine::new(|| panic!("bare boom")).unwrap();
    match co.resume().unwrap() {
        Status::Panicked(p) => assert_eq!(p.downcast_ref::<&str>(), Some(&"bare boom")),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(co.is_finished());
}

#[test]
fn dropping_a_suspended_coroutine_runs_its_destructors() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let mut co = Coroutine::new(move || {
        let _a = DropCount(d.clone());
        let _b = DropCount(d);
        suspend().unwrap();
        unreachable!("never resumed after the first suspend");
    })
    .unwrap();
    co.resume().unwrap();
    assert_eq!(drops.get(), 0);
    drop(co);
    assert_eq!(drops.get(), 2);
}

/// Recurses with 1 KiB frames until the stack overflows (it never returns).
#[inline(never)]
fn recurse(n: u64) -> u64 {
    let buf = [n as u8; 1024];
    std::hint::black_box(&buf);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(buf[7] as u64)
}

#[test]
fn a_stack_overflow_is_a_clear_error_on_its_handle_and_the_rest_continue() {
    let _w = watchdog(30);
    let survivors = Rc::new(Cell::new(0));
    let s = survivors.clone();
    evco::run(move || {
        let others: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                evco::spawn(move || {
                    evco::time::sleep(Duration::from_millis(1));
                    s.set(s.get() + 1);
                })
            })
            .collect();
        let bad = Builder::new()
            .name("deep")
            .stack_size(32 * 1024)
            .spawn(|| recurse(0))
            .unwrap();
        let payload = bad.join().unwrap_err();
        let overflow = payload
            .downcast_ref::<StackOverflow>()
            .expect("a StackOverflow payload");
        assert_eq!(overflow.name.as_deref(), Some("deep"));
        assert_eq!(overflow.stack_size, 32 * 1024);
        let msg = overflow.to_string();
        assert!(msg.contains("deep") && msg.contains("32 KiB"), "{msg}");
        for h in others {
            h.join().unwrap();
        }
        // New coroutines still run fine afterwards.
        assert_eq!(evco::spawn(|| 9).join().unwrap(), 9);
    });
    assert_eq!(survivors.get(), 3);
}

#[test]
fn panics_on_small_stacks_with_rust_backtrace_do_not_deadlock_later_panics() {
    let _w = watchdog(60);
    if is_child() {
        evco::run(|| {
            for _ in 0..20 {
                let h = Builder::new()
                    .stack_size(16 * 1024)
                    .spawn(|| -> () { panic!("small-stack panic") })
                    .unwrap();
                assert!(h.join().is_err());
            }
        });
        // A panic on the thread's own stack after that must not hang on the backtrace lock.
        let r = std::panic::catch_unwind(|| panic!("main-stack panic"));
        assert!(r.is_err());
        println!("child-finished");
        return;
    }
    child_passes(
        "panics_on_small_stacks_with_rust_backtrace_do_not_deadlock_later_panics",
        &[("RUST_BACKTRACE", "1")],
    );
}

#[test]
fn spawn_reports_an_error_naming_the_limit_when_no_stack_can_be_allocated() {
    let _w = watchdog(60);
    if is_child() {
        // Cap the address space a little above what the process uses now: stacks run out fast.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `lim`, which we own.
        unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) };
        let vm_kib: u64 = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmSize:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap();
        // 256 MiB of headroom: a 1 GiB stack cannot be mapped, while the panic machinery and
        // the allocator still have room (exhausting the last byte would fail in malloc first).
        lim.rlim_cur = (vm_kib + 256 * 1024) * 1024;
        // SAFETY: setrlimit only reads `lim`; this child process owns its limits.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
        let err = evco::run(|| {
            let err = Builder::new()
                .stack_size(1 << 30)
                .spawn(evco::yield_now)
                .unwrap_err();
            // The process and the scheduler carry on.
            assert_eq!(evco::spawn(|| 5).join().unwrap(), 5);
            err
        });
        assert_eq!(err.kind(), ErrorKind::OutOfMemory);
        // It names the limit that was reached, and not another.
        let msg = err.to_string();
        assert!(msg.contains("RLIMIT_AS"), "{msg}");
        assert!(!msg.contains("raise it with"), "{msg}");
        println!("child-finished: {msg}");
        return;
    }
    child_passes(
        "spawn_reports_an_error_naming_the_limit_when_no_stack_can_be_allocated",
        &[],
    );
}

#[test]
fn thirty_thousand_coroutines_parked_at_once() {
    let _w = watchdog(120);
    let n = 30_000;
    let (a, b) = socketpair();
    let woken = Rc::new(Cell::new(0));
    let w = woken.clone();
    evco::run(move || {
        let a = Rc::new(a);
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let (a, w) = (a.clone(), w.clone());
                Builder::new()
                    .stack_size(16 * 1024)
                    .spawn(move || {
                        use std::os::fd::AsRawFd;
                        evco::io::wait(a.as_raw_fd(), evco::io::Interest::READABLE, None).unwrap();
                        w.set(w.get() + 1);
                    })
                    .unwrap()
            })
            .collect();
        evco::yield_now().unwrap();
        assert_eq!(
            evco::scheduler::live_coroutines(),
            n + 1,
            "the parked ones and this one"
        );
        // One one-shot event each, and the reactor's doorbell.
        assert_eq!(
            evco::scheduler::base().unwrap().added_events(),
            n + DOORBELL
        );
        common::write_byte(&b);
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_eq!(woken.get(), n);
}

#[test]
fn a_million_spawn_finish_cycles_keep_rss_flat() {
    let _w = watchdog(300);
    if is_child() {
        let (before, after) = evco::run(|| {
            let cycle = |k: usize| {
                for _ in 0..k {
                    evco::spawn(|| std::hint::black_box(1)).join().unwrap();
                }
            };
            cycle(10_000); // warm the stack pool and the allocator
            let before = rss_kib();
            cycle(1_000_000);
            (before, rss_kib())
        });
        assert!(
            after <= before + 1024,
            "RSS grew from {before} KiB to {after} KiB over 1,000,000 spawns"
        );
        println!("child-finished: RSS {before} KiB -> {after} KiB");
        return;
    }
    // Alone in its own process: RSS is process-wide and other tests run in parallel.
    child_passes("a_million_spawn_finish_cycles_keep_rss_flat", &[]);
}

#[test]
fn coroutines_yielding_in_a_loop_do_not_starve_io() {
    let _w = watchdog(30);
    let (a, b) = socketpair();
    evco::run(move || {
        let stop = Rc::new(Cell::new(false));
        let spinners: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                evco::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.get() {
                        evco::yield_now().unwrap();
                        spins += 1;
                    }
                    spins
                })
            })
            .collect();
        let s = stop.clone();
        let reader = evco::spawn(move || {
            use std::os::fd::AsRawFd;
            evco::io::wait(a.as_raw_fd(), evco::io::Interest::READABLE, None).unwrap();
            s.set(true);
        });
        common::write_byte(&b);
        reader.join().unwrap();
        for h in spinners {
            h.join().unwrap();
        }
    });
}

/// A stack size past what can be rounded to a page (`usize::MAX`), or past `MAX_STACK_SIZE`,
/// is an `InvalidInput` error from spawn and create. Before, `Builder::stack_size` overflowed:
/// a panic in debug builds, a 0-byte request wrapped in release ones.
#[test]
fn a_stack_size_too_large_is_an_error_from_spawn_and_create_not_a_panic() {
    let _w = watchdog(20);
    for bytes in [
        usize::MAX,
        usize::MAX - 100,
        evco::coroutine::MAX_STACK_SIZE + 1,
    ] {
        let e = Builder::new().stack_size(bytes).create(|| {}).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bytes}: {e}");
        evco::run(move || {
            let e = Builder::new().stack_size(bytes).spawn(|| {}).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bytes}: {e}");
        });
    }
}

thread_local! {
    static PARKED_BARE: std::cell::RefCell<Option<evco::coroutine::Coroutine>> =
        const { std::cell::RefCell::new(None) };
}

/// A thread that exits with a suspended bare coroutine in a thread-local frees it: the
/// coroutine's stack cannot go back to the pool (a thread-local of its own, perhaps gone by
/// then) and is freed instead. Before, `Stack::give_back` touched the dead pool and the
/// process aborted (run in a child).
#[test]
fn a_thread_exiting_with_a_suspended_bare_coroutine_in_a_thread_local_ends_cleanly() {
    let Some(_w) = common::in_child(
        "a_thread_exiting_with_a_suspended_bare_coroutine_in_a_thread_local_ends_cleanly",
        20,
    ) else {
        return;
    };
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = dropped.clone();
    std::thread::spawn(move || {
        // This thread-local first: thread-locals are torn down in the reverse order of their
        // first use, so it goes after the stack pool, which the coroutine below first uses.
        PARKED_BARE.with(|c| drop(c.borrow_mut().take()));
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let mut co = evco::coroutine::Coroutine::new(move || {
            let _flag = Flag(d);
            evco::coroutine::suspend().unwrap();
        })
        .unwrap();
        assert!(matches!(
            co.resume().unwrap(),
            evco::coroutine::Status::Suspended
        ));
        PARKED_BARE.with(|c| *c.borrow_mut() = Some(co));
    })
    .join()
    .unwrap();
    println!(
        "thread exited; the coroutine's locals dropped: {}",
        dropped.load(std::sync::atomic::Ordering::SeqCst)
    );
    println!("child-finished");
}

/// A coroutine's stack overflow on a thread made with `pthread_create` (no alternate signal
/// stack, unlike std's threads) is reported as `StackOverflow` through its join handle: the
/// scheduler gives such a thread an alternate stack. Before, generator's overflow handler ran
/// on the overflowed stack and the kernel killed the process with SIGSEGV (run in a child).
#[test]
fn a_stack_overflow_on_a_pthread_created_thread_is_reported_not_fatal() {
    let Some(_w) = common::in_child(
        "a_stack_overflow_on_a_pthread_created_thread_is_reported_not_fatal",
        20,
    ) else {
        return;
    };
    extern "C" fn thread(_: *mut libc::c_void) -> *mut libc::c_void {
        let reported = evco::run(|| {
            let h = Builder::new()
                .stack_size(32 * 1024)
                .spawn(|| recurse(0))
                .unwrap();
            h.join()
                .unwrap_err()
                .downcast_ref::<StackOverflow>()
                .is_some()
        });
        reported as usize as *mut libc::c_void
    }
    let mut tid: libc::pthread_t = 0;
    // SAFETY: `thread` is a valid start routine taking no argument; default attributes.
    let rc =
        unsafe { libc::pthread_create(&mut tid, std::ptr::null(), thread, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
    let mut ret: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: joins the thread made above, once.
    assert_eq!(unsafe { libc::pthread_join(tid, &mut ret) }, 0);
    assert_eq!(
        ret as usize, 1,
        "the overflow was reported as StackOverflow"
    );
    println!("child-finished");
}

/// A frame that moves the stack pointer past the guard page in one step (C code built without
/// `-fstack-clash-protection` and a 64 KiB local array; here, inline assembly writing 66 KiB
/// below the stack pointer) faults in the guard gap below the stack and is reported as
/// `StackOverflow`, and the coroutines whose stacks were mapped just below keep their data.
/// Before, the write landed in a neighbour's stack: no fault at all, the neighbour's memory
/// overwritten (run in a child).
#[test]
#[cfg(target_arch = "x86_64")]
fn a_frame_that_jumps_past_the_guard_page_is_an_overflow_not_a_neighbours_corruption() {
    let Some(_w) = common::in_child(
        "a_frame_that_jumps_past_the_guard_page_is_an_overflow_not_a_neighbours_corruption",
        20,
    ) else {
        return;
    };
    #[inline(never)]
    fn c_like_frame() {
        // SAFETY: writes one word 66 KiB below the stack pointer and restores the pointer, as
        // a C function with a 66 KiB local array and no stack probes would on entry.
        unsafe {
            std::arch::asm!(
                "sub rsp, {n}",
                "mov qword ptr [rsp], 0x41",
                "add rsp, {n}",
                n = const 66 * 1024,
            )
        }
    }
    #[inline(never)]
    fn descend(depth: u32) {
        let buf = [depth as u8; 1024];
        std::hint::black_box(&buf);
        if depth == 0 {
            c_like_frame();
        } else {
            descend(depth - 1);
        }
        std::hint::black_box(&buf);
    }
    let size = 64 * 1024;
    evco::run(move || {
        // Made first, so that the neighbours' stacks (made after) are mapped right below it.
        let bad = Builder::new()
            .stack_size(size)
            .spawn(|| descend(12))
            .unwrap();
        let neighbours: Vec<_> = (0..8)
            .map(|i| {
                Builder::new()
                    .stack_size(size)
                    .spawn(move || {
                        let mine = [0x5au8 ^ i as u8; 60 * 1024];
                        std::hint::black_box(&mine);
                        evco::yield_now().unwrap();
                        evco::yield_now().unwrap();
                        mine.iter().all(|&b| b == 0x5a ^ i as u8)
                    })
                    .unwrap()
            })
            .collect();
        let payload = bad.join().expect_err("the jump faults");
        assert!(
            payload.downcast_ref::<StackOverflow>().is_some(),
            "reported as a StackOverflow"
        );
        for (i, n) in neighbours.into_iter().enumerate() {
            assert!(n.join().unwrap(), "neighbour {i}'s stack kept its data");
        }
    });
    println!("child-finished");
}
