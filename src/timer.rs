//! Precise timers for the scheduler's timed waits: a min-heap of deadlines on [`Instant`]'s
//! clock, and one alarm that wakes the loop at the earliest of them.
//!
//! libevent's own timers run on a clock that advances one kernel tick at a time (see "Timers" in
//! [`crate::event`]), unless a base is made with `EVENT_BASE_FLAG_PRECISE_TIMER`, which under
//! epoll costs a `timerfd_settime` call on every turn of the loop, timers or not. The scheduler
//! keeps its coroutines' deadlines here instead and needs the loop woken only at the earliest:
//! on Linux by a timerfd of its own, set only when a deadline earlier than the one it is set for
//! arrives (a server whose every read has a timeout sets it about once per timeout period, not
//! once per read, and a server without timeouts never), elsewhere by one libevent timer on a base
//! made with precise timers (no timerfd there).
//!
//! # Invariants
//!
//! - Every entry points at a live item. Whoever inserts an item removes it before the item can
//!   be freed or moved (`insert` is unsafe for that); the scheduler's tasks do it in the guard of
//!   each timed wait, which runs however the wait ends (timer, I/O, unpark, close, cancellation).
//! - An item's slot holds its index in the heap while it is in it, and `NOT_QUEUED` otherwise.
//! - The alarm's event is pending exactly while the heap is not empty (the scheduler makes it
//!   so), so a loop whose only timers are gone reports that it has no events: the scheduler's
//!   deadlock detection relies on that. (The price: when the heap keeps emptying and filling
//!   again, as with one coroutine sleeping in a loop, each refill costs an `epoll_ctl`.)
//! - The alarm never goes off before the deadline it was last set for. It may go off for an entry
//!   removed since; the scheduler then finds nothing due and sets it for the earliest again.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::raw::c_void;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::event::{RawCallback, RawEvent, What};
use crate::sys;

/// An item's slot while it is not in a heap.
pub(crate) const NOT_QUEUED: u32 = u32::MAX;

/// What a [`TimerHeap`] holds: anything with a slot for its index.
pub(crate) trait Timed {
    fn timer_slot(&self) -> &Cell<u32>;
}

/// A deadline, the order of its insertion among equal deadlines (so that those expire in the
/// order they were set), and the item.
type Entry<T> = (Instant, u64, NonNull<T>);

/// A binary min-heap of deadlines that knows where each item is, so that a wait that ends some
/// other way removes its deadline in O(log n) (libevent's timer heap works the same way).
pub(crate) struct TimerHeap<T: Timed> {
    entries: RefCell<Vec<Entry<T>>>,
    seq: Cell<u64>,
}

impl<T: Timed> TimerHeap<T> {
    pub(crate) fn new() -> TimerHeap<T> {
        TimerHeap {
            entries: RefCell::new(Vec::new()),
            seq: Cell::new(0),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.entries.borrow().first().map(|e| e.0)
    }

    /// Adds `item`, due at `deadline`. Returns false, changing nothing, if it is in already.
    ///
    /// # Safety
    ///
    /// `item` must stay alive and in place until it is removed ([`remove`](Self::remove)) or
    /// expires ([`pop_due`](Self::pop_due)).
    pub(crate) unsafe fn insert(&self, deadline: Instant, item: &T) -> bool {
        if item.timer_slot().get() != NOT_QUEUED {
            return false;
        }
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let mut e = self.entries.borrow_mut();
        e.push((deadline, seq, NonNull::from(item)));
        let i = e.len() - 1;
        item.timer_slot().set(slot(i));
        sift_up(&mut e, i);
        true
    }

    /// Takes `item` out, if it is in. Returns whether it was. Inlined down to one field read
    /// for an item that is not in (every wake-up asks, few waits have a timeout).
    #[inline]
    pub(crate) fn remove(&self, item: &T) -> bool {
        let i = item.timer_slot().get();
        if i == NOT_QUEUED {
            return false;
        }
        self.remove_at(item, i as usize);
        true
    }

    #[inline(never)]
    fn remove_at(&self, item: &T, i: usize) {
        let mut e = self.entries.borrow_mut();
        debug_assert!(
            std::ptr::eq(e[i].2.as_ptr(), item),
            "timer slot out of date"
        );
        item.timer_slot().set(NOT_QUEUED);
        let last = e.pop().expect("an item with a slot is in the heap");
        if i < e.len() {
            e[i] = last;
            set_slot(&e, i);
            let i = sift_up(&mut e, i);
            sift_down(&mut e, i);
        }
    }

    /// Takes out the earliest item if its deadline is not after `now`.
    pub(crate) fn pop_due(&self, now: Instant) -> Option<NonNull<T>> {
        if self.earliest()? > now {
            return None;
        }
        self.pop_first()
    }

    /// Takes out the earliest item, due or not.
    pub(crate) fn pop_first(&self) -> Option<NonNull<T>> {
        let mut e = self.entries.borrow_mut();
        if e.is_empty() {
            return None;
        }
        let (_, _, item) = e.swap_remove(0);
        // SAFETY: entries point at live items (module invariants).
        unsafe { item.as_ref() }.timer_slot().set(NOT_QUEUED);
        if !e.is_empty() {
            set_slot(&e, 0);
            sift_down(&mut e, 0);
        }
        Some(item)
    }
}

/// How long until `deadline`, measured before the system call that sets a relative timer, so
/// that the timer ends at or after `deadline`; at least a nanosecond (a zero disarms a timerfd).
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_nanos(1))
}

fn set_slot<T: Timed>(e: &[Entry<T>], i: usize) {
    // SAFETY: entries point at live items (module invariants).
    unsafe { e[i].2.as_ref() }.timer_slot().set(slot(i));
}

/// A heap index as a slot. More than `u32::MAX - 1` pending deadlines would take a coroutine
/// each, far beyond what memory (and `vm.max_map_count`) allows.
fn slot(i: usize) -> u32 {
    debug_assert!(i < NOT_QUEUED as usize);
    i as u32
}

fn before<T>(a: &Entry<T>, b: &Entry<T>) -> bool {
    (a.0, a.1) < (b.0, b.1)
}

/// Moves entry `i` up to its place; returns where it ended.
fn sift_up<T: Timed>(e: &mut [Entry<T>], mut i: usize) -> usize {
    while i > 0 {
        let parent = (i - 1) / 2;
        if !before(&e[i], &e[parent]) {
            break;
        }
        e.swap(i, parent);
        set_slot(e, i);
        set_slot(e, parent);
        i = parent;
    }
    i
}

/// Moves entry `i` down to its place.
fn sift_down<T: Timed>(e: &mut [Entry<T>], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut least = i;
        if l < e.len() && before(&e[l], &e[least]) {
            least = l;
        }
        if r < e.len() && before(&e[r], &e[least]) {
            least = r;
        }
        if least == i {
            return;
        }
        e.swap(i, least);
        set_slot(e, i);
        set_slot(e, least);
        i = least;
    }
}

/// Wakes the loop at a deadline: calls its callback from the loop once the deadline passed.
///
/// On Linux a timerfd (precise, no system call per loop turn); where there is none, or when
/// the process is out of fds when the alarm is made, one libevent timer instead, which on a base
/// with libevent's coarse clock may go off up to a tick early: the scheduler then finds nothing
/// due and sets it again for what is left, so no wait ends early.
///
/// Its event is pending only between [`set`](Self::set) and [`disable`](Self::disable) or the
/// callback; the callback must call [`fired`](Self::fired) first.
pub(crate) struct Alarm {
    /// Declared before `fd`: the event is deleted before its fd is closed.
    ev: RawEvent,
    /// The timerfd, or `None` for the libevent timer.
    fd: Option<std::os::fd::OwnedFd>,
    /// The deadline the alarm is set for, until it goes off (`None`: not set).
    armed: Cell<Option<Instant>>,
    /// Whether `ev` is pending.
    enabled: Cell<bool>,
}

impl Alarm {
    /// An alarm on `base` that calls `callback(arg)`.
    ///
    /// # Safety
    ///
    /// `base` must be live and outlive the alarm; `arg` must stay valid while the alarm exists.
    pub(crate) unsafe fn new(
        base: *mut sys::event_base,
        callback: RawCallback,
        arg: *mut c_void,
    ) -> io::Result<Alarm> {
        use std::os::fd::AsRawFd;
        let ev = RawEvent::new();
        let fd = timerfd();
        match &fd {
            // SAFETY: the caller vouches for `base` and `arg`; the event is deleted (its drop)
            // before the fd is closed (field order).
            Some(fd) => unsafe {
                ev.assign(
                    base,
                    fd.as_raw_fd(),
                    What::READ | What::PERSIST,
                    callback,
                    arg,
                )
            },
            // SAFETY: as above.
            None => unsafe { ev.assign(base, -1, What::NONE, callback, arg) },
        }
        Ok(Alarm {
            ev,
            fd,
            armed: Cell::new(None),
            enabled: Cell::new(false),
        })
    }

    /// Makes the alarm go off at `deadline` or before whatever it is set for now, whichever
    /// comes first (never before `deadline` if that is all it is set for).
    pub(crate) fn set(&self, deadline: Instant) -> io::Result<()> {
        match &self.fd {
            Some(fd) => {
                if !self.enabled.get() {
                    self.ev.add(None)?;
                    self.enabled.set(true);
                }
                if self.armed.get().is_some_and(|a| a <= deadline) {
                    return Ok(());
                }
                set_timerfd(fd, time_left(deadline))?;
            }
            None => {
                if self.enabled.get() && self.armed.get().is_some_and(|a| a <= deadline) {
                    return Ok(());
                }
                self.ev.add(Some(time_left(deadline)))?;
                self.enabled.set(true);
            }
        }
        self.armed.set(Some(deadline));
        Ok(())
    }

    /// No deadline is left: the loop need not wake for the alarm any more.
    ///
    /// A timerfd stays set (no system call); if it goes off meanwhile, it reports so when the
    /// alarm is set again, and the callback finds nothing due.
    pub(crate) fn disable(&self) {
        if self.enabled.replace(false) {
            self.ev.del();
        }
        if self.fd.is_none() {
            self.armed.set(None);
        }
    }

    /// In a forked child: the timerfd is the parent's too (setting it would move the parent's
    /// alarm), so take a new one, or the libevent timer if none can be made, and set it again.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new), with the base and argument the alarm was made with.
    pub(crate) unsafe fn after_fork(
        &mut self,
        base: *mut sys::event_base,
        callback: RawCallback,
        arg: *mut c_void,
    ) {
        use std::os::fd::AsRawFd;
        if self.fd.is_none() {
            return;
        }
        self.ev.del();
        self.enabled.set(false);
        // The parent's copy stays open in the parent; this one is the child's to close.
        self.fd = timerfd();
        self.ev.reset();
        match &self.fd {
            // SAFETY: the caller's contract, as in `new`.
            Some(fd) => unsafe {
                self.ev.assign(
                    base,
                    fd.as_raw_fd(),
                    What::READ | What::PERSIST,
                    callback,
                    arg,
                )
            },
            // SAFETY: as above.
            None => unsafe { self.ev.assign(base, -1, What::NONE, callback, arg) },
        }
        if let Some(deadline) = self.armed.take() {
            let _ = self.set(deadline);
        }
    }

    /// The alarm went off: the first thing its callback does.
    ///
    /// A timerfd stays readable until it is read or set again. It is not read here (a system
    /// call per expiry saved): the scheduler either sets it again (`set` always does after
    /// this) or disables it before the loop polls again, and a disabled alarm is set again
    /// before it is enabled.
    pub(crate) fn fired(&self) {
        if self.fd.is_none() {
            // A one-shot libevent timer is no longer pending once it fired.
            self.enabled.set(false);
        }
        self.armed.set(None);
    }
}

/// A non-blocking monotonic timerfd, or `None` where there is none or none can be made (out
/// of fds: the alarm falls back to a libevent timer then).
#[cfg(target_os = "linux")]
fn timerfd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        log::debug!(
            "evco: no timerfd ({}): timed waits use a libevent timer",
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn timerfd() -> Option<std::os::fd::OwnedFd> {
    None
}

/// Sets the timerfd to go off once, `left` from now.
#[cfg(target_os = "linux")]
fn set_timerfd(fd: &std::os::fd::OwnedFd, left: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: left.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as _,
        },
    };
    // SAFETY: a valid timerfd and a valid itimerspec; no old value asked for.
    let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_timerfd(_fd: &std::os::fd::OwnedFd, _left: Duration) -> io::Result<()> {
    // `timerfd` makes none here, so no alarm has one.
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(Cell<u32>);

    impl Timed for Item {
        fn timer_slot(&self) -> &Cell<u32> {
            &self.0
        }
    }

    /// The heap gives items back in deadline order (insertion order among equal deadlines), and
    /// every removal, from any place, keeps the slots right.
    #[test]
    fn heap_expires_in_deadline_order_and_removes_from_anywhere() {
        let t0 = Instant::now();
        let items: Vec<Item> = (0..64).map(|_| Item(Cell::new(NOT_QUEUED))).collect();
        let heap = TimerHeap::new();
        // Deadlines in a scrambled order, with ties.
        let due = |i: usize| t0 + Duration::from_millis(((i * 37) % 16) as u64);
        for (i, item) in items.iter().enumerate() {
            // SAFETY: the items outlive the heap's use below.
            assert!(unsafe { heap.insert(due(i), item) });
        }
        // SAFETY: as above.
        assert!(!unsafe { heap.insert(t0, &items[0]) }, "already in");
        for i in (0..64).step_by(3) {
            assert!(heap.remove(&items[i]));
            assert!(!heap.remove(&items[i]));
        }
        let mut got = Vec::new();
        while let Some(p) = heap.pop_due(t0 + Duration::from_secs(1)) {
            let i = items
                .iter()
                .position(|it| std::ptr::eq(it, p.as_ptr()))
                .unwrap();
            assert_eq!(items[i].0.get(), NOT_QUEUED);
            got.push(i);
        }
        let mut want: Vec<usize> = (0..64).filter(|i| i % 3 != 0).collect();
        want.sort_by_key(|&i| (due(i), i));
        assert_eq!(got, want);
        assert!(heap.is_empty());
    }

    /// Nothing comes out before its deadline.
    #[test]
    fn heap_keeps_what_is_not_due() {
        let t0 = Instant::now();
        let a = Item(Cell::new(NOT_QUEUED));
        let b = Item(Cell::new(NOT_QUEUED));
        let heap = TimerHeap::new();
        // SAFETY: `a` and `b` outlive the heap's use.
        unsafe {
            heap.insert(t0 + Duration::from_millis(5), &a);
            heap.insert(t0 + Duration::from_millis(9), &b);
        }
        assert!(heap.pop_due(t0).is_none());
        assert_eq!(heap.earliest(), Some(t0 + Duration::from_millis(5)));
        assert!(heap.pop_due(t0 + Duration::from_millis(5)).is_some());
        assert!(heap.pop_due(t0 + Duration::from_millis(8)).is_none());
        assert!(heap.remove(&b));
        assert!(heap.earliest().is_none());
    }
}
