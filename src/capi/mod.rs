//! The C ABI: every `evco_*` function of include/evco.h.
//!
//! Each export is one panic boundary ([`boundary`]): it runs its body under `catch_unwind`, and
//! a failure becomes `-1` (or `NULL`) with `errno`, a Rust panic `ENOTRECOVERABLE`; nothing
//! unwinds into C. Those that can suspend the calling coroutine are `extern "C-unwind"` (a
//! coroutine's stack is unwound through them only if it is dropped suspended, which evco never
//! does to one that runs C code: see below), the rest `extern "C"`.
//!
//! # The coroutine/event lifecycle, for C
//!
//! - A coroutine made here runs C code: its core is marked `c_frames`. Such a coroutine is
//!   never unwound. Cancelling it is cooperative (`Scheduler::cancel_cooperatively`): its
//!   blocking calls fail with `ECANCELED` until its function returns. Dropping it suspended
//!   (`evco_free` of a created coroutine) frees its stack without running anything on it; what
//!   `evco_sched_free` cannot finish is left mapped and counted (`Scheduler::leak_c_tasks`).
//! - A handle (`evco_t`) is an `Rc<Handle>` given to C with `Rc::into_raw`; the coroutine's
//!   body holds a clone while it runs (for `evco_self`), so a detached coroutine's handle lives
//!   until it returns. `evco_join`/`evco_detach`/`evco_free` take C's reference back.
//! - Every handle and scheduler records the thread that made it: a call from another thread
//!   fails with `EPERM` before it touches anything thread-bound (the `Rc`s, the scheduler).
//! - A scheduler (`evco_sched_t`) is a `Box<Sched>`: the installed Rust scheduler's guard, the
//!   base, and the post box. `evco_sched_post` from any thread pushes onto the box's queue
//!   (a mutex) and writes its eventfd; the box's event, in the base from the scheduler's
//!   start to its free, spawns what it finds. The box is an `Arc`, so a post that races the
//!   free never writes into freed memory (the caller must still not free concurrently).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString, c_char, c_int, c_short, c_uint, c_void};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use crate::coroutine::{self, Builder, Coroutine, Status};
use crate::event::{Event, EventBase, What};
use crate::scheduler::{self, JoinHandle, SchedulerGuard};
use crate::sys;

/// What an export returns on failure.
trait Fail {
    const FAIL: Self;
}

impl Fail for c_int {
    const FAIL: c_int = -1;
}

impl<T> Fail for *mut T {
    const FAIL: *mut T = ptr::null_mut();
}

impl<T> Fail for *const T {
    const FAIL: *const T = ptr::null();
}

impl Fail for usize {
    const FAIL: usize = 0;
}

impl Fail for () {
    const FAIL: () = ();
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno, always valid to write.
    unsafe { *libc::__errno_location() = e };
}

/// Runs an export's body: `Ok` is returned as is, `Err(e)` becomes `T::FAIL` with `errno = e`,
/// a panic `T::FAIL` with `ENOTRECOVERABLE` (a cancellation's unwinding, which reaches here only
/// from a Rust coroutine that called the C API, `ECANCELED`).
fn boundary<T: Fail>(f: impl FnOnce() -> Result<T, c_int>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_errno(e);
            T::FAIL
        }
        Err(p) => {
            set_errno(if coroutine::is_cancellation(&*p) {
                libc::ECANCELED
            } else {
                log::error!(
                    "evco: a panic inside the C API was stopped at its boundary: {}",
                    panic_text(&*p)
                );
                libc::ENOTRECOVERABLE
            });
            T::FAIL
        }
    }
}

fn panic_text(p: &(dyn Any + Send)) -> &str {
    crate::event::panic_message(p)
}

/// The errno an evco error stands for, in the C API's terms.
fn errno_of(e: &io::Error) -> c_int {
    if let Some(code) = e.raw_os_error() {
        return code;
    }
    match e.kind() {
        // A cancelled coroutine's waits.
        io::ErrorKind::Interrupted => libc::ECANCELED,
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        io::ErrorKind::AlreadyExists => libc::EEXIST,
        io::ErrorKind::Deadlock => libc::EDEADLK,
        io::ErrorKind::ResourceBusy => libc::EBUSY,
        io::ErrorKind::OutOfMemory => libc::ENOMEM,
        _ => libc::EIO,
    }
}

fn os<T>(r: io::Result<T>) -> Result<T, c_int> {
    r.map_err(|e| errno_of(&e))
}

/// `timeout_ms` as a timeout: negative is none (wait forever).
fn timeout_of(ms: c_int) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

fn in_coroutine() -> Result<(), c_int> {
    if coroutine::is_coroutine() {
        Ok(())
    } else {
        Err(libc::EPERM)
    }
}

/// Keeps the hooks in any program that links this: see `hook::HookTable`.
#[inline(always)]
fn keep_hooks() {
    #[cfg(all(feature = "hook", target_os = "linux"))]
    std::hint::black_box(&crate::hook::evco_hook_table);
}

// ---- version ------------------------------------------------------------------------------

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

// ---- schedulers ---------------------------------------------------------------------------

/// What `evco_sched_post` hands a scheduler's thread.
struct Posted {
    f: extern "C" fn(*mut c_void),
    arg: usize,
}

/// A scheduler's post box (see the module docs).
struct PostBox {
    queue: Mutex<VecDeque<Posted>>,
    efd: c_int,
    /// A spawn failed (no stack could be had): the queue waits for a C coroutine to end (see
    /// `body`) instead of failing again on every loop turn.
    stalled: AtomicBool,
}

/// Most posts `deliver` spawns per loop turn; the rest wait for the next turn, so a burst of
/// posts from other threads does not hold the loop.
const DELIVER_BATCH: usize = 256;

/// Most posts a scheduler holds not yet spawned: `evco_sched_post` fails with `EAGAIN` beyond.
const MAX_BACKLOG: usize = 1 << 20;

impl PostBox {
    /// A new box with its eventfd; the errno when no eventfd can be made.
    fn new() -> Result<Arc<PostBox>, c_int> {
        // SAFETY: eventfd has no memory preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EMFILE));
        }
        Ok(Arc::new(PostBox {
            queue: Mutex::new(VecDeque::new()),
            efd,
            stalled: AtomicBool::new(false),
        }))
    }

    fn ring(&self) -> Result<(), c_int> {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to the box's eventfd, open while the box lives.
        if unsafe { libc::write(self.efd, (&one as *const u64).cast(), 8) } != 8 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Posted>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PostBox {
    fn drop(&mut self) {
        let _ = crate::os::close(self.efd);
    }
}

/// `evco_sched_t`.
pub struct Sched {
    thread: ThreadId,
    post: Arc<PostBox>,
    base: *mut sys::event_base,
    // Dropped in this order: the post event first (it points at the box and lives in the
    // base), then the guard (cancels what is left and uninstalls the scheduler, freeing an
    // owned base).
    post_ev: Option<Event>,
    guard: Option<SchedulerGuard>,
}

thread_local! {
    /// This thread's C scheduler, if any.
    static SCHED: Cell<*const Sched> = const { Cell::new(ptr::null()) };
}

fn make_sched(base: EventBase) -> Result<*mut Sched, c_int> {
    keep_hooks();
    if coroutine::is_coroutine() {
        return Err(libc::EPERM);
    }
    if !SCHED.with(Cell::get).is_null() {
        return Err(libc::EEXIST);
    }
    let post = PostBox::new()?;
    let raw = base.as_raw();
    let guard = os(scheduler::enter(base))?;
    let post_ev = os(post_event(&guard.base(), &post))?;
    let s = Box::into_raw(Box::new(Sched {
        thread: std::thread::current().id(),
        post,
        base: raw,
        post_ev: Some(post_ev),
        guard: Some(guard),
    }));
    SCHED.with(|c| c.set(s));
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a handler with no preconditions, once per process. Registered after
    // the scheduler's own (made by `scheduler::enter`), so it runs after it in a child.
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_child));
    });
    Ok(s)
}

/// The post box's event on `base`, added.
fn post_event(base: &EventBase, post: &Arc<PostBox>) -> io::Result<Event> {
    let b = post.clone();
    let ev = Event::new(base, post.efd, What::READ | What::PERSIST, move |_| {
        deliver(&b)
    })?;
    ev.add(None)?;
    Ok(ev)
}

/// In a forked child, on the thread that forked: the post box's eventfd is the parent's too
/// (either loop could take the other's wake-ups), and what the parent's threads posted is the
/// parent's to run. The child's scheduler gets a new, empty box.
extern "C" fn after_fork_child() {
    let s = SCHED.with(Cell::get).cast_mut();
    // SAFETY: this thread's live scheduler (the child has no other thread that could use it).
    let Some(s) = (unsafe { s.as_mut() }) else {
        return;
    };
    s.post_ev.take();
    let Ok(post) = PostBox::new() else {
        log::error!("evco: no eventfd for the post box in a forked child: posts will not run");
        return;
    };
    // The old box is left as it is (its mutex may have been held by a thread of the parent at
    // the fork); only the child's copy of its eventfd is closed.
    let old = std::mem::replace(&mut s.post, post);
    let _ = crate::os::close(old.efd);
    std::mem::forget(old);
    if let Some(g) = &s.guard {
        match post_event(&g.base(), &s.post) {
            Ok(ev) => s.post_ev = Some(ev),
            Err(e) => log::error!("evco: the post box's event in a forked child: {e}"),
        }
    }
}

/// The post box's event: spawns what other threads posted, at most `DELIVER_BATCH` per turn.
/// A post that cannot be spawned (no stack to be had) stays first in the queue, and the box
/// waits for a C coroutine to end before it tries again (`body`).
fn deliver(b: &PostBox) {
    let mut n = 0u64;
    // SAFETY: reads at most 8 bytes into `n` from the box's non-blocking eventfd.
    unsafe { libc::read(b.efd, (&mut n as *mut u64).cast(), 8) };
    b.stalled.store(false, Ordering::Relaxed);
    for _ in 0..DELIVER_BATCH {
        let Some(p) = b.queue().pop_front() else {
            return;
        };
        let (f, arg) = (p.f, p.arg);
        if let Err(e) = spawn_c(&Attr::default(), move || f(arg as *mut c_void)) {
            b.queue().push_front(p);
            b.stalled.store(true, Ordering::Relaxed);
            log::warn!(
                "evco: a posted function waits: no coroutine can be made now ({})",
                io::Error::from_raw_os_error(e)
            );
            return;
        }
    }
    if !b.queue().is_empty() {
        let _ = b.ring();
    }
}

/// The scheduler behind `s`, checked: not null, this thread's.
fn sched<'a>(s: *mut Sched) -> Result<&'a Sched, c_int> {
    // SAFETY: a non-null `s` is what `evco_sched_new`/`attach` returned and the caller has not
    // freed (the C API's contract); only its `thread` is read before the thread check.
    let s = unsafe { s.as_ref() }.ok_or(libc::EINVAL)?;
    if s.thread != std::thread::current().id() {
        return Err(libc::EPERM);
    }
    Ok(s)
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_sched_new() -> *mut Sched {
    boundary(|| make_sched(os(EventBase::new())?))
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_sched_attach(base: *mut sys::event_base) -> *mut Sched {
    boundary(|| {
        if base.is_null() {
            return Err(libc::EINVAL);
        }
        // SAFETY: the host's live base (the C API's contract), borrowed, not freed by evco.
        make_sched(os(unsafe { EventBase::from_raw(base) })?)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_sched_base(s: *mut Sched) -> *mut sys::event_base {
    boundary(|| {
        keep_hooks();
        // SAFETY: as in `sched`; `base` is plain data, readable from any thread.
        unsafe { s.as_ref() }.map(|s| s.base).ok_or(libc::EINVAL)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_sched_run(s: *mut Sched) -> c_int {
    boundary(|| {
        keep_hooks();
        sched(s)?;
        if coroutine::is_coroutine() {
            return Err(libc::EPERM);
        }
        os(scheduler::block_outside(
            || scheduler::live_coroutines() == 0,
            None,
        ))?;
        Ok(0)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_sched_free(s: *mut Sched, timeout_ms: c_int) -> c_int {
    boundary(|| {
        keep_hooks();
        sched(s)?;
        // From a callback of its base, `wind_down` fails with EBUSY (the loop is running on
        // it, and an owned base would be freed under it), and nothing is freed.
        let left = os(scheduler::wind_down(timeout_of(timeout_ms)))?;
        // SAFETY: checked above: this thread's live scheduler, now taken back from C.
        let mut b = unsafe { Box::from_raw(s) };
        b.post_ev.take();
        b.guard.take();
        SCHED.with(|c| c.set(ptr::null()));
        drop(b);
        Ok(c_int::try_from(left).unwrap_or(c_int::MAX))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_sched_post(
    s: *mut Sched,
    f: Option<extern "C" fn(*mut c_void)>,
    arg: *mut c_void,
) -> c_int {
    boundary(|| {
        keep_hooks();
        // SAFETY: as in `sched`: a live scheduler; only its `post` box (an Arc of Sync data)
        // is used, which is safe from any thread.
        let s = unsafe { s.as_ref() }.ok_or(libc::EINVAL)?;
        let f = f.ok_or(libc::EINVAL)?;
        let post = s.post.clone();
        {
            let mut q = post.queue();
            if q.len() >= MAX_BACKLOG {
                return Err(libc::EAGAIN);
            }
            q.push_back(Posted {
                f,
                arg: arg as usize,
            });
        }
        post.ring()?;
        Ok(0)
    })
}

// ---- coroutines ---------------------------------------------------------------------------

/// `evco_attr_t`.
#[repr(C)]
#[derive(Debug)]
pub struct CAttr {
    struct_size: usize,
    stack_size: usize,
    name: *const c_char,
    hooks: c_int,
}

/// An `evco_attr_t`, read.
#[derive(Default)]
struct Attr {
    stack_size: usize,
    name: Option<CString>,
    hooks_off: bool,
}

impl Attr {
    /// Reads `a` (NULL: defaults), as far as the caller's `struct_size` says it has fields.
    fn read(a: *const CAttr) -> Result<Attr, c_int> {
        // SAFETY: a non-null `a` points at the caller's attributes, `struct_size` bytes of
        // them at least as much as the first field (the C API's contract).
        let Some(a) = (unsafe { a.as_ref() }) else {
            return Ok(Attr::default());
        };
        if a.struct_size < std::mem::size_of::<usize>() {
            return Err(libc::EINVAL);
        }
        let has = |end: usize| a.struct_size >= end;
        let mut out = Attr::default();
        if has(std::mem::offset_of!(CAttr, stack_size) + std::mem::size_of::<usize>()) {
            out.stack_size = a.stack_size;
        }
        if has(std::mem::offset_of!(CAttr, name) + std::mem::size_of::<usize>())
            && !a.name.is_null()
        {
            // SAFETY: a non-null name is a NUL-terminated string (the C API's contract).
            out.name = Some(unsafe { CStr::from_ptr(a.name) }.to_owned());
        }
        if has(std::mem::offset_of!(CAttr, hooks) + std::mem::size_of::<c_int>()) {
            out.hooks_off = a.hooks == 0;
        }
        Ok(out)
    }

    fn builder(&self) -> Builder {
        let mut b = Builder::new();
        if self.stack_size != 0 {
            b = b.stack_size(self.stack_size);
        }
        if let Some(n) = &self.name {
            b = b.name(n.to_string_lossy().into_owned());
        }
        b
    }
}

enum Kind {
    Spawned(RefCell<Option<JoinHandle<()>>>),
    Created(RefCell<Option<Coroutine>>),
}

/// `evco_t`: see the module docs.
pub struct Handle {
    thread: ThreadId,
    name: Option<CString>,
    kind: Kind,
    /// The coroutine's core (set once it exists; it lives as long as `kind` holds the
    /// coroutine): what `evco_cancel` and `evco_stack_used` act on, even while the coroutine
    /// runs (and its `kind` is borrowed).
    core: Cell<*const coroutine::Core>,
    /// An `evco_join` of it is waiting: a second one fails with `EBUSY`.
    joining: Cell<bool>,
}

impl Handle {
    /// A handle on this thread for a coroutine made with `a`, its coroutine not yet in it.
    fn new(a: &Attr, kind: Kind) -> Rc<Handle> {
        Rc::new(Handle {
            thread: std::thread::current().id(),
            name: a.name.clone(),
            kind,
            core: Cell::new(ptr::null()),
            joining: Cell::new(false),
        })
    }
}

thread_local! {
    /// The running C coroutines' handles, by coroutine id (for `evco_self`).
    static SELVES: RefCell<HashMap<u64, *const Handle>> = RefCell::new(HashMap::new());
}

/// The body every C coroutine runs: registers itself for `evco_self`, runs `f`, runs its
/// coroutine-local destructors, unregisters.
fn body(me: Rc<Handle>, hooks_off: bool, f: impl FnOnce() + 'static) -> impl FnOnce() + 'static {
    move || {
        let id = coroutine::current().map(|c| c.id().as_u64()).unwrap_or(0);
        if let Some(core) = coroutine::current_core() {
            core.c_frames.set(true);
            core.hooks_off.set(hooks_off);
        }
        SELVES.with(|s| s.borrow_mut().insert(id, Rc::as_ptr(&me)));
        f();
        keys::run_destructors(id);
        SELVES.with(|s| s.borrow_mut().remove(&id));
        drop(me);
        // A stack is free again: posts that found none may go now.
        // SAFETY: this thread's live scheduler, if any (freed only on this thread, never
        // while one of its coroutines runs).
        if let Some(s) = unsafe { SCHED.with(Cell::get).as_ref() } {
            if s.post.stalled.swap(false, Ordering::Relaxed) {
                let _ = s.post.ring();
            }
        }
    }
}

/// Spawns `f` as a C coroutine with `a`; its handle.
fn spawn_c(a: &Attr, f: impl FnOnce() + 'static) -> Result<Rc<Handle>, c_int> {
    let h = Handle::new(a, Kind::Spawned(RefCell::new(None)));
    let jh = os(a.builder().spawn(body(h.clone(), a.hooks_off, f)))?;
    // Marked before it first runs, so a cancel or a free before that is cooperative too.
    jh.core().c_frames.set(true);
    h.core.set(jh.core());
    if let Kind::Spawned(slot) = &h.kind {
        *slot.borrow_mut() = Some(jh);
    }
    Ok(h)
}

/// The handle behind `c`, checked: not null, this thread's. Borrowed: C keeps its reference.
fn handle<'a>(c: *const Handle) -> Result<&'a Handle, c_int> {
    // SAFETY: a non-null `c` is a handle the C API gave out and the caller has not given
    // back; only `thread` is read before the thread check.
    let h = unsafe { c.as_ref() }.ok_or(libc::EINVAL)?;
    if h.thread != std::thread::current().id() {
        return Err(libc::EPERM);
    }
    Ok(h)
}

/// Takes C's reference to `c` back (it was checked with [`handle`]).
fn give_back(c: *const Handle) {
    // SAFETY: `c` came from `Rc::into_raw` in `evco_spawn`/`evco_create`, and C gives its
    // reference back exactly once (join, detach or free).
    drop(unsafe { Rc::from_raw(c) });
}

/// What `evco_spawn` and `evco_create` check and read first: the scheduler (this thread's),
/// the function (not NULL) and the attributes; the attributes and the call to make.
fn prepare(
    s: *mut Sched,
    a: *const CAttr,
    f: Option<extern "C" fn(*mut c_void)>,
    arg: *mut c_void,
) -> Result<(Attr, impl FnOnce() + 'static), c_int> {
    keep_hooks();
    sched(s)?;
    let f = f.ok_or(libc::EINVAL)?;
    let a = Attr::read(a)?;
    let arg = arg as usize;
    Ok((a, move || f(arg as *mut c_void)))
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_spawn(
    s: *mut Sched,
    a: *const CAttr,
    f: Option<extern "C" fn(*mut c_void)>,
    arg: *mut c_void,
) -> *const Handle {
    boundary(|| {
        let (a, call) = prepare(s, a, f, arg)?;
        Ok(Rc::into_raw(spawn_c(&a, call)?))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_join(c: *const Handle, timeout_ms: c_int) -> c_int {
    boundary(|| {
        let h = handle(c)?;
        let Kind::Spawned(slot) = &h.kind else {
            return Err(libc::EINVAL);
        };
        if h.joining.replace(true) {
            return Err(libc::EBUSY);
        }
        let done = {
            let jh = slot.borrow();
            let r = jh
                .as_ref()
                .ok_or(libc::EINVAL)
                .and_then(|jh| os(jh.wait_timeout(timeout_of(timeout_ms))));
            h.joining.set(false);
            r?
        };
        if !done {
            return Err(libc::ETIMEDOUT);
        }
        let jh = slot.borrow_mut().take().ok_or(libc::EINVAL)?;
        let outcome = jh.join();
        give_back(c);
        match outcome {
            Ok(()) => Ok(0),
            // Given up without returning (evco_sched_free), or a bug caught on its stack.
            Err(p) if p.is::<coroutine::Cancelled>() => Err(libc::ECANCELED),
            Err(_) => Err(libc::ENOTRECOVERABLE),
        }
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_detach(c: *const Handle) -> c_int {
    boundary(|| {
        let h = handle(c)?;
        let Kind::Spawned(slot) = &h.kind else {
            return Err(libc::EINVAL);
        };
        slot.borrow_mut().take().ok_or(libc::EINVAL)?;
        give_back(c);
        Ok(0)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_cancel(c: *const Handle) -> c_int {
    boundary(|| {
        let h = handle(c)?;
        match &h.kind {
            Kind::Spawned(slot) => {
                let jh = slot.borrow();
                os(jh.as_ref().ok_or(libc::EINVAL)?.cancel())?;
            }
            Kind::Created(_) => {
                // SAFETY: the core of a created coroutine this handle holds (C has not freed
                // it), alive and at a fixed address (boxed) while the handle holds it.
                if let Some(core) = unsafe { h.core.get().as_ref() } {
                    core.cancel_cooperatively();
                }
            }
        }
        Ok(0)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_create(
    s: *mut Sched,
    a: *const CAttr,
    f: Option<extern "C" fn(*mut c_void)>,
    arg: *mut c_void,
) -> *const Handle {
    boundary(|| {
        let (a, call) = prepare(s, a, f, arg)?;
        let h = Handle::new(&a, Kind::Created(RefCell::new(None)));
        let co = os(a.builder().create(body(h.clone(), a.hooks_off, call)))?;
        co.core().c_frames.set(true);
        h.core.set(co.core());
        if let Kind::Created(slot) = &h.kind {
            *slot.borrow_mut() = Some(co);
        }
        Ok(Rc::into_raw(h))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_resume(c: *const Handle) -> c_int {
    boundary(|| {
        let h = handle(c)?;
        let Kind::Created(slot) = &h.kind else {
            return Err(libc::EINVAL);
        };
        // Borrowed while it runs: resuming it from inside itself finds it borrowed (EINVAL).
        let mut co = slot.try_borrow_mut().map_err(|_| libc::EINVAL)?;
        let co = co.as_mut().ok_or(libc::EINVAL)?;
        if co.is_finished() {
            return Err(libc::EINVAL);
        }
        match os(co.resume())? {
            Status::Suspended | Status::Finished => Ok(0),
            Status::Panicked(_) => Err(libc::ENOTRECOVERABLE),
        }
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_suspend() -> c_int {
    boundary(|| {
        in_coroutine()?;
        // In a spawned coroutine nothing would resume it: that is `EPERM` too.
        let spawned = coroutine::current_core().is_some_and(|c| !c.owner.get().is_null());
        if spawned {
            return Err(libc::EPERM);
        }
        os(coroutine::suspend())?;
        Ok(0)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_free(c: *const Handle) {
    boundary(|| {
        if c.is_null() {
            return Ok(());
        }
        let h = handle(c)?;
        let Kind::Created(slot) = &h.kind else {
            return Err(libc::EINVAL);
        };
        // Running (freed from inside itself or what it resumed): refused.
        let co = slot.try_borrow_mut().map_err(|_| libc::EINVAL)?.take();
        // Dropped suspended: its stack goes without running anything on it (`c_frames`).
        drop(co);
        give_back(c);
        Ok(())
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_yield() -> c_int {
    boundary(|| {
        in_coroutine()?;
        os(scheduler::yield_now()).map_err(perm_in_bare)?;
        Ok(0)
    })
}

/// A wait's `EINVAL` in a created (bare) coroutine, where no wait can suspend: `EPERM`.
fn perm_in_bare(e: c_int) -> c_int {
    let bare = coroutine::current_core().is_some_and(|c| c.owner.get().is_null());
    if e == libc::EINVAL && bare {
        libc::EPERM
    } else {
        e
    }
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_self() -> *const Handle {
    boundary(|| {
        // NULL outside a coroutine is an answer, not an error: errno is left alone.
        let Some(id) = coroutine::current().map(|c| c.id().as_u64()) else {
            return Ok(ptr::null());
        };
        Ok(SELVES.with(|s| s.borrow().get(&id).copied().unwrap_or(ptr::null())))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_is_done(c: *const Handle) -> c_int {
    boundary(|| {
        let h = handle(c)?;
        let done = match &h.kind {
            Kind::Spawned(slot) => slot.borrow().as_ref().is_none_or(JoinHandle::is_finished),
            Kind::Created(slot) => match slot.try_borrow() {
                Ok(co) => co.as_ref().is_none_or(Coroutine::is_finished),
                Err(_) => false, // running
            },
        };
        Ok(c_int::from(done))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_name(c: *const Handle) -> *const c_char {
    boundary(|| {
        let h = handle(c)?;
        Ok(h.name.as_ref().map_or(ptr::null(), |n| n.as_ptr()))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_stack_used(c: *const Handle) -> usize {
    boundary(|| {
        let h = handle(c)?;
        Ok(match &h.kind {
            Kind::Spawned(slot) => slot
                .borrow()
                .as_ref()
                .map_or(0, |j| j.core().stack_touched()),
            // SAFETY: as in `evco_cancel`.
            Kind::Created(_) => unsafe { h.core.get().as_ref() }.map_or(0, |c| c.stack_touched()),
        })
    })
}

// ---- waiting ------------------------------------------------------------------------------

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_sleep_ms(ms: i64) -> c_int {
    boundary(|| {
        let ms = u64::try_from(ms).map_err(|_| libc::EINVAL)?;
        in_coroutine()?;
        os(scheduler::sleep(Some(Duration::from_millis(ms)))).map_err(perm_in_bare)?;
        Ok(0)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn evco_wait_fd(fd: c_int, events: c_short, timeout_ms: c_int) -> c_int {
    boundary(|| {
        let read = events & What::READ.bits() != 0;
        let write = events & What::WRITE.bits() != 0;
        if events & !(What::READ.bits() | What::WRITE.bits()) != 0 || !(read || write) {
            return Err(libc::EINVAL);
        }
        if fd < 0 {
            return Err(libc::EBADF);
        }
        in_coroutine()?;
        let interest = match (read, write) {
            (true, true) => crate::io::Interest::READABLE | crate::io::Interest::WRITABLE,
            (true, false) => crate::io::Interest::READABLE,
            _ => crate::io::Interest::WRITABLE,
        };
        match crate::io::wait(fd, interest, timeout_of(timeout_ms)) {
            Ok(r) => Ok(c_int::from(
                if r.is_readable() {
                    What::READ.bits()
                } else {
                    0
                } | if r.is_writable() {
                    What::WRITE.bits()
                } else {
                    0
                },
            )),
            Err(e) if e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none() => Ok(0),
            Err(e) => Err(perm_in_bare(errno_of(&e))),
        }
    })
}

// ---- coroutine-local data -----------------------------------------------------------------

mod keys;

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_key_create(
    k: *mut c_uint,
    dtor: Option<extern "C" fn(*mut c_void)>,
) -> c_int {
    boundary(|| {
        if k.is_null() {
            return Err(libc::EINVAL);
        }
        let key = keys::create(dtor)?;
        // SAFETY: a non-null `k` points at the caller's evco_key_t (an unsigned int).
        unsafe { *k = key };
        Ok(0)
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_key_delete(k: c_uint) -> c_int {
    boundary(|| keys::delete(k).map(|()| 0))
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_getspecific(k: c_uint) -> *mut c_void {
    // NULL for a key with no value is not an error: errno is left alone then.
    boundary(|| Ok(keys::get(k)))
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_setspecific(k: c_uint, v: *const c_void) -> c_int {
    boundary(|| keys::set(k, v.cast_mut()).map(|()| 0))
}

// ---- hooks --------------------------------------------------------------------------------

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_hook_set(on: c_int) -> c_int {
    boundary(|| {
        let core = coroutine::current_core().ok_or(libc::EPERM)?;
        let was_on = !core.hooks_off.replace(on == 0);
        Ok(c_int::from(was_on))
    })
}

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_hooks_active() -> c_int {
    boundary(|| {
        keep_hooks();
        #[cfg(all(feature = "hook", target_os = "linux"))]
        return Ok(c_int::from(crate::hook::active()));
        #[cfg(not(all(feature = "hook", target_os = "linux")))]
        Ok(0)
    })
}

/// Without the hooks, an empty table (the header declares it either way).
#[cfg(not(all(feature = "hook", target_os = "linux")))]
#[unsafe(no_mangle)]
pub static evco_hook_table: [usize; 1] = [0];

/// See include/evco.h.
#[unsafe(no_mangle)]
pub extern "C" fn evco_selftest_panic() -> c_int {
    boundary(|| -> Result<c_int, c_int> { panic!("evco_selftest_panic: a panic on purpose") })
}
