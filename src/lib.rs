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

pub mod coroutine;
pub mod event;
mod fd_table;
#[cfg(all(feature = "hook", target_os = "linux"))]
pub mod hook;
pub mod io;
pub mod net;
mod os;
mod reactor;
pub mod scheduler;
pub mod sync;
#[allow(missing_debug_implementations)]
pub mod sys;
pub mod time;
mod timer;

pub use coroutine::Builder;
pub use scheduler::{JoinHandle, run, spawn, yield_now};
