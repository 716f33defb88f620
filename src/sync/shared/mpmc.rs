//! Multi-producer, multi-consumer channels between threads (and their coroutines).
//!
//! [`mpsc`](super::mpsc)'s channel with a [`Receiver`] that can be cloned: each value goes to
//! one receiver, the one that has waited longest (or the first to look, if none waits). The
//! channel is disconnected for the receivers when every [`Sender`] is gone and the queue is
//! empty, and for the senders when every [`Receiver`] is gone.
//!
//! ```
//! use evco::sync::shared::mpmc;
//!
//! // A pool of workers on two threads, fed from this one.
//! let (jobs, queue) = mpmc::bounded::<u64>(16);
//! let (results, collected) = mpmc::channel();
//! let workers: Vec<_> = (0..2)
//!     .map(|_| {
//!         let (queue, results) = (queue.clone(), results.clone());
//!         std::thread::spawn(move || {
//!             evco::run(move || {
//!                 let handles: Vec<_> = (0..4)
//!                     .map(|_| {
//!                         let (queue, results) = (queue.clone(), results.clone());
//!                         evco::spawn(move || {
//!                             for job in &queue {
//!                                 results.send(job * job).unwrap();
//!                             }
//!                         })
//!                     })
//!                     .collect();
//!                 handles.into_iter().for_each(|h| h.join().unwrap());
//!             })
//!         })
//!     })
//!     .collect();
//! drop((queue, results));
//! for job in 1..=100 {
//!     jobs.send(job).unwrap();
//! }
//! drop(jobs);
//! let sum: u64 = collected.iter().sum();
//! workers.into_iter().for_each(|w| w.join().unwrap());
//! assert_eq!(sum, (1..=100u64).map(|j| j * j).sum());
//! ```
//!
//! # Send
//!
//! [`Sender`] and [`Receiver`] are `Send` and `Sync` when `T` is `Send`.

use super::chan::flavour;
pub use super::chan::{Iter, Sender, TryIter};
pub use crate::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

flavour! {
    /// A receiving side of a channel; clone it for more consumers. The channel is disconnected
    /// for the senders when every clone is gone.
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.chan.add_receiver();
        Receiver {
            chan: self.chan.clone(),
        }
    }
}
