//! A runtime thread's life: start-up, its loop, and its part of the shutdown (see the
//! lifecycle invariants in the module above).

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use super::{Builder, CURRENT, Handle, Runtime, Shared};
use crate::event::EventBase;
use crate::scheduler::{self, Inbox, Scheduler};

thread_local! {
    /// Set on a runtime thread by the stop message: the shutdown's deadline (`None` inside:
    /// no deadline, a timeout too large to represent).
    static STOP: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// The stop message's body, run on each runtime thread.
pub(super) fn request_stop(deadline: Option<Instant>) {
    STOP.with(|s| {
        if s.get().is_none() {
            s.set(Some(deadline));
        }
    });
}

/// Whether this runtime thread has been told to stop (its listeners are closed, or about to be).
pub(super) fn stopping() -> bool {
    STOP.with(Cell::get).is_some()
}

/// Starts `n` threads for `shared`; each reports its inbox, then waits for the word to go.
pub(super) fn start(shared: Arc<Shared>, n: usize, b: &Builder) -> io::Result<Runtime> {
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<Arc<Inbox>>)>();
    let (started_tx, started_rx) = mpsc::channel::<io::Result<()>>();
    let mut threads = Vec::with_capacity(n);
    let mut gos = Vec::with_capacity(n);
    let mut failure = None;
    for i in 0..n {
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        let ready = ready_tx.clone();
        let started = started_tx.clone();
        let shared = shared.clone();
        let on_start = b.on_thread_start.clone();
        let on_stop = b.on_thread_stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{i}", b.name_prefix))
            .spawn(move || main(i, shared, (ready, go_rx, started), on_start, on_stop));
        match spawned {
            Ok(t) => {
                threads.push(t);
                gos.push(go_tx);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(ready_tx);
    drop(started_tx);
    let mut inboxes: Vec<Option<Arc<Inbox>>> = vec![None; threads.len()];
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok((i, Ok(inbox))) => inboxes[i] = Some(inbox),
            Ok((_, Err(e))) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert(io::Error::other("a runtime thread died starting"));
                break;
            }
        }
    }
    if let Some(e) = failure {
        for go in &gos {
            let _ = go.send(false);
        }
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    let _ = shared.inboxes.set(inboxes.into_iter().flatten().collect());
    for go in &gos {
        let _ = go.send(true);
    }
    let mut rt = Runtime {
        handle: Handle { shared },
        threads,
    };
    // Each thread reports once `on_thread_start` has run there. One that panicked has begun
    // its shutdown: stop the others too, rather than hand back a runtime a thread short.
    let mut failure = None;
    for _ in 0..n {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert(io::Error::other("a runtime thread died starting"));
                break;
            }
        }
    }
    if let Some(e) = failure {
        let _ = rt.stop(std::time::Duration::ZERO);
        return Err(e);
    }
    Ok(rt)
}

/// A starting thread's channels to `start`: its inbox (or why it has none) out, the word to
/// go in, and how its `on_thread_start` went out.
type Handshake = (
    mpsc::Sender<(usize, io::Result<Arc<Inbox>>)>,
    mpsc::Receiver<bool>,
    mpsc::Sender<io::Result<()>>,
);

/// A runtime thread. Returns how many coroutines it cancelled at the deadline.
fn main(
    index: usize,
    shared: Arc<Shared>,
    (ready, go, started): Handshake,
    on_start: Option<super::ThreadHook>,
    on_stop: Option<super::ThreadHook>,
) -> usize {
    let setup = || -> io::Result<_> {
        let guard = scheduler::enter(EventBase::new()?)?;
        let sched = Scheduler::current().ok_or_else(|| io::Error::other("no scheduler"))?;
        let inbox = sched.inbox()?;
        let hold = sched.hold_inbox()?;
        Ok((guard, inbox, hold))
    };
    let (guard, hold) = match setup() {
        Ok((guard, inbox, hold)) => {
            let _ = ready.send((index, Ok(inbox)));
            (guard, hold)
        }
        Err(e) => {
            let _ = ready.send((index, Err(e)));
            return 0;
        }
    };
    drop(ready);
    if go.recv() != Ok(true) {
        return 0;
    }
    let forks = shared.forks;
    CURRENT.with(|c| *c.borrow_mut() = Some((Handle { shared }, index)));
    let hook = match &on_start {
        Some(f) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f())).map_err(|p| {
            io::Error::other(format!(
                "on_thread_start panicked on runtime thread {index}: {}",
                crate::event::panic_message(&*p)
            ))
        }),
        None => Ok(()),
    };
    let hook_ok = hook.is_ok();
    let _ = started.send(hook);
    drop(started);
    if hook_ok {
        // The hold keeps the loop waiting for posts: it ends only when the stop comes. In a
        // child forked from one of its coroutines, where no stop can come (the runtime's
        // handles refuse to post there), it ends once this copy's coroutines are done.
        let stop = || {
            STOP.with(Cell::get).is_some()
                || (super::FORKS.load(std::sync::atomic::Ordering::Relaxed) != forks
                    && scheduler::live_coroutines() == 0)
        };
        if let Err(e) = scheduler::block_outside(stop, None) {
            log::error!("evco: runtime thread {index}: its loop failed: {e}");
        }
    } else {
        // `build` fails: this thread winds down at once (what `on_thread_start` spawned is
        // cancelled), and `build` stops the others.
        request_stop(Some(Instant::now()));
    }
    let deadline = STOP.with(Cell::get).flatten();
    super::serve::close_listeners();
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let _ = scheduler::block_outside(|| scheduler::live_coroutines() == 0, left);
    let cancelled = scheduler::live_coroutines();
    super::serve::reset_connections();
    let _ = scheduler::wind_down(Some(std::time::Duration::ZERO));
    if let Some(f) = &on_stop {
        // A panic here must not skip the rest of the thread's wind-down (nor lose its count).
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f())) {
            log::error!(
                "evco: on_thread_stop panicked on runtime thread {index}: {}",
                crate::event::panic_message(&*p)
            );
        }
    }
    drop(hold);
    drop(guard);
    CURRENT.with(|c| c.borrow_mut().take());
    cancelled
}

/// Blocks the calling thread until SIGINT or SIGTERM (see `Runtime::shutdown_on_signal`):
/// a base of its own with the two signal events, run until one fires.
pub(super) fn wait_for_stop_signal() -> io::Result<()> {
    if crate::coroutine::is_coroutine() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shutdown_on_signal blocks its thread: call it outside coroutines",
        ));
    }
    let base = EventBase::new()?;
    let stop = |_| {};
    let int = crate::event::Event::signal(&base, libc::SIGINT, stop)?;
    let term = crate::event::Event::signal(&base, libc::SIGTERM, stop)?;
    int.add(None)?;
    term.add(None)?;
    base.loop_once()?;
    Ok(())
}
