//! The one channel both [`mpsc`](super::mpsc) and [`mpmc`](super::mpmc) are: a queue, its
//! two wait queues and the counts of each side, under one lock. The flavours differ only in
//! whether their receiver can be cloned; [`flavour!`] writes each one's constructors and receiver type.
//!
//! A send queues its value while the queue is under capacity, counting receivers that wait (each
//! will take one value at once, which is what makes capacity 0 a rendezvous), and notifies the
//! first waiting receiver. A receive takes the first value and, on a bounded channel, notifies
//! the first waiting sender. The last sender to go notifies every receiver; the last receiver
//! to go drops what was queued and notifies every sender.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use super::{WaitQueue, lock, notify, notify_all, passed, wait};
use crate::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

pub(super) struct Chan<T> {
    state: StdMutex<State<T>>,
    /// Most values queued (`usize::MAX`: unbounded; 0: rendezvous).
    cap: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receivers: usize,
    recv_waiters: WaitQueue,
    send_waiters: WaitQueue,
}

impl<T> State<T> {
    fn has_room(&self, cap: usize) -> bool {
        self.queue.len() < cap.saturating_add(self.recv_waiters.len())
    }
}

/// A new channel of capacity `cap` (`usize::MAX`: unbounded), with one sender and one receiver.
pub(super) fn make<T>(cap: usize) -> (Sender<T>, Arc<Chan<T>>) {
    let chan = Arc::new(Chan {
        state: StdMutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receivers: 1,
            recv_waiters: WaitQueue::new(),
            send_waiters: WaitQueue::new(),
        }),
        cap,
    });
    (Sender { chan: chan.clone() }, chan)
}

impl<T> Chan<T> {
    pub(super) fn recv(&self) -> Result<T, RecvError> {
        match self.recv_until(None) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Disconnected) => Err(RecvError::Disconnected),
            Err(RecvTimeoutError::Wait(e)) => Err(RecvError::Wait(e)),
            Err(RecvTimeoutError::Timeout) => unreachable!("no deadline, no timeout"),
        }
    }

    pub(super) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        // A timeout too long for `Instant` never passes: `None`.
        self.recv_until(crate::event::deadline_after(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(v) = st.queue.pop_front() {
                let sender = if self.cap == usize::MAX {
                    None
                } else {
                    st.send_waiters.pop()
                };
                drop(st);
                notify(sender);
                return Ok(v);
            }
            if st.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            if passed(deadline) {
                return Err(RecvTimeoutError::Timeout);
            }
            if self.cap == 0 {
                // This receiver is about to be listed: a rendezvous sender may now hand it a
                // value (it looks once this lock is released, and finds the receiver counted).
                notify(st.send_waiters.pop());
            }
            // Notified or not, the loop looks at the channel again.
            match wait(&self.state, st, |s| &mut s.recv_waiters, deadline, &|s| {
                s.recv_waiters.pop()
            }) {
                Ok((_, relocked)) => st = relocked,
                Err(e) => return Err(RecvTimeoutError::Wait(e)),
            }
        }
    }

    pub(super) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = lock(&self.state);
        match st.queue.pop_front() {
            Some(v) => {
                let sender = if self.cap == usize::MAX {
                    None
                } else {
                    st.send_waiters.pop()
                };
                drop(st);
                notify(sender);
                Ok(v)
            }
            None if st.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.state).queue.len()
    }

    pub(super) fn capacity(&self) -> Option<usize> {
        (self.cap != usize::MAX).then_some(self.cap)
    }

    pub(super) fn add_receiver(&self) {
        lock(&self.state).receivers += 1;
    }

    pub(super) fn drop_receiver(&self) {
        let mut st = lock(&self.state);
        st.receivers -= 1;
        if st.receivers > 0 {
            return;
        }
        let queued = std::mem::take(&mut st.queue);
        let senders = st.send_waiters.take();
        drop(st);
        notify_all(senders);
        // Dropped outside the lock: a value's destructor may use this channel.
        drop(queued);
    }

    fn senders(&self) -> usize {
        lock(&self.state).senders
    }
}

/// The sending side of a channel; clone it for more producers. `Send` and `Sync` when `T` is
/// `Send`.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `value`, waiting while a bounded channel is full (with capacity 0: until a
    /// receiver waits for it).
    ///
    /// Errors give the value back: [`SendError::Disconnected`] when every receiver is gone,
    /// [`SendError::Wait`] when the channel is full and the caller cannot wait (a coroutine
    /// being cancelled, a bare [`Coroutine`](crate::coroutine::Coroutine)).
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let chan = &*self.chan;
        let mut st = lock(&chan.state);
        loop {
            if st.receivers == 0 {
                return Err(SendError::Disconnected(value));
            }
            if st.has_room(chan.cap) {
                st.queue.push_back(value);
                let receiver = st.recv_waiters.pop();
                drop(st);
                notify(receiver);
                return Ok(());
            }
            match wait(&chan.state, st, |s| &mut s.send_waiters, None, &|s| {
                s.send_waiters.pop()
            }) {
                Ok((_, relocked)) => st = relocked,
                Err(e) => return Err(SendError::Wait(value, e)),
            }
        }
    }

    /// Sends `value` if that needs no wait.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut st = lock(&self.chan.state);
        if st.receivers == 0 {
            Err(TrySendError::Disconnected(value))
        } else if st.has_room(self.chan.cap) {
            st.queue.push_back(value);
            let receiver = st.recv_waiters.pop();
            drop(st);
            notify(receiver);
            Ok(())
        } else {
            Err(TrySendError::Full(value))
        }
    }

    /// Whether every receiver is gone: every send would fail.
    pub fn is_closed(&self) -> bool {
        lock(&self.chan.state).receivers == 0
    }

    /// Number of values queued and not yet received.
    pub fn len(&self) -> usize {
        self.chan.len()
    }

    /// Whether no value is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most values the channel holds (`None`: unbounded).
    pub fn capacity(&self) -> Option<usize> {
        self.chan.capacity()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.chan.state).senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.chan.state);
        st.senders -= 1;
        if st.senders == 0 {
            let receivers = st.recv_waiters.take();
            drop(st);
            notify_all(receivers);
        }
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

/// Receives until the channel is disconnected (or a receive cannot wait); see a receiver's
/// `iter`.
pub struct Iter<'a, T> {
    pub(super) chan: &'a Chan<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.chan.recv().ok()
    }
}

/// The values queued now; see a receiver's `try_iter`.
pub struct TryIter<'a, T> {
    pub(super) chan: &'a Chan<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.chan.try_recv().ok()
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for TryIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryIter").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Chan<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chan")
            .field("len", &self.len())
            .field("senders", &self.senders())
            .finish_non_exhaustive()
    }
}

/// Writes a flavour's `channel` and `bounded`, and its `Receiver` type: its docs (the
/// attributes given), its receiving methods (all of them the channel's), its `Drop` (one
/// receiver fewer) and `Debug`.
macro_rules! flavour {
    ($(#[$attr:meta])*) => {
        /// Creates an unbounded channel: sends never wait.
        pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
            bounded(usize::MAX)
        }

        /// Creates a channel that holds at most `cap` values; sends wait while it is full. With
        /// `cap == 0` a send waits until a receiver waits for its value.
        pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
            let (tx, chan) = super::chan::make(cap);
            (tx, Receiver { chan })
        }

        $(#[$attr])*
        pub struct Receiver<T> {
            chan: std::sync::Arc<super::chan::Chan<T>>,
        }

        impl<T> Receiver<T> {
            /// Receives the next value, waiting while the channel is empty.
            ///
            /// [`RecvError::Disconnected`] once every sender is gone and the channel is empty;
            /// [`RecvError::Wait`] when it is empty and the caller cannot wait (a coroutine
            /// being cancelled, a bare [`Coroutine`](crate::coroutine::Coroutine)).
            pub fn recv(&self) -> Result<T, RecvError> {
                self.chan.recv()
            }

            /// [`recv`](Self::recv) that gives up after `timeout` with
            /// [`RecvTimeoutError::Timeout`].
            pub fn recv_timeout(
                &self,
                timeout: std::time::Duration,
            ) -> Result<T, RecvTimeoutError> {
                self.chan.recv_timeout(timeout)
            }

            /// Receives a value if one is queued.
            pub fn try_recv(&self) -> Result<T, TryRecvError> {
                self.chan.try_recv()
            }

            /// An iterator that receives until the channel is disconnected (or a receive cannot
            /// wait).
            pub fn iter(&self) -> Iter<'_, T> {
                Iter { chan: &self.chan }
            }

            /// An iterator over the values queued now; it never waits.
            pub fn try_iter(&self) -> TryIter<'_, T> {
                TryIter { chan: &self.chan }
            }

            /// Number of values queued.
            pub fn len(&self) -> usize {
                self.chan.len()
            }

            /// Whether no value is queued.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Most values the channel holds (`None`: unbounded).
            pub fn capacity(&self) -> Option<usize> {
                self.chan.capacity()
            }
        }

        impl<T> Drop for Receiver<T> {
            fn drop(&mut self) {
                self.chan.drop_receiver();
            }
        }

        impl<'a, T> IntoIterator for &'a Receiver<T> {
            type Item = T;
            type IntoIter = Iter<'a, T>;
            fn into_iter(self) -> Iter<'a, T> {
                self.iter()
            }
        }

        impl<T> std::fmt::Debug for Receiver<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Receiver").field("chan", &*self.chan).finish()
            }
        }
    };
}
pub(super) use flavour;
