//! Tasks (a coroutine on the scheduler) and how they wait: parking, unparking, and the one
//! wait primitive every blocking call ends in, [`wait_io`].
//!
//! # What a wait registers, and when it is removed
//!
//! A task waits for at most one thing at a time, and is told the outcome in `woke` (what the
//! event reported) and `closed` (its fd was closed under it). What it waits on is registered by
//! whoever calls [`wait_io`] (the reactor lists it on an fd's state; for a one-shot wait its
//! stack's own `struct event` is added, `Core::wait_event`, made on the task's first one-shot
//! wait and reused after), plus an entry in the timer heap for a timeout. Every one of those
//! points at the task, so each must go before the task can:
//!
//! - on wake-up, libevent already made a one-shot event non-pending before its callback ran, and
//!   the callback only queues the task (the ready queue holds a reference until it runs);
//! - the wait's guard, on every way out of the wait (unwinding included), takes the timer entry
//!   out, deletes the one-shot event if the wait did not end normally, and drops what the caller
//!   enlisted (which takes the task off the reactor's lists);
//! - on cancellation ([`JoinHandle::cancel`](super::JoinHandle::cancel), `shutdown`, the guard
//!   of `enter`), the scheduler deletes the one-shot event and the timer entry *before* it
//!   unwinds the coroutine's stack;
//! - when the fd is closed (the reactor's `forget`), the one-shot event is deleted and the task
//!   is resumed through the ready queue with `EBADF`;
//! - a finished coroutine's event, if it made one, is reset before its stack returns to the
//!   pool.
//!
//! `event_base_once` is never used: it cannot be cancelled, so a dropped coroutine would leave a
//! callback pointing at freed memory.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::raw::{c_short, c_void};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

use super::{Scheduler, misuse};
use crate::coroutine::{self, Cancelled, Core, State};
use crate::event::{RawCallback, RawEvent, What};
use crate::sys;
use crate::timer::Timed;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blocked {
    /// Running, or queued to run.
    No,
    /// Waiting in [`wait_io`] (fd readiness, a timer, or both).
    Io,
    /// Parked until [`Waker::wake`] (or a join's end).
    Parked,
    /// Parked until woken or until its deadline in the timer heap passes.
    ParkedTimed,
}

pub(super) enum Outcome {
    Pending,
    Done,
    Panicked(Box<dyn std::any::Any + Send>),
    Taken,
}

/// A coroutine on the scheduler.
///
/// `repr(C)`, the fields a wake-up and a resume touch first (they and the core's hot fields
/// follow the `Rc` counts: 72 bytes, two cache lines, instead of four scattered ones).
#[repr(C)]
pub(crate) struct Task {
    pub(super) blocked: Cell<Blocked>,
    pub(super) queued: Cell<bool>,
    /// What the wait event reported when it fired.
    pub(super) woke: Cell<c_short>,
    /// Its index in the scheduler's timer heap during a timed wait (`timer::NOT_QUEUED`
    /// otherwise). Read on every wake-up (`disarm`), hence here.
    pub(super) timer_slot: Cell<u32>,
    /// Set when the fd it waited on was closed under the wait.
    pub(super) closed: Cell<bool>,
    /// The first coroutine of a running `evco::run`: `shutdown` leaves it alone.
    pub(super) root: Cell<bool>,
    /// An event ended its wait: its lines may have left the caches, and the drain prefetches
    /// them again just before its turn (see "Wake-ups").
    pub(super) cold: Cell<bool>,
    pub(super) core: Core,
    /// Its index in the task table.
    pub(super) slot: Cell<usize>,
    pub(super) sched: *const Scheduler,
    pub(super) joiner: RefCell<Option<Rc<Task>>>,
    pub(super) outcome: RefCell<Outcome>,
}

impl Timed for Task {
    fn timer_slot(&self) -> &Cell<u32> {
        &self.timer_slot
    }
}

impl Task {
    /// Another reference to this task, without the task table's lookup (a cache line of its
    /// own with a thousand tasks).
    #[inline]
    pub(super) fn rc(&self) -> Rc<Task> {
        // SAFETY: every `Task` is allocated by `Rc::new` (`spawn_with` is the only place one is
        // made), and `&self` proves that allocation is alive (strong count at least 1) for the
        // duration of this call.
        unsafe {
            Rc::increment_strong_count(self);
            Rc::from_raw(self)
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.core.state() == State::Finished
    }

    /// Its scheduler. Only called while that scheduler lives: from the scheduler's own code
    /// and callbacks, from the task's coroutine (which only runs under it), and from
    /// `Waker::wake` for a parked task. A task can outlive its scheduler (a `Waker` held by a
    /// late callback, a coroutine leaked when its thread exits), but `Scheduler`'s `Drop`
    /// leaves none of those parked, so `wake` never gets here for them.
    pub(super) fn sched(&self) -> &Scheduler {
        // SAFETY: the callers above run only while the scheduler `self.sched` points at is
        // alive (it is not moved: it lives in an `Rc` for its whole life).
        unsafe { &*self.sched }
    }

    /// The token the reactor lists for this task (what `end_wait` gets back).
    fn token(&self) -> NonNull<()> {
        NonNull::from(self).cast()
    }
}

impl Scheduler {
    pub(super) fn unpark(&self, task: &Rc<Task>) {
        // Called from coroutine code (a sync primitive's wake-up): the ready queue and the
        // drain event are mid-change below, so a signal handler's close must leave the waits it
        // ends to the loop (see `reactor::forget`). (Callbacks and evco's waits are not
        // coroutine code already.)
        let _busy = coroutine::Busy::enter();
        match task.blocked.get() {
            Blocked::Parked => {}
            Blocked::ParkedTimed => self.disarm(task),
            Blocked::No | Blocked::Io => return,
        }
        task.blocked.set(Blocked::No);
        self.schedule(task.clone());
    }

    /// Deletes the task's wait, unwinds its stack and reports it cancelled. A task that runs C
    /// code is cancelled cooperatively instead (see [`Scheduler::cancel_cooperatively`]).
    pub(super) fn cancel(&self, task: &Rc<Task>) -> io::Result<()> {
        if task.core.c_frames.get() {
            self.cancel_cooperatively(task);
            return Ok(());
        }
        match task.core.state() {
            State::Finished => return Ok(()),
            State::Running => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "a coroutine cannot cancel itself",
                ));
            }
            State::Suspended => {}
        }
        if let Some(ev) = task.core.wait_event() {
            ev.del();
        }
        self.disarm(task);
        task.blocked.set(Blocked::No);
        task.core.cancel()?;
        let id = task.core.id();
        self.complete(task, Outcome::Panicked(Box::new(Cancelled { id })));
        Ok(())
    }

    /// Cancels a task without unwinding anything (the C ABI's coroutines, whose stacks hold C
    /// frames): its waits fail with `ECANCELED` from now on, and the one it is suspended in ends
    /// now (it is queued), so the task runs on until its code returns. A running task (one that
    /// cancels itself) finds out at its next wait.
    pub(crate) fn cancel_cooperatively(&self, task: &Rc<Task>) {
        if task.core.state() == State::Finished {
            return;
        }
        task.core.cancel_cooperatively();
        if task.core.state() != State::Suspended {
            return;
        }
        match task.blocked.get() {
            Blocked::Io => {
                if let Some(ev) = task.core.wait_event() {
                    ev.del();
                }
                self.disarm(task);
                task.blocked.set(Blocked::No);
                self.schedule(task.clone());
            }
            Blocked::Parked | Blocked::ParkedTimed => self.unpark(task),
            // Queued already, or not started yet: its next wait fails.
            Blocked::No => {}
        }
    }

    /// The event a suspended task waited for came (`woke`: what it reported): end the wait and
    /// queue the task, prefetching what its resume will read (see "Wake-ups").
    #[inline]
    pub(super) fn io_ready(&self, task: &Task, woke: c_short) {
        if task.blocked.get() != Blocked::Io {
            // Something (a waiter queued before it, its timeout, a close) already ended its
            // wait.
            return;
        }
        self.disarm(task);
        self.ready_after_wait(task, woke);
    }

    /// The fd a task waits on is being closed: end its wait with `EBADF`.
    pub(super) fn end_closed(&self, task: &Task) {
        if task.blocked.get() != Blocked::Io {
            return;
        }
        if let Some(ev) = task.core.wait_event() {
            ev.del();
        }
        self.disarm(task);
        task.closed.set(true);
        task.blocked.set(Blocked::No);
        self.schedule(task.rc());
    }

    /// Ends a suspended task's wait with `woke` and queues it, prefetching what its resume will
    /// read (see "Wake-ups").
    #[inline]
    pub(super) fn ready_after_wait(&self, task: &Task, woke: c_short) {
        task.blocked.set(Blocked::No);
        task.woke.set(woke);
        task.core.prefetch();
        task.cold.set(true);
        self.schedule(task.rc());
    }
}

/// The callback of every one-shot wait event: ends the wait of the task that added it.
unsafe extern "C" fn wake(_fd: sys::evutil_socket_t, what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the task that added this event in `wait_io`; a task deletes its event
    // before it can be freed (module docs), so it is alive whenever the callback runs.
    let task = unsafe { &*(arg as *const Task) };
    task.sched().io_ready(task, what);
}

/// Whether the caller runs in a coroutine of a scheduler (not a bare `Coroutine`, not plain
/// thread code) that has not turned the hooks off: where a hooked call suspends. One
/// thread-local read.
#[cfg(all(feature = "hook", target_os = "linux"))]
#[inline]
pub(crate) fn in_scheduled_coroutine() -> bool {
    coroutine::in_plain_body()
        && coroutine::current_core().is_some_and(|c| !c.owner.get().is_null() && !c.hooks_off.get())
}

pub(super) fn current_task() -> io::Result<(&'static Task, &'static Scheduler)> {
    let core = coroutine::current_core().ok_or_else(|| misuse("not inside a coroutine"))?;
    let task = core.owner.get() as *const Task;
    if task.is_null() {
        return Err(misuse(
            "inside a bare Coroutine: waits need a scheduled coroutine (evco::spawn)",
        ));
    }
    // SAFETY: `owner` is set to the task that embeds this core; it is running, so the task
    // table (or the caller's handle) keeps it alive for the duration of the call.
    let task = unsafe { &*task };
    if core.is_cancelling() {
        if core.c_frames.get() {
            // Cancelled C code fails every wait, and commonly retries (a reconnect loop that
            // sleeps): were its waits never to switch out, it would spin and hold the thread,
            // and `evco_sched_free`'s timeout could never end it. Each failing wait lets the
            // scheduler run once first.
            task.sched().schedule(task.rc());
            coroutine::switch_out(&task.core);
        }
        return Err(coroutine::cancelling_error());
    }
    Ok((task, task.sched()))
}

/// What a [`wait_io`] caller registers its wait with: the running task's token for the
/// reactor's lists, and its one-shot event with the callback that ends the wait.
pub(crate) struct WaitCtx<'a> {
    task: &'a Task,
}

impl WaitCtx<'_> {
    /// The token the reactor lists (its `EndWait` gets it back).
    pub(crate) fn token(&self) -> NonNull<()> {
        self.task.token()
    }

    /// The running task's one-shot event (made on its first use), the callback to give it, and
    /// the token as its argument. The event must only be added for this wait (the wait's guard
    /// deletes it when the wait does not end through it).
    pub(crate) fn oneshot(&self) -> io::Result<(&RawEvent, RawCallback, NonNull<()>)> {
        let ev = self
            .task
            .core
            .wait_event_or_make()
            .ok_or_else(|| misuse("coroutine has no stack"))?;
        Ok((ev, wake, self.token()))
    }
}

/// Ends a wait however it ends: a wait cut short by unwinding (cancellation) or resumed by
/// anything but its own event must not leave its timer or its one-shot event pending.
struct WaitGuard<'a> {
    sched: &'a Scheduler,
    task: &'a Task,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.sched.disarm(self.task);
        if self.task.blocked.get() == Blocked::Io {
            // Unwinding out of the wait (cancellation): make sure the event is gone.
            if let Some(ev) = self.task.core.wait_event() {
                ev.del();
            }
            self.task.blocked.set(Blocked::No);
        }
    }
}

/// Suspends the running coroutine until what `enlist` registers ends its wait, or `timeout`
/// passes. `enlist` runs first, with the task's [`WaitCtx`]; what it returns (a guard that
/// takes the task off whatever lists it) is dropped when the wait ends, however it ends.
/// Reports what the event reported ([`What::TIMEOUT`] when the timeout came first); `EBADF`
/// when the fd was closed under the wait. With an `enlist` that registers nothing, a sleep.
pub(crate) fn wait_io<G>(
    timeout: Option<Duration>,
    enlist: impl FnOnce(&WaitCtx<'_>) -> io::Result<G>,
) -> io::Result<What> {
    let _busy = coroutine::Busy::enter();
    let (task, sched) = current_task()?;
    if let Some(t) = timeout {
        sched.arm_timeout(task, t)?;
    }
    task.woke.set(0);
    task.closed.set(false);
    let listed = match enlist(&WaitCtx { task }) {
        Ok(g) => g,
        Err(e) => {
            sched.disarm(task);
            return Err(e);
        }
    };
    task.blocked.set(Blocked::Io);
    let guard = WaitGuard { sched, task };
    coroutine::switch_out_waiting(&task.core);
    drop(guard);
    drop(listed);
    if task.core.is_cancelling() {
        // Cancelled cooperatively during the wait (a C coroutine's: see `cancel_cooperatively`).
        return Err(coroutine::cancelling_error());
    }
    if task.closed.get() {
        // The fd was closed under us: what a read on it would now say.
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(What::from_bits(task.woke.get()))
}

/// `Ok` where [`wait_io`] can suspend: inside a scheduled coroutine that is not being
/// cancelled; the error `wait_io` would give otherwise.
pub(crate) fn can_wait() -> io::Result<()> {
    current_task().map(drop)
}

/// Parks the running coroutine until woken; may return spuriously, so callers loop.
pub(crate) fn park() -> io::Result<()> {
    let _busy = coroutine::Busy::enter();
    let (task, _) = current_task()?;
    task.blocked.set(Blocked::Parked);
    coroutine::switch_out(&task.core);
    task.blocked.set(Blocked::No);
    Ok(())
}

/// Ends a timed park however it ends: a park cut short by unwinding (cancellation) or resumed
/// by anything but its timer or an unpark must not leave the timer pending.
struct ParkGuard<'a>(&'a Task);

impl Drop for ParkGuard<'_> {
    fn drop(&mut self) {
        self.0.blocked.set(Blocked::No);
        self.0.sched().disarm(self.0);
    }
}

/// [`park`] for at most `timeout`: `Ok(true)` when the timeout ended it. Like `park`, it may
/// return early, so callers loop on their condition and their deadline.
pub(crate) fn park_timeout(timeout: Duration) -> io::Result<bool> {
    let _busy = coroutine::Busy::enter();
    let (task, sched) = current_task()?;
    // Unpark, the guard and cancellation disarm it.
    sched.arm_timeout(task, timeout)?;
    task.woke.set(0);
    task.blocked.set(Blocked::ParkedTimed);
    let guard = ParkGuard(task);
    coroutine::switch_out(&task.core);
    drop(guard);
    Ok(What::from_bits(task.woke.get()).contains(What::TIMEOUT))
}

/// A handle that makes one parked coroutine runnable again: what `sync`'s wait lists hold.
///
/// Holding one keeps the coroutine's task alive (not its body: a cancelled or finished
/// coroutine's waker does nothing).
#[derive(Clone)]
pub(crate) struct Waker(Rc<Task>);

impl Waker {
    /// The running coroutine's waker. An error outside a scheduled coroutine.
    pub(crate) fn current() -> io::Result<Waker> {
        let (task, _) = current_task()?;
        Ok(Waker(task.rc()))
    }

    /// The waker of `task`.
    pub(super) fn from_task(task: Rc<Task>) -> Waker {
        Waker(task)
    }

    /// Unparks the coroutine if it is parked ([`park`], [`park_timeout`]); otherwise nothing,
    /// without touching its scheduler (which may be gone: see `Scheduler`'s `Drop`).
    pub(crate) fn wake(&self) {
        if matches!(self.0.blocked.get(), Blocked::Parked | Blocked::ParkedTimed) {
            self.0.sched().unpark(&self.0);
        }
    }

    /// Whether both wake the same coroutine.
    pub(crate) fn same(&self, other: &Waker) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// Blocks a caller outside any coroutine until `done()` holds, by running this thread's event
/// loop (as [`JoinHandle::join`](super::JoinHandle::join) does outside a coroutine), for at most
/// `timeout` when given. `Ok(false)` when the timeout passed first; an error when there is no
/// scheduler on this thread or nothing left could make `done()` true (a deadlock).
pub(crate) fn block_outside(
    done: impl Fn() -> bool,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    if done() {
        return Ok(true);
    }
    let sched = Scheduler::current().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Deadlock,
            "would block forever: no coroutine runs on this thread to make progress",
        )
    })?;
    let Some(t) = timeout else {
        sched.drive_until(&done)?;
        return Ok(true);
    };
    let fired = Rc::new(Cell::new(false));
    let flag = fired.clone();
    let timer = crate::event::Event::timer(&sched.base, move |_| flag.set(true))?;
    timer.add(Some(t))?;
    sched.drive_until(|| done() || fired.get())?;
    Ok(done())
}

/// Yields the running coroutine: it goes to the back of the ready queue.
pub fn yield_now() -> io::Result<()> {
    let _busy = coroutine::Busy::enter();
    let (task, sched) = current_task()?;
    sched.schedule(task.rc());
    coroutine::switch_out(&task.core);
    Ok(())
}
