//! Stackful coroutines on the `generator` crate.
//!
//! A coroutine is a function running on a stack of its own. It runs when something resumes it
//! and stops where it suspends, returning control to whoever resumed it: the scheduler's ready
//! queue (where the callbacks of the events it waited for put it), or another coroutine (for a
//! bare [`Coroutine`]).
//!
//! ```text
//!   thread stack                       coroutine stack (mmap, guard page below)
//!   ┌───────────────────────┐          ┌──────────────────────────────┐ high
//!   │ event_base_loop       │          │ body closure (StackBox)      │
//!   │  └ drain callback     │ resume   │  └ user code                 │
//!   │     └ Core::resume ───┼─────────▶│     └ io::wait               │
//!   │                       │◀─────────┼──────  └ suspend (Scope)     │
//!   └───────────────────────┘ suspend  │  ...free...                  │
//!                                      │ guard page (PROT_NONE)       │ low
//!                                      └──────────────────────────────┘
//! ```
//!
//! # Invariants
//!
//! - A coroutine never moves between threads: `Core` and every handle on it are `!Send`, and
//!   the `Send` that `generator` asks of the body is asserted by `AssertSend` for that reason.
//! - A panic in the body is caught by `generator` on the coroutine's stack and kept there:
//!   every stack has generator's "local data" set, which makes `resume` return normally instead
//!   of re-raising it, and `Core::resume` collects it with `get_panic_data`. Nothing unwinds
//!   across the switch, so a panic never reaches a libevent callback's C frame. A stack overflow
//!   takes the same road: the guard page faults, generator's handler jumps back with
//!   `Error::StackErr`, which becomes a [`StackOverflow`] payload.
//! - Dropping a suspended coroutine resumes it with `generator`'s `Cancel` panic, which unwinds
//!   its stack and runs its destructors. Whatever it waited on is deleted *before* that (the
//!   scheduler's `cancel` does it), and while the unwind runs, `cancelling` is set so that evco's
//!   waits fail at once instead of suspending again. evco never catches `Cancel` inside a
//!   coroutine; code that catches panics there must re-raise it ([`is_cancellation`]).
//! - A running coroutine switches out through its body's `generator::Scope`: the body's first
//!   frame stores a pointer to it in the `Core` (`enter_body`), `finish` clears it, and it is
//!   only used by the coroutine itself while it runs (`switch_out`), so it never outlives the
//!   frame it points into.
//! - Finished stacks go back to a per-thread pool and are reused with `init_code`, so a spawn
//!   costs no syscall once the pool is warm. An overflowed stack is never reused.
//! - `Core::prefetch` only issues prefetch instructions, which never fault and change nothing a
//!   program can observe; a stale address (the stack was reused since `sp` was recorded) costs a
//!   wasted cache fill, never a wrong read.
//! - Panic messages from coroutine stacks go through a light hook (installed before the first
//!   coroutine runs) that prints one line and no backtrace: std's default hook with
//!   `RUST_BACKTRACE=1` can overflow a small stack while holding the backtrace lock, and every
//!   later panic in the process would then deadlock on it.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::RawEvent;

mod arch;
mod bare;
mod info;
mod stack;

pub use stack::GUARD_GAP;

use arch::{GENERATOR_F_OFFSET, LINE, prefetch_lines, stack_pointer};
pub use bare::{Builder, Coroutine, Status, suspend};
pub(crate) use info::cancelling_error;
use info::install_panic_hook;
pub use info::{Cancelled, CoroutineId, Current, StackOverflow, current, is_cancellation};
use stack::Stack;

type Gen = generator::Generator<'static, (), ()>;
/// The handle a body yields through; it lives in the body's first frame, on its own stack.
type Scope = generator::Scope<'static, 'static, (), ()>;

/// The first thing every body does: tells its core where its yield handle is.
#[inline(always)]
fn enter_body(scope: &mut generator::Scope<'_, 'static, (), ()>) {
    let core = CURRENT.with(|c| c.get());
    // SAFETY: as in `current_core`: the core being resumed, alive while it runs.
    if let Some(core) = unsafe { core.as_ref() } {
        core.scope
            .set((scope as *mut generator::Scope<'_, 'static, (), ()>).cast());
    }
    BODY.with(|b| b.set(IN_BODY));
}

/// `BODY`'s flag: the thread runs a coroutine's own code.
const IN_BODY: u32 = 1 << 31;

/// Marks the running coroutine as inside evco's own code until dropped (see `BODY`).
pub(crate) struct Busy(());

impl Busy {
    #[inline(always)]
    pub(crate) fn enter() -> Busy {
        BODY.with(|b| b.set(b.get() + 1));
        Busy(())
    }
}

impl Drop for Busy {
    #[inline(always)]
    fn drop(&mut self) {
        BODY.with(|b| {
            let v = b.get();
            if v & !IN_BODY != 0 {
                b.set(v - 1);
            }
        });
    }
}

/// Whether the thread runs a coroutine's own code, outside evco's (where a hook may suspend
/// it): not in the scheduler, not mid-switch, not inside one of evco's waits.
#[inline]
pub(crate) fn in_plain_body() -> bool {
    BODY.with(|b| b.get()) == IN_BODY
}

/// Default stack size of a coroutine: 64 KiB (only the pages it touches are resident).
///
/// Below every stack lies a no-access [`GUARD_GAP`] of 64 KiB: a frame that jumps past a single
/// guard page (C code built without `-fstack-clash-protection`, gcc's default, with a large
/// local array) faults there and ends the coroutine with [`StackOverflow`] instead of writing
/// into another coroutine's stack. Hooked C client libraries run in these 64 KiB too: give
/// coroutines that call deep C code more with [`Builder::stack_size`], and build C code with
/// `-fstack-clash-protection` where a single frame can be larger than the gap.
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;
/// Smallest stack size [`Builder::stack_size`] accepts; smaller requests are rounded up.
pub const MIN_STACK_SIZE: usize = 16 * 1024;
/// Largest stack size a coroutine may have (1 GiB); a larger one is an `InvalidInput` error
/// when the coroutine is spawned or created.
pub const MAX_STACK_SIZE: usize = 1 << 30;

thread_local! {
    static CURRENT: Cell<*const Core> = const { Cell::new(std::ptr::null()) };
    /// Whether the thread runs a coroutine's own code right now: set where a switch lands on
    /// the coroutine's stack, cleared where it leaves (and while the resumer's side of a switch
    /// runs). A signal handler that interrupts evco between the two (the scheduler's drain,
    /// the middle of a switch) sees it clear, so the hooks make libc's calls there instead of
    /// switching coroutines out of a context that is not one.
    ///
    /// Below that flag (`IN_BODY`), how deep the running coroutine is in evco's own code (its
    /// waits, which borrow the scheduler's state): a hook called from a signal handler that
    /// interrupted it there makes libc's call too. One word, saved and restored by every switch,
    /// so the depth is each coroutine's own.
    static BODY: Cell<u32> = const { Cell::new(0) };
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// The lifecycle of a coroutine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Created or suspended: may be resumed.
    Suspended,
    /// On the CPU (somewhere up the resume chain).
    Running,
    /// Returned, panicked, overflowed or was cancelled. Its stack is gone.
    Finished,
}

/// How a call to [`Core::resume`] ended.
pub(crate) enum Resumed {
    Suspended,
    Finished,
    Panicked(Box<dyn Any + Send>),
}

/// A coroutine's identity and stack; embedded in scheduler tasks and in bare [`Coroutine`]s.
/// Its address must stay put while it runs (it is reachable through `CURRENT`).
///
/// `repr(C)`: what a resume and a switch touch comes first (state, scope, sp, the stack's
/// generator and object pointers), so that it shares cache lines with the owning task's hot
/// fields (see the scheduler's "Wake-ups").
#[repr(C)]
pub(crate) struct Core {
    state: Cell<State>,
    cancelling: Cell<bool>,
    /// The body's yield handle while the body runs (set by `enter_body`), else null.
    scope: Cell<*mut Scope>,
    /// The stack pointer where the body last switched out to wait (`switch_out_waiting`), for
    /// `prefetch`.
    sp: Cell<usize>,
    stack: UnsafeCell<Option<Stack>>,
    id: CoroutineId,
    name: Option<Rc<str>>,
    stack_size: usize,
    /// The scheduler task that owns this core, or null for a bare coroutine.
    pub(crate) owner: Cell<*const ()>,
    /// It runs C code (the C ABI's coroutines): it is never unwound. Cancelling it is
    /// cooperative (its waits fail with `ECANCELED` until it returns), dropping it suspended
    /// frees its stack without running anything on it.
    pub(crate) c_frames: Cell<bool>,
    /// The hooks are libc's calls in it (`evco_hook_set(0)`).
    pub(crate) hooks_off: Cell<bool>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Core {
    pub(crate) fn new<F: FnOnce() + 'static>(
        name: Option<Rc<str>>,
        stack_size: usize,
        body: F,
    ) -> io::Result<Core> {
        if stack_size > MAX_STACK_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a coroutine stack of {stack_size} bytes is larger than evco allows \
                     (MAX_STACK_SIZE, {MAX_STACK_SIZE} bytes)"
                ),
            ));
        }
        let stack = Stack::take(stack_size, body)?;
        Ok(Core {
            id: CoroutineId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            name,
            stack_size,
            stack: UnsafeCell::new(Some(stack)),
            state: Cell::new(State::Suspended),
            cancelling: Cell::new(false),
            scope: Cell::new(std::ptr::null_mut()),
            sp: Cell::new(0),
            owner: Cell::new(std::ptr::null()),
            c_frames: Cell::new(false),
            hooks_off: Cell::new(false),
        })
    }

    pub(crate) fn id(&self) -> CoroutineId {
        self.id
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub(crate) fn state(&self) -> State {
        self.state.get()
    }

    pub(crate) fn is_cancelling(&self) -> bool {
        self.cancelling.get()
    }

    /// Marks it cancelled without unwinding anything: its waits fail with `ECANCELED` from
    /// now on (the C ABI's cooperative cancellation; see `c_frames`).
    pub(crate) fn cancel_cooperatively(&self) {
        self.cancelling.set(true);
    }

    /// How many bytes of its stack it has touched (see `Stack::touched`); 0 without a stack.
    pub(crate) fn stack_touched(&self) -> usize {
        // SAFETY: a shared look at the stack's fields from the coroutine's own thread; nothing
        // takes the stack out during this call.
        unsafe { (*self.stack.get()).as_ref() }.map_or(0, Stack::touched)
    }

    /// Gives up a suspended coroutine that runs C code without touching its stack (see
    /// `Stack::leak`): marked finished, never resumed. True when it was suspended.
    pub(crate) fn leak(&self) -> bool {
        if self.state.get() != State::Suspended {
            return false;
        }
        self.state.set(State::Finished);
        self.scope.set(std::ptr::null_mut());
        // SAFETY: suspended, so nothing borrows the stack.
        if let Some(stack) = unsafe { (*self.stack.get()).take() } {
            stack.leak();
        }
        true
    }

    /// Starts loading what resuming this suspended coroutine reads first: the registers
    /// generator saved at the top of its stack and the frames the switch returns through.
    ///
    /// A coroutine that waited a while finds these cold: with a thousand connections each one's
    /// two stack pages (the saved registers at the top, the wait path below a 4 KiB buffer)
    /// fall out of the caches and the TLB between two messages. The scheduler calls this when an
    /// event makes a coroutine ready and resumes it later in the same pass, after the other
    /// callbacks of that pass, so the loads overlap with other work instead of stalling the
    /// resume.
    #[inline]
    pub(crate) fn prefetch(&self) {
        // SAFETY: as in `wait_event`.
        let Some(stack) = (unsafe { (*self.stack.get()).as_ref() }) else {
            return;
        };
        // generator keeps the saved registers at the start of its object (with generator
        // 0.8.12 the saved stack pointer is its second word), and its resume reads the run
        // state right after them (`context._ref`, +0x70) and whether the body started (`f`,
        // +0x110, a line of its own: perf annotate showed a sixth of the drain's stalls there).
        prefetch_lines(stack.object as usize, 2);
        prefetch_lines(stack.object as usize + GENERATOR_F_OFFSET, 1);
        let sp = self.sp.get();
        if sp != 0 {
            // The switch's own frames sit just below `sp` (the saved stack pointer is 8 bytes
            // below it in release builds), the waiting caller's frames above it. More lines
            // than this measured no better and only occupy the CPU's fill buffers.
            prefetch_lines(sp.saturating_sub(2 * LINE), 8);
        }
    }

    /// The wait event of this coroutine's stack, if one was made; `None` also once it finished.
    /// For ending a wait: a coroutine that never made one has no one-shot wait pending.
    pub(crate) fn wait_event(&self) -> Option<&RawEvent> {
        // SAFETY: the `Option<Stack>` is only replaced in `finish`, which no caller overlaps
        // with a borrow obtained here (they are used and dropped within one scheduler step).
        unsafe { (*self.stack.get()).as_ref().and_then(|s| s.wait.get()) }
    }

    /// The wait event of this coroutine's stack, made on first use; `None` once it finished.
    pub(crate) fn wait_event_or_make(&self) -> Option<&RawEvent> {
        // SAFETY: as in `wait_event`.
        unsafe {
            (*self.stack.get())
                .as_ref()
                .map(|s| s.wait.get_or_init(RawEvent::new))
        }
    }

    /// Runs the coroutine until it suspends or finishes.
    ///
    /// Kept small and inlined: every frame between the resumer and the stack switch costs a
    /// mispredicted return on the way back (the CPU's return-stack buffer does not survive a
    /// stack switch), so the hot path is this function and generator's own (inlined) resume.
    #[inline]
    pub(crate) fn resume(&self) -> io::Result<Resumed> {
        if self.state.get() != State::Suspended {
            return Err(self.not_resumable());
        }
        // Never unwinds: the stack's generator has local data set (see `Stack::take`), so a
        // panic or overflow in the body stays in the generator for `after_body` to collect.
        if !self.switch_in(|gn| {
            gn.resume();
            gn.is_done()
        }) {
            self.state.set(State::Suspended);
            return Ok(Resumed::Suspended);
        }
        Ok(self.after_body())
    }

    /// Runs `f` on the suspended coroutine's generator with the core marked running and
    /// current, and restores the previous current coroutine afterwards.
    #[inline(always)]
    fn switch_in<R>(&self, f: impl FnOnce(&mut Gen) -> R) -> R {
        debug_assert_eq!(self.state.get(), State::Suspended);
        self.state.set(State::Running);
        let prev = CURRENT.with(|c| c.replace(self));
        let prev_body = BODY.with(|b| b.replace(0));
        let r = f(self.generator());
        BODY.with(|b| b.set(prev_body));
        CURRENT.with(|c| c.set(prev));
        r
    }

    /// The generator of a core that still has its stack.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    fn generator(&self) -> &mut Gen {
        // SAFETY: callers hold the only access to the stack: a suspended or just-finished core
        // has no frame inside its generator, the scheduler never overlaps two operations on one
        // core, and the stack is only taken out in `finish`, after the switch returned.
        unsafe {
            &mut (*self.stack.get())
                .as_mut()
                .expect("core has a stack until it finishes")
                .gn
        }
    }

    #[cold]
    fn not_resumable(&self) -> io::Error {
        if self.state.get() == State::Running {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "coroutine is already running (it cannot resume itself)",
            )
        } else {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "coroutine has already finished",
            )
        }
    }

    /// The body returned, panicked or overflowed: collect how, and finish.
    fn after_body(&self) -> Resumed {
        let gn = self.generator();
        match gn.get_panic_data() {
            None => {
                self.finish(true);
                Resumed::Finished
            }
            Some(payload)
                if matches!(
                    payload.downcast_ref::<generator::Error>(),
                    Some(generator::Error::StackErr)
                ) =>
            {
                self.finish(false);
                Resumed::Panicked(Box::new(StackOverflow {
                    id: self.id,
                    name: self.name.as_deref().map(str::to_owned),
                    stack_size: self.stack_size,
                }))
            }
            Some(payload) => {
                self.finish(true);
                Resumed::Panicked(payload)
            }
        }
    }

    /// Unwinds a suspended coroutine's stack (its destructors run) and finishes it. The caller
    /// has already deleted whatever event could resume it.
    pub(crate) fn cancel(&self) -> io::Result<()> {
        match self.state.get() {
            State::Finished => return Ok(()),
            State::Running => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "a running coroutine cannot be cancelled (it would unwind its own caller)",
                ));
            }
            State::Suspended => {}
        }
        self.cancelling.set(true);
        // `cancel` resumes the body with a `Cancel` panic that generator catches on the
        // coroutine's stack (a destructor that panics during that unwind aborts, as in std).
        let clean = self.switch_in(|gn| {
            // The unwinding runs the coroutine's own code (its destructors) on its stack.
            BODY.with(|b| b.set(IN_BODY));
            gn.cancel();
            gn.is_done() && gn.get_panic_data().is_none()
        });
        self.finish(clean);
        Ok(())
    }

    /// Gives up a suspended coroutine whose thread is going (see `Stack::abandon`): it is
    /// marked finished without running anything on its stack. True when its stack memory was
    /// freed.
    pub(crate) fn abandon(&self) -> bool {
        if self.state.get() != State::Suspended {
            return false;
        }
        self.state.set(State::Finished);
        self.scope.set(std::ptr::null_mut());
        // SAFETY: suspended, so nothing borrows the stack.
        match unsafe { (*self.stack.get()).take() } {
            Some(stack) => stack.abandon(),
            None => false,
        }
    }

    fn finish(&self, reusable: bool) {
        self.state.set(State::Finished);
        self.scope.set(std::ptr::null_mut());
        // SAFETY: the generator returned control for the last time; nothing borrows the stack.
        if let Some(stack) = unsafe { (*self.stack.get()).take() } {
            if reusable {
                stack.give_back();
            } else {
                // An overflowed stack still holds frames that never unwound; generator's drop
                // knows (it marks the context) and releases the mapping without running them.
                // Its wait event, if any, is deleted as it drops.
                drop(stack);
            }
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if self.state.get() == State::Suspended {
            if let Some(ev) = self.wait_event() {
                ev.del();
            }
            if self.c_frames.get() {
                // C frames are never unwound: its stack goes without running anything.
                self.abandon();
                return;
            }
            if std::thread::panicking() {
                // Unwinding the coroutine now would be a panic during a panic (an abort): leak
                // its stack instead. Its event is already deleted, so nothing can resume it.
                // SAFETY: suspended, so nothing borrows the stack.
                if let Some(stack) = unsafe { (*self.stack.get()).take() } {
                    std::mem::forget(stack);
                }
                return;
            }
            let _ = self.cancel();
        }
    }
}

/// The core of the coroutine running on this thread right now, if any. (A signal handler that
/// interrupted evco mid-switch may see one too: the hooks also ask [`in_plain_body`].)
#[inline]
pub(crate) fn current_core() -> Option<&'static Core> {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: `CURRENT` is set only while `Core::resume`/`cancel` runs on that core, and the core
    // cannot move or be freed while it runs (its owner holds it across the call). The `'static`
    // is a lie the callers never act on: they use the reference within the running coroutine.
    unsafe { p.as_ref() }
}

/// Switches from the running coroutine (`core`) back to whoever resumed it.
///
/// Through the body's `Scope`, not generator's free `yield_with`: the scoped yield skips a
/// `dyn Any` downcast, and is small enough for LLVM to inline into every caller, so no extra
/// frame sits between a wait and the stack switch (each such frame costs a mispredicted return
/// when the coroutine is resumed).
///
/// # Panics
///
/// Raises generator's `Cancel` panic when the coroutine is being cancelled; callers must let it
/// unwind. `core` must be the running coroutine's core.
#[inline(always)]
pub(crate) fn switch_out(core: &Core) {
    let scope = core.scope.get();
    debug_assert!(!scope.is_null(), "switch_out outside a running body");
    // Left as the resumer's (`switch_in` restores it); back here, this coroutine's again. (A
    // cancellation's unwinding does not come back through here: `Core::cancel` sets it.)
    let body = BODY.with(|b| b.replace(0));
    // SAFETY: `core` is running, so its body has started and `enter_body` stored the handle of
    // its first frame, which lives until the body returns (after this call). Only the running
    // coroutine touches it, and it is not borrowed anywhere else during the switch.
    unsafe { (*scope).yield_with(()) };
    BODY.with(|b| b.set(body));
}

/// [`switch_out`] for a coroutine about to wait for an event: records where its frames are,
/// for the prefetch its wake-up issues (`Core::prefetch`). Plain switches (yield, park, bare
/// coroutines) skip the store.
#[inline(always)]
pub(crate) fn switch_out_waiting(core: &Core) {
    core.sp.set(stack_pointer());
    switch_out(core);
}

/// Whether the calling code runs on a coroutine's stack.
#[inline]
pub fn is_coroutine() -> bool {
    current_core().is_some()
}
