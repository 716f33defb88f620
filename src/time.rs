//! Timers for coroutines.

use std::time::Duration;

use crate::coroutine;
use crate::scheduler;

/// Sleeps for `duration`: a deadline in the scheduler's timer heap that suspends the running
/// coroutine (other coroutines run meanwhile). It never ends early, and on Linux ends as
/// promptly as the kernel's own timers (a timerfd wakes the loop). Outside a scheduled
/// coroutine it sleeps the thread; in a coroutine that is being cancelled it returns at once.
pub fn sleep(duration: Duration) {
    match scheduler::sleep(Some(duration)) {
        Ok(_) => {}
        Err(_) if coroutine::current_core().is_some_and(|c| c.is_cancelling()) => {}
        Err(_) => std::thread::sleep(duration),
    }
}
