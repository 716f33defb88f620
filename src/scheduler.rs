//! The per-thread scheduler: spawn, the ready queue, park/unpark, and the one wait primitive.
//!
//! One scheduler per thread lives in a thread-local (no global map) and owns or borrows one
//! [`EventBase`]. libevent's loop is the only loop: the ready queue is drained by an internal
//! event activated with `event_active`, so coroutines run the same way whether evco runs the
//! loop ([`run`], [`JoinHandle::join`] outside a coroutine) or a host program runs
//! `event_base_dispatch` on its own base ([`enter`]).
//!
//! # What a wait registers, and when it is removed
//!
//! Each coroutine's stack has at most one `struct event` (`RawEvent`), made on its first
//! one-shot wait on an fd and reused across its later ones: `event_assign` only when fd or
//! interest change, `event_add` otherwise. A wait is one-shot (no
//! `EV_PERSIST`): libevent makes the event non-pending before it calls `wake`, whose argument is
//! the waiting `Task`. That argument is valid because a task is only freed after its event is
//! deleted:
//!
//! - on wake-up, libevent already removed it (and `wake` only queues the task: the ready queue
//!   holds a reference until it runs);
//! - on cancellation ([`JoinHandle::cancel`], [`shutdown`], the guard of [`enter`]), the
//!   scheduler deletes the event *before* it unwinds the coroutine's stack;
//! - when the fd is closed through [`io::close`](crate::io::close), the event is deleted and the
//!   waiter is resumed through the ready queue with `EBADF`;
//! - a finished coroutine's event, if it made one, is reset before its stack returns to the
//!   pool.
//!
//! # Timers
//!
//! A wait's timeout is not a libevent timer: it is an entry in the scheduler's timer heap
//! (`timer`), whose alarm wakes the loop at the earliest deadline on `Instant`'s clock without
//! a system call per loop turn (see "Timers" in [`crate::event`]). A task is in the heap only
//! during a timed wait (`wait_event`, `wait_registered` with a timeout, `park_timeout`), and the
//! entry points at the task, so it must go before the task can: whatever ends the wait first
//! takes it out (`disarm`: the I/O callback, an unpark, a close, a cancellation), and so does
//! the wait's guard on every way out, unwinding included. When the deadline comes first,
//! `timed_out` ends the wait (deleting a one-shot wait's fd event) and queues the task with
//! `What::TIMEOUT`.
//!
//! `event_base_once` is never used: it cannot be cancelled, so a dropped coroutine would leave a
//! callback pointing at freed memory.
//!
//! # Registered sockets: one persistent edge-triggered event per socket
//!
//! A one-shot wait costs libevent an `event_add` and an `event_del` and the kernel an
//! `epoll_ctl`, every time. Sockets evco owns (the `net` types) take a cheaper road where the
//! backend supports edge-triggered events (epoll): on their first wait they get one
//! `Registration`, a persistent `EV_READ|EV_WRITE|EV_ET` event that stays until the socket is
//! closed (`deregister`, called by the socket's `Drop`, `into_std`, `into_raw_fd`, and by
//! `io::close`). A wait then only happens after the socket returned `EAGAIN`, so the next edge
//! is exactly what it waits for: the waiter puts itself on the registration's reader or writer
//! list and suspends; `edge` takes the listed coroutines off and makes them ready. A timeout
//! is an entry in the timer heap (see "Timers"). The lists hold a coroutine only while it is
//! suspended in that wait (its guard removes it when the wait ends or unwinds), and a
//! registration is freed only after its event is deleted; nothing can drop it while `edge`
//! runs, since no coroutine runs inside a callback (see "Wake-ups"). On backends without edge
//! triggering (poll, with `EVENT_NOEPOLL=1`) every wait is one-shot.
//!
//! # Wake-ups
//!
//! Event callbacks (`wake`, `edge`) never resume a coroutine themselves: they end its wait,
//! prefetch what its resume will read (its saved registers and the frames around its stack
//! pointer, `Core::prefetch`) and put it on the ready queue. libevent runs the drain, activated
//! from inside the first such callback, after the other callbacks of the same pass, so by the
//! time a coroutine runs its cold stack lines and TLB entries have been loading behind the other
//! callbacks and the coroutines before it. With 1,000 echo connections (each stack's two hot
//! pages long out of the caches between two of its messages) that saves 3-6% of server CPU per
//! message (interleaved A/B runs); it costs ~50 instructions per wake-up (queue push and pop,
//! the prefetches) and one drain callback per pass. While the drain resumes one coroutine it
//! prefetches the next one's lines again if an event woke it (`cold`): with few events per pass
//! the wake-up's prefetch has too little time, and with many the lines leave L1 before their
//! turn (at 1,000 connections this took generator's register switch from 1.1% to 0.2% of the
//! server's CPU samples); coroutines made ready by a yield, a spawn or an unpark are warm and
//! skip it (spawn+run+join paid 8% for it otherwise). Since no coroutine runs inside a
//! callback, a callback cannot see its registration or the tasks it walks freed under it.
//!
//! # Fairness
//!
//! A drain pass resumes ready coroutines in FIFO order, including those that become ready
//! during the pass (a spawn followed by a join completes within one pass, with no trip through
//! libevent), but at most `PASS_BUDGET` of them. libevent runs an event activated from inside
//! a callback in the same pass, so coroutines that yield in a loop could still starve I/O: after
//! `FAIR_EVERY` passes in a row that left coroutines ready, the drain re-arms through a
//! zero-timeout timer instead, which libevent only runs after it polled for I/O again. The drain
//! event itself is persistent, so activating it never costs an `event_del`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::os::raw::{c_short, c_void};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::coroutine::{self, Cancelled, Core, CoroutineId, Resumed, State};
use crate::event::{EventBase, LoopExit, RawEvent, What, deadline_after};
use crate::sys;
use crate::timer::{Alarm, NOT_QUEUED, Timed, TimerHeap};

/// After this many drain passes in a row that left coroutines ready, let libevent poll first.
const FAIR_EVERY: u32 = 16;
/// Most coroutines one drain pass resumes.
const PASS_BUDGET: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    /// Running, or queued to run.
    No,
    /// Waiting for its wait event (fd readiness or a timer).
    Io,
    /// Parked until [`unpark`].
    Parked,
    /// Parked until [`unpark`] or until its deadline in the timer heap passes.
    ParkedTimed,
}

enum Outcome {
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
    blocked: Cell<Blocked>,
    queued: Cell<bool>,
    /// What the wait event reported when it fired.
    woke: Cell<c_short>,
    /// Its index in the scheduler's timer heap during a timed wait (`timer::NOT_QUEUED`
    /// otherwise). Read on every wake-up (`disarm`), hence here.
    timer_slot: Cell<u32>,
    /// Set when the fd it waited on was closed through `io::close`.
    closed: Cell<bool>,
    /// The first coroutine of a running `evco::run`: [`shutdown`] leaves it alone.
    root: Cell<bool>,
    /// An event ended its wait: its lines may have left the caches, and the drain prefetches
    /// them again just before its turn (see "Wake-ups").
    cold: Cell<bool>,
    core: Core,
    /// Its index in the task table.
    slot: Cell<usize>,
    sched: *const Scheduler,
    joiner: RefCell<Option<Rc<Task>>>,
    outcome: RefCell<Outcome>,
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
    fn rc(&self) -> Rc<Task> {
        // SAFETY: every `Task` is allocated by `Rc::new` (`spawn_with` is the only place one is
        // made), and `&self` proves that allocation is alive (strong count at least 1) for the
        // duration of this call.
        unsafe {
            Rc::increment_strong_count(self);
            Rc::from_raw(self)
        }
    }

    fn is_finished(&self) -> bool {
        self.core.state() == State::Finished
    }

    /// Its scheduler. Only called while that scheduler lives: from the scheduler's own code
    /// and callbacks, from the task's coroutine (which only runs under it), and from
    /// `Waker::wake` for a parked task. A task can outlive its scheduler (a `Waker` held by a
    /// late callback, a coroutine leaked when its thread exits), but `Scheduler`'s `Drop`
    /// leaves none of those parked, so `wake` never gets here for them.
    fn sched(&self) -> &Scheduler {
        // SAFETY: the callers above run only while the scheduler `self.sched` points at is
        // alive (it is not moved: it lives in an `Rc` for its whole life).
        unsafe { &*self.sched }
    }
}

/// One thread's scheduler. See the module docs.
pub(crate) struct Scheduler {
    /// Declared before `base`: fields drop in order, and the event must go before its base.
    drain: RawEvent,
    /// The zero-timeout timer that runs the drain after an I/O poll (see Fairness).
    fair: RawEvent,
    drain_armed: Cell<bool>,
    /// Drain passes in a row that ended with coroutines still ready (see `rearm_from_drain`).
    starved_passes: Cell<u32>,
    ready: RefCell<VecDeque<Rc<Task>>>,
    tasks: RefCell<Vec<Option<Rc<Task>>>>,
    free_slots: RefCell<Vec<usize>>,
    live: Cell<usize>,
    /// Coroutines waiting on each fd, so `io::close` can wake them.
    fd_waiters: RefCell<Vec<Vec<*const Task>>>,
    /// Registered sockets by fd (see "Registered sockets"). Declared before `base`.
    regs: RefCell<Vec<Option<Rc<Registration>>>>,
    /// Whether the backend does edge triggering, so registrations can be used.
    edge: bool,
    /// An empty waiter list with capacity, swapped with a registration's list by `edge`.
    spare_waiters: RefCell<Vec<*const Task>>,
    /// The deadlines of timed waits (see "Timers").
    timers: TimerHeap<Task>,
    /// What wakes the loop at the earliest of them, made on first use. Declared before `base`.
    alarm: RefCell<Option<Alarm>>,
    /// This thread's name resolver (`net::dns`), made on first use; null before.
    dns: Cell<*mut sys::evdns_base>,
    /// Resolvers `net::set_nameservers` replaced: libevent may still call back into them (a
    /// lookup's late answer, a cancellation it reports on a later turn), so they live as long
    /// as the scheduler. Freed in `Drop` with `dns`, before the base, when the base goes too.
    dns_retired: RefCell<Vec<*mut sys::evdns_base>>,
    base: EventBase,
}

thread_local! {
    static SCHED: Cell<*const Scheduler> = const { Cell::new(std::ptr::null()) };
    static OWNER: RefCell<Option<Rc<Scheduler>>> = const { RefCell::new(None) };
}

fn misuse(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Scheduler {
    fn install(base: EventBase) -> Rc<Scheduler> {
        let sched = Rc::new(Scheduler {
            drain: RawEvent::new(),
            fair: RawEvent::new(),
            drain_armed: Cell::new(false),
            starved_passes: Cell::new(0),
            ready: RefCell::new(VecDeque::new()),
            tasks: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            live: Cell::new(0),
            fd_waiters: RefCell::new(Vec::new()),
            regs: RefCell::new(Vec::new()),
            edge: base.supports_edge_triggered(),
            spare_waiters: RefCell::new(Vec::new()),
            timers: TimerHeap::new(),
            alarm: RefCell::new(None),
            dns: Cell::new(std::ptr::null_mut()),
            dns_retired: RefCell::new(Vec::new()),
            base,
        });
        let arg = Rc::as_ptr(&sched) as *mut c_void;
        // SAFETY: the base lives as long as the scheduler (a field), the drain event is deleted
        // first when the scheduler drops, and `arg` is the scheduler itself.
        unsafe {
            sched
                .drain
                .assign(sched.base.as_raw(), -1, What::PERSIST, drain, arg);
            sched
                .fair
                .assign(sched.base.as_raw(), -1, What::NONE, drain, arg)
        };
        SCHED.with(|s| s.set(Rc::as_ptr(&sched)));
        OWNER.with(|o| *o.borrow_mut() = Some(sched.clone()));
        sched
    }

    /// This thread's scheduler, if one is installed.
    pub(crate) fn current() -> Option<&'static Scheduler> {
        let p = SCHED.try_with(|s| s.get()).unwrap_or(std::ptr::null());
        // SAFETY: `SCHED` points at the scheduler `OWNER` holds, and is cleared before that is
        // dropped; the scheduler is only dropped outside coroutines and outside its callbacks
        // (see `enter`/`uninstall`), so no reference handed out here is alive then.
        unsafe { p.as_ref() }
    }

    /// This thread's scheduler, installing one with a base of its own if there is none.
    pub(crate) fn current_or_install() -> io::Result<&'static Scheduler> {
        if let Some(s) = Scheduler::current() {
            return Ok(s);
        }
        let sched = Scheduler::install(EventBase::new()?);
        // SAFETY: as in `current`: `OWNER` keeps it alive.
        Ok(unsafe { &*Rc::as_ptr(&sched) })
    }

    /// Where this scheduler keeps its name resolver (see `net::dns`).
    pub(crate) fn dns_base(&self) -> &Cell<*mut sys::evdns_base> {
        &self.dns
    }

    /// Keeps a replaced resolver until the scheduler goes (see `dns_retired`).
    pub(crate) fn retire_dns_base(&self, dns: *mut sys::evdns_base) {
        self.dns_retired.borrow_mut().push(dns);
    }

    pub(crate) fn base(&self) -> &EventBase {
        &self.base
    }

    fn insert(&self, task: &Rc<Task>) {
        let slot = match self.free_slots.borrow_mut().pop() {
            Some(i) => {
                self.tasks.borrow_mut()[i] = Some(task.clone());
                i
            }
            None => {
                let mut tasks = self.tasks.borrow_mut();
                tasks.push(Some(task.clone()));
                tasks.len() - 1
            }
        };
        task.slot.set(slot);
        self.live.set(self.live.get() + 1);
    }

    fn schedule(&self, task: Rc<Task>) {
        if task.queued.replace(true) {
            return;
        }
        self.ready.borrow_mut().push_back(task);
        self.arm();
    }

    fn arm(&self) {
        if !self.drain_armed.replace(true) {
            self.drain.activate(What::READ);
        }
    }

    /// Re-arms the drain from its own callback (coroutines yielded during the pass). Every
    /// [`FAIR_EVERY`]th consecutive time, go through a zero-timeout timer so libevent polls
    /// for I/O before the next pass.
    fn rearm_from_drain(&self) {
        let n = self.starved_passes.get() + 1;
        if n >= FAIR_EVERY {
            self.starved_passes.set(0);
            self.drain_armed.set(true);
            if self.fair.add(Some(Duration::ZERO)).is_ok() {
                return;
            }
            self.drain_armed.set(false);
        } else {
            self.starved_passes.set(n);
        }
        self.arm();
    }

    fn run_task(&self, task: &Rc<Task>) {
        if task.core.state() != State::Suspended {
            return;
        }
        match task.core.resume() {
            Ok(Resumed::Suspended) | Err(_) => {}
            Ok(Resumed::Finished) => self.complete(task, Outcome::Done),
            Ok(Resumed::Panicked(p)) => self.complete(task, Outcome::Panicked(p)),
        }
    }

    fn complete(&self, task: &Rc<Task>, outcome: Outcome) {
        *task.outcome.borrow_mut() = outcome;
        let slot = task.slot.get();
        let removed = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(slot) {
                Some(entry) if entry.as_ref().is_some_and(|t| Rc::ptr_eq(t, task)) => entry.take(),
                _ => None,
            }
        };
        if removed.is_some() {
            self.free_slots.borrow_mut().push(slot);
            self.live.set(self.live.get() - 1);
        }
        let joiner = task.joiner.borrow_mut().take();
        if let Some(j) = joiner {
            self.unpark(&j);
        }
        drop(removed);
    }

    fn unpark(&self, task: &Rc<Task>) {
        match task.blocked.get() {
            Blocked::Parked => {}
            Blocked::ParkedTimed => self.disarm(task),
            Blocked::No | Blocked::Io => return,
        }
        task.blocked.set(Blocked::No);
        self.schedule(task.clone());
    }

    /// Deletes the task's wait, unwinds its stack and reports it cancelled.
    fn cancel(&self, task: &Rc<Task>) -> io::Result<()> {
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

    /// Cancels every suspended coroutine (running ones are up the stack and are left alone),
    /// except `run`'s root coroutine when `spare_root` is set.
    fn shutdown(&self, spare_root: bool) {
        loop {
            let victims: Vec<Rc<Task>> = self
                .tasks
                .borrow()
                .iter()
                .flatten()
                .filter(|t| t.core.state() == State::Suspended && !(spare_root && t.root.get()))
                .cloned()
                .collect();
            if victims.is_empty() {
                break;
            }
            for t in &victims {
                let _ = self.cancel(t);
            }
        }
        self.ready.borrow_mut().retain(|t| !t.is_finished());
    }

    /// Runs the loop until `done()` holds. An error when nothing can make progress any more.
    fn drive_until(&self, done: impl Fn() -> bool) -> io::Result<()> {
        while !done() {
            if let LoopExit::NoEvents = self.base.loop_once()? {
                if !done() {
                    return Err(io::Error::new(
                        io::ErrorKind::Deadlock,
                        format!(
                            "deadlock: {} coroutine(s) are parked and no event can wake them",
                            self.live.get()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn register_waiter(&self, fd: RawFd, task: *const Task) {
        let i = fd as usize;
        let mut w = self.fd_waiters.borrow_mut();
        if w.len() <= i {
            w.resize_with(i + 1, Vec::new);
        }
        w[i].push(task);
    }

    fn unregister_waiter(&self, fd: RawFd, task: *const Task) {
        let mut w = self.fd_waiters.borrow_mut();
        if let Some(list) = w.get_mut(fd as usize) {
            if let Some(pos) = list.iter().position(|&t| std::ptr::eq(t, task)) {
                list.swap_remove(pos);
            }
        }
    }

    /// Wakes every coroutine waiting on `fd` with `EBADF`: the fd is about to be closed.
    pub(crate) fn notify_close(&self, fd: RawFd) {
        let waiters = match self.fd_waiters.borrow_mut().get_mut(fd as usize) {
            Some(list) if !list.is_empty() => std::mem::take(list),
            _ => return,
        };
        self.wake_closed(waiters);
    }

    /// Resumes (through the ready queue) each listed coroutine that still waits, with `EBADF`:
    /// its fd is being closed.
    ///
    /// The list comes from `fd_waiters` or a registration's waiter lists, which hold a task only
    /// while it is suspended in `wait_event`/`wait_registered` (their guards remove it before
    /// the wait returns or unwinds), and a suspended task is alive: the task table holds it.
    /// Nothing is resumed here, so no task can be freed while the list is walked.
    fn wake_closed(&self, waiters: Vec<*const Task>) {
        for t in waiters {
            // SAFETY: see above: listed tasks are suspended, hence alive.
            let task = unsafe { &*t };
            if task.blocked.get() != Blocked::Io {
                continue;
            }
            if let Some(ev) = task.core.wait_event() {
                ev.del();
            }
            self.disarm(task);
            task.closed.set(true);
            task.blocked.set(Blocked::No);
            self.schedule(task.rc());
        }
    }

    fn live(&self) -> usize {
        self.live.get()
    }

    /// The event a suspended task waited for came (`woke`: what it reported): end the wait and
    /// queue the task, prefetching what its resume will read (see "Wake-ups").
    #[inline]
    fn io_ready(&self, task: &Task, woke: c_short) {
        if task.blocked.get() != Blocked::Io {
            // Something (a waiter queued before it, its timeout, a close) already ended its
            // wait.
            return;
        }
        self.disarm(task);
        self.ready_after_wait(task, woke);
    }

    /// Ends a suspended task's wait with `woke` and queues it, prefetching what its resume will
    /// read (see "Wake-ups").
    #[inline]
    fn ready_after_wait(&self, task: &Task, woke: c_short) {
        task.blocked.set(Blocked::No);
        task.woke.set(woke);
        task.core.prefetch();
        task.cold.set(true);
        self.schedule(task.rc());
    }

    /// Makes the timer alarm if there is none yet (its timerfd can fail with `EMFILE`).
    fn make_alarm(&self) -> io::Result<()> {
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
    fn arm_timeout(&self, task: &Task, timeout: Duration) -> io::Result<()> {
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
    fn disarm(&self, task: &Task) {
        if self.timers.remove(task) && self.timers.is_empty() {
            self.disable_alarm();
        }
    }

    /// The alarm went off: ends the waits whose deadlines passed and sets it for the next.
    fn expire_timers(&self) {
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

/// The alarm's callback (see `Scheduler::expire_timers`).
unsafe extern "C" fn expire(_fd: sys::evutil_socket_t, _what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the scheduler that owns the alarm, alive while its event can fire.
    let sched = unsafe { &*(arg as *const Scheduler) };
    sched.expire_timers();
}

/// A socket's persistent edge-triggered event and the coroutines waiting for its next edge.
/// See "Registered sockets" in the module docs.
///
/// `repr(C)`, fields in the order an edge touches them: with the `Rc` counts in front, what an
/// edge and a wait read and write spans 56 bytes, one or two cache lines (see "Wake-ups").
#[repr(C)]
pub(crate) struct Registration {
    /// Directions that may be ready: set by every edge, cleared when the socket said `EAGAIN`
    /// (a wait) or a read came back short (`note_drained`). With a clear bit, the next
    /// operation in that direction waits for an edge before it tries, saving a syscall that
    /// would only return `EAGAIN`.
    ready: Cell<c_short>,
    /// The fd's generation when this was made (`fd_generation`; in the padding after `ready`).
    generation: u32,
    readers: Waiters,
    writers: Waiters,
    ev: RawEvent,
}

/// How many times the hooks have seen an fd with this number created: a registration made for
/// an older one is stale (see `Scheduler::registration`). Always 0 without the hooks.
#[inline]
fn fd_generation(fd: RawFd) -> u32 {
    #[cfg(all(feature = "hook", target_os = "linux"))]
    return crate::hook::generation(fd);
    #[cfg(not(all(feature = "hook", target_os = "linux")))]
    {
        let _ = fd;
        0
    }
}

/// The coroutines waiting for one direction's next edge of a registered socket. The first one
/// sits in a cell: one coroutine per socket and direction is the common case, and it costs no
/// list operation on either side. More (several coroutines sharing a socket) go in a list,
/// boxed so that a socket that never had two waiters carries one null word for it (16 bytes a
/// direction, see `Registration`); once made, the list keeps its capacity.
#[derive(Default)]
#[repr(C)]
struct Waiters {
    first: Cell<*const Task>,
    // Boxed on purpose: one word in the registration's hot bytes instead of a `Vec`'s three.
    #[allow(clippy::box_collection)]
    rest: Cell<Option<Box<Vec<*const Task>>>>,
}

impl Waiters {
    fn push(&self, task: *const Task) {
        if self.first.get().is_null() {
            self.first.set(task);
        } else {
            let mut rest = self.rest.take().unwrap_or_default();
            rest.push(task);
            self.rest.set(Some(rest));
        }
    }

    fn remove(&self, task: *const Task) {
        if std::ptr::eq(self.first.get(), task) {
            self.first.set(std::ptr::null());
            return;
        }
        if let Some(mut rest) = self.rest.take() {
            if let Some(pos) = rest.iter().position(|&t| std::ptr::eq(t, task)) {
                rest.swap_remove(pos);
            }
            self.rest.set(Some(rest));
        }
    }

    /// Whether more than the first coroutine may be listed.
    fn has_rest(&self) -> bool {
        let rest = self.rest.take();
        let some = rest.as_ref().is_some_and(|r| !r.is_empty());
        self.rest.set(rest);
        some
    }

    /// Empties the list, appending its waiters to `into`.
    fn drain_into(&self, into: &mut Vec<*const Task>) {
        let first = self.first.replace(std::ptr::null());
        if !first.is_null() {
            into.push(first);
        }
        if let Some(mut rest) = self.rest.take() {
            into.append(&mut rest);
            self.rest.set(Some(rest));
        }
    }
}

impl Registration {
    fn waiters(&self, what: What) -> &Waiters {
        if what.contains(What::WRITE) {
            &self.writers
        } else {
            &self.readers
        }
    }
}

impl Scheduler {
    /// `fd`'s registration, made on first use.
    ///
    /// One found for an older fd of the same number is stale: its socket was closed where this
    /// scheduler could not see it (by another thread: std's sockets are `Send`, and the hooks'
    /// `close` only cleans up the closing thread's scheduler), and epoll dropped it with the old
    /// file description, so it would never report an edge again. It is deleted (its waiters
    /// get `EBADF`) and a new one made.
    fn registration(&self, fd: RawFd) -> io::Result<Rc<Registration>> {
        let i = fd as usize;
        let generation = fd_generation(fd);
        let stale = match self.regs.borrow().get(i) {
            Some(Some(r)) if r.generation == generation => return Ok(r.clone()),
            Some(Some(_)) => true,
            _ => false,
        };
        if stale {
            self.deregister(fd);
        }
        let reg = Rc::new(Registration {
            generation,
            ev: RawEvent::new(),
            readers: Waiters::default(),
            writers: Waiters::default(),
            ready: Cell::new((What::READ | What::WRITE).bits()),
        });
        let arg = Rc::as_ptr(&reg) as *mut c_void;
        // EV_CLOSED (EPOLLRDHUP) marks the peer's FIN: a short read can leave an EOF behind
        // that no later edge announces, so `ready` keeps READ set for good once it is seen.
        let what = What::READ | What::WRITE | What::CLOSED | What::PERSIST | What::EDGE;
        // SAFETY: the base outlives the scheduler's registrations (field order); `arg` is the
        // registration, which deletes its event before it is freed (`deregister`, `Drop`), and
        // `edge` holds a reference while it runs.
        unsafe { reg.ev.assign(self.base.as_raw(), fd, what, edge, arg) };
        reg.ev.add(None)?;
        let mut regs = self.regs.borrow_mut();
        if regs.len() <= i {
            regs.resize_with(i + 1, || None);
        }
        regs[i] = Some(reg.clone());
        Ok(reg)
    }

    fn is_registered(&self, fd: RawFd) -> bool {
        matches!(self.regs.borrow().get(fd as usize), Some(Some(_)))
    }

    /// Deletes `fd`'s registration, if any, and wakes its waiters with `EBADF`.
    fn deregister(&self, fd: RawFd) {
        let reg = match self.regs.borrow_mut().get_mut(fd as usize) {
            Some(slot) => slot.take(),
            None => None,
        };
        if let Some(reg) = reg {
            self.retire(reg);
        }
    }

    /// Deletes a registration taken out of the table and wakes its waiters with `EBADF`.
    fn retire(&self, reg: Rc<Registration>) {
        reg.ev.del();
        let mut waiters = Vec::new();
        reg.readers.drain_into(&mut waiters);
        reg.writers.drain_into(&mut waiters);
        self.wake_closed(waiters);
    }
}

/// The callback of every registration: makes the coroutines waiting for this edge ready.
unsafe extern "C" fn edge(_fd: sys::evutil_socket_t, what: c_short, arg: *mut c_void) {
    let ptr = arg as *const Registration;
    // SAFETY: `arg` is the registration that owns this event; it is alive because its event is
    // deleted before the table drops it, and nothing runs during this callback that could drop
    // it (coroutines are only queued here, not resumed).
    let reg = unsafe { &*ptr };
    let Some(sched) = Scheduler::current() else {
        return;
    };
    let what = What::from_bits(what);
    let mut bits = what.bits();
    if what.contains(What::CLOSED) {
        // Readable until the end: remember it past `note_drained`.
        bits |= What::CLOSED.bits() | What::READ.bits();
    }
    reg.ready.set(reg.ready.get() | bits);
    for dir in [What::READ, What::WRITE] {
        let hit = what.contains(dir) || (dir == What::READ && what.contains(What::CLOSED));
        if !hit {
            continue;
        }
        let waiters = reg.waiters(dir);
        if !waiters.has_rest() {
            // The common case: at most one waiter, taken off the list here.
            let first = waiters.first.replace(std::ptr::null());
            // SAFETY: a listed task is suspended in `wait_registered`, hence alive: its guard
            // takes it off the list before the wait returns or unwinds.
            if let Some(task) = unsafe { first.as_ref() } {
                sched.io_ready(task, dir.bits());
            }
            continue;
        }
        // Several waiters: gather them in the scheduler's spare buffer (it and the list keep
        // their capacity, so there is no malloc per edge).
        let mut taken = std::mem::take(&mut *sched.spare_waiters.borrow_mut());
        waiters.drain_into(&mut taken);
        for &t in &taken {
            // SAFETY: as above; and no coroutine runs before the loop ends, so none of them can
            // be cancelled and freed meanwhile.
            sched.io_ready(unsafe { &*t }, dir.bits());
        }
        taken.clear();
        *sched.spare_waiters.borrow_mut() = taken;
    }
}

/// Removes a registered wait from its list when the wait ends, including by cancellation.
struct RegGuard<'a> {
    reg: Rc<Registration>,
    sched: &'a Scheduler,
    task: &'a Task,
    what: What,
}

impl Drop for RegGuard<'_> {
    fn drop(&mut self) {
        self.sched.disarm(self.task);
        self.task.blocked.set(Blocked::No);
        self.reg.waiters(self.what).remove(self.task);
    }
}

/// Waits for the next `what` edge (exactly one of READ or WRITE) of an evco-owned socket that
/// just returned `EAGAIN`; falls back to a one-shot wait where the backend has no edge
/// triggering. Reports `What::TIMEOUT` when `timeout` expired first.
pub(crate) fn wait_registered(
    fd: RawFd,
    what: What,
    timeout: Option<Duration>,
) -> io::Result<What> {
    let (task, sched) = current_task()?;
    if !sched.edge {
        return wait_event(fd, what, timeout);
    }
    let reg = sched.registration(fd)?;
    if let Some(t) = timeout {
        // The guard disarms it.
        sched.arm_timeout(task, t)?;
    }
    task.woke.set(0);
    task.closed.set(false);
    task.blocked.set(Blocked::Io);
    if reg.ready.get() & What::CLOSED.bits() == 0 || what != What::READ {
        reg.ready.set(reg.ready.get() & !what.bits());
    }
    reg.waiters(what).push(task);
    let guard = RegGuard {
        reg,
        sched,
        task,
        what,
    };
    coroutine::switch_out_waiting(&task.core);
    drop(guard);
    if task.closed.get() {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(What::from_bits(task.woke.get()))
}

/// Forgets `fd`'s registration (its socket is being closed or handed out as a raw fd).
pub(crate) fn deregister(fd: RawFd) {
    if let Some(s) = Scheduler::current() {
        s.deregister(fd);
    }
}

/// Registers a socket that was just accepted, with only WRITE marked possibly ready, so that
/// its first read waits for an edge instead of trying a `recv` first.
///
/// Sound because epoll reports the state an fd is in when it is added (its initial edge): data
/// that arrived before the accept, or a FIN, is announced on the next poll like any later edge.
/// Worth it because a server usually accepts a connection before its first request arrives, so
/// that `recv` would return `EAGAIN` (echo churn, 1 message per connection: 3 `recv` calls per
/// connection before, 2 after, as in the C server). Does nothing outside a coroutine, without
/// edge triggering, or when the registration cannot be made (the first wait retries and
/// reports it).
pub(crate) fn register_accepted(fd: RawFd) {
    let Some(s) = Scheduler::current() else {
        return;
    };
    if !s.edge || !coroutine::is_coroutine() {
        return;
    }
    if let Ok(reg) = s.registration(fd) {
        reg.ready.set(What::WRITE.bits());
    }
}

/// False only when `fd` is registered and no readable edge came since it was last drained: a
/// read now would return `EAGAIN`.
pub(crate) fn maybe_readable(fd: RawFd) -> bool {
    let Some(s) = Scheduler::current() else {
        return true;
    };
    match s.regs.borrow().get(fd as usize) {
        Some(Some(reg)) => reg.ready.get() & What::READ.bits() != 0,
        _ => true,
    }
}

/// A read on `fd` came back short: its receive queue is empty until the next edge.
pub(crate) fn note_drained(fd: RawFd) {
    if let Some(s) = Scheduler::current() {
        if let Some(Some(reg)) = s.regs.borrow().get(fd as usize) {
            // After the peer's FIN, reads never wait again: EOF is always there to be read.
            if reg.ready.get() & What::CLOSED.bits() == 0 {
                reg.ready.set(reg.ready.get() & !What::READ.bits());
            }
        }
    }
}

/// Whether `fd` is a registered socket of this thread's scheduler.
pub(crate) fn is_registered(fd: RawFd) -> bool {
    Scheduler::current().is_some_and(|s| s.is_registered(fd))
}

/// `fd` is being closed or replaced by code evco does not own (the hooks' `close`, `dup2`, or
/// a new fd with a number this scheduler still has a registration for): wake this thread's
/// coroutines waiting on it with `EBADF` and delete its registration, as [`io::close`] does.
///
/// Costs two borrow checks when there is nothing to do (a socket never waited on in a
/// coroutine), and skips a table that is borrowed (a signal handler that interrupted the
/// scheduler itself; libevent is no safer to call from one).
///
/// [`io::close`]: crate::io::close
#[cfg(all(feature = "hook", target_os = "linux"))]
pub(crate) fn forget_fd(fd: RawFd) {
    let Some(s) = Scheduler::current() else {
        return;
    };
    let waiters = match s.fd_waiters.try_borrow_mut() {
        Ok(mut w) => match w.get_mut(fd as usize) {
            Some(list) if !list.is_empty() => std::mem::take(list),
            _ => Vec::new(),
        },
        Err(_) => return,
    };
    if !waiters.is_empty() {
        s.wake_closed(waiters);
    }
    let reg = match s.regs.try_borrow_mut() {
        Ok(mut regs) => regs.get_mut(fd as usize).and_then(Option::take),
        Err(_) => return,
    };
    if let Some(reg) = reg {
        s.retire(reg);
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let mut resolvers = std::mem::take(self.dns_retired.get_mut());
        resolvers.push(self.dns.replace(std::ptr::null_mut()));
        resolvers.retain(|r| !r.is_null());
        if self.base.freed_with_this_handle() {
            for dns in resolvers {
                // SAFETY: made on this scheduler's base, which is still alive (a field) and
                // goes right after this without running its loop again: libevent discards
                // the callbacks it still had queued for these resolvers instead of running
                // them into freed memory.
                unsafe { sys::evdns_base_free(dns, 0) };
            }
        }
        // Otherwise the base outlives the scheduler (a host's base, or a handle the program
        // kept) and its loop may still run callbacks that read the resolvers: they are left
        // allocated (a few KiB each, only where lookups were made).
        let _ = SCHED.try_with(|s| {
            if std::ptr::eq(s.get(), self) {
                s.set(std::ptr::null());
            }
        });
        // A registration a leaked coroutine's wait still holds outlives the table: its event
        // must not go on firing into a base this scheduler no longer serves.
        for reg in self.regs.get_mut().iter().flatten() {
            reg.ev.del();
        }
        // Normally `shutdown` ran first and nothing is left. When the thread exits with
        // coroutines still parked (a spawn that was never driven), unwinding them here is not
        // possible (generator's own thread-locals may be gone): delete their events and leak
        // their stacks, so nothing can fire into freed memory when the base goes.
        for t in self.tasks.get_mut().drain(..).flatten() {
            if let Some(ev) = t.core.wait_event() {
                ev.del();
            }
            // A waker someone still holds (a name lookup's, whose callback a host's loop may
            // still run) must find nothing to do, and so never reach this scheduler.
            t.blocked.set(Blocked::No);
            if t.core.state() == State::Suspended {
                std::mem::forget(t);
            }
        }
        for t in self.ready.get_mut().drain(..) {
            if t.core.state() == State::Suspended {
                std::mem::forget(t);
            }
        }
    }
}

/// The ready-queue drain: resumes ready coroutines, at most [`PASS_BUDGET`] of them.
unsafe extern "C" fn drain(_fd: sys::evutil_socket_t, _what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the scheduler (see `install`), alive while its drain event can fire.
    let sched = unsafe { &*(arg as *const Scheduler) };
    // `drain_armed` stays set during the pass, so coroutines that become ready meanwhile
    // (yield_now, spawn, unpark) only queue up; the end of the pass decides how to re-arm.
    for _ in 0..PASS_BUDGET {
        let next = {
            let mut ready = sched.ready.borrow_mut();
            let next = ready.pop_front();
            if let Some(after) = ready.front().filter(|t| t.cold.get()) {
                after.core.prefetch();
            }
            next
        };
        let Some(task) = next else { break };
        task.queued.set(false);
        task.cold.set(false);
        sched.run_task(&task);
    }
    sched.drain_armed.set(false);
    if sched.ready.borrow().is_empty() {
        sched.starved_passes.set(0);
    } else {
        sched.rearm_from_drain();
    }
}

/// The callback of every wait event: makes the task that waited ready.
unsafe extern "C" fn wake(_fd: sys::evutil_socket_t, what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the task that assigned this event in `wait`; a task deletes its event
    // before it can be freed (module docs), so it is alive whenever the callback runs.
    let task = unsafe { &*(arg as *const Task) };
    task.sched().io_ready(task, what);
}

/// Whether the caller runs in a coroutine of a scheduler (not a bare `Coroutine`, not plain
/// thread code): where a wait can suspend. One thread-local read.
#[cfg(all(feature = "hook", target_os = "linux"))]
#[inline]
pub(crate) fn in_scheduled_coroutine() -> bool {
    coroutine::current_core().is_some_and(|c| !c.owner.get().is_null())
}

fn current_task() -> io::Result<(&'static Task, &'static Scheduler)> {
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
        return Err(coroutine::cancelling_error());
    }
    Ok((task, task.sched()))
}

/// Removes a wait's fd registration when the wait ends, including by cancellation.
struct WaitGuard<'a> {
    sched: &'a Scheduler,
    task: &'a Task,
    fd: RawFd,
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
        if self.fd >= 0 {
            self.sched.unregister_waiter(self.fd, self.task);
        }
    }
}

/// Suspends the running coroutine until `fd` is ready for `what` or `timeout` passes (with
/// `fd == -1` and [`What::NONE`], a pure timer that reports [`What::TIMEOUT`] as success).
pub(crate) fn wait_event(fd: RawFd, what: What, timeout: Option<Duration>) -> io::Result<What> {
    let (task, sched) = current_task()?;
    if fd >= 0 {
        // A pure timer (a sleep) needs no event: it is only an entry in the timer heap.
        let ev = task
            .core
            .wait_event_or_make()
            .ok_or_else(|| misuse("coroutine has no stack"))?;
        let arg = task as *const Task as *mut c_void;
        // SAFETY: the base outlives the task, and the task outlives its pending event (module
        // docs).
        unsafe { ev.assign(sched.base.as_raw(), fd, what, wake, arg) };
        if let Err(e) = ev.add(None) {
            // epoll rejects bad fds at event_add; say which.
            // SAFETY: F_GETFD only inspects the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                return Err(io::Error::last_os_error());
            }
            return Err(e);
        }
    }
    if let Some(t) = timeout {
        if let Err(e) = sched.arm_timeout(task, t) {
            if let Some(ev) = task.core.wait_event() {
                ev.del();
            }
            return Err(e);
        }
    }
    task.woke.set(0);
    task.closed.set(false);
    task.blocked.set(Blocked::Io);
    if fd >= 0 {
        sched.register_waiter(fd, task);
    }
    let guard = WaitGuard { sched, task, fd };
    coroutine::switch_out_waiting(&task.core);
    drop(guard);
    if task.closed.get() {
        // The fd was closed under us (io::close): what a read on it would now say.
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(What::from_bits(task.woke.get()))
}

/// Parks the running coroutine until [`unpark`]; may return spuriously, so callers loop.
pub(crate) fn park() -> io::Result<()> {
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

/// Makes sure a timed wait of the running coroutine can be armed without a new resource (the
/// timer alarm is made on first use): for callers that must fail before they give something
/// up, as `Condvar::wait_timeout` before it unlocks. Setting an existing alarm cannot fail with
/// valid arguments.
pub(crate) fn prepare_timeouts() -> io::Result<()> {
    let (_, sched) = current_task()?;
    sched.make_alarm()
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
/// loop (as [`JoinHandle::join`] does outside a coroutine), for at most `timeout` when given.
/// `Ok(false)` when the timeout passed first; an error when there is no scheduler on this
/// thread or nothing left could make `done()` true (a deadlock).
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
    let (task, sched) = current_task()?;
    sched.schedule(task.rc());
    coroutine::switch_out(&task.core);
    Ok(())
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
    let sched = Scheduler::current_or_install()?;
    let value: Rc<Cell<Option<T>>> = Rc::new(Cell::new(None));
    let slot = value.clone();
    let core = Core::new(name, stack_size, move || slot.set(Some(f())))?;
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
    sched.insert(&task);
    sched.schedule(task.clone());
    Ok(JoinHandle {
        task,
        value,
        _not_send: PhantomData,
    })
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
/// Re-raises a panic of `f`. Panics when called from inside a coroutine, when no event base can
/// be created, and on a deadlock (coroutines parked with no event that could wake them: they are
/// cancelled first).
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
    if let Err(e) = sched.drive_until(|| sched.live() == 0) {
        sched.shutdown(false);
        panic!("evco::run: {e}");
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
    /// [`Cancelled`] if it was cancelled).
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

    /// Whether the coroutine has finished (returned, panicked, overflowed or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Cancels the coroutine if it is suspended: deletes whatever it waits on, then unwinds its
    /// stack so its destructors run. `join` then returns a
    /// [`Cancelled`] payload. A coroutine cannot cancel itself.
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
/// going (its joins of cancelled coroutines return [`Cancelled`]) and decides what `run`
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

/// The number of coroutines on this thread's scheduler that have not finished.
pub fn live_coroutines() -> usize {
    Scheduler::current().map_or(0, Scheduler::live)
}

/// A handle on this thread's scheduler's event base (installing a scheduler if there is none).
pub fn base() -> io::Result<EventBase> {
    Ok(Scheduler::current_or_install()?.base().clone())
}
