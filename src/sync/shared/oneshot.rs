//! A channel for one value, sent once, from any thread to any thread.
//!
//! [`Sender::send`] consumes the sender and never waits; [`Receiver::recv`] waits for the value,
//! or fails with [`RecvError::Closed`] once the sender is gone without sending (or the value
//! was already received). The classic use: a reply, sent back with the request.
//!
//! ```
//! use evco::sync::shared::{mpsc, oneshot};
//!
//! // A server thread answering requests that carry their own reply channel.
//! let (requests, inbox) = mpsc::channel::<(u32, oneshot::Sender<u32>)>();
//! let server = std::thread::spawn(move || {
//!     for (n, reply) in inbox.iter() {
//!         let _ = reply.send(n * 2);
//!     }
//! });
//! let doubled = evco::run(move || {
//!     let (tx, rx) = oneshot::channel();
//!     requests.send((21, tx)).unwrap();
//!     rx.recv().unwrap() // parks this coroutine until the server replies
//! });
//! assert_eq!(doubled, 42);
//! server.join().unwrap();
//! ```
//!
//! # Send
//!
//! [`Sender`] and [`Receiver`] are `Send` and `Sync` when `T` is `Send`.

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use super::{WaitQueue, lock, notify_all, passed, wait};

struct State<T> {
    value: Option<T>,
    sender: bool,
    receiver: bool,
    waiters: WaitQueue,
}

/// Creates a one-value channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(StdMutex::new(State {
        value: None,
        sender: true,
        receiver: true,
        waiters: WaitQueue::new(),
    }));
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

/// Sends the one value; dropping it unsent closes the channel.
pub struct Sender<T> {
    inner: Arc<StdMutex<State<T>>>,
}

/// Receives the one value.
pub struct Receiver<T> {
    inner: Arc<StdMutex<State<T>>>,
}

impl<T> Sender<T> {
    /// Sends `value` and wakes the receiver if it waits. Gives the value back when the receiver
    /// is gone.
    pub fn send(self, value: T) -> Result<(), T> {
        let mut st = lock(&self.inner);
        if !st.receiver {
            return Err(value);
        }
        st.value = Some(value);
        // Dropping `self` wakes the receiver.
        Ok(())
    }

    /// Whether the receiver is gone: a send would fail.
    pub fn is_closed(&self) -> bool {
        !lock(&self.inner).receiver
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.inner);
        st.sender = false;
        // Every waiter (a `Receiver` is `Sync`, several may share it): one takes the value,
        // the others find the sender gone. Waking only the first would leave them parked.
        let waiters = st.waiters.take();
        drop(st);
        notify_all(waiters);
    }
}

impl<T> Receiver<T> {
    /// Waits for the value. [`RecvError::Closed`] when the sender is gone without sending, or
    /// the value was received already; [`RecvError::Wait`] when the caller cannot wait (a
    /// coroutine being cancelled, a bare [`Coroutine`](crate::coroutine::Coroutine)).
    pub fn recv(&self) -> Result<T, RecvError> {
        match self.recv_until(None) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Closed) => Err(RecvError::Closed),
            Err(RecvTimeoutError::Wait(e)) => Err(RecvError::Wait(e)),
            Err(RecvTimeoutError::Timeout) => unreachable!("no deadline, no timeout"),
        }
    }

    /// [`recv`](Self::recv) that gives up after `timeout` with [`RecvTimeoutError::Timeout`]
    /// (the value may still come: receive again).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        // A timeout too long for `Instant` never passes: `None`.
        self.recv_until(crate::event::deadline_after(timeout))
    }

    /// The value if it was sent, without waiting.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = lock(&self.inner);
        match st.value.take() {
            Some(v) => Ok(v),
            None if st.sender => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Closed),
        }
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut st = lock(&self.inner);
        loop {
            if let Some(v) = st.value.take() {
                return Ok(v);
            }
            if !st.sender {
                return Err(RecvTimeoutError::Closed);
            }
            if passed(deadline) {
                return Err(RecvTimeoutError::Timeout);
            }
            // A notification is "the sender is gone": nothing to pass on, and the value (if
            // any) stays for the next receive.
            match wait(&self.inner, st, |s| &mut s.waiters, deadline, &|_| None) {
                Ok((_, relocked)) => st = relocked,
                Err(e) => return Err(RecvTimeoutError::Wait(e)),
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.inner);
        st.receiver = false;
        let value = st.value.take();
        drop(st);
        // Dropped outside the lock: its destructor may use this channel.
        drop(value);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner);
        f.debug_struct("Receiver")
            .field("sent", &st.value.is_some())
            .field("sender", &st.sender)
            .finish()
    }
}

/// Why a [`Receiver::recv`] returned no value.
#[derive(Debug)]
pub enum RecvError {
    /// The sender is gone without sending, or the value was received already.
    Closed,
    /// No value yet, and the caller could not wait (the error says why).
    Wait(io::Error),
}

/// Why a [`Receiver::recv_timeout`] returned no value.
#[derive(Debug)]
pub enum RecvTimeoutError {
    /// The timeout passed with no value yet.
    Timeout,
    /// The sender is gone without sending, or the value was received already.
    Closed,
    /// No value yet, and the caller could not wait (the error says why).
    Wait(io::Error),
}

/// Why a [`Receiver::try_recv`] returned no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// No value yet; the sender may still send.
    Empty,
    /// The sender is gone without sending, or the value was received already.
    Closed,
}

const CLOSED: &str = "receiving on a oneshot channel whose sender is gone";

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str(CLOSED),
            RecvError::Wait(e) => write!(f, "receiving on a oneshot channel: cannot wait: {e}"),
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on a oneshot channel"),
            RecvTimeoutError::Closed => f.write_str(CLOSED),
            RecvTimeoutError::Wait(e) => {
                write!(f, "receiving on a oneshot channel: cannot wait: {e}")
            }
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty oneshot channel"),
            TryRecvError::Closed => f.write_str(CLOSED),
        }
    }
}

impl Error for RecvError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RecvError::Wait(e) => Some(e),
            RecvError::Closed => None,
        }
    }
}

impl Error for RecvTimeoutError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RecvTimeoutError::Wait(e) => Some(e),
            _ => None,
        }
    }
}

impl Error for TryRecvError {}
