//! The per-thread scheduler: its tasks, the ready queue and its drain, and the loop.
//!
//! One scheduler per thread lives in a thread-local (no global map) and owns or borrows one
//! [`EventBase`]. libevent's loop is the only loop: the ready queue is drained by an internal
//! event activated with `event_active`, so coroutines run the same way whether evco runs the
//! loop ([`run`], [`JoinHandle::join`] outside a coroutine) or a host program runs
//! `event_base_dispatch` on its own base ([`enter`]). The scheduler owns the thread's
//! `Reactor` (all per-fd state, see `crate::reactor`), which ends fd waits through
//! `end_wait`; the waits themselves are in `task`, their deadlines in `timeouts`, spawning
//! and joining in `spawn`.
//!
//! # Wake-ups
//!
//! Event callbacks (the one-shot `wake`, the reactor's `edge`, the timer alarm) never resume a
//! coroutine themselves: they end its wait, prefetch what its resume will read (its saved
//! registers and the frames around its stack pointer, `Core::prefetch`) and put it on the ready
//! queue. libevent runs the drain, activated from inside the first such callback, after the
//! other callbacks of the same pass, so by the time a coroutine runs its cold stack lines and
//! TLB entries have been loading behind the other callbacks and the coroutines before it. With
//! 1,000 echo connections (each stack's two hot pages long out of the caches between two of its
//! messages) that saves 3-6% of server CPU per message (interleaved A/B runs); it costs ~50
//! instructions per wake-up (queue push and pop, the prefetches) and one drain callback per
//! pass. While the drain resumes one coroutine it prefetches the next one's lines again if an
//! event woke it (`cold`): with few events per pass the wake-up's prefetch has too little time,
//! and with many the lines leave L1 before their turn (at 1,000 connections this took
//! generator's register switch from 1.1% to 0.2% of the server's CPU samples); coroutines made
//! ready by a yield, a spawn or an unpark are warm and skip it (spawn+run+join paid 8% for it
//! otherwise). Since no coroutine runs inside a callback, a callback cannot see the state it
//! walks or the tasks it ends freed under it.
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

mod remote;
mod spawn;
mod task;
mod timeouts;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::raw::{c_short, c_void};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

use crate::coroutine::{Resumed, State};
use crate::event::{EventBase, LoopExit, RawEvent, What};
use crate::os::AltStack;
use crate::reactor::{GONE, Reactor};
use crate::sys;
use crate::timer::{Alarm, TimerHeap};

pub(crate) use remote::{Inbox, Job, Msg, Posted, Signal};
pub use spawn::{JoinHandle, SchedulerGuard, base, enter, live_coroutines, run, shutdown, spawn};
pub(crate) use spawn::{spawn_keyed, wind_down};
#[cfg(all(feature = "hook", target_os = "linux"))]
pub(crate) use task::in_scheduled_coroutine;
pub use task::yield_now;
pub(crate) use task::{Waker, block_outside, can_wait, park, park_timeout, wait_io};
pub(crate) use timeouts::{prepare_timeouts, sleep};

use task::{Blocked, Outcome, Task};

/// After this many drain passes in a row that left coroutines ready, let libevent poll first.
const FAIR_EVERY: u32 = 16;
/// Most coroutines one drain pass resumes.
const PASS_BUDGET: usize = 256;

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
    /// All per-fd state of this thread. Declared before `base`.
    reactor: Reactor,
    /// The deadlines of timed waits (see `timeouts`).
    timers: TimerHeap<Task>,
    /// What wakes the loop at the earliest of them, made with the scheduler (or on first use if
    /// that failed). Declared before `base`.
    alarm: RefCell<Option<Alarm>>,
    /// This thread's name resolvers (`net::dns`). Declared before `base`.
    resolvers: Resolvers,
    /// What other threads post to (see `remote`), made on first use. Closed in `drop`, before
    /// the base goes.
    remote: RefCell<Option<Rc<remote::Remote>>>,
    /// The alternate signal stack installed for this thread, if it had none (see
    /// `os::AltStack`): a coroutine's stack overflow is reported from a signal handler. Held
    /// for its drop, which removes it.
    _alt_stack: Option<AltStack>,
    base: EventBase,
}

/// Coroutines given up suspended when their scheduler went (see [`abandoned_coroutines`]).
static ABANDONED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many coroutines this process has given up while they were suspended, because their
/// thread's scheduler went with them still waiting (a thread that exits after `evco::run` left
/// coroutines parked, or with a [`SchedulerGuard`] it never dropped). Their stacks are freed,
/// but the values on them are never dropped: resources they own (sockets, files) stay open.
/// `run`, [`shutdown`] and dropping the guard cancel coroutines properly instead.
pub fn abandoned_coroutines() -> usize {
    ABANDONED.load(std::sync::atomic::Ordering::Relaxed)
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
        // SAFETY: the reactor is a field declared before `base`, so the base outlives it.
        let reactor =
            unsafe { Reactor::new(base.as_raw(), base.supports_edge_triggered(), end_wait) };
        let sched = Rc::new(Scheduler {
            drain: RawEvent::new(),
            fair: RawEvent::new(),
            drain_armed: Cell::new(false),
            starved_passes: Cell::new(0),
            ready: RefCell::new(VecDeque::new()),
            tasks: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            live: Cell::new(0),
            reactor,
            timers: TimerHeap::new(),
            alarm: RefCell::new(None),
            resolvers: Resolvers::default(),
            remote: RefCell::new(None),
            _alt_stack: AltStack::install_if_missing(),
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
        sched.reactor.start();
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a handler with no preconditions, once per process.
        AT_FORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_child));
        });
        // Made now, while fds are likely to be had (a timed wait under EMFILE would otherwise
        // find none; the alarm falls back to a libevent timer then anyway). Its event is added
        // only while a deadline is pending.
        let _ = sched.make_alarm();
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

    /// This thread's name resolvers (see `net::dns`).
    pub(crate) fn resolvers(&self) -> &Resolvers {
        &self.resolvers
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

    /// Cancels every suspended coroutine (running ones are up the stack and are left alone),
    /// except `run`'s root coroutine when `spare_root` is set.
    fn shutdown(&self, spare_root: bool) {
        // Tasks that run C code are never unwound: those still suspended are left as they are
        // (see `leak_c_tasks`).
        self.leak_c_tasks();
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

    /// Gives up every suspended task that runs C code (`Core::c_frames`) without running
    /// anything on its stack: it is taken out of the scheduler, marked finished, its wait
    /// deleted, and its stack left mapped (its C frames may hold addresses others still use;
    /// see `Core::leak`). Counted in [`abandoned_coroutines`]; returns how many.
    pub(crate) fn leak_c_tasks(&self) -> usize {
        let stuck: Vec<Rc<Task>> = self
            .tasks
            .borrow()
            .iter()
            .flatten()
            .filter(|t| t.core.c_frames.get() && t.core.state() == State::Suspended)
            .cloned()
            .collect();
        for t in &stuck {
            if let Some(ev) = t.core.wait_event() {
                ev.del();
            }
            self.disarm(t);
            t.blocked.set(Blocked::No);
            t.core.leak();
            let id = t.core.id();
            self.complete(
                t,
                Outcome::Panicked(Box::new(crate::coroutine::Cancelled { id })),
            );
        }
        self.ready.borrow_mut().retain(|t| !t.is_finished());
        let n = stuck.len();
        if n > 0 {
            ABANDONED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        n
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

    fn live(&self) -> usize {
        self.live.get()
    }
}

/// `pthread_atfork`'s child handler: the forking thread's scheduler gets state of its own.
extern "C" fn after_fork_child() {
    if let Some(s) = Scheduler::current() {
        s.after_fork();
    }
}

impl Scheduler {
    /// In a forked child, on the thread that forked: the epoll instance, the timerfd and the
    /// doorbell's eventfd are shared with the parent (whose loop would take this one's events,
    /// and whose alarm this one's settings would move). libevent's base gets a new backend with
    /// every added event in it (`event_reinit`; a host's base is the host's to reinit, as
    /// libevent asks), the alarm a new timerfd, the reactor a new doorbell. Coroutines, their
    /// waits and registrations carry on in the child; the parent's other threads do not exist
    /// here, and their schedulers (and fds) are left as they were.
    fn after_fork(&self) {
        if self.base.is_owned() {
            // SAFETY: the base is live; this is the child after fork, as event_reinit asks.
            if unsafe { sys::event_reinit(self.base.as_raw()) } != 0 {
                log::error!("evco: event_reinit failed in a forked child");
            }
        }
        self.reactor.after_fork();
        if let Some(r) = self.remote.borrow().as_ref() {
            r.after_fork(self);
        }
        let arg = self as *const Scheduler as *mut c_void;
        if let Some(alarm) = self.alarm.borrow_mut().as_mut() {
            // SAFETY: the alarm was made with this base, `expire` and this scheduler.
            unsafe { alarm.after_fork(self.base.as_raw(), expire, arg) };
        }
    }
}

/// The reactor's way to end a wait (see `reactor::EndWait`): the event a suspended task waited
/// for came (`what`), or its fd was closed (`GONE`).
///
/// # Safety
///
/// `token` is a task suspended in an fd wait (the reactor lists tokens only for that long).
unsafe fn end_wait(token: NonNull<()>, what: c_short) {
    // SAFETY: the caller's contract: a listed task is alive.
    let task = unsafe { token.cast::<Task>().as_ref() };
    let sched = task.sched();
    if what == GONE {
        sched.end_closed(task);
    } else {
        sched.io_ready(task, what);
    }
}

/// The name resolvers of one scheduler: libevent's evdns bases, made on its base by `net::dns`.
///
/// One owner for the C objects: `current` is the resolver lookups use (null before the first);
/// `retired` are those `net::set_nameservers` replaced, which libevent may still call back into
/// (a lookup's late answer, a cancellation it reports on a later turn), so they live as long as
/// the scheduler. All are freed when the scheduler goes with its base (before the base), and
/// left allocated when the base outlives it (a host's base, whose loop may still run their
/// callbacks; a few KiB each, only where lookups were made).
#[derive(Default)]
pub(crate) struct Resolvers {
    current: Cell<*mut sys::evdns_base>,
    retired: RefCell<Vec<*mut sys::evdns_base>>,
}

impl Resolvers {
    /// The resolver lookups use; null before the first is made.
    pub(crate) fn current(&self) -> *mut sys::evdns_base {
        self.current.get()
    }

    /// Makes `dns` the resolver lookups use, keeping the one it replaces until the scheduler
    /// goes.
    pub(crate) fn replace(&self, dns: *mut sys::evdns_base) {
        let old = self.current.replace(dns);
        if !old.is_null() {
            self.retired.borrow_mut().push(old);
        }
    }

    /// Frees every resolver, if the base goes right after this without running its loop again.
    fn free_with(&mut self, base: &EventBase) {
        let mut all = std::mem::take(self.retired.get_mut());
        all.push(self.current.replace(std::ptr::null_mut()));
        all.retain(|r| !r.is_null());
        if base.freed_with_this_handle() {
            for dns in all {
                // SAFETY: made on this scheduler's base, which is still alive and goes right
                // after this without running its loop again: libevent discards the callbacks it
                // still had queued for these resolvers instead of running them into freed memory.
                unsafe { sys::evdns_base_free(dns, 0) };
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // First: from here on nothing may form a `&Scheduler` from the thread-local while this
        // `&mut` is alive (dropping what tasks hold, a panic payload say, can run user code).
        let me: *const Scheduler = self;
        let _ = SCHED.try_with(|s| {
            if std::ptr::eq(s.get(), me) {
                s.set(std::ptr::null());
            }
        });
        self.resolvers.free_with(&self.base);
        if let Some(r) = self.remote.get_mut().take() {
            r.close();
        }
        // Normally `shutdown` ran first and nothing is left. When the thread exits with
        // coroutines still parked (a spawn that was never driven), unwinding them here is not
        // possible (generator's own thread-locals may be gone): delete their events, give them
        // up without running anything on their stacks (the memory is freed, the values on them
        // are never dropped), count them (`abandoned_coroutines`), and keep their tasks, so
        // nothing can fire into freed memory when the base goes. (The reactor, a field,
        // deletes every fd state's event when it drops, including those an abandoned
        // coroutine's wait still holds.)
        let mut abandoned = 0;
        for t in self.tasks.get_mut().drain(..).flatten() {
            if let Some(ev) = t.core.wait_event() {
                ev.del();
            }
            // A waker someone still holds (a name lookup's, whose callback a host's loop may
            // still run) must find nothing to do, and so never reach this scheduler.
            t.blocked.set(Blocked::No);
            if t.core.state() == State::Suspended {
                // Its stack memory is freed where its layout is known; the task itself (a few
                // hundred bytes, which wakers may still point at) is kept.
                t.core.abandon();
                abandoned += 1;
                std::mem::forget(t);
            }
        }
        for t in self.ready.get_mut().drain(..) {
            if t.core.state() == State::Suspended {
                t.core.abandon();
                abandoned += 1;
                std::mem::forget(t);
            }
        }
        if abandoned > 0 {
            ABANDONED.fetch_add(abandoned, std::sync::atomic::Ordering::Relaxed);
            log::warn!(
                "evco: a scheduler went with {abandoned} coroutine(s) suspended: their \
                 destructors never run (their stacks are freed)"
            );
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

/// The alarm's callback (see `Scheduler::expire_timers`).
unsafe extern "C" fn expire(_fd: sys::evutil_socket_t, _what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the scheduler that owns the alarm, alive while its event can fire.
    let sched = unsafe { &*(arg as *const Scheduler) };
    sched.expire_timers();
}
