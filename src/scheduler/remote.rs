//! What other threads hand a scheduler: its inbox, and the wake-ups built on it.
//!
//! Coroutines never move between threads; closures and wake-ups do. Each scheduler that is
//! reached from another thread has an [`Inbox`]: a lock-free queue (crossbeam's `SegQueue`) and
//! one eventfd, watched by one persistent read event on the scheduler's own base. A poster
//! pushes a [`Msg`], and writes the eventfd only when it is the first to post since the owner
//! last emptied the queue (`rung`), so a burst of posts costs one write and one loop wake-up.
//! The owner's callback ([`inbox_ready`]) clears the eventfd and `rung`, then takes the messages:
//! closures and jobs to run on the owner thread ([`Msg::Run`], [`Msg::Start`]: how a spawn
//! crosses), unparks of one of its
//! coroutines ([`Msg::Wake`]) and bare loop wake-ups ([`Msg::Poke`]). Nothing here needs
//! `evthread_use_pthreads`: no other thread ever calls into the owner's base; the eventfd is the
//! only thing they touch.
//!
//! # Invariants
//!
//! - `rung` is cleared *before* the owner takes messages, and a poster sets it *after* it
//!   pushed (both `SeqCst`), so a message is never left in the queue with nobody ringing: either
//!   the owner's pass takes it, or its poster saw `rung` clear and wrote the eventfd again.
//! - A wake-up names its coroutine by task-table slot *and* process-unique coroutine id, so a
//!   late wake-up for a coroutine that ended (its slot reused) finds nobody; a wake-up for a
//!   coroutine that is no longer parked does nothing. Parks may return spuriously anyway (every
//!   caller loops on its condition), so a wake-up meant for an earlier park is harmless.
//! - The read event is added only while something on the owner thread *holds* the inbox
//!   ([`Scheduler::hold_inbox`]: a runtime thread for its whole life, a coroutine or a loop
//!   for the length of a cross-thread wait). Otherwise it would keep every loop alive and hide
//!   the deadlocks `run` reports.
//! - When the scheduler goes, its inbox is closed first (`open` cleared; later posts fail, and
//!   their messages are dropped on the posting thread), the event is deleted, and what was left
//!   in the queue is dropped on the owner thread. Messages own only `Send` values. A message
//!   whose drop panics is caught and logged there: the ones behind it are still dropped.
//! - The callback never unwinds into libevent: a panicking [`Msg::Run`] closure (or job) is caught and
//!   logged.

use std::cell::Cell;
use std::io;
use std::os::raw::{c_short, c_void};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use crossbeam_queue::SegQueue;

use super::task::current_task;
use super::{Scheduler, Waker};
use crate::coroutine;
use crate::event::{RawEvent, What};
use crate::sys;

/// Most messages one callback takes before it re-activates itself. libevent runs the drain
/// (activated by the first spawn or wake-up of the batch, so queued ahead of the inbox again)
/// in between: a burst of cross-thread spawns runs its coroutines a batch at a time, on the
/// few stacks the pool hands out again and again, instead of first spawning the whole burst
/// onto as many cold stacks (a burst of 1,024 spawn+join ran 1.2x slower per spawn).
const INBOX_BATCH: usize = 64;

/// What another thread hands a scheduler.
pub(crate) enum Msg {
    /// Run on the owner thread, from its loop, outside any coroutine.
    Run(Box<dyn FnOnce() + Send>),
    /// Run a job on the owner thread, from its loop, outside any coroutine: what
    /// [`Run`](Msg::Run) does, for work that comes with its own shared allocation (a
    /// cross-thread spawn's closure and join state are one), so posting it allocates nothing.
    Start(Posted),
    /// Unpark the coroutine in task-table `slot` if its id is `id` and it is parked.
    Wake { slot: usize, id: u64 },
    /// Only wake the loop (a caller blocked outside coroutines re-checks its condition).
    Poke,
}

/// Work another thread hands over in one allocation it shares with the poster (see
/// [`Msg::Start`]).
pub(crate) trait Job: Send + Sync {
    /// Runs on the owner thread, from its loop: called at most once per job.
    fn run(self: Arc<Self>);
    /// The job will never run (its inbox was closed, or its thread is gone): called instead of
    /// [`run`](Job::run), on whatever thread drops the message.
    fn abandon(&self);
}

/// A posted [`Job`]: runs it once, or abandons it when dropped unrun.
pub(crate) struct Posted(Option<Arc<dyn Job>>);

impl Posted {
    pub(crate) fn new(job: Arc<dyn Job>) -> Posted {
        Posted(Some(job))
    }

    fn run(mut self) {
        if let Some(job) = self.0.take() {
            job.run();
        }
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            job.abandon();
        }
    }
}

/// A scheduler's inbox (see the module docs). Shared with every thread that posts to it.
pub(crate) struct Inbox {
    queue: SegQueue<Msg>,
    rung: AtomicBool,
    open: AtomicBool,
    /// Replaced in a forked child (see `Remote::after_fork`).
    efd: AtomicI32,
}

impl Inbox {
    fn new() -> io::Result<Arc<Inbox>> {
        // SAFETY: eventfd has no memory preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Inbox {
            queue: SegQueue::new(),
            rung: AtomicBool::new(false),
            open: AtomicBool::new(true),
            efd: AtomicI32::new(efd),
        }))
    }

    /// Hands `msg` to the owner. An error when its scheduler is gone (the message is dropped
    /// here) or the eventfd cannot be written.
    pub(crate) fn post(&self, msg: Msg) -> io::Result<()> {
        if !self.open.load(Ordering::Acquire) {
            return Err(gone());
        }
        self.queue.push(msg);
        if !self.open.load(Ordering::SeqCst) {
            // Closed while we pushed: the owner may have emptied the queue already. What is
            // left has nobody to go to; drop it here.
            self.discard_all();
            return Err(gone());
        }
        if !self.rung.swap(true, Ordering::SeqCst) {
            let one = 1u64;
            // SAFETY: writes 8 bytes from `one` to the inbox's eventfd, open while it lives.
            let n = unsafe {
                libc::write(
                    self.efd.load(Ordering::Relaxed),
                    (&one as *const u64).cast(),
                    8,
                )
            };
            // EAGAIN: the counter is at its maximum, so the owner will wake anyway.
            if n != 8 && io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Drops every queued message (their jobs are abandoned). A destructor that panics is
    /// caught and logged, so it neither strands the messages behind it (whose handles wait
    /// for their abandonment) nor unwinds out of the scheduler's drop.
    ///
    /// A cancellation that comes through a destructor (one that waits, on a coroutine that
    /// is cancelled meanwhile) is not a panic: it goes on unwinding once the queue is empty,
    /// unless the caller already unwinds (a second panic out of a destructor would abort; the
    /// coroutine ends with the first).
    fn discard_all(&self) {
        let mut cancelled = None;
        while let Some(msg) = self.queue.pop() {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(msg))) {
                if coroutine::is_cancellation(&*p) && !std::thread::panicking() {
                    cancelled.get_or_insert(p);
                    continue;
                }
                log::error!(
                    "evco: dropping a message to a closed inbox panicked: {}",
                    crate::event::panic_message(&*p)
                );
            }
        }
        if let Some(p) = cancelled {
            std::panic::resume_unwind(p);
        }
    }

    /// Whether its scheduler still takes messages.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let _ = crate::os::close(*self.efd.get_mut());
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the coroutine's scheduler is gone (its thread exited or was shut down)",
    )
}

/// The owner thread's side of its inbox: the event that watches it, and who holds it.
pub(super) struct Remote {
    inbox: Arc<Inbox>,
    ev: RawEvent,
    holds: Cell<usize>,
    /// Cleared when the scheduler goes: holds dropped later touch nothing.
    alive: Cell<bool>,
    /// Set when the callback re-activated itself after a full batch: its next run has no
    /// eventfd count to clear (a poster that rang meanwhile is taken by the same pass).
    reactivated: Cell<bool>,
}

impl Remote {
    /// Points the event at the inbox's eventfd, on `sched`'s base.
    fn assign(&self, sched: &Scheduler) {
        let arg = sched as *const Scheduler as *mut c_void;
        // SAFETY: the base is the scheduler's and outlives the event (`Scheduler::drop` closes
        // the remote, deleting the event, before the base goes); `arg` is the scheduler, alive
        // while the event can fire.
        unsafe {
            self.ev.assign(
                sched.base.as_raw(),
                self.inbox.efd.load(Ordering::Relaxed),
                What::READ | What::PERSIST,
                inbox_ready,
                arg,
            )
        };
    }

    /// In a forked child: the eventfd is shared with the parent, whose posts it would steal.
    /// Gives the inbox one of its own (the parent's other threads, its only posters, do not
    /// exist here), and re-adds the event if held.
    pub(super) fn after_fork(&self, sched: &Scheduler) {
        // SAFETY: eventfd has no memory preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            log::error!("evco: no eventfd for a scheduler's inbox in a forked child");
            return;
        }
        self.ev.reset();
        self.reactivated.set(false);
        let old = self.inbox.efd.swap(efd, Ordering::SeqCst);
        let _ = crate::os::close(old);
        self.assign(sched);
        self.inbox.rung.store(false, Ordering::SeqCst);
        if self.holds.get() > 0 && self.ev.add(None).is_err() {
            log::error!("evco: cannot re-add a scheduler's inbox event in a forked child");
        }
        if !self.inbox.queue.is_empty() {
            self.ev.activate(What::READ);
        }
    }

    /// Closes the inbox, deletes its event, drops what was left (see the module docs).
    pub(super) fn close(&self) {
        self.inbox.open.store(false, Ordering::SeqCst);
        self.ev.reset();
        self.alive.set(false);
        self.inbox.discard_all();
    }
}

/// A hold on this thread's inbox: while one exists, its event keeps the loop alive (see the
/// module docs). Not `Send`: made and dropped on the owner thread.
pub(crate) struct InboxHold(Rc<Remote>);

impl Drop for InboxHold {
    fn drop(&mut self) {
        let r = &self.0;
        if !r.alive.get() {
            return;
        }
        let n = r.holds.get() - 1;
        r.holds.set(n);
        if n == 0 {
            r.ev.del();
        }
    }
}

impl Scheduler {
    /// This scheduler's inbox side, made on first use.
    fn remote(&self) -> io::Result<Rc<Remote>> {
        if let Some(r) = self.remote.borrow().as_ref() {
            return Ok(r.clone());
        }
        let inbox = Inbox::new()?;
        let r = Rc::new(Remote {
            ev: RawEvent::new(),
            inbox,
            holds: Cell::new(0),
            alive: Cell::new(true),
            reactivated: Cell::new(false),
        });
        r.assign(self);
        *self.remote.borrow_mut() = Some(r.clone());
        Ok(r)
    }

    /// This scheduler's inbox, made on first use.
    pub(crate) fn inbox(&self) -> io::Result<Arc<Inbox>> {
        Ok(self.remote()?.inbox.clone())
    }

    /// Whether `inbox` is this scheduler's (the caller runs on the thread it posts to).
    pub(crate) fn owns_inbox(&self, inbox: &Arc<Inbox>) -> bool {
        self.remote
            .borrow()
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.inbox, inbox))
    }

    /// Keeps the inbox's event added (and so the loop waiting for other threads) while the hold
    /// lives.
    pub(crate) fn hold_inbox(&self) -> io::Result<InboxHold> {
        let r = self.remote()?;
        if r.holds.get() == 0 {
            r.ev.add(None)?;
        }
        r.holds.set(r.holds.get() + 1);
        Ok(InboxHold(r))
    }

    /// The task in `slot` if it is coroutine `id`.
    fn task_by_key(&self, slot: usize, id: u64) -> Option<Rc<super::Task>> {
        let tasks = self.tasks.borrow();
        let t = tasks.get(slot)?.as_ref()?;
        (t.core.id().as_u64() == id).then(|| t.clone())
    }

    /// Unparks coroutine (`slot`, `id`) if it is still there and parked.
    fn wake_by_key(&self, slot: usize, id: u64) {
        if let Some(t) = self.task_by_key(slot, id) {
            Waker::from_task(t).wake();
        }
    }

    /// Cancels coroutine (`slot`, `id`) if it is still there (for a cross-thread handle's
    /// `cancel`, run on the owner thread).
    pub(crate) fn cancel_by_key(&self, slot: usize, id: u64) -> io::Result<()> {
        match self.task_by_key(slot, id) {
            Some(t) => self.cancel(&t),
            None => Ok(()),
        }
    }
}

/// The inbox's read event's callback: takes the messages (see the module docs).
unsafe extern "C" fn inbox_ready(_fd: sys::evutil_socket_t, _what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the scheduler (see `Scheduler::remote`), alive while the event can fire.
    let sched = unsafe { &*(arg as *const Scheduler) };
    let Some(r) = sched.remote.borrow().clone() else {
        return;
    };
    if !r.reactivated.replace(false) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count` from the inbox's eventfd (non-blocking).
        let _ = unsafe {
            libc::read(
                r.inbox.efd.load(Ordering::Relaxed),
                count.as_mut_ptr().cast(),
                8,
            )
        };
    }
    r.inbox.rung.store(false, Ordering::SeqCst);
    for _ in 0..INBOX_BATCH {
        let Some(msg) = r.inbox.queue.pop() else {
            return;
        };
        match msg {
            Msg::Run(f) => {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    log::error!(
                        "evco: a closure posted to this thread panicked: {}",
                        crate::event::panic_message(&*p)
                    );
                }
            }
            Msg::Start(job) => {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()))
                {
                    log::error!(
                        "evco: a job posted to this thread panicked: {}",
                        crate::event::panic_message(&*p)
                    );
                }
            }
            Msg::Wake { slot, id } => sched.wake_by_key(slot, id),
            Msg::Poke => {}
        }
    }
    // More than a batch: let the drain run what it started, then come back.
    if r.alive.get() {
        r.reactivated.set(true);
        r.ev.activate(What::READ);
    }
}

/// Makes one parked coroutine runnable again from any thread: [`Waker`]'s `Send` form.
#[derive(Clone)]
pub(crate) struct RemoteWaker {
    inbox: Arc<Inbox>,
    slot: usize,
    id: u64,
}

impl RemoteWaker {
    /// The running coroutine's. An error outside a scheduled coroutine, or when no eventfd can
    /// be had for the inbox.
    pub(crate) fn current() -> io::Result<RemoteWaker> {
        let (task, sched) = current_task()?;
        Ok(RemoteWaker {
            inbox: sched.inbox()?,
            slot: task.slot.get(),
            id: task.core.id().as_u64(),
        })
    }

    /// Unparks the coroutine if it is parked: directly when called on its own thread, through
    /// its inbox otherwise. Nothing when it is gone.
    pub(crate) fn wake(&self) {
        if let Some(s) = Scheduler::current() {
            if s.owns_inbox(&self.inbox) {
                s.wake_by_key(self.slot, self.id);
                return;
            }
        }
        let _ = self.inbox.post(Msg::Wake {
            slot: self.slot,
            id: self.id,
        });
    }
}

/// Who to wake when a cross-thread wait ends, by where the waiter blocks.
enum Unparker {
    /// A coroutine, parked.
    Coroutine(RemoteWaker),
    /// A caller outside coroutines on a thread with a scheduler, running its loop.
    Loop(Arc<Inbox>),
    /// A thread with no scheduler, parked with `std::thread::park`.
    Thread(std::thread::Thread),
}

/// One waiter of a cross-thread primitive (`sync::shared`): a flag and who to wake when it is
/// set. The waiter makes it, lists it (as `Arc<Signal>`) where notifiers find it, and waits;
/// any thread may [`notify`](Signal::notify) it.
pub(crate) struct Signal {
    notified: AtomicBool,
    unparker: Unparker,
}

impl Signal {
    /// A signal for the caller: a coroutine, a thread with a scheduler, or a plain thread. An
    /// error inside a coroutine that cannot wait (a bare coroutine, one being cancelled).
    pub(crate) fn new() -> io::Result<Arc<Signal>> {
        let unparker = if coroutine::is_coroutine() {
            Unparker::Coroutine(RemoteWaker::current()?)
        } else if let Some(s) = Scheduler::current() {
            Unparker::Loop(s.inbox()?)
        } else {
            Unparker::Thread(std::thread::current())
        };
        Ok(Arc::new(Signal {
            notified: AtomicBool::new(false),
            unparker,
        }))
    }

    /// Sets the flag and wakes the waiter (from any thread). Once per signal counts.
    pub(crate) fn notify(&self) {
        if self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.unparker {
            Unparker::Coroutine(w) => w.wake(),
            Unparker::Loop(inbox) => {
                let _ = inbox.post(Msg::Poke);
            }
            Unparker::Thread(t) => t.unpark(),
        }
    }

    /// Whether [`notify`](Signal::notify) was called.
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Blocks the caller (the one that made the signal) until it is notified or `deadline`
    /// passes: `Ok(true)` when notified. A coroutine parks; a thread with a scheduler runs its
    /// loop (its coroutines go on running); any other thread parks. An error when a coroutine
    /// is cancelled (it unwinds through here) or the loop cannot run.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        match &self.unparker {
            Unparker::Coroutine(_) => {
                let (_, sched) = current_task()?;
                let _hold = sched.hold_inbox()?;
                while !self.is_notified() {
                    match deadline {
                        None => super::park()?,
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Ok(false);
                            }
                            super::park_timeout(left)?;
                        }
                    }
                }
                Ok(true)
            }
            Unparker::Loop(_) => {
                let sched = Scheduler::current().ok_or_else(gone)?;
                let _hold = sched.hold_inbox()?;
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                super::block_outside(|| self.is_notified(), timeout)
            }
            Unparker::Thread(_) => {
                while !self.is_notified() {
                    match deadline {
                        None => std::thread::park(),
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Ok(false);
                            }
                            std::thread::park_timeout(left);
                        }
                    }
                }
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Sends a fresh signal of the caller's kind to a notifier thread and waits on it.
    fn signal_from_other_thread() -> bool {
        let (tx, rx) = mpsc::channel::<Arc<Signal>>();
        let notifier = std::thread::spawn(move || {
            for s in rx {
                s.notify();
            }
        });
        let s = Signal::new().unwrap();
        tx.send(s.clone()).unwrap();
        drop(tx);
        let woke = s
            .wait(Some(Instant::now() + Duration::from_secs(20)))
            .unwrap();
        notifier.join().unwrap();
        woke
    }

    #[test]
    fn a_coroutine_parked_on_a_signal_is_woken_from_another_thread() {
        assert!(crate::run(signal_from_other_thread));
    }

    #[test]
    fn a_thread_running_its_loop_outside_coroutines_is_woken_from_another_thread() {
        let _guard = crate::scheduler::enter(crate::event::EventBase::new().unwrap()).unwrap();
        assert!(signal_from_other_thread());
    }

    #[test]
    fn a_plain_thread_is_woken_from_another_thread() {
        assert!(std::thread::spawn(signal_from_other_thread).join().unwrap());
    }

    #[test]
    fn a_closure_posted_to_a_scheduler_runs_on_its_thread() {
        crate::run(|| {
            let sched = Scheduler::current().unwrap();
            let inbox = sched.inbox().unwrap();
            let here = std::thread::current().id();
            let done = Signal::new().unwrap();
            let d = done.clone();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                inbox
                    .post(Msg::Run(Box::new(move || {
                        tx.send(std::thread::current().id()).unwrap();
                        d.notify();
                    })))
                    .unwrap();
            });
            assert!(done.wait(None).unwrap());
            assert_eq!(rx.recv().unwrap(), here);
        });
    }

    #[test]
    fn an_unheld_inbox_leaves_a_deadlock_reportable() {
        let r = std::panic::catch_unwind(|| {
            crate::run(|| {
                let sched = Scheduler::current().unwrap();
                let _inbox = sched.inbox().unwrap();
                let h = crate::spawn(|| super::super::park().unwrap());
                let _ = h.join();
            })
        });
        assert!(
            r.is_err(),
            "a coroutine parked forever must be reported, not hang"
        );
    }

    #[test]
    fn posting_to_a_gone_scheduler_fails() {
        let inbox = std::thread::spawn(|| crate::run(|| Scheduler::current().unwrap().inbox()))
            .join()
            .unwrap()
            .unwrap();
        assert!(!inbox.is_open());
        assert!(inbox.post(Msg::Poke).is_err());
    }
}
