//! The sleeps: `sleep`, `usleep`, `nanosleep` and `clock_nanosleep` suspend a scheduled
//! coroutine on a deadline ([`time::sleep`](crate::time::sleep)'s wait) instead of the thread.

use std::ffi::{c_int, c_uint};
use std::time::Duration;

use libc::timespec;

use super::{cancelling, stop_cancellation};
use crate::os::real;
use crate::scheduler;

/// Sleeps the running scheduled coroutine for `d` (`d == 0`: yields); false outside one, and
/// the caller makes libc's call instead. A coroutine that is (or gets) cancelled ends its
/// sleep at once and reports it complete: the caller goes on to its next call, which fails,
/// instead of holding the thread. (Failing with `EINTR` would not do: std's `thread::sleep`
/// retries from the remaining time it expects in `rem`, forever.)
pub(super) fn coop_sleep(d: Duration) -> bool {
    if !scheduler::in_scheduled_coroutine() {
        return false;
    }
    let slept = stop_cancellation(|| {
        if d.is_zero() {
            scheduler::yield_now()
        } else {
            scheduler::sleep(Some(d))
        }
    });
    slept.is_ok() || cancelling()
}

fn duration_of(ts: &timespec) -> Option<Duration> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Hook: a timer wait inside a scheduled coroutine.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    // SAFETY: a non-null request is the caller's timespec.
    let d = unsafe { req.as_ref() }.and_then(duration_of);
    if d.is_some_and(coop_sleep) {
        return 0;
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::nanosleep(req, rem) }
}

/// Hook: a timer wait inside a scheduled coroutine (relative, or absolute on the given clock).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const timespec,
    rem: *mut timespec,
) -> c_int {
    // Only the clocks a sleep can be measured on as a deadline: libc's answers the others
    // (EINVAL for the calling thread's CPU clock or an unknown id, ENOTSUP, EPERM).
    let plain_clock = matches!(
        clock,
        libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME | libc::CLOCK_TAI
    );
    if plain_clock && scheduler::in_scheduled_coroutine() && !req.is_null() {
        // SAFETY: a non-null request is the caller's timespec.
        if let Some(mut d) = duration_of(unsafe { &*req }) {
            let mut ok = true;
            if flags & libc::TIMER_ABSTIME != 0 {
                // SAFETY: a zeroed timespec for clock_gettime to fill.
                let mut now: timespec = unsafe { std::mem::zeroed() };
                // SAFETY: `now` is a valid timespec to write.
                ok = unsafe { libc::clock_gettime(clock, &mut now) } == 0;
                d = duration_of(&now).map_or(Duration::ZERO, |n| d.saturating_sub(n));
            }
            if ok && coop_sleep(d) {
                return 0;
            }
        }
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::clock_nanosleep(clock, flags, req, rem) }
}

/// Hook: a timer wait inside a scheduled coroutine. In a cancelled coroutine it fails at once
/// with `ECANCELED`: usleep may fail, and no caller of it loops on its result (unlike std's
/// `thread::sleep` on nanosleep, see `coop_sleep`).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn usleep(us: libc::useconds_t) -> c_int {
    if coop_sleep(Duration::from_micros(us as u64)) {
        if cancelling() {
            real::set_errno(libc::ECANCELED);
            return -1;
        }
        return 0;
    }
    // SAFETY: the caller's argument, passed on.
    unsafe { real::usleep(us) }
}

/// Hook: a timer wait inside a scheduled coroutine (whole seconds).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    if coop_sleep(Duration::from_secs(secs as u64)) {
        return 0;
    }
    // glibc's sleep is nanosleep and reports the seconds left, rounded.
    let ts = timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let mut rem = ts;
    // SAFETY: two valid timespecs.
    if unsafe { real::nanosleep(&ts, &mut rem) } == 0 {
        0
    } else {
        rem.tv_sec as c_uint + c_uint::from(rem.tv_nsec >= 500_000_000)
    }
}
