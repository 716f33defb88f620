//! The one close path, [`forget`], and how a close reaches another thread's reactor: its
//! doorbell (see "A close on another thread" in the module docs), and the sweep that ends the
//! states whose fds changed.

use std::os::fd::RawFd;
use std::os::raw::{c_short, c_void};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use super::state::FdState;
use super::{GONE, Reactor, with_current};
use crate::fd_table::{self, CLOSING};
use crate::sys;

/// Most reactors (threads with a scheduler) that have a doorbell at once. More still work,
/// with their states in their own maps (`foreign`) and no doorbell: a close on another thread
/// does not reach them, so a wait of theirs on an fd closed elsewhere ends only by its timeout
/// (or never), and a state of theirs goes stale until the number is met again.
const MAX_REACTORS: usize = 1024;

/// A reactor's cross-thread wake-up: an eventfd made on first use and kept for the process's
/// life (see "A close on another thread").
struct Doorbell {
    claimed: AtomicBool,
    /// Set by every ring, cleared by the sweep it asks for: a reactor about to make a new state
    /// sweeps first when it is set, without waiting for its loop to read the eventfd.
    rung: AtomicBool,
    /// The eventfd plus one; 0 before it is made (or once it was found closed).
    efd: AtomicI32,
    /// The eventfd's device and inode (see `os::file_identity`), to tell it from an fd that took its
    /// number.
    ident: AtomicU64,
}

static DOORBELLS: [Doorbell; MAX_REACTORS] = [const {
    Doorbell {
        claimed: AtomicBool::new(false),
        rung: AtomicBool::new(false),
        efd: AtomicI32::new(0),
        ident: AtomicU64::new(0),
    }
}; MAX_REACTORS];

/// Gives doorbell `id` (eventfd `efd`) back for the next reactor, its counter emptied so that
/// it starts without a stale ring. Nothing for id 0.
pub(super) fn release_doorbell(id: u32, efd: RawFd) {
    let Some(d) = (id as usize).checked_sub(1).and_then(|i| DOORBELLS.get(i)) else {
        return;
    };
    let _ = drain_doorbell(d, efd);
    d.rung.store(false, Ordering::Release);
    d.claimed.store(false, Ordering::Release);
}

/// In a forked child, on the thread that forked: the doorbells of the parent's other threads
/// (which do not exist here) are released, the child's copies of their eventfds closed; `keep`'s
/// eventfd is shared with the parent's thread, so it gets a new one. Returns that new eventfd
/// (or -1 when none can be made: the reactor then goes without).
pub(super) fn doorbells_after_fork(keep: u32) -> RawFd {
    let mut new = -1;
    for (i, d) in DOORBELLS.iter().enumerate() {
        let efd = d.efd.load(Ordering::Acquire) - 1;
        if efd >= 0 && crate::os::file_identity(efd) == Some(d.ident.load(Ordering::Acquire)) {
            // The child's copy of an eventfd evco made (the parent keeps its own).
            let _ = crate::os::close(efd);
        }
        d.efd.store(0, Ordering::Release);
        d.rung.store(false, Ordering::Release);
        if i as u32 + 1 != keep {
            d.claimed.store(false, Ordering::Release);
            continue;
        }
        // SAFETY: eventfd has no memory preconditions.
        let made = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if let Some(ident) = (made >= 0)
            .then(|| crate::os::file_identity(made))
            .flatten()
        {
            d.ident.store(ident, Ordering::Release);
            d.efd.store(made + 1, Ordering::Release);
            new = made;
        }
    }
    new
}

/// Empties doorbell `d`'s counter if `efd` is still its eventfd (see `ring`); false if it is
/// not.
fn drain_doorbell(d: &Doorbell, efd: RawFd) -> bool {
    if crate::os::file_identity(efd) != Some(d.ident.load(Ordering::Acquire)) {
        return false;
    }
    let mut buf = 0u64;
    // SAFETY: reads at most 8 bytes into `buf` from this doorbell's non-blocking eventfd.
    unsafe { libc::read(efd, (&mut buf as *mut u64).cast(), 8) };
    true
}

/// Rings reactor `id`'s doorbell (async-signal-safe: atomics, `fstat` and `write`). The
/// eventfd is checked to be the one claimed (its device and inode): a program that closed it
/// behind evco's back (`close_range`, `closefrom`) may have another fd at its number, which must
/// not get evco's 8 bytes; such a doorbell is retired and rings no more.
fn ring(id: u32) {
    let Some(d) = (id as usize).checked_sub(1).and_then(|i| DOORBELLS.get(i)) else {
        return;
    };
    d.rung.store(true, Ordering::Release);
    let efd = d.efd.load(Ordering::Acquire) - 1;
    if efd < 0 {
        return;
    }
    if crate::os::file_identity(efd) != Some(d.ident.load(Ordering::Acquire)) {
        // Not the eventfd made for it any more: never write there again. (Its reactor still
        // sweeps on its rung flag when it next makes a state or sees an edge.)
        d.efd.store(0, Ordering::Release);
        return;
    }
    let one = 1u64;
    // SAFETY: `efd` is the eventfd this module made (checked just above); the write of one
    // 8-byte counter increment reads only `one`.
    unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
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
pub(super) fn claim_doorbell() -> (u32, RawFd) {
    for (i, d) in DOORBELLS.iter().enumerate() {
        if d.claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let mut efd = d.efd.load(Ordering::Acquire) - 1;
        if efd >= 0 && crate::os::file_identity(efd) != Some(d.ident.load(Ordering::Acquire)) {
            // Closed behind evco's back since its last user: the number is not ours (and is
            // not closed here either); make a new one.
            d.efd.store(0, Ordering::Release);
            efd = -1;
        }
        if efd < 0 {
            // SAFETY: eventfd has no memory preconditions.
            efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            let Some(ident) = (efd >= 0).then(|| crate::os::file_identity(efd)).flatten() else {
                d.claimed.store(false, Ordering::Release);
                return (0, -1);
            };
            d.ident.store(ident, Ordering::Release);
            d.efd.store(efd + 1, Ordering::Release);
        }
        return (i as u32 + 1, efd);
    }
    (0, -1)
}

/// `fd` is about to be closed: the single close path. Every layer calls it before the fd goes
/// (`io::close`, the `net` sockets' drop, the hooks' `close`), and [`closed`] after: it clears
/// the hooks' entry, bumps the generation, marks the fd `CLOSING` (a wait that starts on it
/// until `closed` fails `EBADF` instead of waiting on a dying fd), ends this thread's state of
/// the fd (its waiters get `EBADF`, its registration goes) and rings the doorbell of any other
/// reactor that keeps some.
///
/// It takes no lock, and it is async-signal-safe: a signal handler may close an fd (POSIX says
/// it can) that a coroutine of the interrupted thread waits on, wherever the handler
/// interrupted the thread. This thread's states are ended here only where that is safe: the
/// thread runs a coroutine's own code, not evco's (see `coroutine::Busy`), and none of the
/// reactor's lists is borrowed. Anywhere else (the scheduler's loop, libevent, a switch, one of
/// evco's waits, plain thread code) `forget` leaves the slot's atomics changed and rings this
/// reactor's own doorbell: its loop sweeps the state on its next turn, and the waiters get
/// `EBADF` then. (A reactor without a doorbell, past the 1,024th, cannot be rung: its waits on
/// an fd closed there end by their timeout.)
pub(crate) fn forget(fd: RawFd) -> Closing {
    Closing {
        fd,
        generation: forget_as(fd, CLOSING),
    }
}

/// A close under way: [`forget`] made it, [`closed`] ends it.
#[must_use = "a close ends with `reactor::closed`, after the close system call"]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Closing {
    fd: RawFd,
    /// The generation the close gave the number (`None`: the fd has no slot).
    generation: Option<u32>,
}

/// The close that [`forget`] began is past its system call: waits on the number may start
/// again. Only this close's mark ends: if the number was made and closed again since (on
/// other threads, between this close's system call and now), that later close's mark stays,
/// or a wait starting before its system call would sleep on its dying fd.
pub(crate) fn closed(closing: Closing) {
    if let (Some(slot), Some(generation)) = (fd_table::get(closing.fd), closing.generation) {
        slot.end_closing(generation);
    }
}

/// `fd` is open and the caller's (a socket evco just made, or one handed to it): a `CLOSING`
/// mark on its number can only be an earlier fd's, whose close (on another thread) is past its
/// system call and has not reached [`closed`] yet. This ends the mark as `closed` will, or the
/// fd's first wait would take it for its own close (`EBADF`). Nothing else changes: waits on
/// this very fd go on. The hooks' [`renumbered`] does this (and more) for every fd they see
/// made; without the hooks, evco's sockets need it. One load when there is no mark.
pub(crate) fn adopted(fd: RawFd) {
    if let Some(slot) = fd_table::get(fd) {
        slot.end_any_closing();
    }
}

/// A new fd has the number `fd` (one the hooks saw created, or a `dup2` target): whatever evco
/// knew of an earlier fd with the number is forgotten, as by [`forget`], without `CLOSING`.
pub(crate) fn renumbered(fd: RawFd) {
    let _ = forget_as(fd, 0);
}

/// [`forget`] or [`renumbered`]: the slot's flags become `flags`. Returns the slot's new
/// generation (`None`: no slot).
fn forget_as(fd: RawFd, flags: u32) -> Option<u32> {
    // A close of an open fd maps the slot's chunk if it is the first fd of its range that evco
    // meets: a wait on another thread may map it right after this looked, claim the slot, find
    // neither a mark nor a new generation, and sleep on the closed fd with nobody to ring it (7
    // of 1,200 rounds of the racing-close stress on fresh chunks; CI met it once, in a first
    // round). Not for a number that is not open (no wait's open check can pass on it; a
    // daemon's `close` of every number up to its limit would map the whole table, 24 bytes a
    // number, for good), nor for a new fd's number (`renumbered`): no state can have claimed a
    // slot that is not there.
    let slot = fd_table::get(fd).or_else(|| {
        (flags & CLOSING != 0 && crate::os::fd_is_open(fd))
            .then(|| fd_table::get_or_grow(fd))
            .flatten()
    });
    let Some(slot) = slot else {
        // Beyond the table (or no memory for its chunk): only a map of this thread's can know
        // it.
        with_current(|r| r.forget_local(fd, None));
        return None;
    };
    slot.bits.store(0, Ordering::Relaxed);
    // `CLOSING` and the generation first, the owner word last: a state that claims the slot
    // after this `forget` cleared it must see the mark (or the generation) in its check; with
    // the mark set after the swap, one that read the new generation claimed the slot in
    // between, saw neither, and its wait slept on a closed fd (1 wait in ~64,000 of the
    // racing-close stress).
    let (shared, generation) = slot.bump(flags);
    let owner = slot.owner.swap(0, Ordering::AcqRel);
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
    Some(generation)
}

impl Reactor {
    /// Ends any state of `fd` this reactor keeps that is not current (made for an older fd of
    /// the number).
    pub(super) fn sweep_fd(&self, fd: RawFd) {
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

    /// Takes `st` out of the reactor's lists and the fd table (if it is still there); its
    /// memory goes with the last `Rc`.
    pub(super) fn unlink(&self, st: &FdState) {
        self.left_urgent_watch(st);
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
    pub(super) fn end_state(&self, st: &Rc<FdState>) {
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
    pub(super) fn rung(&self) -> bool {
        // A load first: the edge callback asks on every edge, and a ring is rare.
        self.id != 0 && {
            let rung = &DOORBELLS[self.id as usize - 1].rung;
            rung.load(Ordering::Relaxed) && rung.swap(false, Ordering::AcqRel)
        }
    }

    /// Ends every state whose fd changed (the doorbell rang: a close elsewhere).
    pub(super) fn sweep(&self) {
        let stale: Vec<Rc<FdState>> = {
            let states = self.states.borrow();
            let foreign = self.foreign.borrow();
            let me = u64::from(self.id) << 32;
            let local = states.iter().enumerate().filter(|(i, st)| {
                fd_table::get(st.fd).is_none_or(|slot| {
                    slot.owner.load(Ordering::Acquire) != me | *i as u64
                        || slot.generation() != st.generation
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

    /// `fd` is closing (or its number now names another fd): ends this reactor's state of it
    /// (the one at `index` of its list, and any in `foreign`), now where that is safe, else
    /// through the doorbell (see [`forget`]).
    pub(super) fn forget_local(&self, fd: RawFd, index: Option<usize>) {
        let foreign = match self.foreign.try_borrow() {
            Ok(f) => !f.is_empty() && f.contains_key(&fd),
            // Borrowed: the caller interrupted evco's own code; it may hold one.
            Err(_) => true,
        };
        if index.is_none() && !foreign {
            return;
        }
        if !self.may_end_now() {
            ring(self.id);
            return;
        }
        // From here on, evco's own code: a handler that interrupts it defers.
        let _busy = crate::coroutine::Busy::enter();
        let local = index.and_then(|i| self.states.borrow().get(i).filter(|s| s.fd == fd).cloned());
        let foreign = foreign
            .then(|| self.foreign.borrow().get(&fd).cloned())
            .flatten();
        for st in [local, foreign].into_iter().flatten() {
            self.end_state(&st);
        }
    }

    /// Whether states can be ended on this thread right now, even from a signal handler: it
    /// interrupted a coroutine's own code (not the scheduler, libevent, a switch or evco's own
    /// code, which mark themselves `Busy`), and no list of the reactor is borrowed.
    fn may_end_now(&self) -> bool {
        crate::coroutine::in_plain_body()
            && self.states.try_borrow_mut().is_ok()
            && self.foreign.try_borrow_mut().is_ok()
            && self.spare.try_borrow_mut().is_ok()
    }

    pub(super) fn doorbell_on(&self) {
        if self.efd.get() >= 0 && !self.doorbell_added.get() && self.doorbell.add(None).is_ok() {
            self.doorbell_added.set(true);
        }
    }

    pub(super) fn doorbell_off_if_idle(&self) {
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

/// The doorbell's callback: a close on another thread changed an fd this reactor may keep
/// state for.
pub(super) unsafe extern "C" fn doorbell(
    fd: sys::evutil_socket_t,
    _what: c_short,
    arg: *mut c_void,
) {
    // SAFETY: `arg` is the reactor, which deletes this event before it drops.
    let reactor = unsafe { &*(arg as *const Reactor) };
    if let Some(d) = (reactor.id as usize)
        .checked_sub(1)
        .and_then(|i| DOORBELLS.get(i))
    {
        if !drain_doorbell(d, fd) {
            // The eventfd was closed behind evco's back and the number is another fd's: stop
            // watching it (closes elsewhere reach this reactor through `rung` only, from now).
            reactor.doorbell.del();
            reactor.doorbell_added.set(false);
            reactor.efd.set(-1);
        }
    }
    reactor.rung();
    reactor.sweep();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A close of the first fd of its range that evco meets still marks the number and bumps
    /// its generation, mapping the slot's chunk: a wait on another thread that maps the chunk
    /// just after must see the close. Before, `forget` found no slot and left nothing, and such
    /// a wait slept on the closed fd until its timeout (7 of 1,200 first rounds on fresh
    /// chunks of the racing-close stress; once in CI). This thread has no reactor: only the
    /// table changes. Needs a hard `RLIMIT_NOFILE` above 8,192 (an fd in a range of its own).
    #[test]
    fn a_close_in_a_range_no_fd_was_met_in_still_marks_the_number() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write one rlimit of ours.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        let fd = (1..)
            .map(|chunk| chunk * 4096 + 17)
            .take_while(|&fd| (fd as libc::rlim_t) < lim.rlim_cur)
            .find(|&fd| fd_table::get(fd).is_none())
            .expect("RLIMIT_NOFILE leaves room for an fd in a range nothing has mapped");
        // SAFETY: eventfd and F_DUPFD_CLOEXEC make fds of ours; the first is closed at once.
        let fd = unsafe {
            let e = libc::eventfd(0, libc::EFD_CLOEXEC);
            assert!(e >= 0);
            let d = libc::fcntl(e, libc::F_DUPFD_CLOEXEC, fd);
            libc::close(e);
            assert_eq!(d, fd, "the number is free");
            d
        };
        assert_eq!(fd_table::generation_unless_closing(fd), Some(0));
        let closing = forget(fd);
        assert_eq!(
            fd_table::generation_unless_closing(fd),
            None,
            "a wait starting now sees the close under way"
        );
        crate::os::close(fd).unwrap();
        closed(closing);
        assert_eq!(
            fd_table::generation_unless_closing(fd),
            Some(1),
            "a wait that read generation 0 before the close sees it changed"
        );
    }

    /// A close of a number that is not open, or a new fd's number, in a range nothing has
    /// mapped maps nothing: a daemon that closes every number up to its limit must not pay 24
    /// bytes a number for good (1,048,576 closes grew the RSS by 24 MiB, found in review).
    #[test]
    fn closing_numbers_that_are_not_open_maps_no_table() {
        // Far above any fd the tests open (and the limit), in ranges of their own.
        let fd: RawFd = 4096 * 1000 + 17;
        closed(forget(fd));
        assert!(fd_table::get(fd).is_none());
        let other: RawFd = 4096 * 1001 + 17;
        renumbered(other);
        assert!(fd_table::get(other).is_none());
    }

    /// A close's end clears its own `CLOSING` mark only. Between a close's system call and its
    /// end, another thread can get the number and begin closing it too: the first close's end
    /// must leave that mark, or a wait that starts before the second close's system call reads
    /// the fd as open and unmarked, claims the slot after the closer looked at it, and sleeps
    /// on the dying fd. Before, `closed` cleared any mark. Table only, as above.
    #[test]
    fn the_end_of_an_earlier_close_leaves_a_later_closes_mark() {
        let fd: RawFd = 4096 * 1002 + 5;
        // A number evco has met (its slot exists), so no open fd is needed.
        assert!(fd_table::get_or_grow(fd).is_some());
        let first = forget(fd);
        // The number is made again (unseen: no hooks here) and a second close begins.
        let second = forget(fd);
        closed(first);
        assert_eq!(
            fd_table::generation_unless_closing(fd),
            None,
            "the second close is still under way"
        );
        closed(second);
        assert_eq!(fd_table::generation_unless_closing(fd), Some(2));
        // A number the hooks saw made in between: the earlier close's end changes nothing.
        let third = forget(fd);
        renumbered(fd);
        let fourth = forget(fd);
        closed(third);
        assert_eq!(fd_table::generation_unless_closing(fd), None);
        closed(fourth);
        assert_eq!(fd_table::generation_unless_closing(fd), Some(5));
    }
}
