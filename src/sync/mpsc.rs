//! Multi-producer, single-consumer channels between the coroutines of one thread.
//!
//! [`channel`] is unbounded: [`Sender::send`] never waits. [`bounded`] holds at most `cap`
//! values: a send waits (parks its coroutine) while the channel is full; with `cap == 0` every
//! send waits for a receiver to be waiting and hands its value straight to it (a rendezvous).
//! [`Receiver::recv`] waits while the channel is empty. Waiters are served first come, first
//! served (see "Wait lists" in [`crate::sync`]).
//!
//! A channel is disconnected for the receiver when every [`Sender`] is gone and the values
//! already sent have been received, and for the senders as soon as the [`Receiver`] is gone (the
//! values still queued are dropped with it, and a send gives its value back in the error).
//!
//! ```
//! use evco::sync::mpsc;
//!
//! let sum = evco::run(|| {
//!     let (tx, rx) = mpsc::bounded(4);
//!     for id in 0..3u64 {
//!         let tx = tx.clone();
//!         evco::spawn(move || {
//!             for i in 0..100 {
//!                 tx.send(id * 1000 + i).unwrap();
//!             }
//!         });
//!     }
//!     drop(tx);
//!     rx.iter().sum::<u64>()
//! });
//! assert_eq!(sum, 3 * (0..100).sum::<u64>() + 100 * (1000 + 2000));
//! ```
//!
//! # Send
//!
//! Senders and receivers are `!Send` and `!Sync`: a channel connects coroutines of one thread,
//! which is what lets it work without atomics or locks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::WaitList;
use crate::coroutine;
use crate::scheduler;

struct Chan<T> {
    queue: RefCell<VecDeque<T>>,
    /// Most values queued (`usize::MAX`: unbounded; 0: rendezvous).
    cap: usize,
    senders: Cell<usize>,
    receiver_alive: Cell<bool>,
    /// Callers outside any coroutine blocked in a receive (they run the loop, not listed).
    outside_receivers: Cell<usize>,
    receivers: WaitList,
    senders_waiting: WaitList,
}

impl<T> Chan<T> {
    /// Whether a send can queue a value now: under capacity, counting receivers that are
    /// waiting (each will take one value at once, which is what makes capacity 0 work).
    fn has_room(&self) -> bool {
        let waiting = self.receivers.len() + self.outside_receivers.get();
        self.queue.borrow().len() < self.cap.saturating_add(waiting)
    }

    fn push(&self, value: T) {
        self.queue.borrow_mut().push_back(value);
        self.receivers.notify_one();
    }

    fn pop(&self) -> Option<T> {
        let v = self.queue.borrow_mut().pop_front();
        if v.is_some() && self.cap != usize::MAX {
            self.senders_waiting.notify_one();
        }
        v
    }

    fn disconnected_for_receiver(&self) -> bool {
        self.senders.get() == 0
    }
}

/// Creates an unbounded channel: sends never wait.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    make(usize::MAX)
}

/// Creates a channel that holds at most `cap` values; sends wait while it is full. With
/// `cap == 0` a send waits until a receiver takes its value.
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    make(cap)
}

fn make<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Rc::new(Chan {
        queue: RefCell::new(VecDeque::new()),
        cap,
        senders: Cell::new(1),
        receiver_alive: Cell::new(true),
        outside_receivers: Cell::new(0),
        receivers: WaitList::default(),
        senders_waiting: WaitList::default(),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

/// The sending side of a channel; clone it for more producers.
pub struct Sender<T> {
    chan: Rc<Chan<T>>,
}

/// The receiving side of a channel.
pub struct Receiver<T> {
    chan: Rc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `value`, waiting while a bounded channel is full.
    ///
    /// Errors give the value back: [`SendError::Disconnected`] when the receiver is gone,
    /// [`SendError::Wait`] when the channel is full and the caller cannot wait (a coroutine
    /// being cancelled, a bare [`Coroutine`](crate::coroutine::Coroutine), or a caller outside
    /// any coroutine whose event loop has nothing left that could make room).
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let chan = &*self.chan;
        loop {
            if !chan.receiver_alive.get() {
                return Err(SendError::Disconnected(value));
            }
            if chan.has_room() {
                chan.push(value);
                return Ok(());
            }
            let waited = if coroutine::is_coroutine() {
                chan.senders_waiting
                    .wait(None, &|| {
                        chan.senders_waiting.notify_one();
                    })
                    .map(drop)
            } else {
                scheduler::block_outside(|| chan.has_room() || !chan.receiver_alive.get(), None)
                    .map(drop)
            };
            if let Err(e) = waited {
                return Err(SendError::Wait(value, e));
            }
        }
    }

    /// Sends `value` if that needs no wait.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let chan = &*self.chan;
        if !chan.receiver_alive.get() {
            Err(TrySendError::Disconnected(value))
        } else if chan.has_room() {
            chan.push(value);
            Ok(())
        } else {
            Err(TrySendError::Full(value))
        }
    }

    /// Whether the receiver is gone: every send would fail.
    pub fn is_closed(&self) -> bool {
        !self.chan.receiver_alive.get()
    }

    /// Number of values queued and not yet received.
    pub fn len(&self) -> usize {
        self.chan.queue.borrow().len()
    }

    /// Whether no value is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most values the channel holds (`None`: unbounded).
    pub fn capacity(&self) -> Option<usize> {
        (self.chan.cap != usize::MAX).then_some(self.chan.cap)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.senders.set(self.chan.senders.get() + 1);
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let n = self.chan.senders.get() - 1;
        self.chan.senders.set(n);
        if n == 0 {
            self.chan.receivers.notify_all();
        }
    }
}

impl<T> Receiver<T> {
    /// Receives the next value, waiting while the channel is empty.
    ///
    /// [`RecvError::Disconnected`] once every sender is gone and the channel is empty;
    /// [`RecvError::Wait`] when it is empty and the caller cannot wait (as for
    /// [`Sender::send`]).
    pub fn recv(&self) -> Result<T, RecvError> {
        match self.recv_until(None) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Disconnected) => Err(RecvError::Disconnected),
            Err(RecvTimeoutError::Wait(e)) => Err(RecvError::Wait(e)),
            Err(RecvTimeoutError::Timeout) => unreachable!("no deadline, no timeout"),
        }
    }

    /// [`recv`](Self::recv) that gives up after `timeout` with [`RecvTimeoutError::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        // A timeout too long for `Instant` never passes: `None`.
        self.recv_until(crate::event::deadline_after(timeout))
    }

    /// Receives a value if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let chan = &*self.chan;
        if let Some(v) = chan.pop() {
            return Ok(v);
        }
        if chan.disconnected_for_receiver() {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let chan = &*self.chan;
        loop {
            if let Some(v) = chan.pop() {
                return Ok(v);
            }
            if chan.disconnected_for_receiver() {
                return Err(RecvTimeoutError::Disconnected);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            if chan.cap == 0 {
                // This receiver is about to wait: a rendezvous sender may now hand it a value.
                chan.senders_waiting.notify_one();
            }
            if coroutine::is_coroutine() {
                let woken = chan.receivers.wait(deadline, &|| {
                    chan.receivers.notify_one();
                });
                // Notified or not, the loop looks at the channel again.
                if let Err(e) = woken {
                    return Err(RecvTimeoutError::Wait(e));
                }
            } else {
                chan.outside_receivers.set(chan.outside_receivers.get() + 1);
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let r = scheduler::block_outside(
                    || !chan.queue.borrow().is_empty() || chan.disconnected_for_receiver(),
                    left,
                );
                chan.outside_receivers.set(chan.outside_receivers.get() - 1);
                if let Err(e) = r {
                    return Err(RecvTimeoutError::Wait(e));
                }
            }
        }
    }

    /// An iterator that receives until the channel is disconnected (or a receive cannot wait).
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the values queued now; it never waits.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// Number of values queued.
    pub fn len(&self) -> usize {
        self.chan.queue.borrow().len()
    }

    /// Whether no value is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.receiver_alive.set(false);
        // Dropped outside the borrow: a value's destructor may touch this channel.
        let queued = std::mem::take(&mut *self.chan.queue.borrow_mut());
        self.chan.senders_waiting.notify_all();
        drop(queued);
    }
}

/// Receives until the channel is disconnected; see [`Receiver::iter`].
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// The values queued now; see [`Receiver::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.len())
            .field("senders", &self.chan.senders.get())
            .finish()
    }
}

/// Why a [`Sender::send`] failed; it carries the value back.
pub enum SendError<T> {
    /// The receiver is gone.
    Disconnected(T),
    /// The channel was full and the caller could not wait (the error says why).
    Wait(T, io::Error),
}

impl<T> SendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Disconnected(v) | SendError::Wait(v, _) => v,
        }
    }
}

/// Why a [`Sender::try_send`] failed; it carries the value back.
pub enum TrySendError<T> {
    /// A bounded channel is full (or, with capacity 0, no receiver is waiting).
    Full(T),
    /// The receiver is gone.
    Disconnected(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Disconnected(v) => v,
        }
    }
}

/// Why a [`Receiver::recv`] returned no value.
#[derive(Debug)]
pub enum RecvError {
    /// Every sender is gone and the channel is empty: no value will come.
    Disconnected,
    /// The channel was empty and the caller could not wait (the error says why).
    Wait(io::Error),
}

/// Why a [`Receiver::recv_timeout`] returned no value.
#[derive(Debug)]
pub enum RecvTimeoutError {
    /// The timeout passed with the channel still empty.
    Timeout,
    /// Every sender is gone and the channel is empty.
    Disconnected,
    /// The channel was empty and the caller could not wait (the error says why).
    Wait(io::Error),
}

/// Why a [`Receiver::try_recv`] returned no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// No value is queued now.
    Empty,
    /// Every sender is gone and the channel is empty.
    Disconnected,
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendError::Wait(_, e) => f.debug_tuple("Wait").field(&"..").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => {
                f.write_str("sending on a channel whose receiver is gone")
            }
            SendError::Wait(_, e) => write!(f, "sending on a full channel: cannot wait: {e}"),
        }
    }
}

impl<T> Error for SendError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            SendError::Wait(_, e) => Some(e),
            SendError::Disconnected(_) => None,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("sending on a full channel"),
            TrySendError::Disconnected(_) => {
                f.write_str("sending on a channel whose receiver is gone")
            }
        }
    }
}

impl<T> Error for TrySendError<T> {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str("receiving on a channel with no senders left"),
            RecvError::Wait(e) => write!(f, "receiving on an empty channel: cannot wait: {e}"),
        }
    }
}

impl Error for RecvError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RecvError::Wait(e) => Some(e),
            RecvError::Disconnected => None,
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on a channel"),
            RecvTimeoutError::Disconnected => {
                f.write_str("receiving on a channel with no senders left")
            }
            RecvTimeoutError::Wait(e) => {
                write!(f, "receiving on an empty channel: cannot wait: {e}")
            }
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

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => {
                f.write_str("receiving on a channel with no senders left")
            }
        }
    }
}

impl Error for TryRecvError {}

impl From<RecvError> for io::Error {
    /// `Disconnected` becomes [`io::ErrorKind::BrokenPipe`]; `Wait` its own error.
    fn from(e: RecvError) -> io::Error {
        match e {
            RecvError::Disconnected => io::Error::new(io::ErrorKind::BrokenPipe, e),
            RecvError::Wait(e) => e,
        }
    }
}

impl<T> From<SendError<T>> for io::Error {
    /// `Disconnected` becomes [`io::ErrorKind::BrokenPipe`]; `Wait` its own error. The value
    /// is dropped.
    fn from(e: SendError<T>) -> io::Error {
        match e {
            SendError::Disconnected(_) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                "sending on a channel whose receiver is gone",
            ),
            SendError::Wait(_, e) => e,
        }
    }
}
