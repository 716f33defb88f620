//! The public handles on a coroutine: [`Builder`], which spawns one on the scheduler or creates
//! a bare one, and the bare [`Coroutine`] its owner resumes by hand, with [`Status`] and
//! [`suspend`].

use std::any::Any;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::rc::Rc;

use super::{
    Core, CoroutineId, DEFAULT_STACK_SIZE, MIN_STACK_SIZE, Resumed, StackOverflow, State,
    cancelling_error, current_core, switch_out,
};

/// Configures a coroutine before it is spawned (on the scheduler) or created (bare).
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) name: Option<Rc<str>>,
    pub(crate) stack_size: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Default name (none) and stack size ([`DEFAULT_STACK_SIZE`]).
    pub fn new() -> Builder {
        Builder {
            name: None,
            stack_size: DEFAULT_STACK_SIZE,
        }
    }

    /// Names the coroutine (shown by [`current`](super::current), panic messages and errors).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(Rc::from(name.into()));
        self
    }

    /// Sets the stack size in bytes, rounded up to [`MIN_STACK_SIZE`] and to a 4 KiB page; more
    /// than [`MAX_STACK_SIZE`](super::MAX_STACK_SIZE) makes [`spawn`](Builder::spawn) and [`create`](Builder::create)
    /// fail with [`io::ErrorKind::InvalidInput`].
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        // Beyond `MAX_STACK_SIZE` (rounding up near usize::MAX included), spawn and create
        // report the error.
        self.stack_size = bytes
            .max(MIN_STACK_SIZE)
            .checked_next_multiple_of(4096)
            .unwrap_or(usize::MAX);
        self
    }

    /// Creates a bare coroutine running `f`, resumed only by [`Coroutine::resume`].
    pub fn create<F>(self, f: F) -> io::Result<Coroutine>
    where
        F: FnOnce() + 'static,
    {
        let core = Core::new(self.name, self.stack_size, f)?;
        Ok(Coroutine {
            core: Box::new(core),
            _not_send: PhantomData,
        })
    }
}

/// How a call to [`Coroutine::resume`] ended.
pub enum Status {
    /// The coroutine called [`suspend`] and can be resumed again.
    Suspended,
    /// The coroutine returned.
    Finished,
    /// The coroutine panicked (the payload) or overflowed its stack ([`StackOverflow`]).
    Panicked(Box<dyn Any + Send>),
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Suspended => write!(f, "Suspended"),
            Status::Finished => write!(f, "Finished"),
            Status::Panicked(p) => match p.downcast_ref::<StackOverflow>() {
                Some(o) => write!(f, "Panicked({o})"),
                None => write!(f, "Panicked({:?})", crate::event::panic_message(&**p)),
            },
        }
    }
}

/// A bare, asymmetric coroutine: it runs only when its owner calls [`resume`](Self::resume),
/// and [`suspend`] inside it returns control to that caller. The owner may be plain thread code
/// or another coroutine.
///
/// Blocking evco calls (`io::wait`, `time::sleep`, `yield_now`) need the scheduler and return an
/// error inside a bare coroutine; spawn a scheduled one for those.
///
/// # Send
///
/// `!Send`: its stack may hold thread-bound values (and evco's thread-local state points at it
/// while it runs).
pub struct Coroutine {
    core: Box<Core>,
    _not_send: PhantomData<*mut ()>,
}

impl fmt::Debug for Coroutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coroutine")
            .field("id", &self.core.id)
            .field("name", &self.core.name)
            .field("state", &self.core.state())
            .finish()
    }
}

impl Coroutine {
    /// A bare coroutine running `f` with the default stack size.
    pub fn new<F>(f: F) -> io::Result<Coroutine>
    where
        F: FnOnce() + 'static,
    {
        Builder::new().create(f)
    }

    /// Runs the coroutine until it suspends, returns, panics or overflows its stack.
    ///
    /// Resuming a finished coroutine, or one that is running (itself, or one up the chain of
    /// resumes), is an error.
    #[inline]
    pub fn resume(&mut self) -> io::Result<Status> {
        Ok(match self.core.resume()? {
            Resumed::Suspended => Status::Suspended,
            Resumed::Finished => Status::Finished,
            Resumed::Panicked(p) => Status::Panicked(p),
        })
    }

    /// Whether it has finished (returned, panicked or overflowed).
    pub fn is_finished(&self) -> bool {
        self.core.state() == State::Finished
    }

    /// Its id.
    pub fn id(&self) -> CoroutineId {
        self.core.id()
    }

    /// Its name, if any.
    pub fn name(&self) -> Option<&str> {
        self.core.name()
    }

    /// Its core (for the C ABI: its flags, its stack).
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

/// Suspends the running bare coroutine, returning control to whoever resumed it.
///
/// An error outside a coroutine, and inside a scheduled coroutine (nothing would resume it:
/// use [`yield_now`](crate::yield_now) or a wait there).
#[inline]
pub fn suspend() -> io::Result<()> {
    match current_core() {
        Some(core) if core.owner.get().is_null() && !core.is_cancelling() => {
            switch_out(core);
            Ok(())
        }
        core => Err(cannot_suspend(core)),
    }
}

#[cold]
#[inline(never)]
fn cannot_suspend(core: Option<&Core>) -> io::Error {
    match core {
        None => io::Error::new(
            io::ErrorKind::InvalidInput,
            "suspend called outside a coroutine",
        ),
        Some(core) if !core.owner.get().is_null() => io::Error::new(
            io::ErrorKind::InvalidInput,
            "suspend called in a scheduled coroutine: use yield_now or a wait",
        ),
        Some(_) => cancelling_error(),
    }
}
