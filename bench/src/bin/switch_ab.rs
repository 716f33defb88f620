//! The coroutine switch against the raw `generator` switch, interleaved in one process: a
//! ratio that survives a noisy machine better than two criterion benchmarks run one after the
//! other.
//!
//! Each round times `ITERS` resume+suspend round trips of evco's bare `Coroutine`, then the
//! same number of raw `generator` resume+`yield_with` round trips, alternating; the minimum
//! per round trip over all rounds is the figure least disturbed by other work on the machine
//! (interrupts and neighbours only ever add time). Prints both minima, both medians and their
//! ratios.
//!
//!     cargo run --release -p evco-bench --bin switch_ab [-- ROUNDS]

use std::hint::black_box;
use std::time::Instant;

use evco::coroutine::{Coroutine, suspend};

const ITERS: u32 = 200_000;
const WORDS: usize = evco::coroutine::DEFAULT_STACK_SIZE / std::mem::size_of::<usize>();

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse().expect("ROUNDS is a number"))
        .unwrap_or(41);
    let mut co = Coroutine::new(|| while suspend().is_ok() {}).expect("coroutine");
    #[allow(deprecated)]
    let mut gn: generator::Generator<'_, (), ()> = generator::Gn::<()>::new_opt(WORDS, || {
        loop {
            generator::yield_with(());
        }
    });
    let (mut evco_ns, mut raw_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..ITERS {
            black_box(co.resume().expect("resume"));
        }
        evco_ns.push(t.elapsed().as_nanos() as f64 / f64::from(ITERS));
        let t = Instant::now();
        for _ in 0..ITERS {
            black_box(gn.resume());
        }
        raw_ns.push(t.elapsed().as_nanos() as f64 / f64::from(ITERS));
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (emin, rmin) = (min(&evco_ns), min(&raw_ns));
    let (emed, rmed) = (median(&mut evco_ns), median(&mut raw_ns));
    println!("resume+suspend round trip, {rounds} interleaved rounds of {ITERS}");
    println!("  raw generator:  min {rmin:6.2} ns  median {rmed:6.2} ns");
    println!("  evco Coroutine: min {emin:6.2} ns  median {emed:6.2} ns");
    println!(
        "  evco / raw:     min {:.2}x  median {:.2}x  (target <= 1.3x)",
        emin / rmin,
        emed / rmed
    );
}
