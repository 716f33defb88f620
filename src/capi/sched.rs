//! The C ABI's schedulers: `evco_sched_*`, and the post box other threads spawn through
//! (see the lifecycle notes in the module above).

use super::*;
// ---- schedulers ---------------------------------------------------------------------------

/// What `evco_sched_post` hands a scheduler's thread.
pub(super) struct Posted {
    f: extern "C" fn(*mut c_void),
    arg: usize,
}

/// A scheduler's post box (see the module docs).
pub(super) struct PostBox {
    queue: Mutex<VecDeque<Posted>>,
    efd: c_int,
    /// A spawn failed (no stack could be had): the queue waits for a C coroutine to end (see
    /// `body`) instead of failing again on every loop turn.
    stalled: AtomicBool,
}

/// Most posts `deliver` spawns per loop turn; the rest wait for the next turn, so a burst of
/// posts from other threads does not hold the loop.
pub(super) const DELIVER_BATCH: usize = 256;

/// Most posts a scheduler holds not yet spawned: `evco_sched_post` fails with `EAGAIN` beyond.
pub(super) const MAX_BACKLOG: usize = 1 << 20;

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
    pub(super) static SCHED: Cell<*const Sched> = const { Cell::new(ptr::null()) };
}

pub(super) fn make_sched(base: EventBase) -> Result<*mut Sched, c_int> {
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
    pub(super) static AT_FORK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a handler with no preconditions, once per process. Registered after
    // the scheduler's own (made by `scheduler::enter`), so it runs after it in a child.
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_child));
    });
    Ok(s)
}

/// The post box's event on `base`, added.
pub(super) fn post_event(base: &EventBase, post: &Arc<PostBox>) -> io::Result<Event> {
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
pub(super) fn deliver(b: &PostBox) {
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
pub(super) fn sched<'a>(s: *mut Sched) -> Result<&'a Sched, c_int> {
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

/// A C coroutine of this thread ended: if the scheduler's post box stalled (a spawn found no
/// stack), it tries again.
pub(super) fn retry_stalled_posts() {
    // SAFETY: this thread's live scheduler, if any (freed only on this thread, never while one
    // of its coroutines runs).
    if let Some(s) = unsafe { SCHED.with(Cell::get).as_ref() } {
        if s.post.stalled.swap(false, Ordering::Relaxed) {
            let _ = s.post.ring();
        }
    }
}
