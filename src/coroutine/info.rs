//! What evco tells about coroutines: their ids, [`current`], the panic payloads a join can
//! report ([`StackOverflow`], [`Cancelled`]) and how to tell a cancellation's unwinding, and
//! the light panic hook coroutine stacks print through (see the module invariants).

use std::any::Any;
use std::fmt;
use std::io::{self, Write};
use std::panic;
use std::rc::Rc;
use std::sync::Once;

use super::{CURRENT, QUIET_PANICS, current_core};

/// Whether a panic payload is the unwind evco uses to cancel a coroutine. Code that catches
/// panics inside a coroutine must re-raise such payloads with `std::panic::resume_unwind`.
pub fn is_cancellation(payload: &(dyn Any + Send)) -> bool {
    matches!(
        payload.downcast_ref::<generator::Error>(),
        Some(generator::Error::Cancel)
    )
}

/// A process-wide unique coroutine id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoroutineId(pub(super) u64);

impl CoroutineId {
    /// The id no coroutine has (ids start at 1): what a [`Cancelled`] reports for a coroutine
    /// cancelled before it was ever made (a runtime spawn cancelled while on its way).
    pub const NONE: CoroutineId = CoroutineId(0);

    /// The id whose number is `n` (ids travel as numbers in cross-thread messages).
    pub(crate) const fn from_u64(n: u64) -> CoroutineId {
        CoroutineId(n)
    }

    /// The number behind the id.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CoroutineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What [`current`] tells about the running coroutine.
#[derive(Clone, Debug)]
pub struct Current {
    id: CoroutineId,
    name: Option<Rc<str>>,
    stack_size: usize,
}

impl Current {
    /// Its id.
    pub fn id(&self) -> CoroutineId {
        self.id
    }
    /// Its name, if it was given one with [`Builder::name`](super::Builder::name).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// Its stack size in bytes.
    pub fn stack_size(&self) -> usize {
        self.stack_size
    }
}

/// The coroutine running on this thread, or `None` outside coroutines.
pub fn current() -> Option<Current> {
    current_core().map(|c| Current {
        id: c.id,
        name: c.name.clone(),
        stack_size: c.stack_size,
    })
}

/// The panic payload a [`JoinHandle`](crate::JoinHandle) or [`Coroutine::resume`](super::Coroutine::resume) reports when a
/// coroutine overflowed its stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackOverflow {
    /// The coroutine that overflowed.
    pub id: CoroutineId,
    /// Its name, if any.
    pub name: Option<String>,
    /// Its stack size in bytes.
    pub stack_size: usize,
}

impl fmt::Display for StackOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "coroutine {} '{}' overflowed its {} KiB stack (give it more with Builder::stack_size)",
            self.id,
            self.name.as_deref().unwrap_or("<unnamed>"),
            self.stack_size / 1024
        )
    }
}

impl std::error::Error for StackOverflow {}

/// The panic payload a [`JoinHandle`](crate::JoinHandle) reports for a coroutine that was
/// cancelled (dropped while suspended) before it finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancelled {
    /// The coroutine that was cancelled.
    pub id: CoroutineId,
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coroutine {} was cancelled before it finished", self.id)
    }
}

impl std::error::Error for Cancelled {}

pub(super) fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if matches!(
                info.payload().downcast_ref::<generator::Error>(),
                Some(generator::Error::Cancel | generator::Error::Done)
            ) {
                return;
            }
            if QUIET_PANICS.try_with(|q| q.get()).unwrap_or(false) {
                return;
            }
            let core = CURRENT.try_with(|c| c.get()).unwrap_or(std::ptr::null());
            // SAFETY: see `current_core`; the hook runs on the panicking coroutine's stack, so
            // the core is alive.
            match unsafe { core.as_ref() } {
                Some(core) => {
                    // Little stack, no backtrace, no lock but stderr's.
                    let msg = crate::event::panic_message(info.payload());
                    let loc = info.location();
                    let _ = writeln!(
                        io::stderr().lock(),
                        "coroutine {} '{}' panicked at {}:{}: {}",
                        core.id,
                        core.name.as_deref().unwrap_or("<unnamed>"),
                        loc.map_or("?", |l| l.file()),
                        loc.map_or(0, |l| l.line()),
                        msg
                    );
                }
                None => previous(info),
            }
        }));
    });
}

pub(crate) fn cancelling_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::Interrupted,
        "coroutine is being cancelled: it cannot suspend again",
    )
}
