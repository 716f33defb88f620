//! Multi-producer, single-consumer channels between threads (and their coroutines).
//!
//! The same channel as [`mpmc`](super::mpmc), with a [`Receiver`] that cannot be cloned: the
//! shape of [`sync::mpsc`](crate::sync::mpsc) (same methods, same error types), for values
//! that cross threads. [`channel`] is unbounded: [`Sender::send`] never waits. [`bounded`] holds
//! at most `cap` values: a send waits while the channel is full; with `cap == 0` a send waits
//! until a receiver is waiting, and hands its value to it (a rendezvous). Waiters are served
//! first come, first served.
//!
//! The channel is disconnected for the receiver when every [`Sender`] is gone and the values
//! already sent have been received, and for the senders as soon as the [`Receiver`] is gone (the
//! values still queued are dropped with it, and a send gives its value back in the error).
//!
//! ```
//! use evco::sync::shared::mpsc;
//!
//! // Four threads, each with coroutines that send; one coroutine on this thread receives.
//! let (tx, rx) = mpsc::bounded(8);
//! let threads: Vec<_> = (0..4u64)
//!     .map(|t| {
//!         let tx = tx.clone();
//!         std::thread::spawn(move || {
//!             evco::run(move || {
//!                 for i in 0..10 {
//!                     let tx = tx.clone();
//!                     evco::spawn(move || tx.send(t * 100 + i).unwrap());
//!                 }
//!             })
//!         })
//!     })
//!     .collect();
//! drop(tx);
//! let sum: u64 = evco::run(move || rx.iter().sum());
//! threads.into_iter().for_each(|t| t.join().unwrap());
//! assert_eq!(sum, (0..4u64).map(|t| 10 * t * 100 + 45).sum());
//! ```
//!
//! # Send
//!
//! [`Sender`] and [`Receiver`] are `Send` and `Sync` when `T` is `Send`.

use super::chan::flavour;
pub use super::chan::{Iter, Sender, TryIter};
pub use crate::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

flavour! {
    /// The receiving side of a channel; there is one. Dropping it disconnects the channel.
}
