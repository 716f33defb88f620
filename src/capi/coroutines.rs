//! The C ABI's coroutines: their handles (`evco_t`), spawning, joining, cancelling and the
//! created (libco-style) coroutines (see the lifecycle notes in the module above).

use super::*;
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
pub(super) struct Attr {
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

pub(super) enum Kind {
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
    pub(super) static SELVES: RefCell<HashMap<u64, *const Handle>> = RefCell::new(HashMap::new());
}

/// The body every C coroutine runs: registers itself for `evco_self`, runs `f`, runs its
/// coroutine-local destructors, unregisters.
pub(super) fn body(
    me: Rc<Handle>,
    hooks_off: bool,
    f: impl FnOnce() + 'static,
) -> impl FnOnce() + 'static {
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
        retry_stalled_posts();
    }
}

/// Spawns `f` as a C coroutine with `a`; its handle.
pub(super) fn spawn_c(a: &Attr, f: impl FnOnce() + 'static) -> Result<Rc<Handle>, c_int> {
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
pub(super) fn handle<'a>(c: *const Handle) -> Result<&'a Handle, c_int> {
    // SAFETY: a non-null `c` is a handle the C API gave out and the caller has not given
    // back; only `thread` is read before the thread check.
    let h = unsafe { c.as_ref() }.ok_or(libc::EINVAL)?;
    if h.thread != std::thread::current().id() {
        return Err(libc::EPERM);
    }
    Ok(h)
}

/// Takes C's reference to `c` back (it was checked with [`handle`]).
pub(super) fn give_back(c: *const Handle) {
    // SAFETY: `c` came from `Rc::into_raw` in `evco_spawn`/`evco_create`, and C gives its
    // reference back exactly once (join, detach or free).
    drop(unsafe { Rc::from_raw(c) });
}

/// What `evco_spawn` and `evco_create` check and read first: the scheduler (this thread's),
/// the function (not NULL) and the attributes; the attributes and the call to make.
pub(super) fn prepare(
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
pub(super) fn perm_in_bare(e: c_int) -> c_int {
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
