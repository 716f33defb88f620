//! Timers for coroutines.

use std::time::Duration;

use crate::coroutine;
use crate::scheduler;

/// Sleeps for `duration`: a deadline in the scheduler's timer heap that suspends the running
/// coroutine (other coroutines run meanwhile). It never ends early, and on Linux ends as
/// promptly as the kernel's own timers (a timerfd wakes the loop). Outside a scheduled
/// coroutine it sleeps the thread; in a coroutine that is being cancelled it returns at once.
/// In a coroutine it never sleeps the thread: should the deadline fail to arm, it yields until
/// the time has passed.
pub fn sleep(duration: Duration) {
    let Some(core) = coroutine::current_core() else {
        return std::thread::sleep(duration);
    };
    let start = std::time::Instant::now();
    let Err(e) = scheduler::sleep(Some(duration)) else {
        return;
    };
    if core.is_cancelling() {
        return;
    }
    if scheduler::yield_now().is_err() {
        // Not a scheduled coroutine (a bare one): nothing else could run meanwhile.
        return std::thread::sleep(duration.saturating_sub(start.elapsed()));
    }
    log::warn!("evco: time::sleep could not arm its deadline ({e}); yielding until it passes");
    while start.elapsed() < duration && scheduler::yield_now().is_ok() {}
}
