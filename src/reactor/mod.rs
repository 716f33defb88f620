//! The reactor: the only owner of per-fd state. One per scheduler (so one per thread), with a
//! process-wide index in [`fd_table`](crate::fd_table).
//!
//! For every fd a coroutine of this thread waits on, the reactor keeps one [`FdState`]: the
//! coroutines waiting on it (for a readable or writable edge, or with a one-shot event of their
//! own), and for sockets, under a backend with edge triggering, the socket's persistent
//! registration. Tasks are opaque tokens here: the reactor ends a wait by calling the
//! scheduler's `EndWait` function, given at construction, and never imports the scheduler (or
//! the hooks). Closing an fd, by whatever path (`io::close`, a hooked `close`/`dup2`, a `net`
//! socket's drop, a new fd with the same number that the hooks saw created), ends in one
//! function, [`forget`].
//!
//! # Registered sockets: one persistent edge-triggered event per socket
//!
//! A one-shot wait costs libevent an `event_add` and an `event_del` and the kernel an
//! `epoll_ctl`, every time. Sockets evco owns (the `net` types, and hooked sockets) take a
//! cheaper road where the backend supports edge-triggered events (epoll): on their first wait
//! their state gets a persistent `EV_READ|EV_WRITE|EV_CLOSED|EV_ET` event that stays until the
//! socket is closed ([`forget`]) or handed out ([`Reactor::release`]). A wait then only happens
//! after the socket returned `EAGAIN`, so the next edge is exactly what it waits for: the waiter
//! puts itself on the reader or writer list and suspends; `edge` takes the listed coroutines off
//! and ends their waits. The lists hold a coroutine only while it is suspended in that wait (the
//! wait's guard removes it when the wait ends or unwinds), and a state's event is deleted before
//! the state can be freed; nothing can free a state while `edge` runs, since no coroutine runs
//! inside a callback. On backends without edge triggering (poll, with `EVENT_NOEPOLL=1`) every
//! wait is one-shot.
//!
//! # One-shot waits
//!
//! A wait on an fd that has no registration uses the waiting coroutine's own one-shot event
//! (assigned and added by the caller, with the scheduler's callback), and lists the coroutine on
//! the fd's state so that a close can end the wait. A state that has neither a registration nor
//! a waiter left is dropped when the last wait ends.
//!
//! # Which fd a state belongs to
//!
//! A state records the fd's generation (see `fd_table`) when it was made, and is only used
//! while the slot still has it: any close the process makes through evco or the hooks bumps the
//! generation, and so does every fd the hooks see created. The slot's `owner` word names the
//! reactor and the index of the state in its list, so a lookup costs a few loads and no hash. A
//! second reactor that waits on an fd another one owns keeps its state in a map of its own and
//! marks the slot `SHARED`.
//!
//! # A close on another thread
//!
//! `forget` on thread B of an fd that thread A's reactor owns bumps the generation, clears the
//! owner and rings A's doorbell (an eventfd): A's doorbell callback sweeps its states, and every
//! one whose fd changed ends its waits with `EBADF` (the `GONE` token) and deletes its
//! registration. Without that, a waiter on A would never wake (epoll forgets a closed
//! description silently), and A's registration would swallow the edges of the next socket with
//! that number. The doorbells are a static array of 1,024 eventfds, never closed by evco: a ring
//! that reaches a doorbell whose reactor went is a harmless sweep of its next user, and a ring
//! checks the eventfd is still the one made (a program that closed it with `close_range` may
//! have another fd at its number, which must not get 8 bytes). A scheduler beyond the 1,024th
//! at once has no doorbell, and closes elsewhere do not reach it. The doorbell's event is added
//! only while the reactor has states, so an idle scheduler's loop still reports that it has no
//! events (the scheduler's deadlock detection relies on that).
//!
//! A close is two steps around the real one: `forget` (above) marks the slot `CLOSING`, and
//! `closed` clears that mark (its own only: one the number got from a later close stays; see
//! `fd_table`). A state made meanwhile, on any thread, fails with `EBADF` (its maker
//! checks the flags, the generation and that the fd is open after it claims the slot, so a
//! close either sees the claim and rings, or the maker sees the close).
//!
//! A close may come from a signal handler on the reactor's own thread, interrupting anything.
//! `forget` ends this thread's states at once only when the handler interrupted a coroutine's
//! own code with none of the reactor's lists borrowed; evco code that changes what `end_state`
//! touches (the lists, libevent's events, the scheduler's ready queue) outside a wait marks
//! itself `coroutine::Busy`. Otherwise `forget` changes only the slot's atomics and rings the
//! reactor's own doorbell, and the sweep ends the state on the loop's next turn.
//!
//! An fd closed where evco cannot see it (`fclose(fdopen(fd))`, `close_range`, the raw system
//! call) leaves its state until the number is met again: a hooked call on it that fails with
//! `ENOTSOCK` repairs the table (`crate::hook`), [`io::wait`](crate::io::wait) checks a
//! registered fd is still a socket, and a socket the hooks see created replaces it.

mod close;
mod state;
mod urgent;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::os::raw::{c_short, c_void};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::event::{RawEvent, What};
use crate::fd_table;
use crate::sys;

pub(crate) use close::{adopted, closed, forget, renumbered};
pub(crate) use state::FdState;

use close::{claim_doorbell, doorbell, release_doorbell};
use state::{Waiters, edge};

/// What ends a wait: the scheduler's function, called with the waiting task's token and what
/// the event reported (a `What`'s bits, or [`GONE`]). It only queues the task: no coroutine
/// runs inside it.
pub(crate) type EndWait = unsafe fn(NonNull<()>, c_short);

/// The bits an `EndWait` gets when the fd was closed under the wait (the wait fails `EBADF`).
pub(crate) const GONE: c_short = 0x1000;

thread_local! {
    /// This thread's reactor (its scheduler's), set by `Reactor::start`, cleared by its drop.
    static CURRENT: Cell<*const Reactor> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` on this thread's reactor, if its scheduler is installed.
#[inline]
fn with_current<R>(f: impl FnOnce(&Reactor) -> R) -> Option<R> {
    let p = CURRENT.try_with(|c| c.get()).ok()?;
    // SAFETY: `CURRENT` points at a reactor inside an installed scheduler (which never moves:
    // it lives in an `Rc`), and is cleared before that reactor drops.
    unsafe { p.as_ref() }.map(f)
}

/// One thread's per-fd state. See the module docs.
pub(crate) struct Reactor {
    /// Its doorbell's index plus one (0: none, so it owns no slots).
    id: u32,
    /// Whether the backend does edge triggering, so registrations can be used.
    edge: bool,
    end_wait: EndWait,
    /// The states this reactor owns through the fd table, by index (see `FdState::index`).
    states: RefCell<Vec<Rc<FdState>>>,
    /// States of fds another reactor owns (or beyond the table, or when `id` is 0).
    foreign: RefCell<HashMap<RawFd, Rc<FdState>>>,
    /// An empty waiter list with capacity, swapped with a state's list by `edge`.
    spare: RefCell<Vec<*const ()>>,
    /// Its doorbell's eventfd (-1 without one), watched while `states` or `foreign` has any.
    efd: Cell<RawFd>,
    doorbell: RawEvent,
    doorbell_added: Cell<bool>,
    /// The urgent watch's epoll instance (-1 until first used; see `urgent`), its event, and
    /// how many states are in it (the event is in the loop while any is).
    urgent_fd: Cell<RawFd>,
    urgent_ev: RawEvent,
    watched: Cell<usize>,
    base: *mut sys::event_base,
}

impl Reactor {
    /// A reactor for `base`, ending waits with `end_wait`. It does nothing until [`start`]ed
    /// at its final address.
    ///
    /// # Safety
    ///
    /// `base` is live and outlives the reactor.
    ///
    /// [`start`]: Reactor::start
    pub(crate) unsafe fn new(base: *mut sys::event_base, edge: bool, end_wait: EndWait) -> Reactor {
        let (id, efd) = claim_doorbell();
        Reactor {
            id,
            edge,
            end_wait,
            states: RefCell::new(Vec::new()),
            foreign: RefCell::new(HashMap::new()),
            spare: RefCell::new(Vec::new()),
            efd: Cell::new(efd),
            doorbell: RawEvent::new(),
            doorbell_added: Cell::new(false),
            urgent_fd: Cell::new(-1),
            urgent_ev: RawEvent::new(),
            watched: Cell::new(0),
            base,
        }
    }

    /// Makes this the thread's reactor and points its doorbell event at it. Call once, after the
    /// reactor reached the address it keeps until it drops.
    pub(crate) fn start(&self) {
        let efd = self.efd.get();
        if efd >= 0 {
            let arg = self as *const Reactor as *mut c_void;
            // SAFETY: the base outlives the reactor (`new`'s contract); `arg` is the reactor,
            // which deletes the event when it drops and does not move before.
            unsafe {
                self.doorbell
                    .assign(self.base, efd, What::READ | What::PERSIST, doorbell, arg)
            };
        }
        CURRENT.with(|c| c.set(self));
    }

    /// `fd`'s state, if this reactor has a current one (made under the fd's generation).
    #[inline]
    pub(crate) fn find(&self, fd: RawFd) -> Option<Rc<FdState>> {
        if let Some(slot) = fd_table::get(fd) {
            let owner = slot.owner.load(Ordering::Acquire);
            if self.id != 0 && owner >> 32 == u64::from(self.id) {
                let st = self.states.borrow().get(owner as u32 as usize).cloned()?;
                return (st.generation == slot.generation()).then_some(st);
            }
        }
        self.find_foreign(fd)
    }

    #[cold]
    fn find_foreign(&self, fd: RawFd) -> Option<Rc<FdState>> {
        let foreign = self.foreign.borrow();
        if foreign.is_empty() {
            return None;
        }
        let st = foreign.get(&fd)?;
        (st.generation == fd_table::generation(fd)).then(|| st.clone())
    }

    /// `fd`'s state, made on first use (a stale one, made for an older fd of the number, is
    /// ended first: its waiters get `EBADF`). `seen` is the fd's generation when the caller last
    /// knew it open (read before its last call on it): a new state made under a later one is
    /// `EBADF`, the fd was closed in between.
    pub(crate) fn state(&self, fd: RawFd, seen: Option<u32>) -> io::Result<Rc<FdState>> {
        if let Some(st) = self.find(fd) {
            return Ok(st);
        }
        let _busy = crate::coroutine::Busy::enter();
        if self.rung() {
            // A close elsewhere may have left a state of this very fd number.
            self.sweep();
        }
        self.sweep_fd(fd);
        let slot = fd_table::get_or_grow(fd);
        let generation = seen.unwrap_or_else(|| slot.map_or(0, fd_table::Slot::generation));
        let st = Rc::new(FdState {
            ready: Cell::new((What::READ | What::WRITE).bits()),
            generation,
            readers: Waiters::default(),
            writers: Waiters::default(),
            reactor: self,
            fd,
            registered: Cell::new(false),
            index: Cell::new(usize::MAX),
            once: Waiters::default(),
            ev: OnceCell::new(),
        });
        let mut states = self.states.borrow_mut();
        let index = states.len();
        let word = (u64::from(self.id) << 32) | index as u64;
        let owned = self.id != 0
            && index <= u32::MAX as usize
            && slot.is_some_and(|s| {
                s.owner
                    .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
        if owned {
            st.index.set(index);
            states.push(st.clone());
            drop(states);
        } else {
            drop(states);
            if let Some(s) = slot {
                // Another reactor owns the slot: a close must ring every doorbell.
                s.mark_shared();
            }
            self.foreign.borrow_mut().insert(fd, st.clone());
        }
        self.doorbell_on();
        // A close that began before the owner word was claimed has not seen this state (and
        // will not ring for it): it shows in the flags, or in the generation, which every
        // close bumps before it closes (one that is over already, since the caller last used
        // the fd, too: `seen`). From here on, a close finds the owner word.
        let closing = slot.is_some_and(|s| s.generation_unless_closing() != Some(generation));
        if closing {
            self.unlink(&st);
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(st)
    }

    /// `fd`'s state with its persistent edge-triggered registration, made on first use (see
    /// "Registered sockets"). Only for sockets, and only where the backend does edge
    /// triggering.
    pub(crate) fn registration(&self, fd: RawFd, seen: Option<u32>) -> io::Result<Rc<FdState>> {
        let st = self.state(fd, seen)?;
        if !st.registered.get() {
            // Inside libevent below: see `forget` on signal handlers.
            let _busy = crate::coroutine::Busy::enter();
            let arg = Rc::as_ptr(&st) as *mut c_void;
            // EV_CLOSED (EPOLLRDHUP) marks the peer's FIN: a short read can leave an EOF behind
            // that no later edge announces, so `ready` keeps READ set for good once it is seen.
            let what = What::READ | What::WRITE | What::CLOSED | What::PERSIST | What::EDGE;
            // SAFETY: the base outlives the reactor's states' events; `arg` is the state, which
            // deletes its event before it is freed (`end_state`, `Drop`), and `edge` holds a
            // reference while it runs.
            let ev = st.ev.get_or_init(RawEvent::new);
            // SAFETY: as said above.
            unsafe { ev.assign(self.base, fd, what, edge, arg) };
            if let Err(e) = ev.add(None) {
                if st.once.is_empty() && st.readers.is_empty() && st.writers.is_empty() {
                    self.unlink(&st);
                }
                return Err(e);
            }
            st.registered.set(true);
        }
        Ok(st)
    }

    /// Registers a socket that was just accepted, with only WRITE marked possibly ready, so
    /// that its first read waits for an edge instead of trying a `recv` first.
    ///
    /// Sound because epoll reports the state an fd is in when it is added (its initial edge):
    /// data that arrived before the accept, or a FIN, is announced on the next poll like any
    /// later edge. Worth it because a server usually accepts a connection before its first
    /// request arrives, so that `recv` would return `EAGAIN` (echo churn, 1 message per
    /// connection: 3 `recv` calls per connection before, 2 after, as in the C server). Does
    /// nothing without edge triggering, or when the registration cannot be made (the first wait
    /// retries and reports it).
    pub(crate) fn register_accepted(&self, fd: RawFd) {
        if !self.edge {
            return;
        }
        if let Ok(st) = self.registration(fd, None) {
            st.ready.set(What::WRITE.bits());
        }
    }

    /// Drops this thread's state of `fd` (its socket is handed out as a std socket or raw fd,
    /// and stays open): its waiters get `EBADF`, its registration goes.
    pub(crate) fn release(&self, fd: RawFd) {
        if let Some(st) = self.find(fd) {
            let _busy = crate::coroutine::Busy::enter();
            st.unwatch_urgent();
            self.end_state(&st);
        }
    }
}

impl Reactor {
    /// In a forked child, on the thread that forked (see `Scheduler::after_fork`): the
    /// doorbells of threads that do not exist here go, and this reactor's gets an eventfd of
    /// its own (the old one is the parent's thread's too).
    pub(crate) fn after_fork(&self) {
        self.drop_urgent_watch();
        let was_added = self.doorbell_added.replace(false);
        self.doorbell.reset();
        let efd = close::doorbells_after_fork(self.id);
        self.efd.set(efd);
        if efd >= 0 {
            let arg = self as *const Reactor as *mut c_void;
            // SAFETY: as in `start`: the base outlives the reactor, which deletes the event when
            // it drops and does not move.
            unsafe {
                self.doorbell
                    .assign(self.base, efd, What::READ | What::PERSIST, doorbell, arg)
            };
            if was_added {
                self.doorbell_on();
            }
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.doorbell.del();
        self.urgent_ev.del();
        let ep = self.urgent_fd.replace(-1);
        if ep >= 0 {
            let _ = crate::os::close(ep);
        }
        let _ = CURRENT.try_with(|c| {
            if std::ptr::eq(c.get(), self) {
                c.set(std::ptr::null());
            }
        });
        // A state a leaked coroutine's wait still holds outlives the lists: its event must not
        // go on firing into a base this reactor no longer serves, and its slot must not name a
        // reactor that is gone.
        let me = u64::from(self.id) << 32;
        for (i, st) in self.states.get_mut().drain(..).enumerate() {
            if let Some(ev) = st.ev.get() {
                ev.del();
            }
            st.registered.set(false);
            st.index.set(usize::MAX);
            if let Some(slot) = fd_table::get(st.fd) {
                let _ = slot.owner.compare_exchange(
                    me | i as u64,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
        for st in self.foreign.get_mut().drain().map(|(_, st)| st) {
            if let Some(ev) = st.ev.get() {
                ev.del();
            }
            st.registered.set(false);
        }
        release_doorbell(self.id, self.efd.get());
    }
}

/// The running thread's reactor's state of `fd`, if it has one (the hot path of evco's reads).
#[inline]
pub(crate) fn find(fd: RawFd) -> Option<Rc<FdState>> {
    with_current(|r| r.find(fd)).flatten()
}

/// This thread's state of `fd` for a wait of the running coroutine, made on first use: with its
/// edge-triggered registration when `register` and the backend does edge triggering (a socket
/// evco owns), else a plain one for a one-shot wait. `None` without a scheduler.
pub(crate) fn for_wait(
    fd: RawFd,
    register: bool,
    seen: Option<u32>,
) -> Option<io::Result<Rc<FdState>>> {
    with_current(|r| {
        if register && r.edge {
            r.registration(fd, seen)
        } else {
            r.state(fd, seen)
        }
    })
}

/// Drops this thread's state of `fd`, which stays open (see [`Reactor::release`]).
pub(crate) fn release(fd: RawFd) {
    with_current(|r| r.release(fd));
}

/// Registers a just-accepted socket (see [`Reactor::register_accepted`]); nothing outside a
/// scheduler.
pub(crate) fn register_accepted(fd: RawFd) {
    with_current(|r| r.register_accepted(fd));
}
