//! Stackful coroutines on libevent.
//!
//! evco runs coroutines on a libevent `event_base`. Inside a coroutine, a blocking-looking call
//! ([`io::wait`], [`time::sleep`], [`JoinHandle::join`]) registers a libevent event (or a
//! deadline that the scheduler's one timer event serves) and suspends; the event's callback
//! resumes the coroutine. One scheduler per thread owns or borrows
//! one base; coroutines never move between threads. [`net`] has std's socket types made
//! cooperative and name lookups through libevent's evdns ([`net::lookup_host`]), [`sync`] channels and locks that park the coroutine instead of the thread, and
//! with the `hook` feature (default) `hook` interposes libc's socket calls and sleeps so that
//! unmodified blocking code (std::net, C client libraries) suspends the coroutine too.
//!
//! # Implementation
//!
//! Coroutines run on `generator`'s guard-paged stacks, reused from a per-thread pool. The
//! thread that calls [`run`] (or a host program's `event_base_dispatch`) blocks in libevent's
//! backend (epoll on Linux); every wake-up, timer and the ready queue go through the base.
//!
//! The layers, bottom up (each module's first paragraph says what it owns; none imports one
//! above it):
//!
//! | module | owns |
//! |---|---|
//! | `sys` | libevent's FFI (pregenerated bindings) |
//! | `fd_table` | the process-wide fd table: one slot of atomics per fd number (the hooks' bits, a generation, which thread's reactor keeps state), grown on demand |
//! | `os` | the libc calls evco's I/O makes; `os::real`: libc's own functions past the hooks |
//! | [`event`], `timer` | safe `event_base`/`event` owners; the scheduler's timer heap and alarm |
//! | [`coroutine`] | stacks, switches, bare coroutines |
//! | `reactor` | all per-fd state of a thread: registrations, waiter lists, the edge callback, one-shot fd waits, and the one close path `forget(fd)` that ends waits on any thread |
//! | [`scheduler`] | tasks, the ready queue, parking, timeouts, spawn and join; owns the thread's reactor |
//! | [`io`] | the retry loop every blocking call is, and the waits that glue reactor and scheduler |
//! | [`net`], [`time`], [`sync`] | the cooperative API |
//! | [`runtime`] | many threads: a scheduler per thread, spawning across them, `SO_REUSEPORT` serving, shutdown |
//! | `hook` | interposed libc calls (feature `hook`) |
//! | `capi` | the C ABI of include/evco.h: `evco_*` exports, each a panic boundary |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let total = evco::run(|| {
//!     let a = evco::spawn(|| {
//!         evco::time::sleep(Duration::from_millis(2));
//!         1
//!     });
//!     let b = evco::spawn(|| 2);
//!     a.join().unwrap() + b.join().unwrap()
//! });
//! assert_eq!(total, 3);
//! ```
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod capi;
pub mod coroutine;
pub mod event;
mod fd_table;
#[cfg(all(feature = "hook", target_os = "linux"))]
pub mod hook;
pub mod io;
pub mod net;
mod os;
mod reactor;
pub mod runtime;
pub mod scheduler;
pub mod sync;
#[allow(missing_debug_implementations)]
pub mod sys;
pub mod time;
mod timer;

pub use coroutine::Builder;
pub use scheduler::{JoinHandle, run, spawn, yield_now};
