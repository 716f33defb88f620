//! A small thread pool for the lookups evco cannot make itself (glibc's own `getaddrinfo` with
//! NSS sources beyond `files` and `dns`, a truncated answer, reverse lookups): the call runs on
//! a pool thread while the asking coroutine is parked and its scheduler's thread runs others.
//!
//! Self-contained on purpose: each request carries an eventfd that the pool thread writes when
//! the result is in, and the coroutine waits for it to become readable with evco's ordinary fd
//! wait (`io::wait_for`), so the scheduler needs no cross-thread waker of its own.
//!
//! Up to [`MAX_THREADS`] threads, started on demand and kept (named `evco-dns`); a request
//! queues while all are busy. A coroutine that leaves before its answer (cancellation) drops its
//! share of the request: the pool thread's result is dropped with the last share (an `addrinfo`
//! list's owner frees it), and the eventfd closed with it. A forked child starts a pool of its
//! own (the parent's threads are not in it).
//!
//! Known limits at `fork`: a coroutine of the forking thread that is parked on a request at
//! that moment stays parked in the child (its answer comes to the parent's copy), and a fork
//! while a pool thread holds the pool's lock leaves the child's first pooled lookup waiting
//! for ever. Fork between lookups (as pre-fork servers do at start-up).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::io::Interest;

/// Most pool threads at once.
const MAX_THREADS: usize = 4;

/// A request's work: it returns what tells the waiter its answer is in, which the pool thread
/// calls only once it counts itself idle again (see [`work`]).
type Job = Box<dyn FnOnce() -> Notify + Send>;
type Notify = Box<dyn FnOnce() + Send>;

struct Pool {
    /// The process the threads belong to (a forked child has none of them).
    pid: u32,
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    pid: 0,
    queue: VecDeque::new(),
    threads: 0,
    idle: 0,
});
static WORK: Condvar = Condvar::new();

fn pool() -> MutexGuard<'static, Pool> {
    // A job never panics while the lock is held (it runs unlocked), so a poisoned lock holds
    // consistent data.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request's result, shared by the waiting coroutine and the pool thread.
struct Request<T> {
    result: Mutex<Option<T>>,
    /// Written (made readable) once `result` is in.
    done: OwnedFd,
}

/// Runs `f` on a pool thread and parks the running scheduled coroutine until it returns.
/// Errors: the coroutine was cancelled (`f` still runs, and its result is dropped), or no
/// eventfd or thread could be made.
pub(super) fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    // SAFETY: eventfd takes no pointers; a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // The number may be one another thread's close (often the pool thread's, of the previous
    // request's eventfd) has not finished with. `libc::eventfd` is evco's hook here (this
    // module is the hooks'), which ends that close's `CLOSING` mark; without it the wait below
    // failed `EBADF` (1 pooled lookup in ~10,000).
    let request = Arc::new(Request {
        result: Mutex::new(None),
        // SAFETY: a fresh fd, owned by nothing else.
        done: unsafe { OwnedFd::from_raw_fd(fd) },
    });
    let theirs = request.clone();
    submit(Box::new(move || {
        let value = f();
        *theirs.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        Box::new(move || {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from `one` to the request's eventfd, which `theirs` keeps
            // open. It cannot fail short of the counter's overflow, which one write never
            // reaches.
            unsafe { libc::write(theirs.done.as_raw_fd(), (&one as *const u64).cast(), 8) };
        })
    }))?;
    loop {
        if let Some(value) = request
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Ok(value);
        }
        crate::io::wait_for(request.done.as_raw_fd(), Interest::READABLE, None)?;
    }
}

/// Queues `job`, starting a thread if none is idle and fewer than [`MAX_THREADS`] run.
fn submit(job: Job) -> io::Result<()> {
    let mut p = pool();
    let pid = std::process::id();
    if p.pid != pid {
        // First use, or a forked child: the threads counted are not in this process. What the
        // parent had queued is its own (forgotten, not run: its closures belong to its waiters).
        std::mem::forget(std::mem::take(&mut p.queue));
        *p = Pool {
            pid,
            queue: VecDeque::new(),
            threads: 0,
            idle: 0,
        };
    }
    p.queue.push_back(job);
    if p.idle == 0 && p.threads < MAX_THREADS {
        let started = std::thread::Builder::new()
            .name("evco-dns".into())
            .spawn(work);
        match started {
            Ok(_) => p.threads += 1,
            Err(e) if p.threads == 0 => {
                p.queue.pop_back();
                return Err(e);
            }
            // Others run: the job waits for one of them.
            Err(_) => {}
        }
    } else {
        WORK.notify_one();
    }
    Ok(())
}

/// A pool thread: runs queued jobs, forever. It counts itself idle before it tells a job's
/// waiter the answer is in: a coroutine that asks again at once (one lookup after another)
/// then queues for this thread instead of starting another.
fn work() {
    let mut p = pool();
    loop {
        match p.queue.pop_front() {
            Some(job) => {
                drop(p);
                let notify = job();
                p = pool();
                p.idle += 1;
                drop(p);
                notify();
                p = pool();
                p.idle -= 1;
            }
            None => {
                p.idle += 1;
                p = WORK.wait(p).unwrap_or_else(PoisonError::into_inner);
                p.idle -= 1;
            }
        }
    }
}
