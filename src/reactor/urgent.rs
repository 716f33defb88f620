//! TCP urgent data. A read stops at the urgent mark (the byte sent with `MSG_OOB`), short, with
//! the data behind the mark already queued: for a registered socket, that short read would
//! count as "receive queue drained" (`FdState::note_drained`), and the reader would wait for an
//! edge that the data behind the mark never makes. libevent 2.1 cannot ask epoll for
//! `EPOLLPRI`, so each reactor keeps an epoll instance of its own, the urgent watch, made on
//! first use and watched by the loop as one fd: a registered socket is added to it (for
//! `EPOLLPRI`, edge-triggered) at its first short read. When urgent data arrives, the watch
//! marks the socket's state `URGENT` for good (its short reads never count as drained again:
//! it pays a `recv` that may say `EAGAIN` before each wait) and ends its readers' waits as a
//! readable edge would.
//!
//! The cost: one `epoll_ctl` per socket that ever reads short, none per message. An entry
//! names its fd and the fd's generation, never a pointer: a socket closed while another fd
//! still refers to its open file description (a `dup`) stays in the instance until that one
//! goes too, and an event of such an entry finds no current state and is dropped.

use std::os::fd::RawFd;
use std::os::raw::{c_short, c_void};
use std::rc::Rc;

use super::Reactor;
use super::state::{FdState, TRIED, URGENT, WATCHED, edge};
use crate::event::What;
use crate::sys;

/// Most urgent-watch events taken in one `epoll_wait`.
const BATCH: usize = 32;

impl FdState {
    /// The socket's first short read: adds it to its reactor's urgent watch (see the module
    /// docs). Marked `TRIED` even when that fails (no epoll instance can be made): the socket
    /// then goes without, and its next short read does not try again.
    #[cold]
    #[inline(never)]
    pub(super) fn watch_urgent(&self) {
        self.ready.set(self.ready.get() | TRIED);
        if !self.registered.get() {
            // Not edge-driven: its reads never skip a `recv`, so it has nothing to fear.
            return;
        }
        // SAFETY: a state's reactor outlives it while it is registered (`end_state` and the
        // reactor's drop end registrations first).
        let reactor = unsafe { &*self.reactor };
        let Some(ep) = reactor.urgent_watch() else {
            return;
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLPRI | libc::EPOLLET) as u32,
            u64: (u64::from(self.generation) << 32) | u64::from(self.fd as u32),
        };
        // SAFETY: `ev` is a valid epoll_event; `ep` is the reactor's epoll instance. The same
        // open file description under this fd number may be in it already (a state of it that
        // was released and made again): then its entry is brought up to date.
        let r = unsafe {
            let mut r = libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, self.fd, &mut ev);
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                r = libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, self.fd, &mut ev);
            }
            r
        };
        if r == 0 {
            self.ready.set(self.ready.get() | WATCHED);
            reactor.watched.set(reactor.watched.get() + 1);
            if reactor.watched.get() == 1 {
                let _ = reactor.urgent_ev.add(None);
            }
        }
    }

    /// Takes the socket out of the urgent watch: it stays open, handed out of evco (closed
    /// sockets leave the instance by themselves).
    pub(super) fn unwatch_urgent(&self) {
        if self.ready.get() & WATCHED == 0 {
            return;
        }
        // SAFETY: as in `watch_urgent`.
        let reactor = unsafe { &*self.reactor };
        let ep = reactor.urgent_fd.get();
        if ep >= 0 {
            // SAFETY: EPOLL_CTL_DEL takes no event; a socket not in the instance is ENOENT.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, self.fd, std::ptr::null_mut()) };
        }
        reactor.left_urgent_watch(self);
    }
}

impl Reactor {
    /// The urgent watch's epoll instance, made (and its event added to the loop) on first use;
    /// `None` when it cannot be made (`EMFILE`).
    fn urgent_watch(&self) -> Option<RawFd> {
        let ep = self.urgent_fd.get();
        if ep >= 0 {
            return Some(ep);
        }
        // SAFETY: epoll_create1 has no memory preconditions.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            log::warn!(
                "evco: no epoll instance for the urgent-data watch ({}): a read that stops at \
                 an urgent mark may wait for the next data",
                std::io::Error::last_os_error()
            );
            return None;
        }
        self.urgent_fd.set(ep);
        let arg = self as *const Reactor as *mut c_void;
        // SAFETY: the base outlives the reactor, which deletes this event before it drops (or
        // closes `ep`) and does not move while it lives.
        unsafe {
            self.urgent_ev
                .assign(self.base, ep, What::READ | What::PERSIST, urgent, arg)
        };
        Some(ep)
    }

    /// `st` leaves the reactor (or the watch): it no longer counts as watched, and the watch's
    /// event leaves the loop with the last watched state (so that an idle scheduler's loop
    /// still reports that it has no events).
    pub(super) fn left_urgent_watch(&self, st: &FdState) {
        if st.ready.get() & WATCHED == 0 {
            return;
        }
        st.ready.set(st.ready.get() & !WATCHED);
        let left = self.watched.get().saturating_sub(1);
        self.watched.set(left);
        if left == 0 {
            self.urgent_ev.del();
        }
    }

    /// Ends the urgent watch (a forked child's is the parent's instance): its event leaves the
    /// loop, its fd is closed, and every state forgets it was in it (a later short read adds
    /// it to a new one).
    pub(super) fn drop_urgent_watch(&self) {
        let ep = self.urgent_fd.replace(-1);
        if ep < 0 {
            return;
        }
        self.urgent_ev.reset();
        self.watched.set(0);
        let _ = crate::os::close(ep);
        let states = self.states.borrow();
        let foreign = self.foreign.borrow();
        for st in states.iter().chain(foreign.values()) {
            st.ready.set(st.ready.get() & !(WATCHED | TRIED));
        }
    }
}

/// The urgent watch's callback: urgent data arrived on the sockets it reports.
unsafe extern "C" fn urgent(ep: sys::evutil_socket_t, _what: c_short, arg: *mut c_void) {
    // SAFETY: `arg` is the reactor, which deletes this event before it drops.
    let reactor = unsafe { &*(arg as *const Reactor) };
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        // SAFETY: `events` has room for BATCH entries; a zero timeout never blocks.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), BATCH as i32, 0) };
        if n <= 0 {
            return;
        }
        for e in &events[..n as usize] {
            let (fd, generation) = (e.u64 as u32 as RawFd, (e.u64 >> 32) as u32);
            let Some(st) = reactor
                .find(fd)
                .filter(|s| s.generation == generation && s.registered.get())
            else {
                continue;
            };
            st.ready.set(st.ready.get() | URGENT);
            // SAFETY: `st` is a live registered state (held by the `Rc` here), as `edge`
            // expects of its argument; it runs outside any coroutine, as from the loop.
            unsafe { edge(fd, What::READ.bits(), Rc::as_ptr(&st) as *mut c_void) };
        }
        if (n as usize) < BATCH {
            return;
        }
    }
}
