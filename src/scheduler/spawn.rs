//! Spawning and joining: [`spawn`], [`run`], [`JoinHandle`], [`Builder::spawn`], and
//! installing a scheduler on a host's base ([`enter`], [`SchedulerGuard`]) or taking it down
//! ([`shutdown`]).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::rc::Rc;

use super::task::{Blocked, Outcome, Task, current_task, park};
use super::{OWNER, SCHED, Scheduler, misuse};
use crate::coroutine::{self, Builder, Core, CoroutineId};
use crate::event::EventBase;
use crate::timer::NOT_QUEUED;

impl Builder {
    /// Spawns `f` on this thread's scheduler (see [`spawn`](crate::spawn)).
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        spawn_with(self.name, self.stack_size, f)
    }
}

pub(crate) fn spawn_with<F, T>(
    name: Option<Rc<str>>,
    stack_size: usize,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    let value: Rc<Cell<Option<T>>> = Rc::new(Cell::new(None));
    let slot = value.clone();
    let task = spawn_task(name, stack_size, move || slot.set(Some(f())))?;
    Ok(JoinHandle {
        task,
        value,
        _not_send: PhantomData,
    })
}

/// Spawns `body` with no join handle (a runtime spawn reports through its own state): its
/// task-table slot and id, what names it in a cross-thread message.
pub(crate) fn spawn_keyed(
    stack_size: usize,
    body: impl FnOnce() + 'static,
) -> io::Result<(usize, u64)> {
    let task = spawn_task(None, stack_size, body)?;
    Ok((task.slot.get(), task.core.id().as_u64()))
}

/// Makes the task that runs `body`, lists it and queues it.
fn spawn_task(
    name: Option<Rc<str>>,
    stack_size: usize,
    body: impl FnOnce() + 'static,
) -> io::Result<Rc<Task>> {
    let sched = Scheduler::current_or_install()?;
    let core = Core::new(name, stack_size, body)?;
    let task = Rc::new(Task {
        core,
        sched,
        slot: Cell::new(usize::MAX),
        queued: Cell::new(false),
        blocked: Cell::new(Blocked::No),
        woke: Cell::new(0),
        closed: Cell::new(false),
        timer_slot: Cell::new(NOT_QUEUED),
        joiner: RefCell::new(None),
        outcome: RefCell::new(Outcome::Pending),
        root: Cell::new(false),
        cold: Cell::new(false),
    });
    task.core.owner.set(Rc::as_ptr(&task) as *const ());
    // The task table and the ready queue are mid-change (see `Scheduler::unpark`).
    let _busy = coroutine::Busy::enter();
    sched.insert(&task);
    sched.schedule(task.clone());
    Ok(task)
}

/// Spawns `f` as a new coroutine on this thread's scheduler (installing one if needed).
///
/// `f` need not be `Send`: coroutines never leave their thread. It starts when the scheduler
/// next drains its ready queue (after the caller suspends, or when the loop runs).
///
/// # Panics
///
/// When no stack can be allocated or no event base created; [`Builder::spawn`] returns those
/// as errors instead.
///
/// [`Builder::spawn`]: crate::coroutine::Builder::spawn
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    match coroutine::Builder::new().spawn(f) {
        Ok(h) => h,
        Err(e) => panic!("evco::spawn: {e}"),
    }
}

/// Runs `f` as the first coroutine on this thread's scheduler and returns its result once it
/// and every coroutine spawned on this scheduler have finished.
///
/// # Panics
///
/// Re-raises a panic of `f`, as soon as it happens: like a panic in `main`, it ends the run;
/// the coroutines still alive are cancelled first (their destructors run). Panics when called
/// from inside a coroutine, when no event base can be created, and on a deadlock (coroutines
/// parked with no event that could wake them: they are cancelled first).
pub fn run<F, T>(f: F) -> T
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    assert!(
        !coroutine::is_coroutine(),
        "evco::run called inside a coroutine: use evco::spawn"
    );
    let sched = match Scheduler::current_or_install() {
        Ok(s) => s,
        Err(e) => panic!("evco::run: {e}"),
    };
    let handle = spawn(f);
    handle.task.root.set(true);
    let root_panicked = || matches!(*handle.task.outcome.borrow(), Outcome::Panicked(_));
    if let Err(e) = sched.drive_until(|| sched.live() == 0 || root_panicked()) {
        sched.shutdown(false);
        panic!("evco::run: {e}");
    }
    if root_panicked() {
        // The rest would run on with nobody to report to: cancel them, as a panic in `main`
        // ends a program's other threads.
        sched.shutdown(false);
    }
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// An owned permission to join a coroutine (and to cancel it).
///
/// Dropping the handle detaches the coroutine: it keeps running.
///
/// # Send
///
/// `!Send`: the coroutine lives on this thread's scheduler.
pub struct JoinHandle<T> {
    task: Rc<Task>,
    value: Rc<Cell<Option<T>>>,
    _not_send: PhantomData<*mut ()>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.task.core.id())
            .field("name", &self.task.core.name())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Waits for the coroutine to finish and returns its result, or the payload of its panic
    /// ([`StackOverflow`](crate::coroutine::StackOverflow) for an overflow,
    /// [`Cancelled`](crate::coroutine::Cancelled) if it was cancelled).
    ///
    /// Inside a coroutine it parks the caller. Outside, it runs the event loop until the
    /// coroutine finishes. Misuse (joining yourself, joining from a bare coroutine, a loop that
    /// can make no progress) is reported as an `Err` whose payload is an `io::Error`.
    pub fn join(self) -> std::thread::Result<T> {
        if let Err(e) = self.wait_finished() {
            return Err(Box::new(e));
        }
        let outcome = std::mem::replace(&mut *self.task.outcome.borrow_mut(), Outcome::Taken);
        match outcome {
            Outcome::Done => match self.value.take() {
                Some(v) => Ok(v),
                None => Err(Box::new(misuse("coroutine result already taken"))),
            },
            Outcome::Panicked(p) => Err(p),
            Outcome::Pending | Outcome::Taken => {
                Err(Box::new(misuse("coroutine result already taken")))
            }
        }
    }

    fn wait_finished(&self) -> io::Result<()> {
        if self.task.is_finished() {
            return Ok(());
        }
        if coroutine::is_coroutine() {
            let (me, _) = current_task()?;
            if std::ptr::eq(me, &*self.task) {
                return Err(io::Error::new(
                    io::ErrorKind::Deadlock,
                    "a coroutine cannot join itself",
                ));
            }
            *self.task.joiner.borrow_mut() = Some(me.rc());
            while !self.task.is_finished() {
                park()?;
            }
            Ok(())
        } else {
            // The task's scheduler, if it is this thread's current one (compared by address:
            // an unfinished task's scheduler is not dereferenced unless it is known to live).
            match Scheduler::current() {
                Some(s) if std::ptr::eq(s, self.task.sched) => {
                    s.drive_until(|| self.task.is_finished())
                }
                _ => Err(misuse(
                    "join outside the coroutine's scheduler (it was shut down or uninstalled)",
                )),
            }
        }
    }

    /// Waits for the coroutine to finish, at most `timeout` (`None`: no limit), as `join`
    /// waits; `Ok(false)` when the timeout passed first. For the C ABI's `evco_join`.
    pub(crate) fn wait_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<bool> {
        if self.task.is_finished() {
            return Ok(true);
        }
        if !coroutine::is_coroutine() {
            return match Scheduler::current() {
                Some(s) if std::ptr::eq(s, self.task.sched) => {
                    super::task::block_outside(|| self.task.is_finished(), timeout)
                }
                _ => Err(misuse(
                    "join outside the coroutine's scheduler (it was shut down or uninstalled)",
                )),
            };
        }
        let (me, _) = current_task()?;
        if std::ptr::eq(me, &*self.task) {
            return Err(io::Error::new(
                io::ErrorKind::Deadlock,
                "a coroutine cannot join itself",
            ));
        }
        /// Takes the joiner off the task however the wait ends.
        struct Unlist<'a>(&'a Task);
        impl Drop for Unlist<'_> {
            fn drop(&mut self) {
                self.0.joiner.borrow_mut().take();
            }
        }
        *self.task.joiner.borrow_mut() = Some(me.rc());
        let _unlist = Unlist(&self.task);
        let deadline = timeout.and_then(crate::event::deadline_after);
        while !self.task.is_finished() {
            match deadline {
                None => park()?,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    super::task::park_timeout(left)?;
                }
            }
        }
        Ok(true)
    }

    /// The coroutine's core (for the C ABI: its flags, its stack).
    pub(crate) fn core(&self) -> &Core {
        &self.task.core
    }

    /// Whether the coroutine has finished (returned, panicked, overflowed or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Cancels the coroutine if it is suspended: deletes whatever it waits on, then unwinds its
    /// stack so its destructors run. `join` then returns a
    /// [`Cancelled`](crate::coroutine::Cancelled) payload. A coroutine cannot cancel itself.
    pub fn cancel(&self) -> io::Result<()> {
        if self.task.is_finished() {
            return Ok(());
        }
        match Scheduler::current() {
            Some(s) if std::ptr::eq(s, self.task.sched) => s.cancel(&self.task),
            _ => Err(misuse(
                "cancel outside the coroutine's scheduler (it was shut down or uninstalled)",
            )),
        }
    }

    /// The coroutine's id.
    pub fn id(&self) -> CoroutineId {
        self.task.core.id()
    }

    /// The coroutine's name, if any.
    pub fn name(&self) -> Option<&str> {
        self.task.core.name()
    }
}

/// Installs a scheduler on this thread over `base` (typically a host program's, borrowed with
/// [`EventBase::from_raw`]). The host then runs its own loop; coroutines spawned with
/// [`spawn`] run from it. Dropping the guard cancels every coroutine left and uninstalls the
/// scheduler (a borrowed base is not freed).
///
/// An error when this thread already has a scheduler with live coroutines, or when called
/// inside a coroutine.
pub fn enter(base: EventBase) -> io::Result<SchedulerGuard> {
    if coroutine::is_coroutine() {
        return Err(misuse("scheduler::enter called inside a coroutine"));
    }
    if let Some(s) = Scheduler::current() {
        if s.live() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this thread already has a scheduler with live coroutines",
            ));
        }
        uninstall();
    }
    Scheduler::install(base);
    Ok(SchedulerGuard {
        _not_send: PhantomData,
    })
}

/// Keeps a scheduler installed by [`enter`]; see there.
#[derive(Debug)]
pub struct SchedulerGuard {
    _not_send: PhantomData<*mut ()>,
}

impl SchedulerGuard {
    /// The base the scheduler runs on.
    pub fn base(&self) -> EventBase {
        Scheduler::current()
            .expect("guard alive, scheduler installed")
            .base()
            .clone()
    }
}

impl Drop for SchedulerGuard {
    fn drop(&mut self) {
        if let Some(s) = Scheduler::current() {
            s.shutdown(false);
        }
        uninstall();
    }
}

fn uninstall() {
    SCHED.with(|s| s.set(std::ptr::null()));
    let old = OWNER.with(|o| o.borrow_mut().take());
    drop(old);
}

/// Cancels every suspended coroutine on this thread's scheduler (their destructors run, their
/// events are deleted), except the root coroutine of a running [`run`]: it keeps
/// going (its joins of cancelled coroutines return [`Cancelled`](crate::coroutine::Cancelled)) and decides what `run`
/// returns. Typically called from a signal event's callback. An error inside a coroutine.
pub fn shutdown() -> io::Result<()> {
    if coroutine::is_coroutine() {
        return Err(misuse("scheduler::shutdown called inside a coroutine"));
    }
    if let Some(s) = Scheduler::current() {
        s.shutdown(true);
    }
    Ok(())
}

/// Winds this thread's scheduler down (the C ABI's `evco_sched_free`): cancels every
/// coroutine (cooperatively those that run C code, see `Scheduler::cancel_cooperatively`), runs
/// the loop until all have finished or `timeout` passes, and gives up the C coroutines left
/// without running anything on their stacks (`Scheduler::leak_c_tasks`). Returns how many it
/// gave up. Outside coroutines only.
pub(crate) fn wind_down(timeout: Option<std::time::Duration>) -> io::Result<usize> {
    if coroutine::is_coroutine() {
        return Err(misuse(
            "a scheduler cannot be freed from inside a coroutine",
        ));
    }
    let Some(sched) = Scheduler::current() else {
        return Ok(0);
    };
    // One round of the loop first: it fails when the loop is running already (called from one
    // of the base's callbacks), where nothing may be freed.
    if sched.base.loop_nonblock().is_err() {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "a scheduler cannot be freed from inside its base's loop (a callback): leave the \
             loop first",
        ));
    }
    let all: Vec<Rc<Task>> = sched.tasks.borrow().iter().flatten().cloned().collect();
    for t in &all {
        let _ = sched.cancel(t);
    }
    drop(all);
    // A deadlock (nothing left that could wake the rest) ends the wait as a timeout would.
    let _ = super::task::block_outside(|| sched.live() == 0, timeout);
    Ok(sched.leak_c_tasks())
}

/// The number of coroutines on this thread's scheduler that have not finished.
pub fn live_coroutines() -> usize {
    Scheduler::current().map_or(0, Scheduler::live)
}

/// A handle on this thread's scheduler's event base (installing a scheduler if there is none).
pub fn base() -> io::Result<EventBase> {
    Ok(Scheduler::current_or_install()?.base().clone())
}
