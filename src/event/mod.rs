//! Safe wrappers around libevent's `event_base` and `event`.
//!
//! [`EventBase`] owns a base (created with the epoll changelist flag, which saves one
//! `epoll_ctl` per one-shot wait) or borrows one a host program owns ([`EventBase::from_raw`]).
//! [`Event`] is one fd, signal or timer event whose callback is a Rust closure.
//!
//! # Invariants
//!
//! - No event outlives its base: every [`Event`] holds a reference-counted handle on the base's
//!   state, so the base is freed only after the last event on it.
//! - An event is removed (`event_del`) before the memory its callback reads is freed. The closure
//!   lives in an `Rc`; while a callback runs, the trampoline holds its own reference, so dropping
//!   the `Event` inside its own callback deletes the event at once and frees it afterwards.
//! - A panic in a callback never unwinds into libevent's C frames: the trampoline catches it,
//!   logs it, and keeps the payload for [`EventBase::take_panics`].
//! - No libevent pointer leaves this module (and `sys`) except through `as_raw`.
//!
//! # Timers
//!
//! On Linux, bases evco makes keep libevent's default clock, `CLOCK_MONOTONIC_COARSE`, which
//! advances one kernel tick (4 ms here) at a time: libevent's precise timers
//! (`EVENT_BASE_FLAG_PRECISE_TIMER`) would make epoll wait on a timerfd and cost a
//! `timerfd_settime` call, 0.3 us here, on every turn of the loop, timers or not. Coroutines'
//! timed waits do not use libevent's timers at all: the scheduler keeps their deadlines on
//! [`Instant`]'s clock and wakes the loop with a timerfd of its own (see `timer`), so they are
//! as precise as before on any base, evco's or a host's. An [`Event`]'s timeout is libevent's:
//! a one-shot timeout that the coarse clock fires before its time (up to a tick early, whenever
//! a tick falls between adding it and the next poll) is added again for what is left, so it
//! never ends early, and ends up to about a tick late. Periodic timers
//! ([`Event::timer_persist`]) keep libevent's cadence on its clock. Elsewhere evco's bases use
//! precise timers, which cost no extra system call there.
//!
//! [`Instant`]: std::time::Instant
//!
//! # Send
//!
//! `EventBase` and `Event` are `!Send` and `!Sync` (through `Rc` and `PhantomData<*mut ()>`):
//! evco creates its bases without libevent's locking, so a base and its events may only be touched
//! from the thread that runs its loop. Cross-thread wake-ups go through a queue and an fd.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::raw::{c_int, c_short};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

use crate::sys;

mod closure;
mod raw;

pub use closure::Event;
pub(crate) use closure::deadline_after;
pub(crate) use raw::{RawCallback, RawEvent};

/// What an event waits for, or what woke it: libevent's `EV_*` bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct What(c_short);

impl What {
    /// No condition: a pure timer, or an event that is only ever activated by hand.
    pub const NONE: What = What(0);
    /// The timeout passed to [`Event::add`] expired.
    pub const TIMEOUT: What = What(sys::EV_TIMEOUT as c_short);
    /// The fd is readable.
    pub const READ: What = What(sys::EV_READ as c_short);
    /// The fd is writable.
    pub const WRITE: What = What(sys::EV_WRITE as c_short);
    /// A signal was delivered (the fd is the signal number).
    pub const SIGNAL: What = What(sys::EV_SIGNAL as c_short);
    /// The event stays pending after it fires.
    pub const PERSIST: What = What(sys::EV_PERSIST as c_short);
    /// The peer closed the connection (epoll backends only).
    pub const CLOSED: What = What(sys::EV_CLOSED as c_short);
    /// Edge-triggered (backends with `EV_FEATURE_ET`, i.e. epoll).
    pub const EDGE: What = What(sys::EV_ET as c_short);

    /// The raw bits.
    pub const fn bits(self) -> c_short {
        self.0
    }
    /// From raw bits (unknown bits are kept as they are).
    pub const fn from_bits(bits: c_short) -> What {
        What(bits)
    }
    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: What) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether any bit of `other` is set in `self`.
    pub const fn intersects(self, other: What) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for What {
    type Output = What;
    fn bitor(self, rhs: What) -> What {
        What(self.0 | rhs.0)
    }
}

impl fmt::Debug for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (What::TIMEOUT, "TIMEOUT"),
            (What::READ, "READ"),
            (What::WRITE, "WRITE"),
            (What::SIGNAL, "SIGNAL"),
            (What::PERSIST, "PERSIST"),
            (What::CLOSED, "CLOSED"),
        ];
        let mut first = true;
        write!(f, "What(")?;
        for (bit, name) in names {
            if self.contains(bit) {
                if !first {
                    write!(f, "|")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        if first {
            write!(f, "NONE")?;
        }
        write!(f, ")")
    }
}

/// Converts a duration into the `timeval` libevent takes, saturating at `time_t::MAX` seconds.
pub(crate) fn timeval(d: Duration) -> sys::timeval {
    sys::timeval {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_usec: d.subsec_micros() as _,
    }
}

/// The state an [`EventBase`] and all its events share.
struct BaseInner {
    raw: NonNull<sys::event_base>,
    owned: bool,
    panics: RefCell<Vec<Box<dyn Any + Send>>>,
}

impl Drop for BaseInner {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we created this base, and every `Event` on it holds an `Rc<BaseInner>`, so
            // none is left when the last reference goes.
            unsafe { sys::event_base_free(self.raw.as_ptr()) };
        }
    }
}

/// A libevent `event_base`: owned (freed on drop) or borrowed from a host program.
///
/// Cloning gives another handle on the same base. See the module docs for why it is `!Send`.
#[derive(Clone)]
pub struct EventBase {
    inner: Rc<BaseInner>,
    _not_send: PhantomData<*mut ()>,
}

impl EventBase {
    /// Whether dropping this handle frees the base: evco made it and no other handle (nor
    /// `Event`) is left.
    pub(crate) fn freed_with_this_handle(&self) -> bool {
        self.inner.owned && Rc::strong_count(&self.inner) == 1
    }
}

impl fmt::Debug for EventBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBase")
            .field("raw", &self.inner.raw)
            .field("owned", &self.inner.owned)
            .field("backend", &self.backend())
            .finish()
    }
}

/// How a call to [`EventBase::dispatch`] or [`EventBase::loop_once`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopExit {
    /// The loop ran and stopped normally (its events ran, or `loopexit`/`loopbreak` was called).
    Ran,
    /// The loop had no pending or active events, so it returned at once.
    NoEvents,
}

impl EventBase {
    /// Creates a base of its own, with `EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST` (ignored by other
    /// backends) and without libevent's locking: it belongs to the calling thread.
    ///
    /// On Linux its timers run on libevent's default clock, `CLOCK_MONOTONIC_COARSE`, not with
    /// `EVENT_BASE_FLAG_PRECISE_TIMER`, which would cost a `timerfd_settime` call on every turn
    /// of the loop (see [`Timers`]); elsewhere with precise timers.
    ///
    /// [`Timers`]: crate::event#timers
    ///
    /// libevent's environment switches (`EVENT_NOEPOLL=1` and the like) are honoured.
    pub fn new() -> io::Result<EventBase> {
        route_libevent_logs();
        // libevent ends the process (`exit(1)`, silently) when its signal socketpair cannot be
        // made as the base is set up: make sure the fds a base needs (the backend's, the
        // socketpair, a timerfd, an eventfd) can be had first, and fail with EMFILE instead.
        reserve_fds(5)?;
        // SAFETY: plain constructor; a null result is handled below.
        let cfg = unsafe { sys::event_config_new() };
        if cfg.is_null() {
            return Err(io::Error::other("event_config_new failed"));
        }
        // SAFETY: `cfg` is a live config we own until `event_config_free` below.
        let raw = unsafe {
            sys::event_config_set_flag(
                cfg,
                sys::event_base_config_flag_EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST as c_int,
            );
            sys::event_config_set_flag(
                cfg,
                sys::event_base_config_flag_EVENT_BASE_FLAG_NOLOCK as c_int,
            );
            // Precise timers only where they cost no system call per loop turn (see "Timers"
            // in the module docs).
            #[cfg(not(target_os = "linux"))]
            sys::event_config_set_flag(
                cfg,
                sys::event_base_config_flag_EVENT_BASE_FLAG_PRECISE_TIMER as c_int,
            );
            let raw = sys::event_base_new_with_config(cfg);
            sys::event_config_free(cfg);
            raw
        };
        let raw = NonNull::new(raw)
            .ok_or_else(|| io::Error::other("event_base_new_with_config failed (no backend?)"))?;
        Ok(EventBase::wrap(raw, true))
    }

    /// Borrows a base a host program owns. evco never frees it.
    ///
    /// # Safety
    ///
    /// `raw` must be a live `event_base` that outlives the returned handle, every clone of it and
    /// every event created on it, and it must only be used from the calling thread while evco
    /// holds it. A null pointer is an error, not UB.
    pub unsafe fn from_raw(raw: *mut sys::event_base) -> io::Result<EventBase> {
        let raw = NonNull::new(raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "EventBase::from_raw: null event_base",
            )
        })?;
        Ok(EventBase::wrap(raw, false))
    }

    fn wrap(raw: NonNull<sys::event_base>, owned: bool) -> EventBase {
        EventBase {
            inner: Rc::new(BaseInner {
                raw,
                owned,
                panics: RefCell::new(Vec::new()),
            }),
            _not_send: PhantomData,
        }
    }

    /// The raw pointer, for calling libevent directly. It stays valid while this handle lives.
    pub fn as_raw(&self) -> *mut sys::event_base {
        self.inner.raw.as_ptr()
    }

    /// Whether evco frees this base when the last handle goes (false for [`from_raw`](Self::from_raw)).
    pub fn is_owned(&self) -> bool {
        self.inner.owned
    }

    /// Runs the loop until no events are pending or active, or until `loopbreak`/`loopexit`.
    pub fn dispatch(&self) -> io::Result<LoopExit> {
        self.run_loop(0)
    }

    /// Blocks until at least one event is active, runs the active callbacks, and returns.
    pub fn loop_once(&self) -> io::Result<LoopExit> {
        self.run_loop(sys::EVLOOP_ONCE as c_int)
    }

    /// Runs the callbacks of events that are ready now, without blocking: one round.
    ///
    /// `EVLOOP_NONBLOCK | EVLOOP_ONCE`: plain `EVLOOP_NONBLOCK` goes round again for as long as
    /// callbacks are active, and evco's ready-queue drain always is while a coroutine yields
    /// in a loop, so it would never return. (A host program calling `event_base_loop` with
    /// plain `EVLOOP_NONBLOCK` should add `EVLOOP_ONCE` for the same reason.)
    pub fn loop_nonblock(&self) -> io::Result<LoopExit> {
        self.run_loop((sys::EVLOOP_NONBLOCK | sys::EVLOOP_ONCE) as c_int)
    }

    fn run_loop(&self, flags: c_int) -> io::Result<LoopExit> {
        // SAFETY: the base is live (we hold a reference); libevent itself rejects a reentrant
        // call from one of its callbacks with -1, which becomes an error here.
        match unsafe { sys::event_base_loop(self.as_raw(), flags) } {
            0 => Ok(LoopExit::Ran),
            1 => Ok(LoopExit::NoEvents),
            _ => Err(io::Error::other(
                "event_base_loop failed (called from inside one of its own callbacks?)",
            )),
        }
    }

    /// Makes the running loop return after the callback that is running now.
    pub fn loopbreak(&self) -> io::Result<()> {
        // SAFETY: the base is live.
        cvt(
            unsafe { sys::event_base_loopbreak(self.as_raw()) },
            "event_base_loopbreak",
        )
    }

    /// Makes the loop return after `after` (or after the current round of callbacks with `None`).
    pub fn loopexit(&self, after: Option<Duration>) -> io::Result<()> {
        let tv = after.map(timeval);
        let ptr = tv.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: the base is live; libevent copies the timeval before returning.
        cvt(
            unsafe { sys::event_base_loopexit(self.as_raw(), ptr) },
            "event_base_loopexit",
        )
    }

    /// The name of the backend libevent chose: `"epoll"`, `"poll"`, `"kqueue"`, ...
    pub fn backend(&self) -> &str {
        // SAFETY: the base is live; libevent returns a pointer to a static string.
        let p = unsafe { sys::event_base_get_method(self.as_raw()) };
        if p.is_null() {
            return "unknown";
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("unknown")
    }

    /// Whether the backend supports edge-triggered events (epoll does, poll does not).
    pub fn supports_edge_triggered(&self) -> bool {
        // SAFETY: the base is live.
        let features = unsafe { sys::event_base_get_features(self.as_raw()) };
        features & sys::event_method_feature_EV_FEATURE_ET as c_int != 0
    }

    /// The number of events added (pending) on this base, internal ones included.
    pub fn added_events(&self) -> usize {
        self.count(sys::EVENT_BASE_COUNT_ADDED)
    }

    /// The number of events active (waiting for their callback to run) on this base.
    pub fn active_events(&self) -> usize {
        self.count(sys::EVENT_BASE_COUNT_ACTIVE)
    }

    fn count(&self, what: u32) -> usize {
        // SAFETY: the base is live.
        let n = unsafe { sys::event_base_get_num_events(self.as_raw(), what as _) };
        n.max(0) as usize
    }

    /// Takes the payloads of the panics caught in this base's callbacks since the last call.
    pub fn take_panics(&self) -> Vec<Box<dyn Any + Send>> {
        std::mem::take(&mut *self.inner.panics.borrow_mut())
    }

    fn record_panic(&self, payload: Box<dyn Any + Send>) {
        log::error!(
            "evco: a libevent callback panicked: {}",
            panic_message(&*payload)
        );
        self.inner.panics.borrow_mut().push(payload);
    }
}

/// Sends libevent's own messages (warnings it would print to stderr) to the `log` crate.
fn route_libevent_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn log_cb(severity: c_int, msg: *const std::os::raw::c_char) {
        if msg.is_null() {
            return;
        }
        // SAFETY: libevent passes a NUL-terminated message valid for the call.
        let msg = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
        let level = match severity as u32 {
            sys::EVENT_LOG_DEBUG => log::Level::Debug,
            sys::EVENT_LOG_MSG => log::Level::Info,
            sys::EVENT_LOG_WARN => log::Level::Warn,
            _ => log::Level::Error,
        };
        log::log!(target: "libevent", level, "{msg}");
    }
    // SAFETY: installs a plain function pointer; it never unwinds (no panicking calls).
    ONCE.call_once(|| unsafe { sys::event_set_log_callback(Some(log_cb)) });
}

/// libevent's version string, e.g. `"2.1.12-stable"`.
pub fn version() -> &'static str {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let p = unsafe { sys::event_get_version() };
    if p.is_null() {
        return "unknown";
    }
    // SAFETY: non-null, static, NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("unknown")
}

/// A panic payload's message, for logs.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

fn cvt(rc: c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what} failed")))
    }
}

/// Inside a loop iteration libevent measures a timeout from the time it cached when the
/// iteration began: a timer added late in a long pass of callbacks (many coroutines running)
/// would get a deadline in the past and fire early. Refreshing the cache first costs one
/// `clock_gettime` and makes every timeout count from the moment it is added. (Outside the loop
/// there is no cache and this does nothing.)
///
/// # Safety
///
/// `base` must be a live `event_base`.
unsafe fn refresh_time_cache(base: *mut sys::event_base) {
    // SAFETY: the caller passes a live base.
    unsafe { sys::event_base_update_cache_time(base) };
}

/// Whether `n` more fds can be opened now: eventfds made and closed again (no hook sees them).
/// `EMFILE`/`ENFILE` when they cannot.
fn reserve_fds(n: usize) -> io::Result<()> {
    let mut got = Vec::with_capacity(n);
    let mut err = None;
    for _ in 0..n {
        // SAFETY: eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            err = Some(io::Error::last_os_error());
            break;
        }
        got.push(fd);
    }
    for fd in got {
        let _ = crate::os::close(fd);
    }
    err.map_or(Ok(()), Err)
}
