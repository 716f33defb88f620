//! Micro-benchmarks of evco's switch, scheduler and wait paths, each beside the baseline it
//! should be compared with, measured in the same run:
//!
//! | group      | evco                                      | baseline                                |
//! |------------|-------------------------------------------|-----------------------------------------|
//! | `switch`   | bare `Coroutine` resume + `suspend`       | raw `generator` resume + `yield_with`,  |
//! |            |                                           | flat and with 3 more frames each side   |
//! | `schedule` | `yield_now` through the ready queue       | (the switch above)                      |
//! | `schedule` | `spawn(..).join()`, stack pool warm       | (target: 300 ns)                        |
//! | `wait`     | write 1 byte, `io::wait` READABLE, read   | write + read; write + epoll_wait + read |
//! | `wait`     | `net::UnixStream` ping-pong, 2 coroutines | write + read twice, one thread          |
//! | `wait`     | std `UnixStream` ping-pong through hooks  | (the evco ping-pong above)              |
//! | `channel`  | `sync::mpsc` ping-pong, 2 coroutines      | tokio mpsc, 2 tasks, current_thread;    |
//! |            |                                           | std mpsc, 2 threads                     |
//! | `channel`  | `sync::mpsc::bounded(64)` stream          | tokio mpsc `channel(64)` stream         |
//! | `channel`  | `sync::shared::mpsc` ping-pong and        | the `sync::mpsc` ones above; std mpsc,  |
//! |            | `bounded(64)` stream, one thread and two  | 2 threads                               |
//!
//! Loops that must run inside a coroutine use `iter_custom`: one `evco::run` per sample, timing
//! only the loop inside it.
//!
//! Run with `cargo bench -p evco-bench --bench micro` (about a minute).

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use evco::coroutine::{Coroutine, suspend};
use evco::io::{Interest, wait};

/// evco's default stack size, in words, for the raw generator baseline.
const WORDS: usize = evco::coroutine::DEFAULT_STACK_SIZE / std::mem::size_of::<usize>();

fn switch(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch");
    g.bench_function("generator resume+yield (raw)", |b| {
        #[allow(deprecated)]
        let mut gn: generator::Generator<'_, (), ()> = generator::Gn::<()>::new_opt(WORDS, || {
            loop {
                generator::yield_with(());
            }
        });
        b.iter(|| black_box(gn.resume()));
    });
    // The same switch with three more call frames on each side of it. A stack switch leaves the
    // CPU's return-address predictor holding the other stack's returns, so every frame the
    // switch returns through mispredicts: this shows what each layer around the switch costs.
    g.bench_function("generator resume+yield, 3 more frames each side", |b| {
        #[allow(deprecated)]
        let mut gn: generator::Generator<'_, (), ()> = generator::Gn::<()>::new_opt(WORDS, || {
            loop {
                deep_yield_1()
            }
        });
        b.iter(|| black_box(deep_resume_1(&mut gn)));
    });
    g.bench_function("evco Coroutine resume+suspend", |b| {
        let mut co = Coroutine::new(|| while suspend().is_ok() {}).expect("coroutine");
        b.iter(|| black_box(co.resume().expect("resume")));
    });
    g.finish();
}

type Gen = generator::Generator<'static, (), ()>;

#[inline(never)]
fn deep_resume_1(g: &mut Gen) -> Option<()> {
    black_box(deep_resume_2(g))
}
#[inline(never)]
fn deep_resume_2(g: &mut Gen) -> Option<()> {
    black_box(deep_resume_3(g))
}
#[inline(never)]
fn deep_resume_3(g: &mut Gen) -> Option<()> {
    black_box(g.resume())
}
#[inline(never)]
fn deep_yield_1() {
    deep_yield_2();
    black_box(());
}
#[inline(never)]
fn deep_yield_2() {
    deep_yield_3();
    black_box(());
}
#[inline(never)]
fn deep_yield_3() {
    #[allow(deprecated)]
    generator::yield_with(());
    black_box(());
}

fn schedule(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule");
    g.bench_function("evco yield_now", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    evco::yield_now().expect("yield_now");
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("evco spawn+run+join", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                // Warm the stack pool outside the timed loop.
                evco::spawn(|| black_box(1)).join().expect("join");
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(evco::spawn(|| black_box(1)).join().expect("join"));
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// A non-blocking socketpair.
fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    (a, b)
}

fn wait_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("wait");
    g.bench_function("write+read (raw syscalls)", |b| {
        let (mut tx, mut rx) = pair();
        let mut byte = [0u8; 1];
        b.iter(|| {
            tx.write_all(b"x").expect("write");
            rx.read_exact(&mut byte).expect("read");
        });
    });
    g.bench_function("write+epoll_wait+read (raw, registered once)", |b| {
        let (mut tx, mut rx) = pair();
        // SAFETY: plain syscalls on fds this function owns; `ev` outlives the calls that use it.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1");
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, rx.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl");
        let mut byte = [0u8; 1];
        b.iter(|| {
            tx.write_all(b"x").expect("write");
            // SAFETY: as above.
            let n = unsafe { libc::epoll_wait(ep, &mut ev, 1, -1) };
            assert_eq!(n, 1);
            rx.read_exact(&mut byte).expect("read");
        });
        // SAFETY: as above.
        unsafe { libc::close(ep) };
    });
    g.bench_function("evco write+wait+read", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let (mut tx, mut rx) = pair();
                let mut byte = [0u8; 1];
                let start = Instant::now();
                for _ in 0..iters {
                    tx.write_all(b"x").expect("write");
                    wait(rx.as_raw_fd(), Interest::READABLE, None).expect("wait");
                    rx.read_exact(&mut byte).expect("read");
                }
                start.elapsed()
            })
        });
    });
    // Registered sockets (evco::net): one persistent edge-triggered event per socket, so a wait
    // registers nothing. Two coroutines bounce a byte; one iteration is a full round trip,
    // beside the same four syscalls made back to back in one thread.
    g.bench_function("write+read x2 (raw round trip)", |b| {
        let (mut a, mut z) = pair();
        let mut byte = [0u8; 1];
        b.iter(|| {
            a.write_all(b"x").expect("write");
            z.read_exact(&mut byte).expect("read");
            z.write_all(&byte).expect("write");
            a.read_exact(&mut byte).expect("read");
        });
    });
    g.bench_function("evco net::UnixStream ping-pong (2 coroutines)", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let (mut a, mut z) = evco::net::UnixStream::pair().expect("socketpair");
                let echo = evco::spawn(move || {
                    let mut byte = [0u8; 1];
                    for _ in 0..iters {
                        z.read_exact(&mut byte).expect("read");
                        z.write_all(&byte).expect("write");
                    }
                });
                let mut byte = [0u8; 1];
                let start = Instant::now();
                for _ in 0..iters {
                    a.write_all(b"x").expect("write");
                    a.read_exact(&mut byte).expect("read");
                }
                let elapsed = start.elapsed();
                echo.join().expect("echo coroutine");
                elapsed
            })
        });
    });
    g.bench_function("hooked std UnixStream ping-pong (2 coroutines)", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                // Blocking std sockets: evco's hooks make their reads and writes cooperative.
                let (mut a, mut z) = UnixStream::pair().expect("socketpair");
                let echo = evco::spawn(move || {
                    let mut byte = [0u8; 1];
                    for _ in 0..iters {
                        z.read_exact(&mut byte).expect("read");
                        z.write_all(&byte).expect("write");
                    }
                });
                let mut byte = [0u8; 1];
                let start = Instant::now();
                for _ in 0..iters {
                    a.write_all(b"x").expect("write");
                    a.read_exact(&mut byte).expect("read");
                }
                let elapsed = start.elapsed();
                echo.join().expect("echo coroutine");
                elapsed
            })
        });
    });
    g.finish();
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// Channels between coroutines: a round trip (each side parks on every message) and a stream
/// (the producer runs ahead until the channel is full).
fn channel(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    g.bench_function("evco sync::mpsc ping-pong (2 coroutines)", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let (to_echo, from_main) = evco::sync::mpsc::channel::<u64>();
                let (to_main, from_echo) = evco::sync::mpsc::channel::<u64>();
                let echo = evco::spawn(move || {
                    for v in &from_main {
                        to_main.send(v).expect("send back");
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    to_echo.send(i).expect("send");
                    black_box(from_echo.recv().expect("recv"));
                }
                let elapsed = start.elapsed();
                drop(to_echo);
                echo.join().expect("echo coroutine");
                elapsed
            })
        });
    });
    g.bench_function("tokio mpsc ping-pong (2 tasks, current_thread)", |b| {
        b.iter_custom(|iters| {
            tokio_rt().block_on(async move {
                let (to_echo, mut from_main) = tokio::sync::mpsc::unbounded_channel::<u64>();
                let (to_main, mut from_echo) = tokio::sync::mpsc::unbounded_channel::<u64>();
                let echo = tokio::task::spawn(async move {
                    while let Some(v) = from_main.recv().await {
                        to_main.send(v).expect("send back");
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    to_echo.send(i).expect("send");
                    black_box(from_echo.recv().await.expect("recv"));
                }
                let elapsed = start.elapsed();
                drop(to_echo);
                echo.await.expect("echo task");
                elapsed
            })
        });
    });
    g.bench_function("std mpsc ping-pong (2 threads)", |b| {
        b.iter_custom(|iters| {
            let (to_echo, from_main) = std::sync::mpsc::channel::<u64>();
            let (to_main, from_echo) = std::sync::mpsc::channel::<u64>();
            let echo = std::thread::spawn(move || {
                for v in from_main {
                    to_main.send(v).expect("send back");
                }
            });
            let start = Instant::now();
            for i in 0..iters {
                to_echo.send(i).expect("send");
                black_box(from_echo.recv().expect("recv"));
            }
            let elapsed = start.elapsed();
            drop(to_echo);
            echo.join().expect("echo thread");
            elapsed
        });
    });
    g.bench_function("evco sync::mpsc::bounded(64) stream, per message", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let (tx, rx) = evco::sync::mpsc::bounded::<u64>(64);
                let consumer = evco::spawn(move || {
                    for v in &rx {
                        black_box(v);
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    tx.send(i).expect("send");
                }
                drop(tx);
                consumer.join().expect("consumer");
                start.elapsed()
            })
        });
    });
    g.bench_function("tokio mpsc::channel(64) stream, per message", |b| {
        b.iter_custom(|iters| {
            tokio_rt().block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(64);
                let consumer = tokio::task::spawn(async move {
                    while let Some(v) = rx.recv().await {
                        black_box(v);
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    tx.send(i).await.expect("send");
                }
                drop(tx);
                consumer.await.expect("consumer");
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// `sync::shared::mpsc`, measured beside the single-thread channel above: the same ping-pong
/// and stream on one thread (what the lock and the shared wake-up flag cost), then across two
/// threads, each a scheduler with one coroutine (what a cross-thread wake-up costs).
fn shared_channel(c: &mut Criterion) {
    use evco::sync::shared::mpsc;
    let mut g = c.benchmark_group("channel");
    g.bench_function("evco shared::mpsc ping-pong (2 coroutines)", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let (to_echo, from_main) = mpsc::channel::<u64>();
                let (to_main, from_echo) = mpsc::channel::<u64>();
                let echo = evco::spawn(move || {
                    for v in &from_main {
                        to_main.send(v).expect("send back");
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    to_echo.send(i).expect("send");
                    black_box(from_echo.recv().expect("recv"));
                }
                let elapsed = start.elapsed();
                drop(to_echo);
                echo.join().expect("echo coroutine");
                elapsed
            })
        });
    });
    g.bench_function("evco shared::mpsc::bounded(64) stream, per message", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                let (tx, rx) = mpsc::bounded::<u64>(64);
                let consumer = evco::spawn(move || {
                    for v in &rx {
                        black_box(v);
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    tx.send(i).expect("send");
                }
                drop(tx);
                consumer.join().expect("consumer");
                start.elapsed()
            })
        });
    });
    g.bench_function(
        "evco shared::mpsc ping-pong (2 threads, a coroutine each)",
        |b| {
            b.iter_custom(|iters| {
                let (to_echo, from_main) = mpsc::channel::<u64>();
                let (to_main, from_echo) = mpsc::channel::<u64>();
                let echo = std::thread::spawn(move || {
                    evco::run(move || {
                        for v in &from_main {
                            to_main.send(v).expect("send back");
                        }
                    })
                });
                let elapsed = evco::run(move || {
                    let start = Instant::now();
                    for i in 0..iters {
                        to_echo.send(i).expect("send");
                        black_box(from_echo.recv().expect("recv"));
                    }
                    start.elapsed()
                });
                echo.join().expect("echo thread");
                elapsed
            });
        },
    );
    g.bench_function(
        "evco shared::mpsc::bounded(64) stream, 2 threads, per message",
        |b| {
            b.iter_custom(|iters| {
                let (tx, rx) = mpsc::bounded::<u64>(64);
                let consumer = std::thread::spawn(move || {
                    evco::run(move || {
                        for v in &rx {
                            black_box(v);
                        }
                    })
                });
                let start = Instant::now();
                evco::run(move || {
                    for i in 0..iters {
                        tx.send(i).expect("send");
                    }
                });
                consumer.join().expect("consumer thread");
                start.elapsed()
            });
        },
    );
    g.finish();
}

/// Spawning onto a runtime thread and joining, beside a local spawn+join: one at a time from
/// a coroutine on runtime thread 0 (to its own thread, spawned at once, and to thread 1: a
/// round trip of two thread wake-ups), and in batches of 64 and 1,024 to thread 1 (the
/// hand-off's throughput: a batch shares its wake-ups).
fn runtime_spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("runtime");
    g.bench_function("evco spawn+join (local, evco::run)", |b| {
        b.iter_custom(|iters| {
            evco::run(move || {
                evco::spawn(|| black_box(1)).join().expect("join");
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(evco::spawn(|| black_box(1)).join().expect("join"));
                }
                start.elapsed()
            })
        });
    });
    let rt = evco::runtime::Builder::new()
        .threads(2)
        .build()
        .expect("a 2-thread runtime");
    for (name, target, batch) in [
        ("evco runtime spawn_on(own thread)+join", 0, 1),
        ("evco runtime spawn_on(other thread)+join", 1, 1),
        (
            "evco runtime spawn_on(other thread)+join, batches of 64",
            1,
            64,
        ),
        (
            "evco runtime spawn_on(other thread)+join, batches of 1024",
            1,
            1024,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.spawn_on(0, move || {
                    let h = evco::runtime::Handle::current().expect("on the runtime");
                    h.spawn_on(target, || black_box(1))
                        .expect("spawn_on")
                        .join()
                        .expect("join");
                    let start = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(batch);
                        let hs: Vec<_> = (0..n)
                            .map(|_| h.spawn_on(target, || black_box(1)).expect("spawn_on"))
                            .collect();
                        for j in hs {
                            black_box(j.join().expect("join"));
                        }
                        left -= n;
                    }
                    start.elapsed()
                })
                .expect("spawn_on(0)")
                .join()
                .expect("bench coroutine")
            });
        });
    }
    g.finish();
    rt.shutdown(Duration::from_secs(5)).expect("shutdown");
}

fn config() -> Criterion {
    // Short enough that the whole suite runs in about a minute on a shared 2-core machine.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = switch, schedule, wait_cycle, channel, shared_channel, runtime_spawn
}
criterion_main!(benches);
