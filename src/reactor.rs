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
//! that number. The doorbells are a static array of eventfds, never closed: a ring that reaches
//! a doorbell whose reactor went is a harmless sweep of its next user. The doorbell's event is
//! added only while the reactor has states, so an idle scheduler's loop still reports that it
//! has no events (the scheduler's deadlock detection relies on that).
//!
//! An fd closed where evco cannot see it (`fclose(fdopen(fd))`, `close_range`, the raw system
//! call) leaves its state until the number is met again: a hooked call on it that fails with
//! `ENOTSOCK` repairs the table (`crate::hook`), [`io::wait`](crate::io::wait) checks a
//! registered fd is still a socket, and a socket the hooks see created replaces it.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::os::raw::{c_short, c_void};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::event::{RawCallback, RawEvent, What};
use crate::fd_table::{self, SHARED};
use crate::sys;

/// What ends a wait: the scheduler's function, called with the waiting task's token and what
/// the event reported (a `What`'s bits, or [`GONE`]). It only queues the task: no coroutine
/// runs inside it.
pub(crate) type EndWait = unsafe fn(NonNull<()>, c_short);

/// The bits an `EndWait` gets when the fd was closed under the wait (the wait fails `EBADF`).
pub(crate) const GONE: c_short = 0x1000;

/// Most reactors (threads with a scheduler) that can own fds at once; more still work, with
/// their states in their own maps (`foreign`) and no doorbell.
const MAX_REACTORS: usize = 1024;

/// A reactor's cross-thread wake-up: an eventfd made on first use and kept for the process's
/// life (see "A close on another thread").
struct Doorbell {
    claimed: AtomicBool,
    /// Set by every ring, cleared by the sweep it asks for: a reactor about to make a new state
    /// sweeps first when it is set, without waiting for its loop to read the eventfd.
    rung: AtomicBool,
    /// The eventfd plus one; 0 before it is made.
    efd: AtomicI32,
}

static DOORBELLS: [Doorbell; MAX_REACTORS] = [const {
    Doorbell {
        claimed: AtomicBool::new(false),
        rung: AtomicBool::new(false),
        efd: AtomicI32::new(0),
    }
}; MAX_REACTORS];

/// Rings reactor `id`'s doorbell (async-signal-safe: one atomic load and one `write`).
fn ring(id: u32) {
    let Some(d) = (id as usize).checked_sub(1).and_then(|i| DOORBELLS.get(i)) else {
        return;
    };
    d.rung.store(true, Ordering::Release);
    let efd = d.efd.load(Ordering::Acquire) - 1;
    if efd >= 0 {
        let one = 1u64;
        // SAFETY: `efd` is an eventfd this module made and never closes; the write of one
        // 8-byte counter increment reads only `one`.
        unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
    }
}

/// Rings every claimed doorbell but `except`'s (an fd several reactors keep state for).
fn ring_all(except: u32) {
    for (i, d) in DOORBELLS.iter().enumerate() {
        let id = i as u32 + 1;
        if id != except && d.claimed.load(Ordering::Acquire) {
            ring(id);
        }
    }
}

/// Claims a doorbell: the reactor id (its index plus one) and its eventfd, or `(0, -1)` when
/// none is free or no eventfd can be made (the reactor then owns no slots).
fn claim_doorbell() -> (u32, RawFd) {
    for (i, d) in DOORBELLS.iter().enumerate() {
        if d.claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let mut efd = d.efd.load(Ordering::Acquire) - 1;
        if efd < 0 {
            // SAFETY: eventfd has no memory preconditions.
            efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if efd < 0 {
                d.claimed.store(false, Ordering::Release);
                return (0, -1);
            }
            d.efd.store(efd + 1, Ordering::Release);
        }
        return (i as u32 + 1, efd);
    }
    (0, -1)
}

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

/// The coroutines waiting for one direction's next edge of a registered socket (or, for
/// `once`, for their own one-shot events). The first one sits in a cell: one coroutine per
/// socket and direction is the common case, and it costs no list operation on either side. More
/// (several coroutines sharing a socket) go in a list, boxed so that a socket that never had two
/// waiters carries one null word for it; once made, the list keeps its capacity.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Waiters {
    first: Cell<*const ()>,
    // Boxed on purpose: one word in the state's hot bytes instead of a `Vec`'s three.
    #[allow(clippy::box_collection)]
    rest: Cell<Option<Box<Vec<*const ()>>>>,
}

impl Waiters {
    fn push(&self, token: *const ()) {
        if self.first.get().is_null() {
            self.first.set(token);
        } else {
            let mut rest = self.rest.take().unwrap_or_default();
            rest.push(token);
            self.rest.set(Some(rest));
        }
    }

    fn remove(&self, token: *const ()) {
        if std::ptr::eq(self.first.get(), token) {
            self.first.set(std::ptr::null());
            return;
        }
        if let Some(mut rest) = self.rest.take() {
            if let Some(pos) = rest.iter().position(|&t| std::ptr::eq(t, token)) {
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

    fn is_empty(&self) -> bool {
        self.first.get().is_null() && !self.has_rest()
    }

    /// Empties the list, appending its waiters to `into`.
    fn drain_into(&self, into: &mut Vec<*const ()>) {
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

/// What this thread knows about one fd. See the module docs.
///
/// `repr(C)`, fields in the order an edge touches them: with the `Rc` counts in front, what an
/// edge and a wait read and write spans the first cache line or two.
#[repr(C)]
pub(crate) struct FdState {
    /// Directions that may be ready: set by every edge, cleared when the socket said `EAGAIN`
    /// (a wait) or a read came back short (`note_drained`). With a clear bit, the next
    /// operation in that direction waits for an edge before it tries, saving a syscall that
    /// would only return `EAGAIN`.
    ready: Cell<c_short>,
    /// The fd's generation when this was made (in the padding after `ready`).
    generation: u32,
    readers: Waiters,
    writers: Waiters,
    /// The reactor that holds this state (it outlives every pending event of its states).
    reactor: *const Reactor,
    fd: RawFd,
    /// Whether `ev` is the socket's persistent registration (added).
    registered: Cell<bool>,
    /// Its index in the reactor's `states`, or `usize::MAX` when it is in `foreign` or gone.
    index: Cell<usize>,
    /// Coroutines waiting with one-shot events of their own.
    once: Waiters,
    /// The registration's event, made when the socket is registered.
    ev: OnceCell<RawEvent>,
}

impl FdState {
    fn waiters(&self, dir: What) -> &Waiters {
        if dir.contains(What::WRITE) {
            &self.writers
        } else {
            &self.readers
        }
    }

    /// Whether the fd this state was made for is gone (closed, by evco or the hooks, on any
    /// thread): a wait on it that ended anyway saw another fd's readiness, or a closed fd's.
    pub(crate) fn is_stale(&self) -> bool {
        self.generation != fd_table::generation(self.fd)
    }

    /// Whether the socket is registered (waits on it go through edges).
    pub(crate) fn is_registered(&self) -> bool {
        self.registered.get()
    }

    /// False only when the socket is registered and no readable edge came since it was last
    /// drained: a read now would return `EAGAIN`.
    #[inline]
    pub(crate) fn maybe_readable(&self) -> bool {
        !self.registered.get() || self.ready.get() & What::READ.bits() != 0
    }

    /// A read came back short: the receive queue is empty until the next edge.
    #[inline]
    pub(crate) fn note_drained(&self) {
        // After the peer's FIN, reads never wait again: EOF is always there to be read.
        if self.ready.get() & What::CLOSED.bits() == 0 {
            self.ready.set(self.ready.get() & !What::READ.bits());
        }
    }

    /// Lists `token` for the next `dir` edge (exactly one of READ or WRITE) until the guard
    /// goes. The caller just saw `EAGAIN`, so that direction is no longer ready.
    pub(crate) fn enlist_edge(self: &Rc<Self>, dir: What, token: NonNull<()>) -> Enlisted {
        if self.ready.get() & What::CLOSED.bits() == 0 || dir != What::READ {
            self.ready.set(self.ready.get() & !dir.bits());
        }
        self.waiters(dir).push(token.as_ptr());
        Enlisted {
            state: self.clone(),
            token: token.as_ptr(),
            dir: Some(dir),
        }
    }

    /// Points `ev` (the waiting coroutine's one-shot event) at this fd for `what`, with
    /// `callback(token)`, adds it, and lists `token` until the guard goes.
    ///
    /// # Safety
    ///
    /// `token` is what `callback` expects, and stays valid while the event is pending; the
    /// caller deletes `ev` before `token` can go (the scheduler's wait guard does).
    pub(crate) unsafe fn enlist_once(
        self: &Rc<Self>,
        ev: &RawEvent,
        what: What,
        callback: RawCallback,
        token: NonNull<()>,
    ) -> io::Result<Enlisted> {
        // SAFETY: the reactor is alive while its states are used; its base outlives it.
        let base = unsafe { (*self.reactor).base };
        // SAFETY: the base is live and outlives the pending event (see above); the caller
        // vouches for `token`.
        unsafe { ev.assign(base, self.fd, what, callback, token.as_ptr().cast()) };
        if let Err(e) = ev.add(None) {
            // epoll rejects bad fds at event_add; say which.
            if !crate::os::fd_is_open(self.fd) {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            return Err(e);
        }
        self.once.push(token.as_ptr());
        Ok(Enlisted {
            state: self.clone(),
            token: token.as_ptr(),
            dir: None,
        })
    }
}

/// A coroutine's place on an fd state's list, for the length of one wait: dropping it (the wait
/// ended, or unwound) takes the coroutine off, and drops the state when nothing is left on it.
pub(crate) struct Enlisted {
    state: Rc<FdState>,
    token: *const (),
    /// `None` for a one-shot wait.
    dir: Option<What>,
}

impl Drop for Enlisted {
    fn drop(&mut self) {
        let st = &self.state;
        match self.dir {
            Some(dir) => st.waiters(dir).remove(self.token),
            None => st.once.remove(self.token),
        }
        if !st.registered.get()
            && st.once.is_empty()
            && st.readers.is_empty()
            && st.writers.is_empty()
        {
            // SAFETY: the reactor outlives its states' waits (a wait is only entered, and its
            // guard only dropped, while the scheduler that owns the reactor runs the coroutine;
            // a coroutine leaked with its scheduler is never resumed again).
            let reactor = unsafe { &*st.reactor };
            reactor.drop_state(st);
        }
    }
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
    efd: RawFd,
    doorbell: RawEvent,
    doorbell_added: Cell<bool>,
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
            efd,
            doorbell: RawEvent::new(),
            doorbell_added: Cell::new(false),
            base,
        }
    }

    /// Makes this the thread's reactor and points its doorbell event at it. Call once, after the
    /// reactor reached the address it keeps until it drops.
    pub(crate) fn start(&self) {
        if self.efd >= 0 {
            let arg = self as *const Reactor as *mut c_void;
            // SAFETY: the base outlives the reactor (`new`'s contract); `arg` is the reactor,
            // which deletes the event when it drops and does not move before.
            unsafe {
                self.doorbell.assign(
                    self.base,
                    self.efd,
                    What::READ | What::PERSIST,
                    doorbell,
                    arg,
                )
            };
        }
        CURRENT.with(|c| c.set(self));
    }

    /// Whether waits on sockets can use edge-triggered registrations.
    pub(crate) fn edge_triggered(&self) -> bool {
        self.edge
    }

    /// `fd`'s state, if this reactor has a current one (made under the fd's generation).
    #[inline]
    pub(crate) fn find(&self, fd: RawFd) -> Option<Rc<FdState>> {
        if let Some(slot) = fd_table::get(fd) {
            let owner = slot.owner.load(Ordering::Acquire);
            if self.id != 0 && owner >> 32 == u64::from(self.id) {
                let st = self.states.borrow().get(owner as u32 as usize).cloned()?;
                return (st.generation == slot.generation.load(Ordering::Acquire)).then_some(st);
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
    /// ended first: its waiters get `EBADF`).
    pub(crate) fn state(&self, fd: RawFd) -> Rc<FdState> {
        if let Some(st) = self.find(fd) {
            return st;
        }
        if self.rung() {
            // A close elsewhere may have left a state of this very fd number.
            self.sweep();
        }
        self.sweep_fd(fd);
        let slot = fd_table::get_or_grow(fd);
        let generation = slot.map_or(0, |s| s.generation.load(Ordering::Acquire));
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
        } else {
            drop(states);
            if let Some(s) = slot {
                // Another reactor owns the slot: a close must ring every doorbell.
                s.flags.fetch_or(SHARED, Ordering::AcqRel);
            }
            self.foreign.borrow_mut().insert(fd, st.clone());
        }
        self.doorbell_on();
        st
    }

    /// `fd`'s state with its persistent edge-triggered registration, made on first use (see
    /// "Registered sockets"). Only for sockets, and only where the backend does edge
    /// triggering.
    pub(crate) fn registration(&self, fd: RawFd) -> io::Result<Rc<FdState>> {
        let st = self.state(fd);
        if !st.registered.get() {
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
                    self.drop_state(&st);
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
        if let Ok(st) = self.registration(fd) {
            st.ready.set(What::WRITE.bits());
        }
    }

    /// Drops this thread's state of `fd` (its socket is handed out as a std socket or raw fd,
    /// and stays open): its waiters get `EBADF`, its registration goes.
    pub(crate) fn release(&self, fd: RawFd) {
        if let Some(st) = self.find(fd) {
            self.end_state(&st);
        }
    }

    /// Ends any state of `fd` this reactor keeps that is not current (made for an older fd of
    /// the number).
    fn sweep_fd(&self, fd: RawFd) {
        let stale = {
            let states = self.states.borrow();
            let local = fd_table::get(fd).and_then(|slot| {
                let owner = slot.owner.load(Ordering::Acquire);
                (self.id != 0 && owner >> 32 == u64::from(self.id))
                    .then(|| states.get(owner as u32 as usize).cloned())
                    .flatten()
                    .filter(|s| s.fd == fd)
            });
            let foreign = self.foreign.borrow().get(&fd).cloned();
            [local, foreign]
        };
        for st in stale.into_iter().flatten() {
            self.end_state(&st);
        }
    }

    /// Removes a state with nothing left on it (no registration, no waiter).
    fn drop_state(&self, st: &Rc<FdState>) {
        self.unlink(st);
    }

    /// Takes `st` out of the reactor's lists and the fd table (if it is still there); its
    /// memory goes with the last `Rc`.
    fn unlink(&self, st: &FdState) {
        let index = st.index.replace(usize::MAX);
        if index != usize::MAX {
            let mut states = self.states.borrow_mut();
            if states
                .get(index)
                .is_some_and(|s| std::ptr::eq(Rc::as_ptr(s), st))
            {
                let removed = states.swap_remove(index);
                if let Some(slot) = fd_table::get(st.fd) {
                    let word = (u64::from(self.id) << 32) | index as u64;
                    let _ =
                        slot.owner
                            .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
                if let Some(moved) = states.get(index) {
                    // The last state took the freed index: tell its slot.
                    let from = states.len();
                    moved.index.set(index);
                    if let Some(slot) = fd_table::get(moved.fd) {
                        let id = u64::from(self.id) << 32;
                        let _ = slot.owner.compare_exchange(
                            id | from as u64,
                            id | index as u64,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                    }
                }
                drop(states);
                drop(removed);
            }
        } else {
            let mut foreign = self.foreign.borrow_mut();
            if foreign
                .get(&st.fd)
                .is_some_and(|s| std::ptr::eq(Rc::as_ptr(s), st))
            {
                foreign.remove(&st.fd);
            }
        }
        self.doorbell_off_if_idle();
    }

    /// Ends a state: deletes its registration, takes it out of the lists and ends every wait
    /// on it with `EBADF` (through the ready queue: nothing runs here).
    fn end_state(&self, st: &Rc<FdState>) {
        if st.registered.replace(false) {
            if let Some(ev) = st.ev.get() {
                ev.del();
            }
        }
        let st = st.clone();
        self.unlink(&st);
        let mut waiters = Vec::new();
        st.readers.drain_into(&mut waiters);
        st.writers.drain_into(&mut waiters);
        st.once.drain_into(&mut waiters);
        for t in waiters {
            if let Some(t) = NonNull::new(t.cast_mut()) {
                // SAFETY: a listed token is a task suspended in its wait (its guard takes it
                // off before the wait returns or unwinds), hence alive; `end_wait` only queues.
                unsafe { (self.end_wait)(t, GONE) };
            }
        }
    }

    /// Whether this reactor's doorbell rang since its last sweep (clearing it: the caller
    /// sweeps).
    fn rung(&self) -> bool {
        self.id != 0
            && DOORBELLS[self.id as usize - 1]
                .rung
                .swap(false, Ordering::AcqRel)
    }

    /// Ends every state whose fd changed (the doorbell rang: a close elsewhere).
    fn sweep(&self) {
        let stale: Vec<Rc<FdState>> = {
            let states = self.states.borrow();
            let foreign = self.foreign.borrow();
            let me = u64::from(self.id) << 32;
            let local = states.iter().enumerate().filter(|(i, st)| {
                fd_table::get(st.fd).is_none_or(|slot| {
                    slot.owner.load(Ordering::Acquire) != me | *i as u64
                        || slot.generation.load(Ordering::Acquire) != st.generation
                })
            });
            local
                .map(|(_, st)| st.clone())
                .chain(
                    foreign
                        .values()
                        .filter(|st| fd_table::generation(st.fd) != st.generation)
                        .cloned(),
                )
                .collect()
        };
        for st in &stale {
            self.end_state(st);
        }
    }

    /// `fd` is closing (or its number now names another fd): ends this reactor's state of it.
    fn forget_local(&self, fd: RawFd, index: Option<usize>) {
        let local = index.and_then(|i| {
            let states = self.states.try_borrow().ok()?;
            states.get(i).filter(|s| s.fd == fd).cloned()
        });
        let foreign = match self.foreign.try_borrow() {
            Ok(f) if !f.is_empty() => f.get(&fd).cloned(),
            _ => None,
        };
        for st in [local, foreign].into_iter().flatten() {
            self.end_state(&st);
        }
    }

    fn doorbell_on(&self) {
        if self.efd >= 0 && !self.doorbell_added.get() && self.doorbell.add(None).is_ok() {
            self.doorbell_added.set(true);
        }
    }

    fn doorbell_off_if_idle(&self) {
        if self.doorbell_added.get() {
            let idle = self.states.try_borrow().is_ok_and(|s| s.is_empty())
                && self.foreign.try_borrow().is_ok_and(|f| f.is_empty());
            if idle {
                self.doorbell.del();
                self.doorbell_added.set(false);
            }
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.doorbell.del();
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
        if self.id != 0 {
            let d = &DOORBELLS[self.id as usize - 1];
            // Empty the counter so the next user starts without a stale ring.
            let mut buf = 0u64;
            // SAFETY: reads at most 8 bytes into `buf` from this doorbell's non-blocking
            // eventfd.
            unsafe { libc::read(self.efd, (&mut buf as *mut u64).cast(), 8) };
            d.rung.store(false, Ordering::Release);
            d.claimed.store(false, Ordering::Release);
        }
    }
}

/// `fd` is being closed, or its number now names a new fd: the single close path. Every layer
/// calls it before the fd goes (`io::close`, the `net` sockets' drop, the hooks' `close`,
/// `dup2`/`dup3` over an open fd, and every fd the hooks see created): it clears the hooks'
/// entry, bumps the generation, ends this thread's state of the fd (its waiters get `EBADF`,
/// its registration goes) and rings the doorbell of any other reactor that keeps some.
///
/// Allocates nothing and takes no lock; from a signal handler that interrupted the reactor
/// itself it leaves this thread's state for the generation check to find.
pub(crate) fn forget(fd: RawFd) {
    let Some(slot) = fd_table::get(fd) else {
        // Beyond the table: only a map of this thread's can know it.
        with_current(|r| r.forget_local(fd, None));
        return;
    };
    slot.bits.store(0, Ordering::Relaxed);
    slot.generation.fetch_add(1, Ordering::AcqRel);
    let owner = slot.owner.swap(0, Ordering::AcqRel);
    let shared = slot.flags.swap(0, Ordering::AcqRel) & SHARED != 0;
    let owner_id = (owner >> 32) as u32;
    let me = with_current(|r| {
        let mine = owner != 0 && owner_id == r.id;
        r.forget_local(fd, mine.then_some(owner as u32 as usize));
        r.id
    });
    if owner != 0 && Some(owner_id) != me {
        ring(owner_id);
    }
    if shared {
        ring_all(me.unwrap_or(0));
    }
}

/// The running thread's reactor's state of `fd`, if it has one (the hot path of evco's reads).
#[inline]
pub(crate) fn find(fd: RawFd) -> Option<Rc<FdState>> {
    with_current(|r| r.find(fd)).flatten()
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

/// The callback of every registration: ends the waits of the coroutines waiting for this edge.
unsafe extern "C" fn edge(_fd: sys::evutil_socket_t, what: c_short, arg: *mut c_void) {
    let ptr = arg as *const FdState;
    // SAFETY: `arg` is the state that owns this event; it is alive because its event is deleted
    // before it is freed, and nothing runs during this callback that could drop it (waits are
    // only ended here, coroutines are not resumed).
    let st = unsafe { &*ptr };
    // SAFETY: a state's reactor outlives its pending events.
    let reactor = unsafe { &*st.reactor };
    if st.generation != fd_table::generation(st.fd) {
        // The fd closed elsewhere and its number was reused before this reactor's sweep: the
        // edge is the new fd's, not for these waiters.
        reactor.end_state(&st.rc());
        return;
    }
    let what = What::from_bits(what);
    let mut bits = what.bits();
    if what.contains(What::CLOSED) {
        // Readable until the end: remember it past `note_drained`.
        bits |= What::CLOSED.bits() | What::READ.bits();
    }
    st.ready.set(st.ready.get() | bits);
    for dir in [What::READ, What::WRITE] {
        let hit = what.contains(dir) || (dir == What::READ && what.contains(What::CLOSED));
        if !hit {
            continue;
        }
        let waiters = st.waiters(dir);
        if !waiters.has_rest() {
            // The common case: at most one waiter, taken off the list here.
            let first = waiters.first.replace(std::ptr::null());
            if let Some(t) = NonNull::new(first.cast_mut()) {
                // SAFETY: a listed token is a task suspended in its wait, hence alive: its
                // guard takes it off the list before the wait returns or unwinds.
                unsafe { (reactor.end_wait)(t, dir.bits()) };
            }
            continue;
        }
        // Several waiters: gather them in the reactor's spare buffer (it and the list keep
        // their capacity, so there is no malloc per edge).
        let mut taken = std::mem::take(&mut *reactor.spare.borrow_mut());
        waiters.drain_into(&mut taken);
        for &t in &taken {
            if let Some(t) = NonNull::new(t.cast_mut()) {
                // SAFETY: as above; and no coroutine runs before the loop ends, so none of
                // them can be cancelled and freed meanwhile.
                unsafe { (reactor.end_wait)(t, dir.bits()) };
            }
        }
        taken.clear();
        *reactor.spare.borrow_mut() = taken;
    }
}

impl FdState {
    /// Another reference to this state (every state lives in an `Rc`).
    fn rc(&self) -> Rc<FdState> {
        // SAFETY: every `FdState` is made by `Rc::new` in `Reactor::state`, and `&self` proves
        // that allocation is alive for this call.
        unsafe {
            Rc::increment_strong_count(self);
            Rc::from_raw(self)
        }
    }
}

/// The doorbell's callback: a close on another thread changed an fd this reactor may keep
/// state for.
unsafe extern "C" fn doorbell(fd: sys::evutil_socket_t, _what: c_short, arg: *mut c_void) {
    let mut buf = 0u64;
    // SAFETY: reads at most 8 bytes into `buf` from the doorbell's non-blocking eventfd.
    unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
    // SAFETY: `arg` is the reactor, which deletes this event before it drops.
    let reactor = unsafe { &*(arg as *const Reactor) };
    reactor.rung();
    reactor.sweep();
}
