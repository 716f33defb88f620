//! A load client for the echo server, in evco itself: N connections, each sending messages of
//! one size and checking every byte that comes back. Prints messages/s and latency percentiles.
//!
//! ```text
//! cargo run --release --example echo_client -- --addr 127.0.0.1:7878 --conns 100 --size 64 --secs 5
//! ```
//! The last line is machine-readable:
//! `RESULT msgs_per_sec=<f> p50_us=<f> p99_us=<f> errors=<n>`.
//!
//! `--mode churn`: every connection sends one message and closes, then reconnects (the rate is
//! connections per second: measures the server's cost per accepted connection).
//! `--mode idle`: every connection sends one message, then stays open and silent until the end
//! (hold `--conns` idle connections to measure the server's memory per connection).

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use evco::coroutine::Builder;
use evco::net::TcpStream;

struct Opts {
    addr: String,
    conns: usize,
    size: usize,
    secs: f64,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Churn,
    Idle,
}

fn parse() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:7878".into(),
        conns: 100,
        size: 64,
        secs: 5.0,
        mode: Mode::Echo,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--addr" => o.addr = val(),
            "--conns" => o.conns = val().parse().unwrap_or_else(|_| die("bad --conns")),
            "--size" => o.size = val().parse().unwrap_or_else(|_| die("bad --size")),
            "--secs" => o.secs = val().parse().unwrap_or_else(|_| die("bad --secs")),
            "--mode" => {
                o.mode = match val().as_str() {
                    "echo" => Mode::Echo,
                    "churn" => Mode::Churn,
                    "idle" => Mode::Idle,
                    _ => die("--mode is echo, churn or idle"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: echo_client [--addr A] [--conns N] [--size BYTES] [--secs S] \
                     [--mode echo|churn|idle]"
                );
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a:?}")),
        }
    }
    if o.size == 0 || o.conns == 0 {
        die("--size and --conns must be positive");
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("echo_client: {msg}");
    std::process::exit(2)
}

fn main() {
    let o = parse();
    let (msgs, errors, mut lat) = evco::run(move || {
        let msgs = Rc::new(Cell::new(0u64));
        let errors = Rc::new(Cell::new(0u64));
        let lat = Rc::new(RefCell::new(Vec::<u32>::new()));
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(o.secs);
        let handles: Vec<_> = (0..o.conns)
            .map(|id| {
                let (msgs, errors, lat, addr) =
                    (msgs.clone(), errors.clone(), lat.clone(), o.addr.clone());
                let (size, mode) = (o.size, o.mode);
                Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let run = || -> std::io::Result<()> {
                            match mode {
                                Mode::Echo => {
                                    client(id, &addr, size, deadline, &msgs, &lat, None).map(drop)
                                }
                                Mode::Churn => {
                                    while Instant::now() < deadline {
                                        client(id, &addr, size, deadline, &msgs, &lat, Some(1))?;
                                    }
                                    Ok(())
                                }
                                Mode::Idle => {
                                    // Hold the connection open and silent until the end.
                                    let held =
                                        client(id, &addr, size, deadline, &msgs, &lat, Some(1))?;
                                    let left = deadline.saturating_duration_since(Instant::now());
                                    evco::time::sleep(left);
                                    drop(held);
                                    Ok(())
                                }
                            }
                        };
                        if let Err(e) = run() {
                            if errors.get() < 5 {
                                eprintln!("echo_client: connection {id}: {e}");
                            }
                            errors.set(errors.get() + 1);
                        }
                    })
                    .unwrap_or_else(|e| die(&format!("spawn: {e}")))
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = msgs.get() as f64 / elapsed;
        (rate, errors.get(), lat.take())
    });
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() - 1) as f64 * p) as usize] as f64
    };
    println!(
        "{} conns x {} B: {:.0} msgs/s, latency p50 {:.0} us, p99 {:.0} us, {} errors",
        o.conns,
        o.size,
        msgs,
        pct(0.5),
        pct(0.99),
        errors
    );
    println!(
        "RESULT msgs_per_sec={msgs:.1} p50_us={:.1} p99_us={:.1} errors={errors}",
        pct(0.5),
        pct(0.99)
    );
    if errors > 0 {
        std::process::exit(1);
    }
}

/// One connection: send numbered messages (until the deadline, or `limit` of them), check each
/// echo byte for byte.
fn client(
    id: usize,
    addr: &str,
    size: usize,
    deadline: Instant,
    msgs: &Cell<u64>,
    lat: &RefCell<Vec<u32>>,
    limit: Option<u64>,
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = vec![0u8; size];
    let mut back = vec![0u8; size];
    let mut local = Vec::new();
    let mut seq = 0u64;
    while Instant::now() < deadline && limit.is_none_or(|l| seq < l) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = (id as u64 ^ seq.wrapping_mul(31) ^ i as u64) as u8;
        }
        let t = Instant::now();
        stream.write_all(&out)?;
        stream.read_exact(&mut back)?;
        if back != out {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message {seq} came back corrupted"),
            ));
        }
        local.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        msgs.set(msgs.get() + 1);
        seq += 1;
    }
    lat.borrow_mut().extend(local);
    Ok(stream)
}
