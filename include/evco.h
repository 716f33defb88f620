/* evco.h: stackful coroutines on libevent, for C and C++ programs.
 *
 * A scheduler runs coroutines on one libevent event_base, on the thread that made it: its own
 * (evco_sched_new) or the host program's (evco_sched_attach, then the host dispatches its base
 * as before). Inside a coroutine, the plain POSIX calls (read, write, recv, send, accept,
 * connect, usleep, nanosleep, ...) on sockets the process made suspend the coroutine, not
 * the thread: libevco interposes them ("hooks"). poll, ppoll, select, pselect and epoll_wait
 * cooperate over any pollable fd (sockets, pipes, eventfds, timerfds, ttys). getaddrinfo,
 * getnameinfo, gethostbyname, gethostbyname2, gethostbyaddr and their _r forms suspend only
 * the caller: forward lookups through libevent's evdns and the hosts file, reverse lookups and
 * other NSS sources on a small thread pool; results are in glibc's layout (freeaddrinfo frees
 * them). EVCO_RESOLV_CONF, EVCO_HOSTS and EVCO_NSSWITCH name files read instead of
 * /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf. Outside coroutines every hooked call
 * is libc's.
 *
 * Conventions, as POSIX: 0 (or a pointer) on success; -1 (or NULL) with errno on failure.
 *   EINVAL           a NULL or bad argument
 *   EPERM            the wrong thread (not the scheduler's), or outside a coroutine where one
 *                    is needed
 *   ECANCELED        the calling coroutine was cancelled (evco_cancel): every blocking call it
 *                    makes fails at once from then on
 *   ETIMEDOUT        a timeout passed
 *   ENOTRECOVERABLE  a bug inside evco was caught at the library's boundary (nothing unwinds
 *                    into C)
 *
 * Cancelling is cooperative: a cancelled coroutine's blocking calls return -1 with ECANCELED
 * (not EINTR, which C loops retry forever); it ends when its function returns. Its stack is
 * never unwound by force. A coroutine that does not return on those errors keeps running; what
 * evco_sched_free cannot finish is left allocated (its stack memory stays mapped, its
 * resources held) and counted in its return value.
 *
 * Linking: libevco.a (static) or libevco.so. The hooks come with any evco_sched_* call; a
 * program that makes none can keep them with -Wl,-u,evco_hook_table. evco_hooks_active()
 * says at run time whether they are in place.
 *
 * Every name here is evco_* (no co_create/co_resume/co_self, which libco exports; no
 * co_yield/co_await/co_return, which are C++20 keywords). */
#ifndef EVCO_H
#define EVCO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/* ---- version ------------------------------------------------------------------------- */

/* The library's version, "MAJOR.MINOR.PATCH". */
const char *evco_version(void);

/* ---- schedulers ------------------------------------------------------------------------ */

/* One scheduler per thread; its coroutines run on that thread only. */
typedef struct evco_sched evco_sched_t;

/* A scheduler on a new event_base of its own, for this thread. NULL with EEXIST when this
 * thread has a scheduler already. */
evco_sched_t *evco_sched_new(void);

/* A scheduler on the host's `base` (which the host keeps, dispatches and frees after
 * evco_sched_free): coroutines run from the host's own event_base_dispatch or
 * event_base_loop. NULL with EEXIST when this thread has a scheduler already. */
evco_sched_t *evco_sched_attach(struct event_base *base);

/* The scheduler's event_base. */
struct event_base *evco_sched_base(evco_sched_t *s);

/* Runs the loop until no coroutine is left. Outside coroutines, on the scheduler's thread. */
int evco_sched_run(evco_sched_t *s);

/* Cancels every coroutine left, runs them until they return or `timeout_ms` passes (-1: no
 * limit), and frees the scheduler (and its event_base, if evco_sched_new made it). Returns how
 * many coroutines could not finish (left allocated, see above), or -1 with errno (then `s`
 * is not freed): EBUSY from a callback of the base (its loop is running: leave it first,
 * e.g. with event_base_loopbreak, and free the scheduler after the loop returned). */
int evco_sched_free(evco_sched_t *s, int timeout_ms);

/* From any thread: spawns fn(arg) as a coroutine on `s`'s thread, soon (its loop wakes). The
 * scheduler must not be freed concurrently. */
int evco_sched_post(evco_sched_t *s, void (*fn)(void *), void *arg);

/* ---- coroutines ------------------------------------------------------------------------ */

typedef struct evco evco_t;

/* Attributes: `struct_size` is sizeof(evco_attr_t) as the caller knows it; `stack_size` 0 means
 * the default (64 KiB; give C code with deep call chains or large locals more); `name` is
 * copied; `hooks` 1 makes the hooked POSIX calls cooperative in the coroutine (0: libc's). */
typedef struct {
    size_t struct_size;
    size_t stack_size;
    const char *name;
    int hooks;
} evco_attr_t;

#define EVCO_ATTR_INIT { sizeof(evco_attr_t), 0, NULL, 1 }

/* Spawns fn(arg) as a coroutine on `s` (this thread's): it starts when the scheduler next
 * runs its ready coroutines. `a` may be NULL. The handle is for evco_join or evco_detach (one
 * of them, once). */
evco_t *evco_spawn(evco_sched_t *s, const evco_attr_t *a, void (*fn)(void *), void *arg);

/* Waits for a spawned coroutine to return (-1: no limit), and frees the handle: 0 on return,
 * -1 with ETIMEDOUT (the handle stays valid). Inside a coroutine it suspends the caller;
 * outside, it runs the loop. Also -1, with the handle freed: ECANCELED when evco_sched_free
 * gave the coroutine up, ENOTRECOVERABLE when it overflowed its stack. */
int evco_join(evco_t *c, int timeout_ms);

/* Gives up the handle of a spawned coroutine: it runs on, and is freed when it returns. */
int evco_detach(evco_t *c);

/* Cancels the coroutine (see the conventions above). A coroutine may cancel itself. */
int evco_cancel(evco_t *c);

/* A coroutine that runs only when evco_resume'd (libco-style): not scheduled, so its hooked
 * calls are libc's (they block the thread) and evco_yield/evco_sleep_ms fail with EPERM in it. */
evco_t *evco_create(evco_sched_t *s, const evco_attr_t *a, void (*fn)(void *), void *arg);

/* Runs a created coroutine until it suspends (evco_suspend) or returns. EINVAL for a
 * coroutine that returned or is running. */
int evco_resume(evco_t *c);

/* From inside a created coroutine: back to whoever resumed it. EPERM elsewhere (outside
 * coroutines, in a spawned one); ECANCELED once it was cancelled. */
int evco_suspend(void);

/* Frees a created coroutine (NULL: nothing). One that has not returned is never resumed
 * again; its stack is freed without running anything on it. */
void evco_free(evco_t *c);

/* Lets the scheduler's other ready coroutines run. */
int evco_yield(void);

/* The running coroutine, or NULL outside one. */
evco_t *evco_self(void);

/* 1 when the coroutine returned, 0 when not, -1 with EINVAL for NULL. */
int evco_is_done(const evco_t *c);

/* The coroutine's name (NULL without one); valid while the handle is. */
const char *evco_name(const evco_t *c);

/* How many bytes of its stack the coroutine has touched so far (its high-water mark, to the
 * page); 0 once its stack is gone. */
size_t evco_stack_used(const evco_t *c);

/* ---- waiting ------------------------------------------------------------------------- */

/* Suspends the running coroutine for `ms` milliseconds. */
int evco_sleep_ms(int64_t ms);

/* Waits until `fd` is readable or writable (`events`: libevent's EV_READ 0x02 and/or
 * EV_WRITE 0x04), at most `timeout_ms` (-1: no limit). Returns what fired (EV_READ/EV_WRITE
 * bits), 0 on timeout. */
int evco_wait_fd(int fd, short events, int timeout_ms);

/* ---- coroutine-local data (pthread-style) -------------------------------------------- */

typedef unsigned evco_key_t;

/* A new key; `dtor` (may be NULL) runs on a non-NULL value when its coroutine returns. Outside
 * a coroutine, values belong to the thread (no destructor runs for them). */
int evco_key_create(evco_key_t *k, void (*dtor)(void *));
int evco_key_delete(evco_key_t k);
void *evco_getspecific(evco_key_t k);
int evco_setspecific(evco_key_t k, const void *v);

/* ---- hooks --------------------------------------------------------------------------- */

/* Turns the hooks on (1) or off (0) for the running coroutine; returns the previous setting. */
int evco_hook_set(int on);

/* 1 when the process's read, accept, ... are evco's (the hooks were linked in). */
int evco_hooks_active(void);

/* The addresses of every hook: what pulls them out of libevco.a (see "Linking" above). */
extern const void *const evco_hook_table[];

/* For tests of the library's boundary: panics inside it; returns -1 with ENOTRECOVERABLE. */
int evco_selftest_panic(void);

#ifdef __cplusplus
}
#endif

#endif /* EVCO_H */
