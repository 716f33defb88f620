//! [`Event`]: one libevent event whose callback is a Rust closure, the C trampoline that runs it
//! (catching its panics), and the re-adding of a one-shot timeout that the coarse clock fired
//! early (see "Timers" in the `event` module docs).

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::os::raw::{c_int, c_short, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{EventBase, What, cvt, refresh_time_cache, timeval};
use crate::sys;

type Callback = dyn FnMut(What);

/// What the trampoline needs: the event, its base and the closure, kept alive together.
struct EventInner {
    raw: NonNull<sys::event>,
    base: EventBase,
    /// Only touched by the trampoline, which libevent never re-enters for one event.
    callback: UnsafeCell<Box<Callback>>,
    running: Cell<bool>,
    /// `What::PERSIST` was asked for: libevent re-arms its timeout itself.
    persist: bool,
    /// When the pending one-shot timeout is due on `Instant`'s clock (see "Timers").
    deadline: Cell<Option<Instant>>,
}

impl Drop for EventInner {
    fn drop(&mut self) {
        // SAFETY: `raw` was created by `event_new` on `base`, which is still alive (we hold it);
        // `event_free` deletes the event first, so no callback can follow.
        unsafe { sys::event_free(self.raw.as_ptr()) };
    }
}

/// One libevent event: an fd, a signal or a timer, with a Rust closure as its callback.
///
/// The event is not pending until [`add`](Self::add). Without [`What::PERSIST`] it fires once per
/// `add`. Dropping it deletes it first, so its callback never runs afterwards; dropping it inside
/// its own callback is allowed.
pub struct Event {
    inner: Rc<EventInner>,
    _not_send: PhantomData<*mut ()>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("raw", &self.inner.raw)
            .field("pending", &self.is_pending())
            .finish()
    }
}

impl Event {
    /// An event for `fd` (or a signal number with [`What::SIGNAL`]) and the conditions in `what`.
    pub fn new<F>(base: &EventBase, fd: RawFd, what: What, callback: F) -> io::Result<Event>
    where
        F: FnMut(What) + 'static,
    {
        Event::create(base, fd, what, Box::new(callback))
    }

    /// A timer: fires once per [`add`](Self::add) with a timeout (or on every period with
    /// [`timer_persist`](Self::timer_persist)).
    pub fn timer<F>(base: &EventBase, callback: F) -> io::Result<Event>
    where
        F: FnMut(What) + 'static,
    {
        Event::create(base, -1, What::NONE, Box::new(callback))
    }

    /// A persistent timer: after `add(Some(period))` it fires every `period` until deleted.
    pub fn timer_persist<F>(base: &EventBase, callback: F) -> io::Result<Event>
    where
        F: FnMut(What) + 'static,
    {
        Event::create(base, -1, What::PERSIST, Box::new(callback))
    }

    /// A persistent signal event for `signum` (libevent installs the handler when it is added).
    pub fn signal<F>(base: &EventBase, signum: c_int, callback: F) -> io::Result<Event>
    where
        F: FnMut(What) + 'static,
    {
        Event::create(
            base,
            signum,
            What::SIGNAL | What::PERSIST,
            Box::new(callback),
        )
    }

    fn create(
        base: &EventBase,
        fd: RawFd,
        what: What,
        callback: Box<Callback>,
    ) -> io::Result<Event> {
        // Two steps, so that libevent's callback argument is the final address of `EventInner`:
        // create the event with a null argument, then `event_assign` it again below.
        // SAFETY: the base is live; a null return is handled.
        let raw =
            unsafe { sys::event_new(base.as_raw(), fd, what.bits(), None, std::ptr::null_mut()) };
        let raw = NonNull::new(raw).ok_or_else(|| io::Error::other("event_new failed"))?;
        let inner = Rc::new(EventInner {
            raw,
            base: base.clone(),
            callback: UnsafeCell::new(callback),
            running: Cell::new(false),
            persist: what.contains(What::PERSIST),
            deadline: Cell::new(None),
        });
        let arg = Rc::as_ptr(&inner) as *mut c_void;
        // SAFETY: the event is not pending (never added), so it may be re-assigned. `arg` points
        // at the `EventInner` that owns the event; `EventInner::drop` frees the event, so the
        // argument is valid whenever the callback can run.
        let rc = unsafe {
            sys::event_assign(
                raw.as_ptr(),
                base.as_raw(),
                fd,
                what.bits(),
                Some(trampoline),
                arg,
            )
        };
        cvt(rc, "event_assign")?;
        Ok(Event {
            inner,
            _not_send: PhantomData,
        })
    }

    /// Makes the event pending, with an optional timeout (required for a pure timer).
    ///
    /// A one-shot timeout never fires before `timeout` has passed on [`Instant`]'s clock (see
    /// "Timers" in the module docs).
    pub fn add(&self, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = match timeout {
            Some(t) if !self.inner.persist => deadline_after(t),
            _ => None,
        };
        self.inner.deadline.set(deadline);
        if timeout.is_some() {
            // SAFETY: the base is live (the event holds it).
            unsafe { refresh_time_cache(self.inner.base.as_raw()) };
        }
        let tv = timeout.map(timeval);
        let ptr = tv.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: the event is live (we hold it); libevent copies the timeval.
        cvt(
            unsafe { sys::event_add(self.inner.raw.as_ptr(), ptr) },
            "event_add",
        )
    }

    /// Makes the event non-pending. Its callback does not run until it is added again.
    pub fn del(&self) -> io::Result<()> {
        self.inner.deadline.set(None);
        // SAFETY: the event is live.
        cvt(
            unsafe { sys::event_del(self.inner.raw.as_ptr()) },
            "event_del",
        )
    }

    /// Runs the callback from the loop as if `what` had happened. A one-shot event is then no
    /// longer pending (libevent deletes it before its callback, however it was activated).
    pub fn activate(&self, what: What) {
        // A hand-made activation is not the coarse clock firing a timeout early: the
        // trampoline must pass it on, not add the event again for the rest of its deadline.
        self.inner.deadline.set(None);
        // SAFETY: the event is live.
        unsafe { sys::event_active(self.inner.raw.as_ptr(), c_int::from(what.bits()), 0) };
    }

    /// Whether the event is pending (added) or active.
    pub fn is_pending(&self) -> bool {
        let bits = What::READ | What::WRITE | What::SIGNAL | What::TIMEOUT;
        // SAFETY: the event is live; a null timeval pointer asks for no timeout.
        unsafe {
            sys::event_pending(self.inner.raw.as_ptr(), bits.bits(), std::ptr::null_mut()) != 0
        }
    }

    /// The base this event belongs to.
    pub fn base(&self) -> &EventBase {
        &self.inner.base
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // Delete now, even inside our own callback (the trampoline then holds the last
        // reference and frees the event when the callback returns).
        // SAFETY: the event is live.
        unsafe { sys::event_del(self.inner.raw.as_ptr()) };
    }
}

/// The C callback of every [`Event`]: runs the closure, catching any panic.
extern "C" fn trampoline(_fd: sys::evutil_socket_t, what: c_short, arg: *mut c_void) {
    let inner_ptr = arg as *const EventInner;
    // SAFETY: `arg` is the address of the `EventInner` that owns this event (set in `create`);
    // it is alive because `EventInner::drop` frees the event, so a callback can only run while
    // it exists. Taking a strong reference keeps it alive until the callback returns, even if
    // the user drops the `Event` inside the callback.
    let inner = unsafe {
        Rc::increment_strong_count(inner_ptr);
        Rc::from_raw(inner_ptr)
    };
    if inner.running.replace(true) {
        // libevent never re-enters one event's callback; refuse rather than alias the closure.
        return;
    }
    // Only a one-shot event libevent fired still has a deadline (`activate` clears it), and
    // the deadline is spent whatever fired it (a readiness before the timeout included). A
    // timeout the coarse clock fired early is added again for what is left, with the same
    // deadline.
    if let Some(deadline) = inner.deadline.take() {
        let early = What(what).contains(What::TIMEOUT)
            // SAFETY: the event is live (we hold its `EventInner`), assigned to its live base,
            // and not pending (libevent deletes a one-shot event before its callback).
            && unsafe { rearm_if_early(inner.raw.as_ptr(), inner.base.as_raw(), Some(deadline)) };
        if early {
            inner.deadline.set(Some(deadline));
            inner.running.set(false);
            return;
        }
    }
    // SAFETY: the closure is only reached from here, and `running` rules out a second
    // simultaneous call, so this is the only live reference to it.
    let callback = unsafe { &mut *inner.callback.get() };
    let result = catch_unwind(AssertUnwindSafe(|| callback(What(what))));
    inner.running.set(false);
    if let Err(payload) = result {
        inner.base.record_panic(payload);
    }
}

/// `Instant::now() + timeout`, or `None` when that is beyond what `Instant` can hold (such a
/// timer never fires in practice, early or not).
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// When a one-shot timeout due at `deadline` (on `Instant`'s clock) fired before it, the
/// coarse clock's early fire (see "Timers"): adds `raw` again for what is left and says true.
/// False when it is due, has no deadline, or cannot be added (the caller lets it fire).
///
/// # Safety
///
/// `raw` must be a live event assigned to the live `base`, and not pending.
unsafe fn rearm_if_early(
    raw: *mut sys::event,
    base: *mut sys::event_base,
    deadline: Option<Instant>,
) -> bool {
    let Some(left) = deadline.and_then(|d| d.checked_duration_since(Instant::now())) else {
        return false;
    };
    if left.is_zero() {
        return false;
    }
    // `timeval` drops the nanoseconds: never ask for less than a microsecond (a zero timeout
    // would only come back here at once).
    let tv = timeval(left.max(Duration::from_micros(1)));
    // SAFETY: the caller vouches for `base`; libevent copies the timeval.
    unsafe {
        refresh_time_cache(base);
        sys::event_add(raw, &tv) == 0
    }
}
