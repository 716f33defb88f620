//! Timed waits: each one's deadline is an entry in the scheduler's timer heap, and one alarm
//! wakes the loop at the earliest (see `crate::timer`).
//!
//! # Timers
//!
//! A wait's timeout is not a libevent timer: it is an entry in the scheduler's timer heap,
//! whose alarm wakes the loop at the earliest deadline on `Instant`'s clock without a system
//! call per loop turn (see "Timers" in [`crate::event`]). A task is in the heap only during a
//! timed wait (`wait_io` with a timeout, [`sleep`], `park_timeout`), and the entry points at the
//! task, so it must go before the task can: whatever ends the wait first takes it out
//! (`disarm`: the I/O callback, an unpark, a close, a cancellation), and so does the wait's
//! guard on every way out, unwinding included. When the deadline comes first, `timed_out` ends
//! the wait (deleting a one-shot wait's fd event) and queues the task with `What::TIMEOUT`.

use std::io;
use std::os::raw::c_void;
use std::time::{Duration, Instant};

use super::task::{Blocked, Task, current_task, wait_io};
use super::{Scheduler, expire};
use crate::event::{What, deadline_after};
use crate::timer::Alarm;

impl Scheduler {
    /// Makes the timer alarm if there is none yet (its timerfd can fail with `EMFILE`).
    pub(super) fn make_alarm(&self) -> io::Result<()> {
        let mut alarm = self.alarm.borrow_mut();
        if alarm.is_none() {
            let arg = self as *const Scheduler as *mut c_void;
            // SAFETY: the base outlives the alarm (field order) and `arg`, the scheduler, owns
            // it.
            *alarm = Some(unsafe { Alarm::new(self.base.as_raw(), expire, arg)? });
        }
        Ok(())
    }

    /// Starts the running task's timeout: its wait ends with `What::TIMEOUT` once `timeout`
    /// passed, unless the wait ends first (whatever ends it calls `disarm`).
    pub(super) fn arm_timeout(&self, task: &Task, timeout: Duration) -> io::Result<()> {
        let Some(deadline) = deadline_after(timeout) else {
            // Beyond what `Instant` can express: it never comes.
            return Ok(());
        };
        self.make_alarm()?;
        {
            let alarm = self.alarm.borrow();
            let alarm = alarm.as_ref().expect("made above");
            if let Err(e) = alarm.set(deadline) {
                if self.timers.is_empty() {
                    // `set` may have added its event: an empty heap must leave none.
                    alarm.disable();
                }
                return Err(e);
            }
        }
        // SAFETY: the task stays alive and in place (in its `Rc`) until the entry goes: every
        // timed wait's guard calls `disarm` on its way out, and a suspended task is alive.
        unsafe { self.timers.insert(deadline, task) };
        Ok(())
    }

    /// Ends the task's timeout, if it has one. Costs a field read when it has none.
    #[inline]
    pub(super) fn disarm(&self, task: &Task) {
        if self.timers.remove(task) && self.timers.is_empty() {
            self.disable_alarm();
        }
    }

    /// The alarm went off: ends the waits whose deadlines passed and sets it for the next.
    pub(super) fn expire_timers(&self) {
        let alarm = self.alarm.borrow();
        let Some(alarm) = alarm.as_ref() else { return };
        alarm.fired();
        let now = Instant::now();
        while let Some(task) = self.timers.pop_due(now) {
            // SAFETY: entries point at live tasks (see `arm_timeout`).
            let task = unsafe { task.as_ref() };
            self.timed_out(task);
        }
        match self.timers.earliest() {
            None => alarm.disable(),
            Some(next) => {
                if let Err(e) = alarm.set(next) {
                    // Only a bad timerfd could fail here, and then nothing could wake those
                    // waits: end them now rather than leave them hanging.
                    log::error!("evco: cannot set the timer alarm ({e}): ending timed waits early");
                    while let Some(task) = self.timers.pop_first() {
                        // SAFETY: as above.
                        self.timed_out(unsafe { task.as_ref() });
                    }
                    alarm.disable();
                }
            }
        }
    }

    /// `task`'s deadline passed (its entry is already out of the heap): ends its wait and
    /// queues it.
    fn timed_out(&self, task: &Task) {
        match task.blocked.get() {
            Blocked::Io => {
                // A one-shot wait's fd event must not fire after the timeout ended the wait.
                if let Some(ev) = task.core.wait_event() {
                    ev.del();
                }
            }
            Blocked::ParkedTimed => {}
            // Whatever ended the wait took its entry out; nothing else has one.
            Blocked::No | Blocked::Parked => return,
        }
        self.ready_after_wait(task, What::TIMEOUT.bits());
    }

    fn disable_alarm(&self) {
        if let Some(alarm) = self.alarm.borrow().as_ref() {
            alarm.disable();
        }
    }
}

/// Makes sure a timed wait of the running coroutine can be armed without a new resource (the
/// timer alarm is made with the scheduler, or on first use if that failed): for callers that must fail before they give something
/// up, as `Condvar::wait_timeout` before it unlocks. Setting an existing alarm cannot fail with
/// valid arguments.
pub(crate) fn prepare_timeouts() -> io::Result<()> {
    let (_, sched) = current_task()?;
    sched.make_alarm()
}

/// Suspends the running coroutine for `d` (nothing but a deadline: no event, no fd); with
/// `None`, until it is cancelled. An error outside a scheduled coroutine.
pub(crate) fn sleep(d: Option<Duration>) -> io::Result<()> {
    wait_io(d, |_| Ok(())).map(drop)
}
