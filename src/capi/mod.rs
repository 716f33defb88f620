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

mod coroutines;
mod sched;

use coroutines::*;
use sched::*;

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
