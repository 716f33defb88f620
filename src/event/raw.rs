//! [`RawEvent`]: reusable, cache-line-aligned `struct event` storage with a plain C callback,
//! for evco's own hot paths (the scheduler's waits and ready queue, the timer). Its invariants
//! are on the type.

use std::alloc::Layout;
use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::os::raw::{c_int, c_short, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use super::{What, cvt, refresh_time_cache, timeval};
use crate::sys;

/// The C signature of the callbacks [`RawEvent`] takes.
pub(crate) type RawCallback = unsafe extern "C" fn(sys::evutil_socket_t, c_short, *mut c_void);

/// The alignment of a [`RawEvent`]'s storage: a cache line.
const EVENT_ALIGN: usize = 64;

/// What a [`RawEvent`] was last assigned: base, fd, what, callback address, argument.
type Assignment = (*mut sys::event_base, RawFd, c_short, usize, *mut c_void);

/// Event storage for evco's own hot paths (the scheduler's waits and ready queue): one
/// `struct event` allocated once and reused with `event_assign`/`event_add`, with a plain C
/// callback and argument instead of a boxed closure.
///
/// # Invariants
///
/// - It is only re-assigned while not pending (`assign` deletes first).
/// - `Drop` deletes the event before freeing its storage, so libevent never holds a pointer into
///   freed memory. Whoever assigns it guarantees the callback argument outlives the pending
///   event (the scheduler passes the owning coroutine, which deletes the event before it goes).
pub(crate) struct RawEvent {
    mem: NonNull<u64>,
    words: usize,
    /// (base, fd, what, callback, arg) of the last `event_assign`; `None` before the first.
    assigned: Cell<Option<Assignment>>,
}

impl RawEvent {
    pub(crate) fn new() -> RawEvent {
        // SAFETY: no arguments; returns libevent's sizeof(struct event).
        let bytes = unsafe { sys::event_get_struct_event_size() };
        let words = bytes.div_ceil(8).max(1);
        let layout = Self::layout(words);
        // SAFETY: the layout has a non-zero size (at least one word).
        let mem = unsafe { std::alloc::alloc_zeroed(layout) } as *mut u64;
        let Some(mem) = NonNull::new(mem) else {
            std::alloc::handle_alloc_error(layout)
        };
        RawEvent {
            mem,
            words,
            assigned: Cell::new(None),
        }
    }

    /// The storage's layout: cache-line aligned, so that the 128 bytes of a `struct event`
    /// (x86_64, libevent 2.1) occupy exactly two lines. Every activation reads and writes both
    /// halves (the active-queue links and callback at the front, the fd, I/O list links and
    /// `ev_events`/`ev_res` behind), and with malloc's 16-byte alignment three of every four
    /// events straddled a third line.
    fn layout(words: usize) -> Layout {
        Layout::from_size_align(words * std::mem::size_of::<u64>(), EVENT_ALIGN)
            .expect("sizeof(struct event) rounded to words fits a Layout")
    }

    fn raw(&self) -> *mut sys::event {
        self.mem.as_ptr() as *mut sys::event
    }

    /// Points the event at `fd`/`what` with `callback(arg)`, unless it already is.
    ///
    /// # Safety
    ///
    /// `base` must be live and outlive the pending event; `arg` must stay valid for as long as
    /// the event is pending or its callback may run.
    pub(crate) unsafe fn assign(
        &self,
        base: *mut sys::event_base,
        fd: RawFd,
        what: What,
        callback: RawCallback,
        arg: *mut c_void,
    ) {
        let key = (base, fd, what.bits(), callback as usize, arg);
        if self.assigned.get() == Some(key) {
            return;
        }
        if self.assigned.get().is_some() {
            self.del();
        }
        // SAFETY: the storage is sizeof(struct event) bytes, 64-aligned, and not pending (deleted
        // above or never assigned); the caller vouches for `base` and `arg`.
        unsafe {
            sys::event_assign(self.raw(), base, fd, what.bits(), Some(callback), arg);
        }
        self.assigned.set(Some(key));
    }

    /// Adds the assigned event, with an optional timeout.
    pub(crate) fn add(&self, timeout: Option<Duration>) -> io::Result<()> {
        debug_assert!(self.assigned.get().is_some(), "RawEvent::add before assign");
        if let (Some(_), Some((base, ..))) = (timeout, self.assigned.get()) {
            // SAFETY: the base it is assigned to is live (assign's contract).
            unsafe { refresh_time_cache(base) };
        }
        let tv = timeout.map(timeval);
        let ptr = tv.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: assigned (see `assign`'s contract); libevent copies the timeval.
        cvt(unsafe { sys::event_add(self.raw(), ptr) }, "event_add")
    }

    /// Activates the assigned event from the loop with `what`.
    pub(crate) fn activate(&self, what: What) {
        debug_assert!(
            self.assigned.get().is_some(),
            "RawEvent::activate before assign"
        );
        // SAFETY: assigned.
        unsafe { sys::event_active(self.raw(), c_int::from(what.bits()), 0) };
    }

    /// Deletes the event if it was ever assigned (pending, active, or neither).
    pub(crate) fn del(&self) {
        if self.assigned.get().is_some() {
            // SAFETY: assigned on a base that is still live (assign's contract).
            unsafe { sys::event_del(self.raw()) };
        }
    }

    /// Forgets the assignment so the next `assign` does a full `event_assign` (after `del`).
    pub(crate) fn reset(&self) {
        self.del();
        self.assigned.set(None);
    }
}

impl Drop for RawEvent {
    fn drop(&mut self) {
        self.del();
        // SAFETY: `mem` was allocated in `new` with `Self::layout(self.words)`; the event is
        // deleted, so libevent holds no pointer to it.
        unsafe { std::alloc::dealloc(self.mem.as_ptr().cast(), Self::layout(self.words)) };
    }
}
