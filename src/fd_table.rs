//! The process-wide fd table: one slot of atomics per file descriptor number, shared by every
//! thread, grown on demand.
//!
//! A slot says three things about the fd that currently has its number:
//!
//! - `bits`: what the hooks know (a socket this process created, its kind, whether the program
//!   made it non-blocking, its `SO_RCVTIMEO`/`SO_SNDTIMEO`); 0 for an fd the hooks never saw
//!   created. Written only by the hooks (`crate::hook`); always 0 without them.
//! - `generation`: how many times the number was created or closed. Per-thread state made for
//!   an fd records the generation it was made under; a different one means the fd it was made
//!   for is gone, whoever closed it (see `crate::reactor`).
//! - `owner`: which thread's reactor keeps state (an edge registration, waiters) for the fd, and
//!   where in that reactor: `reactor id << 32 | index`, 0 for none. Only the owning reactor
//!   reads the index; any thread may clear the word when it closes the fd, and then knows whose
//!   doorbell to ring (`crate::reactor`). `SHARED` in the flags says a second reactor keeps
//!   state for the fd too, `CLOSING` that it is being closed.
//!
//! The generation and the flags share one word (`gen_flags`: generation `<< 32 | flags`), so
//! that a close's end clears its own `CLOSING` mark and never a later close's: between a close's
//! system call and the end of its close path, another thread may get the number, and close it
//! too; the first close's end must then leave the second's mark alone, or a wait that starts in
//! between would sleep on the dying fd. A compare-and-swap on one word says both at once.
//!
//! # Layout
//!
//! A static array of chunk pointers (zero pages until touched), each chunk `CHUNK` slots mapped
//! with `mmap` when the first fd in its range is recorded: memory follows the fds in use, never
//! the highest number seen, and growing is async-signal-safe (no `malloc`), so a hook can record
//! an fd from a signal handler. The kernel keeps fd numbers below `RLIMIT_NOFILE`, so chunks
//! never go past it; fds at or above [`MAX_FDS`] (beyond any `fs.nr_open` in practice) get no
//! slot, and every hook passes them straight to libc. Chunks are never unmapped.
//!
//! # Ordering
//!
//! Loads and stores are `Relaxed` except where a closer hands a slot over (`take_owner`, the
//! generation bump): an fd used by two threads at once without synchronisation is the
//! program's race, as it would be without evco; what evco guarantees is that the state one
//! thread made for a number is never used by that thread for a later fd of the same number.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Fds at or above this have no slot (see "Layout").
pub const MAX_FDS: usize = 1 << 26;
/// Slots per chunk.
const CHUNK: usize = 4096;
const CHUNKS: usize = MAX_FDS / CHUNK;

/// `flags`: more than one reactor keeps state for this fd (its closer rings every doorbell).
pub(crate) const SHARED: u32 = 1;
/// `flags`: the fd is being closed (between `reactor::forget` and `reactor::closed`): a wait
/// that starts now would wait on a dying fd.
pub(crate) const CLOSING: u32 = 2;

/// One fd number's entry. See the module docs.
#[repr(C)]
pub(crate) struct Slot {
    pub(crate) bits: AtomicU64,
    pub(crate) owner: AtomicU64,
    /// The generation `<< 32 | flags` (see "Layout" in the module docs).
    gen_flags: AtomicU64,
}

impl Slot {
    /// How many times the number was created or closed (wrapping).
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        (self.gen_flags.load(Ordering::Acquire) >> 32) as u32
    }

    /// The generation, or `None` while a close of the fd is under way.
    #[inline]
    pub(crate) fn generation_unless_closing(&self) -> Option<u32> {
        let w = self.gen_flags.load(Ordering::Acquire);
        (w as u32 & CLOSING == 0).then_some((w >> 32) as u32)
    }

    /// Marks the slot `SHARED` (a second reactor keeps state for the fd).
    pub(crate) fn mark_shared(&self) {
        self.gen_flags.fetch_or(u64::from(SHARED), Ordering::AcqRel);
    }

    /// Starts a close (`flags` is `CLOSING`) or a renumbering (0): the generation moves on and
    /// the flags become `flags`, in one step. Returns whether the slot was `SHARED` and the new
    /// generation.
    pub(crate) fn bump(&self, flags: u32) -> (bool, u32) {
        let mut w = self.gen_flags.load(Ordering::Relaxed);
        loop {
            let generation = ((w >> 32) as u32).wrapping_add(1);
            let new = (u64::from(generation) << 32) | u64::from(flags);
            match self
                .gen_flags
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return (w as u32 & SHARED != 0, generation),
                Err(now) => w = now,
            }
        }
    }

    /// Ends the `CLOSING` mark of the close that made `generation` (see [`bump`]), unless the
    /// number has moved on since: a later close's mark stays.
    ///
    /// [`bump`]: Slot::bump
    pub(crate) fn end_closing(&self, generation: u32) {
        let mut w = self.gen_flags.load(Ordering::Acquire);
        while (w >> 32) as u32 == generation && w as u32 & CLOSING != 0 {
            match self.gen_flags.compare_exchange_weak(
                w,
                w & !u64::from(CLOSING),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }

    /// Ends whatever `CLOSING` mark the slot has: the caller holds an open fd with the number,
    /// so the mark is an earlier fd's, whose close is past its system call.
    pub(crate) fn end_any_closing(&self) {
        if self.gen_flags.load(Ordering::Relaxed) & u64::from(CLOSING) != 0 {
            self.gen_flags
                .fetch_and(!u64::from(CLOSING), Ordering::AcqRel);
        }
    }
}

static CHUNK_PTRS: [AtomicPtr<Slot>; CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS];
/// One more than the highest chunk index ever mapped (bounds the scan after a fork).
static CHUNKS_SEEN: AtomicUsize = AtomicUsize::new(0);

fn split(fd: RawFd) -> Option<(usize, usize)> {
    let i = usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)?;
    Some((i / CHUNK, i % CHUNK))
}

/// `fd`'s slot, if its chunk exists: never allocates (the hooks' pass-through path and every
/// lookup). A missing slot reads as all zeros.
#[inline]
pub(crate) fn get(fd: RawFd) -> Option<&'static Slot> {
    let (c, i) = split(fd)?;
    let chunk = CHUNK_PTRS[c].load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: a non-null chunk pointer is a mapping of `CHUNK` zero-initialised slots that is
    // never unmapped (`grow`), and `i < CHUNK`; slots are only accessed through atomics.
    Some(unsafe { &*chunk.add(i) })
}

/// `fd`'s slot, mapping its chunk when it is the first fd of its range: `None` only for a
/// negative fd, one at or above [`MAX_FDS`], or when the kernel refuses the mapping.
pub(crate) fn get_or_grow(fd: RawFd) -> Option<&'static Slot> {
    if let Some(s) = get(fd) {
        return Some(s);
    }
    let (c, i) = split(fd)?;
    let chunk = grow(c)?;
    // SAFETY: as in `get`.
    Some(unsafe { &*chunk.add(i) })
}

#[cold]
fn grow(c: usize) -> Option<*mut Slot> {
    let bytes = CHUNK * size_of::<Slot>();
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; mmap is
    // async-signal-safe in practice (a system call), unlike malloc.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // Zeroed pages are valid slots: every field is an atomic integer whose zero means "nothing
    // known".
    let fresh = p.cast::<Slot>();
    match CHUNK_PTRS[c].compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            CHUNKS_SEEN.fetch_max(c + 1, Ordering::AcqRel);
            Some(fresh)
        }
        Err(won) => {
            // Another thread mapped it first: use theirs.
            // SAFETY: `p` is the mapping made above, never published.
            unsafe { libc::munmap(p, bytes) };
            Some(won)
        }
    }
}

/// The hooks' bits for `fd` (0: not a socket this process created, as far as they know).
#[cfg(any(test, all(feature = "hook", target_os = "linux")))]
#[inline]
pub(crate) fn bits(fd: RawFd) -> u64 {
    get(fd).map_or(0, |s| s.bits.load(Ordering::Relaxed))
}

/// `fd`'s generation (0 for a number never recorded).
#[inline]
pub(crate) fn generation(fd: RawFd) -> u32 {
    get(fd).map_or(0, Slot::generation)
}

/// `fd`'s generation for a wait about to start on it, or `None` while a close of it is under
/// way (`CLOSING`). A close marks the slot as it bumps the generation (one word): a generation
/// read here that is already the close's own comes with the mark still set (or cleared only
/// after the fd was closed, which the caller's open check then sees). Without this, a wait that read
/// the new generation, found the fd still open, and claimed the slot after the close had
/// finished saw nothing stale and slept on a closed fd (1 wait in ~60,000 of the racing-close
/// stress test).
pub(crate) fn generation_unless_closing(fd: RawFd) -> Option<u32> {
    get(fd).map_or(Some(0), Slot::generation_unless_closing)
}

/// In a forked child: ends every `CLOSING` mark. A mark is its closing thread's to end, and
/// only the forking thread exists in the child: a close another thread had under way at the
/// fork (past its system call, the number free) would otherwise leave its mark for good, and
/// every wait on a later fd with the number, made where evco does not see (an `eventfd`, an
/// `epoll_create`), would fail `EBADF` for the child's whole life. Async-signal-safe (atomics
/// only), as a child handler of a multi-threaded parent must be.
extern "C" fn end_closing_after_fork() {
    let seen = CHUNKS_SEEN.load(Ordering::Acquire).min(CHUNKS);
    for c in &CHUNK_PTRS[..seen] {
        let chunk = c.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        for i in 0..CHUNK {
            // SAFETY: as in `get`: a mapped chunk of `CHUNK` slots, never unmapped.
            unsafe { &*chunk.add(i) }.end_any_closing();
        }
    }
}

/// Registers [`end_closing_after_fork`] before `main`, before any close can mark a slot, and
/// before evco's other child handlers (which run after it, in registration order).
// SAFETY: `.init_array` entries are called once before `main` with `(argc, argv, envp)`, which
// an `extern "C" fn()` ignores under the C calling convention; pthread_atfork is fine then.
#[used]
#[unsafe(link_section = ".init_array")]
static END_CLOSING_AFTER_FORK: extern "C" fn() = register_after_fork;

extern "C" fn register_after_fork() {
    // SAFETY: registers a child handler that only touches atomics; no other preconditions.
    unsafe { libc::pthread_atfork(None, None, Some(end_closing_after_fork)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped_chunks() -> usize {
        CHUNK_PTRS
            .iter()
            .filter(|c| !c.load(Ordering::Relaxed).is_null())
            .count()
    }

    #[test]
    fn a_high_fd_maps_one_chunk_not_everything_below_it() {
        let before = mapped_chunks();
        let fd = (CHUNK * 300 + 7) as RawFd;
        assert!(get(fd).is_none(), "nothing maps that range yet");
        let slot = get_or_grow(fd).expect("slot");
        slot.bits.store(5, Ordering::Relaxed);
        assert_eq!(bits(fd), 5);
        assert_eq!(bits(fd + 1), 0, "a neighbour reads as nothing known");
        assert!(mapped_chunks() <= before + 1, "one chunk for one fd");
        assert!(
            get((CHUNK * 299) as RawFd).is_none(),
            "the range below stays unmapped"
        );
        assert!(get_or_grow(-1).is_none() && get_or_grow(MAX_FDS as RawFd).is_none());
        slot.bits.store(0, Ordering::Relaxed);
    }
}
