//! Many threads: a thread-per-core runtime of schedulers, spawning across them, serving one
//! address from every thread, and shutting all of it down.
//!
//! A [`Runtime`] is `n` threads, each with its own scheduler on its own `event_base`, each
//! running its loop until the runtime shuts down. Coroutines never move between threads: only
//! `Send` closures cross, through the target thread's inbox (a lock-free queue plus one eventfd
//! event on its base, written only when the queue goes from empty to non-empty; see
//! `scheduler::remote`). A spawned closure's body may use `Rc` and thread-locals: it runs on
//! one thread from start to end.
//!
//! ```
//! use evco::runtime::{Builder, Handle};
//!
//! let rt = Builder::new().threads(2).build().unwrap();
//! let handles: Vec<_> = (0..4)
//!     .map(|i| rt.spawn(move || (i, Handle::current().unwrap().thread_index().unwrap())))
//!     .collect();
//! for h in handles {
//!     let (i, thread) = h.join().unwrap();
//!     assert_eq!(thread, i % 2, "placed round-robin");
//! }
//! rt.shutdown(std::time::Duration::from_secs(5)).unwrap();
//! ```
//!
//! Nothing here calls `evthread_use_pthreads`: no thread ever calls into another thread's
//! base, so it works whether or not a host program enabled libevent's locking.
//!
//! # Lifecycle invariants
//!
//! - A runtime thread installs its scheduler before it reports ready and keeps a hold on its
//!   inbox for its whole life, so its loop waits for other threads' posts instead of ending
//!   when no coroutine is left.
//! - It leaves its loop only when [`Runtime::shutdown`] (or the runtime's drop) posts it the
//!   stop, with the deadline. Then, on its own thread: the listeners `serve` made are closed
//!   (their accept loops cancelled); the coroutines left run until they end or the deadline
//!   passes; those still there are cancelled (their blocking calls return `ECANCELED`, their
//!   stacks unwind, their destructors run) and resumed until they end; its scheduler is
//!   uninstalled, which closes its inbox (later posts fail and drop their closures on the
//!   posting thread), frees its resolvers and its base. `shutdown` joins every thread.
//! - A cross-thread [`JoinHandle`] always ends: with the result, the panic, [`Cancelled`]
//!   (cancelled, or stopped by the shutdown), or an `io::Error` when its closure never ran (the
//!   thread had shut down, or no stack could be had).
//! - In a child forked after the runtime was built, none of its threads exist: a spawn or a
//!   `serve` there fails, a join of a coroutine not finished before the fork reports an
//!   `io::Error` instead of waiting, and a shutdown (or the drop) joins nothing. A child
//!   forked from one of the runtime's coroutines has a copy of that one thread: the coroutine
//!   goes on there (spawns onto the runtime fail there as well), and once that thread's
//!   coroutines are done it winds down as at shutdown (its `on_thread_stop` runs) and ends, and
//!   with it the child, when it was the child's only thread. A coroutine of that copy that was
//!   already parked in a cross-thread wait when the process forked (a join of another
//!   thread's coroutine, a `sync::shared` receive) is never woken there: its waker is in the
//!   parent. Fork from a coroutine that has nothing else in flight on its thread.
//!
//! [`Cancelled`]: crate::coroutine::Cancelled

mod join;
mod serve;
mod worker;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::coroutine::DEFAULT_STACK_SIZE;
use crate::scheduler::{Inbox, Msg, Posted};

pub use join::JoinHandle;
use join::Spawn;

/// Most threads a runtime has: as many as the process has reactor doorbells (a close on one
/// thread reaches a waiter on another through them), and far more than cores on any machine.
pub const MAX_THREADS: usize = 1024;

/// How long dropping a [`Runtime`] lets its coroutines finish before cancelling them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

type ThreadHook = Arc<dyn Fn() + Send + Sync>;

/// Configures and builds a [`Runtime`].
#[derive(Clone)]
pub struct Builder {
    threads: Option<usize>,
    stack_size: usize,
    name_prefix: String,
    on_thread_start: Option<ThreadHook>,
    on_thread_stop: Option<ThreadHook>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("threads", &self.threads)
            .field("stack_size", &self.stack_size)
            .field("name_prefix", &self.name_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// A builder with the defaults: one thread per available CPU, 64 KiB coroutine stacks,
    /// threads named `evco-0`, `evco-1`, ...
    pub fn new() -> Builder {
        Builder {
            threads: None,
            stack_size: DEFAULT_STACK_SIZE,
            name_prefix: "evco".to_string(),
            on_thread_start: None,
            on_thread_stop: None,
        }
    }

    /// The number of threads (at least one, at most [`MAX_THREADS`]; default:
    /// `std::thread::available_parallelism`).
    pub fn threads(mut self, n: usize) -> Builder {
        self.threads = Some(n);
        self
    }

    /// The stack size of the coroutines the runtime spawns (see
    /// [`coroutine::Builder::stack_size`](crate::coroutine::Builder::stack_size)).
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = bytes;
        self
    }

    /// The threads' names: `<prefix>-<index>` (`build` fails on a prefix with a NUL byte).
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Builder {
        self.name_prefix = prefix.into();
        self
    }

    /// Runs `f` on each runtime thread once its scheduler is installed, before any coroutine
    /// runs there (outside coroutines: it may spawn, e.g. with `Handle::current()`).
    /// [`build`](Builder::build) returns once it has run on every thread; if it panics on one,
    /// `build` shuts the threads down and returns an error carrying the panic's message.
    pub fn on_thread_start(mut self, f: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_thread_start = Some(Arc::new(f));
        self
    }

    /// Runs `f` on each runtime thread after its coroutines ended at shutdown, before its
    /// scheduler goes. A panic in it is caught and logged; the thread winds down all the same.
    pub fn on_thread_stop(mut self, f: impl Fn() + Send + Sync + 'static) -> Builder {
        self.on_thread_stop = Some(Arc::new(f));
        self
    }

    /// Starts the threads. An error (and no thread left running) when one cannot be started
    /// or cannot make its event base.
    pub fn build(self) -> io::Result<Runtime> {
        let n = match self.threads {
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a runtime needs at least one thread",
                ));
            }
            Some(n) if n > MAX_THREADS => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a runtime has at most {MAX_THREADS} threads ({n} asked)"),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        if self.name_prefix.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a runtime's thread name prefix cannot contain a NUL byte",
            ));
        }
        static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1);
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a child handler that only bumps an atomic (async-signal-safe), once
        // per process.
        AT_FORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(count_fork));
        });
        let shared = Arc::new(Shared {
            forks: FORKS.load(Ordering::Relaxed),
            id: NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed),
            inboxes: OnceLock::new(),
            next: AtomicUsize::new(0),
            stack_size: self.stack_size,
        });
        worker::start(shared, n, &self)
    }
}

/// How many times this process's line of ancestors forked since the first runtime was built:
/// bumped in every forked child. A runtime built before a fork has no threads in the child.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// `pthread_atfork`'s child handler (see [`FORKS`]).
extern "C" fn count_fork() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

fn forked_child() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the runtime was built before this process was forked: its threads are in the parent",
    )
}

/// What the threads of a runtime and its handles share.
struct Shared {
    /// [`FORKS`] when it was built: another value means this is a forked child, where none of
    /// its threads exist.
    forks: u64,
    /// Tells runtimes apart (a thread of one is not a thread of another).
    id: u64,
    /// Each thread's inbox, by index; set once every thread is up.
    inboxes: OnceLock<Vec<Arc<Inbox>>>,
    /// Round-robin placement.
    next: AtomicUsize,
    stack_size: usize,
}

impl Shared {
    fn inboxes(&self) -> &[Arc<Inbox>] {
        self.inboxes.get().map_or(&[], Vec::as_slice)
    }

    /// Whether this process is a child forked since the runtime was built.
    fn in_forked_child(&self) -> bool {
        FORKS.load(Ordering::Relaxed) != self.forks
    }
}

thread_local! {
    /// The runtime this thread is a thread of, and its index there.
    static CURRENT: RefCell<Option<(Handle, usize)>> = const { RefCell::new(None) };
}

/// A running set of scheduler threads. See the module docs.
///
/// Dropping it shuts it down with [`DEFAULT_SHUTDOWN_TIMEOUT`].
pub struct Runtime {
    handle: Handle,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Runtime {
    /// A runtime with [`Builder`]'s defaults.
    pub fn new() -> io::Result<Runtime> {
        Builder::new().build()
    }

    /// A handle for spawning from anywhere (`Clone`, `Send`, `Sync`).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// See [`Handle::spawn`].
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// See [`Handle::spawn_on`].
    pub fn spawn_on<F, T>(&self, thread: usize, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn_on(thread, f)
    }

    /// See [`Handle::on_each_thread`].
    pub fn on_each_thread<F, T>(&self, f: F) -> Vec<JoinHandle<T>>
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.handle.on_each_thread(f)
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.handle.threads()
    }

    /// Runs `f` as a coroutine on a runtime thread and blocks the calling thread until it
    /// returns (a coroutine calling it parks instead). Re-raises a panic of `f` here.
    ///
    /// An error, not a deadlock, when called from one of this runtime's threads (they would
    /// wait for themselves), or when `f` never ran (the runtime is shutting down).
    pub fn block_on<F, T>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.handle.thread_index().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Deadlock,
                "Runtime::block_on called from one of the runtime's own threads: spawn and \
                 join instead",
            ));
        }
        match self.spawn(f).join_ran()? {
            Ok(v) => Ok(v),
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Shuts the runtime down (see the module docs): closes the listeners [`serve`] made, lets
    /// the coroutines run until `timeout` has passed, cancels those left (their blocking calls
    /// return `ECANCELED`, their destructors run), and joins every thread. Returns how many
    /// coroutines were cancelled at the deadline.
    ///
    /// Closing a reuseport listener drops the connections queued on it that were not accepted
    /// yet (the kernel resets them); those accepted carry on until the deadline.
    ///
    /// Called from one of the runtime's own threads, it cannot join them: it tells them to
    /// stop (with `timeout`) and returns an error at once; they end on their own. Called from
    /// a coroutine of another scheduler, it parks that coroutine (a helper thread joins), so
    /// the other coroutines of its thread run meanwhile.
    ///
    /// [`serve`]: Runtime::serve
    pub fn shutdown(mut self, timeout: Duration) -> io::Result<usize> {
        self.stop(timeout)
    }

    /// Blocks the calling thread until SIGINT or SIGTERM arrives, then shuts down with
    /// `timeout` (see [`shutdown`](Runtime::shutdown)). The signals are caught only while it
    /// waits. Call it from the main thread of a server, not from a runtime thread.
    pub fn shutdown_on_signal(self, timeout: Duration) -> io::Result<usize> {
        worker::wait_for_stop_signal()?;
        self.shutdown(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> io::Result<usize> {
        if self.threads.is_empty() {
            return Ok(0);
        }
        if self.handle.shared.in_forked_child() {
            // The threads are the parent's: none to stop or join here (std's join would panic,
            // finding them never ended). Their handles are forgotten, not dropped (detaching a
            // thread that does not exist).
            std::mem::forget(std::mem::take(&mut self.threads));
            return Err(forked_child());
        }
        let deadline = crate::event::deadline_after(timeout);
        for inbox in self.handle.shared.inboxes() {
            let _ = inbox.post(Msg::Run(Box::new(move || worker::request_stop(deadline))));
        }
        if self.handle.thread_index().is_some() {
            // It cannot join itself: the threads stop on their own, detached.
            self.threads.clear();
            return Err(io::Error::new(
                io::ErrorKind::Deadlock,
                "a runtime shut down from one of its own threads stops (with the timeout \
                 given), but cannot join its threads there: they end on their own, and how \
                 many coroutines were cancelled is not known",
            ));
        }
        let threads = std::mem::take(&mut self.threads);
        if crate::coroutine::is_coroutine()
            && !std::thread::panicking()
            && crate::scheduler::can_wait().is_ok()
        {
            // Joining blocks: inside a coroutine (of another scheduler) it would stop every
            // coroutine of this thread for the whole grace period, and those the runtime's
            // coroutines wait for could not answer. A helper thread joins; the caller parks.
            return join_from_coroutine(threads);
        }
        join_threads(threads)
    }
}

/// Joins a runtime's threads: how many coroutines they cancelled at the deadline.
fn join_threads(threads: Vec<std::thread::JoinHandle<usize>>) -> io::Result<usize> {
    let mut cancelled = 0;
    let mut panicked = false;
    for t in threads {
        match t.join() {
            Ok(n) => cancelled += n,
            Err(_) => panicked = true,
        }
    }
    if panicked {
        return Err(io::Error::other(
            "a runtime thread panicked while shutting down",
        ));
    }
    Ok(cancelled)
}

/// [`join_threads`] on a helper thread while the calling coroutine (one that can park) parks.
/// When no thread can be started it joins here, blocking. A caller cancelled while it waits
/// leaves the helper to finish the joins.
fn join_from_coroutine(threads: Vec<std::thread::JoinHandle<usize>>) -> io::Result<usize> {
    let (tx, rx) = crate::sync::shared::oneshot::channel();
    // The threads go to the helper once it runs: a helper that cannot be had leaves them here.
    let (give, take) = std::sync::mpsc::channel();
    let helper = std::thread::Builder::new()
        .name("evco-rt-join".into())
        .spawn(move || {
            let threads = take.recv().unwrap_or_default();
            let _ = tx.send(join_threads(threads));
        });
    if helper.is_err() {
        return join_threads(threads);
    }
    if let Err(back) = give.send(threads) {
        return join_threads(back.0); // the helper is gone before it took them
    }
    rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the runtime's threads are being joined on a helper thread: this coroutine could \
             not wait for them",
        ))
    })
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.handle.shared.in_forked_child() {
            let _ = self.stop(Duration::ZERO); // nothing to do here but forget the threads
            return;
        }
        if self.handle.thread_index().is_some() {
            // Dropped on one of its own threads: they are told to stop, and none is joined.
            let _ = self.stop(DEFAULT_SHUTDOWN_TIMEOUT);
            return;
        }
        if let Err(e) = self.stop(DEFAULT_SHUTDOWN_TIMEOUT) {
            log::error!("evco: dropping a runtime: {e}");
        }
    }
}

/// A handle on a [`Runtime`]: spawn onto its threads from anywhere. `Clone`, `Send`, `Sync`.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("threads", &self.threads())
            .field("thread_index", &self.thread_index())
            .finish()
    }
}

impl Handle {
    /// The runtime of the calling thread (a runtime thread, or a coroutine on one). An error
    /// elsewhere.
    pub fn current() -> io::Result<Handle> {
        CURRENT
            .with(|c| c.borrow().as_ref().map(|(h, _)| h.clone()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "Handle::current called outside a runtime thread",
                )
            })
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.shared.inboxes().len()
    }

    /// The calling thread's index in this runtime; `None` when it is not one of its threads.
    pub fn thread_index(&self) -> Option<usize> {
        CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(h, _)| h.shared.id == self.shared.id)
                .map(|(_, i)| *i)
        })
    }

    /// Spawns `f` as a coroutine on the next thread, round-robin. The closure crosses threads
    /// (`Send`); what it makes while it runs need not be. During a shutdown's grace period it
    /// still runs, and is cancelled at the deadline like the coroutines already there; once
    /// its thread has wound down it never runs: joining then reports an `io::Error`.
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let n = self.threads().max(1);
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % n;
        self.spawn_to(i, f)
    }

    /// Spawns `f` on thread `thread`. An error when there is no such thread.
    pub fn spawn_on<F, T>(&self, thread: usize, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if thread >= self.threads() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "spawn_on({thread}): the runtime has {} thread(s)",
                    self.threads()
                ),
            ));
        }
        Ok(self.spawn_to(thread, f))
    }

    /// Spawns a coroutine running `f` on every thread; the handles in thread order.
    pub fn on_each_thread<F, T>(&self, f: F) -> Vec<JoinHandle<T>>
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        (0..self.threads())
            .map(|i| {
                let f = f.clone();
                self.spawn_to(i, move || f())
            })
            .collect()
    }

    fn spawn_to<F, T>(&self, thread: usize, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let job = Spawn::new(self.shared.stack_size, f);
        let inbox = self.shared.inboxes()[thread].clone();
        let handle = JoinHandle {
            state: job.clone(),
            inbox,
            thread,
            forks: self.shared.forks,
        };
        if self.shared.in_forked_child() {
            // Posted, it would sit in a queue no thread takes from: the handle would wait for
            // ever. (The closure goes with the handle's share.)
            job.fail(forked_child());
        } else if self.thread_index() == Some(thread) {
            // Onto the calling thread itself: spawned here and now, as its inbox's callback
            // would (no eventfd write, no loop pass).
            job.start_here();
        } else {
            // A job that cannot be posted is dropped here, which reports why.
            let _ = handle.inbox.post(Msg::Start(Posted::new(job)));
        }
        handle
    }
}

/// The calling thread's index in the runtime it belongs to; `None` outside runtime threads.
pub fn thread_index() -> Option<usize> {
    CURRENT.with(|c| c.borrow().as_ref().map(|(_, i)| *i))
}
