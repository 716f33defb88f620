//! The stacks coroutines run on: [`Stack`] (a `generator` stack and the one-shot wait event
//! that goes with it), the per-thread pool finished stacks go back to, and `sentinel`, which
//! hands the bottom page of every new stack back to the kernel. The pool's invariants are in the
//! `coroutine` module docs, the bottom page's in `sentinel`'s.
//!
//! # The guard gap
//!
//! generator puts one 4 KiB guard page below each stack. Code built with stack probes (Rust,
//! and C with `-fstack-clash-protection`) touches every page of a large frame in turn and
//! faults in it; C code without them (gcc's default here) can move its stack pointer past a
//! whole page at once, and a frame with a 64 KiB array jumped over the guard into whatever
//! was mapped below, another coroutine's stack. So evco maps every stack [`GUARD_GAP`] larger
//! and makes its lowest `GUARD_GAP` no-access: a frame of up to that size that starts in the
//! stack faults in the gap, which generator's handler takes for an overflow of this stack (it
//! reports faults anywhere in the stack's mapping), and the coroutine ends with
//! `StackOverflow`. The gap costs address space, not memory, and no extra mapping (it and the
//! guard page are remapped as one no-access mapping, so a stack stays two mappings against
//! vm.max_map_count). Larger frames still need `-fstack-clash-protection`. The gap is only
//! made where `sentinel` confirmed the stack's layout; it is opened again before generator's
//! drop reads the stack's bottom.

use std::cell::{OnceCell, RefCell};
use std::io;
use std::panic::{self, AssertUnwindSafe};

use super::{Gen, QUIET_PANICS, enter_body, install_panic_hook};
use crate::event::RawEvent;

/// Finished stacks kept per thread for reuse.
const POOL_LIMIT: usize = 1024;

/// Wraps the body so `generator` accepts it. Sound because the generator never leaves the thread
/// that created it (see the `coroutine` module invariants).
struct AssertSend<F>(F);
// SAFETY: a `Core` is `!Send` and so is every handle on it; the body runs and is dropped on the
// thread that created it.
unsafe impl<F> Send for AssertSend<F> {}

/// A stack and the event storage that goes with it, reused together. `repr(C)`: the two
/// pointers a resume reads come first (see `Core`).
#[repr(C)]
pub(crate) struct Stack {
    pub(super) gn: Gen,
    /// generator's object, first thing at the top of this stack: resuming reads the registers
    /// it saved there (see [`Core::prefetch`](super::Core::prefetch)).
    pub(super) object: *const u8,
    /// The one-shot wait event of whatever coroutine runs on this stack (see "What a wait
    /// registers" in `scheduler::task`),
    /// made on the first one-shot wait on an fd: coroutines that only wait on registered
    /// sockets (evco's `net` types and hooked sockets on epoll) or only sleep never need one,
    /// and its 128 bytes (plus alignment) would be a fifth of an idle echo connection's heap.
    pub(super) wait: OnceCell<RawEvent>,
    bytes: usize,
    /// The lowest usable page, when its sentinel words were handed back to the kernel (see
    /// `sentinel`); they are written back before generator's drop reads them.
    released_bottom: *mut usize,
    /// The start of the guard gap (see "The guard gap"), or null when there is none.
    gap: *mut u8,
}

/// The no-access gap at the bottom of every stack (see "The guard gap").
pub const GUARD_GAP: usize = 64 * 1024;

/// What `guard_gap` returns when remapping failed part-way (the stack is unusable).
const GAP_FAILED: *mut u8 = usize::MAX as *mut u8;

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.gap.is_null() {
            // SAFETY: `gap` is the start of this stack's mapping's lowest GUARD_GAP bytes (see
            // `guard_gap`), still mapped: made accessible again for the sentinel and for
            // generator's drop, which read them.
            unsafe {
                libc::mprotect(
                    self.gap.cast(),
                    GUARD_GAP,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
        }
        if let Some(pattern) = sentinel::PATTERN.get().and_then(|p| p.as_deref()) {
            // SAFETY: `released_bottom` is null or the first word of this stack's lowest usable
            // page (validated in `sentinel::release`), mapped read-write until the generator
            // drops. evco only drops finished stacks (a suspended coroutine is cancelled first,
            // or its stack is leaked), so no live frame is overwritten.
            unsafe { sentinel::restore(self.released_bottom, pattern) };
        }
    }
}

thread_local! {
    static POOL: RefCell<Vec<Stack>> = const { RefCell::new(Vec::new()) };
}

fn words(bytes: usize) -> usize {
    // Even word counts keep generator's cheap (sampled) stack-usage tracking.
    (bytes / std::mem::size_of::<usize>()) & !1
}

impl Stack {
    /// A stack of `bytes` for `body`: from the pool when one of that size is there, else mmap.
    pub(super) fn take<F: FnOnce() + 'static>(bytes: usize, body: F) -> io::Result<Stack> {
        let body = AssertSend(body);
        let pooled = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().rposition(|s| s.bytes == bytes)?;
            Some(p.swap_remove(i))
        });
        if let Some(mut stack) = pooled {
            stack.gn.scoped_init(move |mut scope| {
                let body = body;
                enter_body(&mut scope);
                (body.0)()
            });
            return Ok(stack);
        }
        install_panic_hook();
        // generator panics when mmap/mprotect fail; turn that into an error that names the limit.
        QUIET_PANICS.with(|q| q.set(true));
        let made = panic::catch_unwind(AssertUnwindSafe(|| {
            generator::Gn::<()>::new_scoped_opt(words(bytes + GUARD_GAP), move |mut scope| {
                let body = body;
                enter_body(&mut scope);
                (body.0)()
            })
        }));
        QUIET_PANICS.with(|q| q.set(false));
        match made {
            Ok(mut gn) => {
                // Non-null local data tells generator not to re-raise a body's panic (or a stack
                // overflow) from `resume`, but to keep it for `get_panic_data`: no unwinding and
                // no `catch_unwind` on the switch path. The value is a flag, never dereferenced.
                gn.set_local_data(std::ptr::NonNull::<u8>::dangling().as_ptr());
                // Where generator put its object: the only way to the address is a round trip
                // through `into_raw`.
                let object = gn.into_raw();
                // SAFETY: `object` came from `into_raw` on this very type one line above and is
                // reclaimed exactly once, here; the address stays valid as long as `gn` lives
                // (the object sits on its own stack and never moves).
                let gn = unsafe { Gen::from_raw(object) };
                // Measured before the bottom page is released (reading it would map it again).
                let (stack_words, _) = gn.stack_usage();
                let released_bottom = sentinel::release(&gn, object);
                let gap = guard_gap(stack_words, object);
                if gap == GAP_FAILED {
                    // Its bottom may be gone: generator's drop would read it. Leak it.
                    std::mem::forget(gn);
                    return Err(io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        "cannot map a coroutine stack's guard gap",
                    ));
                }
                Ok(Stack {
                    gn,
                    object: object.cast_const().cast(),
                    wait: OnceCell::new(),
                    bytes,
                    released_bottom,
                    gap,
                })
            }
            Err(payload) => Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "cannot allocate a {} KiB coroutine stack ({}): {}",
                    bytes / 1024,
                    crate::event::panic_message(&*payload),
                    why_no_stack(bytes)
                ),
            )),
        }
    }

    /// Frees a suspended coroutine's stack without unwinding it (its thread is going and
    /// generator's own thread-locals may be gone): its wait event is deleted and freed, the
    /// mapping unmapped where its layout is known (a guard gap was made), else left mapped. The
    /// frames on it are never run again and their destructors never run. True when unmapped.
    pub(super) fn abandon(self) -> bool {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: each field is read out exactly once and `me` is never dropped.
        let (wait, gn) = unsafe { (std::ptr::read(&me.wait), std::ptr::read(&me.gn)) };
        drop(wait);
        // generator's drop would resume the body to unwind it: never run it.
        std::mem::forget(gn);
        if me.gap.is_null() {
            return false;
        }
        let top = (me.object as usize + 1).next_multiple_of(4096);
        let start = me.gap as usize - 4096;
        // SAFETY: `start..top` is this stack's whole mapping, generator's guard page included
        // (the layout `sentinel` checked against /proc/self/maps); nothing refers into it any
        // more: the generator object on it was forgotten above and its frames are abandoned.
        unsafe { libc::munmap(start as *mut libc::c_void, top - start) == 0 }
    }

    /// How many bytes of the stack have been touched (resident pages, from the lowest one up to
    /// the top): a high-water mark to the page, which for a pooled stack includes the use of the
    /// coroutines that ran on it before. 0 where the layout is unknown (no guard gap was made).
    pub(super) fn touched(&self) -> usize {
        if self.gap.is_null() {
            return 0;
        }
        let top = (self.object as usize + 1).next_multiple_of(4096);
        let bottom = self.gap as usize + GUARD_GAP;
        let pages = (top - bottom) / 4096;
        let mut resident = vec![0u8; pages];
        // SAFETY: `bottom..top` is this stack's usable read-write mapping (the layout `sentinel`
        // checked); mincore writes one byte per page into `resident`, which has `pages` bytes.
        let r = unsafe {
            libc::mincore(
                bottom as *mut libc::c_void,
                top - bottom,
                resident.as_mut_ptr(),
            )
        };
        if r != 0 {
            return 0;
        }
        resident
            .iter()
            .position(|&b| b & 1 != 0)
            .map_or(0, |lowest| (pages - lowest) * 4096)
    }

    /// Leaves a suspended coroutine's stack as it is, mapped, forever: its frames (C frames,
    /// which must never be unwound) may hold addresses that other code still uses. Only its
    /// wait event goes.
    pub(super) fn leak(self) {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: the wait event is read out exactly once and `me` is never dropped.
        drop(unsafe { std::ptr::read(&me.wait) });
    }

    /// Returns a finished stack to the pool (or frees it when the pool is full).
    pub(super) fn give_back(self) {
        // The pooled event must not remember a base that may be gone by its next use.
        if let Some(ev) = self.wait.get() {
            ev.reset();
        }
        // During the thread's exit the pool may be gone already (a bare coroutine in another
        // thread-local, dropped after it): the stack is freed instead.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_LIMIT {
                p.push(self);
            }
        });
    }
}

/// Makes the lowest [`GUARD_GAP`] bytes of a fresh stack of `words` words (generator's object
/// at `object`, at its top) no-access (see "The guard gap") and returns where they start; null, and nothing changed, unless `sentinel` confirmed the layout
/// (the bottom computed here is then the mapping's start, checked against /proc/self/maps).
fn guard_gap(words: usize, object: *mut usize) -> *mut u8 {
    if !sentinel::PATTERN.get().is_some_and(|p| p.is_some()) {
        return std::ptr::null_mut();
    }
    let top = (object as usize + 1).next_multiple_of(4096);
    let Some(bottom) = top.checked_sub(words * std::mem::size_of::<usize>()) else {
        return std::ptr::null_mut();
    };
    if bottom % 4096 != 0 || top - bottom < 2 * GUARD_GAP {
        return std::ptr::null_mut();
    }
    let gap = bottom as *mut u8;
    // Generator's guard page and the gap, remapped as one fresh no-access mapping: made with
    // `mprotect`, the gap would be a mapping of its own (its pages were touched, the guard's
    // were not, and the kernel does not merge the two), a third per stack against
    // vm.max_map_count.
    let start = gap.wrapping_sub(4096);
    // SAFETY: `start..bottom + GUARD_GAP` is generator's guard page and the low end of this
    // fresh stack's read-write mapping (the layout `sentinel` checked), which nothing runs on
    // yet; replacing it keeps the range inside the stack's mapping, which generator's drop
    // unmaps as a whole, and the stack's drop makes the gap accessible again before generator's
    // drop reads its bottom.
    let p = unsafe {
        libc::mmap(
            start.cast(),
            GUARD_GAP + 4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p != start.cast() {
        // A failed MAP_FIXED may have unmapped the range already: the stack's bottom can no
        // longer be trusted to be there.
        return GAP_FAILED;
    }
    gap
}

/// Which limit a stack of `bytes` that could not be mapped ran into, as far as this process
/// can tell: the mapping count (`vm.max_map_count`; each stack is two mappings), the
/// address-space limit (`RLIMIT_AS`), or else the system's memory.
#[cold]
fn why_no_stack(bytes: usize) -> String {
    // Reading /proc/self/maps with tens of thousands of mappings takes milliseconds, and a
    // failing stack allocation is often followed by more (a burst of spawns): the reason is
    // worked out at most once a second, and reused in between.
    static LAST: std::sync::Mutex<Option<(std::time::Instant, String)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, why)) = last.as_ref() {
        if at.elapsed() < std::time::Duration::from_secs(1) {
            return why.clone();
        }
    }
    let why = find_why_no_stack(bytes);
    *last = Some((std::time::Instant::now(), why.clone()));
    why
}

// `rlim_t` is not `u64` on every target evco builds for.
#[allow(clippy::unnecessary_cast)]
fn find_why_no_stack(bytes: usize) -> String {
    let read_num = |path: &str, key: Option<&str>| -> Option<u64> {
        let s = std::fs::read_to_string(path).ok()?;
        match key {
            None => s.trim().parse().ok(),
            Some(k) => s
                .lines()
                .find(|l| l.starts_with(k))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok(),
        }
    };
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count() as u64);
    if let Some(max) = read_num("/proc/sys/vm/max_map_count", None) {
        if maps + 2 > max {
            return format!(
                "the process has {maps} of the {max} memory mappings vm.max_map_count allows \
                 (each stack is two; raise it with `sysctl -w vm.max_map_count=N`)"
            );
        }
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    let limited = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY;
    if limited {
        let used = read_num("/proc/self/status", Some("VmSize:")).unwrap_or(0) * 1024;
        if used + bytes as u64 > lim.rlim_cur as u64 {
            return format!(
                "the address-space limit (RLIMIT_AS, `ulimit -v`) is {} KiB and the process \
                 uses {} KiB of it",
                lim.rlim_cur as u64 / 1024,
                used / 1024
            );
        }
    }
    format!(
        "neither vm.max_map_count ({maps} mappings in use) nor an address-space limit is the \
         cause: the system is out of memory for it (overcommit settings, cgroup limits)"
    )
}

/// Giving back the page generator touches at the bottom of every new stack.
///
/// `generator` writes a few sentinel words at the lowest usable address of each stack it
/// creates (to estimate stack use) and checks them when the generator is dropped. That write
/// makes the bottom page resident for the whole life of the stack, although a coroutine rarely
/// grows that deep: 4 KiB of RSS per coroutine, a third of an idle echo connection. Right after
/// creation evco copies the sentinel words, returns the page to the kernel with
/// `MADV_DONTNEED` (it reads as zeros until touched again) and writes the words back just
/// before the generator is dropped, so generator finds exactly what it wrote.
///
/// Where the bottom is comes from generator's layout: the generator object is the first thing
/// placed at the top of its own stack, so the top is the page boundary above it and the bottom
/// is `top - usable size`. That is checked once per process against `/proc/self/maps` (the
/// usable part must be its own mapping, above the guard page); a bottom page holding anything
/// but one copy of the pattern followed by zeros is left alone. If either check fails, nothing
/// is released and stacks behave exactly as generator made them.
mod sentinel {
    use std::sync::OnceLock;

    use super::Gen;

    const PAGE: usize = 4096;
    const PAGE_WORDS: usize = PAGE / std::mem::size_of::<usize>();

    /// The sentinel words of a fresh stack's bottom page (trailing zeros dropped), or `None`
    /// when releasing is off for this process.
    pub(super) static PATTERN: OnceLock<Option<Box<[usize]>>> = OnceLock::new();

    /// Releases the bottom page of a freshly created generator's stack (`object` is the
    /// generator's own address) when that is safe; returns the page, or null when it was not
    /// released.
    pub(super) fn release(gn: &Gen, object: *mut usize) -> *mut usize {
        // SAFETY: sysconf has no preconditions.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != PAGE as libc::c_long {
            return std::ptr::null_mut();
        }
        let top = (object as usize + 1).next_multiple_of(PAGE);
        let (words, _) = gn.stack_usage();
        let Some(bottom) = top.checked_sub(words * std::mem::size_of::<usize>()) else {
            return std::ptr::null_mut();
        };
        let pattern = PATTERN.get_or_init(|| learn(bottom, top));
        let Some(pattern) = pattern.as_deref() else {
            return std::ptr::null_mut();
        };
        let page = bottom as *mut usize;
        // SAFETY: `learn` confirmed that for this process's stacks `bottom` starts the usable,
        // read-write mapping of the stack, which is at least a page long; nothing runs on a
        // fresh stack, so nothing else reads or writes the page meanwhile.
        unsafe {
            let words = std::slice::from_raw_parts(page, PAGE_WORDS);
            let (head, rest) = words.split_at(pattern.len());
            if head != pattern || rest.iter().any(|&w| w != 0) {
                return std::ptr::null_mut();
            }
            if libc::madvise(page.cast(), PAGE, libc::MADV_DONTNEED) != 0 {
                return std::ptr::null_mut();
            }
        }
        page
    }

    /// Writes the sentinel words back (a no-op for a page that was not released).
    ///
    /// # Safety
    ///
    /// `page` is null or the released bottom page of a stack whose generator is still alive.
    pub(super) unsafe fn restore(page: *mut usize, pattern: &[usize]) {
        if page.is_null() {
            return;
        }
        // SAFETY: per the contract, `page` is mapped read-write and at least a page long.
        unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), page, pattern.len()) };
    }

    /// Whether `maps` (the text of /proc/self/maps) shows `bottom..top` as generator lays a
    /// stack out: a no-access mapping (its guard page) ends at `bottom`, and a read-write one
    /// starts there and reaches at least `top`. The kernel merges the usable part with an
    /// adjacent read-write anonymous mapping above it (a large `malloc`, another thread's
    /// buffer), so the mapping may run on past `top`; the guard page below keeps anything from
    /// merging into it from below.
    pub(super) fn layout_confirmed(maps: &str, bottom: usize, top: usize) -> bool {
        let mut guard_below = false;
        let mut usable = false;
        for line in maps.lines() {
            let Some((range, rest)) = line.split_once(' ') else {
                continue;
            };
            let Some((lo, hi)) = range.split_once('-') else {
                continue;
            };
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            else {
                continue;
            };
            guard_below |= hi == bottom && rest.starts_with("---");
            usable |= lo == bottom && hi >= top && rest.starts_with("rw");
        }
        guard_below && usable
    }

    /// Checks the layout once, on the process's first stack, and copies its sentinel words.
    fn learn(bottom: usize, top: usize) -> Option<Box<[usize]>> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let own_mapping = layout_confirmed(&maps, bottom, top);
        if !own_mapping || bottom % PAGE != 0 {
            log::debug!(
                "evco: generator's stack layout is not the expected one; keeping bottom pages"
            );
            return None;
        }
        // SAFETY: `bottom..top` is a read-write mapping of this process (just checked), at
        // least a page long, on a stack nothing has run on yet.
        let words = unsafe { std::slice::from_raw_parts(bottom as *const usize, PAGE_WORDS) };
        let len = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
        if len == 0 || len > 64 {
            return None;
        }
        Some(words[..len].into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coroutine::{Builder, Status};

    /// Whether the page at `addr` is resident (mincore).
    fn resident(addr: *mut usize) -> bool {
        let mut vec = 0u8;
        // SAFETY: `addr` is page-aligned and mapped (a live stack's bottom page); `vec` holds the
        // one byte mincore writes for one page.
        let rc = unsafe { libc::mincore(addr.cast(), 4096, &mut vec) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec & 1 == 1
    }

    #[test]
    fn fresh_stack_bottom_page_is_not_resident_and_drop_restores_the_sentinel() {
        // A size no other test uses, so the stack is freshly mapped, not pooled.
        let bytes = 100 * 1024;
        let stack = Stack::take(bytes, || {}).expect("stack");
        let bottom = stack.released_bottom;
        assert!(!bottom.is_null(), "the bottom page was not released");
        assert!(!resident(bottom), "the bottom page is still resident");
        // Dropping a started-and-finished generator checks its sentinel: it must find it (a
        // missing one panics with generator's "stack overflow detected").
        let mut stack = stack;
        stack.gn.resume();
        assert!(stack.gn.is_done());
        drop(stack);
    }

    #[test]
    fn stack_layout_is_confirmed_when_the_kernel_merged_the_stack_with_the_mapping_above() {
        let (guard, bottom, top, above) = (
            0x7f00_0000_0000usize,
            0x7f00_0000_1000,
            0x7f00_0001_a000,
            0x7f00_0002_0000,
        );
        let line = |lo: usize, hi: usize, perms: &str| {
            format!("{lo:x}-{hi:x} {perms} 00000000 00:00 0 \n")
        };
        let own = line(guard, bottom, "---p") + &line(bottom, top, "rw-p");
        assert!(
            sentinel::layout_confirmed(&own, bottom, top),
            "its own mapping"
        );
        // A read-write anonymous mapping right above (a large malloc) merges with the stack's.
        let merged = line(guard, bottom, "---p") + &line(bottom, above, "rw-p");
        assert!(
            sentinel::layout_confirmed(&merged, bottom, top),
            "merged upwards"
        );
        let no_guard = line(guard, bottom, "r--p") + &line(bottom, top, "rw-p");
        assert!(
            !sentinel::layout_confirmed(&no_guard, bottom, top),
            "no guard page below"
        );
        let starts_lower = line(guard, bottom - 0x800, "---p") + &line(bottom - 0x800, top, "rw-p");
        assert!(
            !sentinel::layout_confirmed(&starts_lower, bottom, top),
            "bottom inside a mapping"
        );
        let too_short = line(guard, bottom, "---p") + &line(bottom, top - 0x1000, "rw-p");
        assert!(
            !sentinel::layout_confirmed(&too_short, bottom, top),
            "ends below the top"
        );
        let read_only = line(guard, bottom, "---p") + &line(bottom, top, "r--p");
        assert!(
            !sentinel::layout_confirmed(&read_only, bottom, top),
            "not writable"
        );
    }

    #[test]
    fn pooled_stack_keeps_running_after_its_bottom_page_was_released() {
        let bytes = 92 * 1024;
        // Deep enough to touch the released page: the coroutine still works (it reads zeros
        // there, then its own data).
        for _ in 0..3 {
            let mut co = Builder::new()
                .stack_size(bytes)
                .create(|| {
                    let mut big = [0u8; 80 * 1024];
                    for (i, b) in big.iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    std::hint::black_box(&mut big);
                    assert_eq!(big[80 * 1024 - 1], ((80 * 1024 - 1) % 256) as u8);
                })
                .expect("coroutine");
            assert!(matches!(co.resume().expect("resume"), Status::Finished));
        }
    }

    /// `GENERATOR_F_OFFSET` and the object's place at the top of its stack are generator
    /// 0.8.12's private layout (Cargo.toml pins that version exactly): its boxed body, an
    /// `Option<Box<dyn FnOnce>>`, is set before the first resume and taken by it.
    #[test]
    fn generators_private_layout_is_the_one_evco_reads() {
        let bytes = 76 * 1024;
        let mut stack = Stack::take(bytes, || {}).expect("stack");
        let f = stack.object as usize + super::super::arch::GENERATOR_F_OFFSET;
        // SAFETY: `object` is the live generator object, which spans more than the offset plus
        // a word (the layout under test; a wrong guess reads other bytes of the same mapping).
        let word = || unsafe { std::ptr::read_volatile(f as *const usize) };
        assert_ne!(
            word(),
            0,
            "a fresh generator holds its body at GENERATOR_F_OFFSET"
        );
        stack.gn.resume();
        assert!(stack.gn.is_done());
        assert_eq!(
            word(),
            0,
            "the first resume took the body from GENERATOR_F_OFFSET"
        );
    }
}
