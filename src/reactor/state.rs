//! What a reactor keeps for one fd: [`FdState`] with its waiter lists ([`Waiters`]), a
//! waiting coroutine's place on them ([`Enlisted`]), and `edge`, the callback of a socket's
//! persistent registration (see "Registered sockets" in the module docs).

use std::cell::{Cell, OnceCell};
use std::io;
use std::os::fd::RawFd;
use std::os::raw::{c_short, c_void};
use std::ptr::NonNull;

use super::Reactor;
use crate::event::{RawCallback, RawEvent, What};
use crate::fd_table;
use crate::sys;

/// The coroutines waiting for one direction's next edge of a registered socket (or, for
/// `once`, for their own one-shot events). The first one sits in a cell: one coroutine per
/// socket and direction is the common case, and it costs no list operation on either side. More
/// (several coroutines sharing a socket) go in a list, boxed so that a socket that never had two
/// waiters carries one null word for it; once made, the list keeps its capacity.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Waiters {
    pub(super) first: Cell<*const ()>,
    // Boxed on purpose: one word in the state's hot bytes instead of a `Vec`'s three.
    #[allow(clippy::box_collection)]
    pub(super) rest: Cell<Option<Box<Vec<*const ()>>>>,
}

impl Waiters {
    #[inline]
    pub(super) fn push(&self, token: *const ()) {
        if self.first.get().is_null() {
            self.first.set(token);
        } else {
            self.push_rest(token);
        }
    }

    #[cold]
    #[inline(never)]
    fn push_rest(&self, token: *const ()) {
        let mut rest = self.rest.take().unwrap_or_default();
        rest.push(token);
        self.rest.set(Some(rest));
    }

    #[inline]
    pub(super) fn remove(&self, token: *const ()) {
        if std::ptr::eq(self.first.get(), token) {
            self.first.set(std::ptr::null());
        } else {
            self.remove_rest(token);
        }
    }

    #[cold]
    #[inline(never)]
    fn remove_rest(&self, token: *const ()) {
        if let Some(mut rest) = self.rest.take() {
            if let Some(pos) = rest.iter().position(|&t| std::ptr::eq(t, token)) {
                rest.swap_remove(pos);
            }
            self.rest.set(Some(rest));
        }
    }

    /// Whether more than the first coroutine may be listed.
    #[inline]
    pub(super) fn has_rest(&self) -> bool {
        // SAFETY: a read through the cell's pointer: `Cell` never hands out references to its
        // contents, and nothing writes the cell during this expression (one thread, no call).
        unsafe { (*self.rest.as_ptr()).as_ref() }.is_some_and(|r| !r.is_empty())
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.first.get().is_null() && !self.has_rest()
    }

    /// Empties the list, appending its waiters to `into`.
    pub(super) fn drain_into(&self, into: &mut Vec<*const ()>) {
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

/// A bit of `FdState::ready` of evco's own (beside libevent's `What` bits): the socket's
/// first short read tried to add it to its reactor's urgent watch (see `urgent`).
pub(super) const TRIED: c_short = 0x1000;
/// A bit of `FdState::ready`: the socket is in its reactor's urgent watch.
pub(super) const WATCHED: c_short = 0x2000;
/// A bit of `FdState::ready`: urgent data arrived on the socket, so a short read no longer
/// means its receive queue is drained (see `urgent`).
pub(super) const URGENT: c_short = 0x4000;

/// What this thread knows about one fd. See the module docs.
///
/// `repr(C)`, fields in the order an edge touches them: with the `Rc` counts in front, what an
/// edge and a wait read and write spans the first cache line or two.
#[repr(C)]
pub(crate) struct FdState {
    /// Directions that may be ready: set by every edge, cleared when the socket said `EAGAIN`
    /// (a wait) or a read came back short (`note_drained`). With a clear bit, the next
    /// operation in that direction waits for an edge before it tries, saving a syscall that
    /// would only return `EAGAIN`. Also `TRIED`, `WATCHED` and `URGENT`.
    pub(super) ready: Cell<c_short>,
    /// The fd's generation when this was made (in the padding after `ready`).
    pub(super) generation: u32,
    pub(super) readers: Waiters,
    pub(super) writers: Waiters,
    /// The reactor that holds this state (it outlives every pending event of its states).
    pub(super) reactor: *const Reactor,
    pub(super) fd: RawFd,
    /// Whether `ev` is the socket's persistent registration (added).
    pub(super) registered: Cell<bool>,
    /// Its index in the reactor's `states`, or `usize::MAX` when it is in `foreign` or gone.
    pub(super) index: Cell<usize>,
    /// Coroutines waiting with one-shot events of their own.
    pub(super) once: Waiters,
    /// The registration's event, made when the socket is registered.
    pub(super) ev: OnceCell<RawEvent>,
}

impl FdState {
    #[inline]
    pub(super) fn waiters(&self, dir: What) -> &Waiters {
        if dir.contains(What::WRITE) {
            &self.writers
        } else {
            &self.readers
        }
    }

    /// Takes the state out of its reactor when nothing is left on it (no registration, no
    /// waiter): what a one-shot wait does as it ends, or when it could not start.
    #[inline]
    pub(crate) fn unlink_if_idle(&self) {
        if !self.registered.get()
            && self.once.is_empty()
            && self.readers.is_empty()
            && self.writers.is_empty()
        {
            // SAFETY: the reactor outlives its states' waits (a wait is only entered, and its
            // guard only dropped, while the scheduler that owns the reactor runs the coroutine;
            // a coroutine leaked with its scheduler is never resumed again).
            let reactor = unsafe { &*self.reactor };
            reactor.unlink(self);
        }
    }

    /// Whether the fd this state was made for is gone (closed, by evco or the hooks, on any
    /// thread): a wait on it that ended anyway saw another fd's readiness, or a closed fd's.
    pub(crate) fn is_stale(&self) -> bool {
        self.generation != fd_table::generation(self.fd)
    }

    /// Whether the socket is registered (waits on it go through edges).
    #[inline]
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
        let ready = self.ready.get();
        // After the peer's FIN, reads never wait again: EOF is always there to be read. After
        // urgent data, a short read may have stopped at its mark (see `urgent`).
        if ready & (What::CLOSED.bits() | URGENT) != 0 {
            return;
        }
        if ready & TRIED == 0 {
            self.watch_urgent();
        }
        self.ready.set(self.ready.get() & !What::READ.bits());
    }

    /// Lists `token` for the next `dir` edge (exactly one of READ or WRITE) until the guard
    /// goes. The caller just saw `EAGAIN`, so that direction is no longer ready.
    #[inline]
    pub(crate) fn enlist_edge(&self, dir: What, token: NonNull<()>) -> Enlisted<'_> {
        if self.ready.get() & What::CLOSED.bits() == 0 || dir != What::READ {
            self.ready.set(self.ready.get() & !dir.bits());
        }
        self.waiters(dir).push(token.as_ptr());
        Enlisted {
            state: self,
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
        &self,
        ev: &RawEvent,
        what: What,
        callback: RawCallback,
        token: NonNull<()>,
    ) -> io::Result<Enlisted<'_>> {
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
            state: self,
            token: token.as_ptr(),
            dir: None,
        })
    }
}

/// A coroutine's place on an fd state's list, for the length of one wait: dropping it (the wait
/// ended, or unwound) takes the coroutine off, and drops the state from the reactor when
/// nothing is left on it. It borrows the state from the waiter's `Rc`, which keeps it alive
/// across the wait even if a close takes it out of the reactor meanwhile.
pub(crate) struct Enlisted<'a> {
    state: &'a FdState,
    token: *const (),
    /// `None` for a one-shot wait.
    dir: Option<What>,
}

impl Drop for Enlisted<'_> {
    #[inline]
    fn drop(&mut self) {
        let st = self.state;
        match self.dir {
            Some(dir) => st.waiters(dir).remove(self.token),
            None => st.once.remove(self.token),
        }
        st.unlink_if_idle();
    }
}

/// The callback of every registration: ends the waits of the coroutines waiting for this edge.
pub(super) unsafe extern "C" fn edge(_fd: sys::evutil_socket_t, what: c_short, arg: *mut c_void) {
    let ptr = arg as *const FdState;
    // SAFETY: `arg` is the state that owns this event; it is alive because its event is deleted
    // before it is freed, and nothing runs during this callback that could drop it (waits are
    // only ended here, coroutines are not resumed).
    let st = unsafe { &*ptr };
    // SAFETY: a state's reactor outlives its pending events.
    let reactor = unsafe { &*st.reactor };
    if reactor.rung() {
        // A close on another thread may have made this state stale (its fd gone, the number
        // perhaps a new fd's): sweep first, and end here if it was. (The closer rings before
        // the fd is closed, so an edge seen before the ring was the old fd's own.)
        reactor.sweep();
        if !st.registered.get() {
            return;
        }
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
