/* api.c: every function of include/evco.h called from C, with good input and bad.
 *
 * tests/c_api.rs runs it as `api <Cargo.toml's version>`. Each check prints a line; the first
 * that fails ends the program with status 1. What it covers, in order:
 *   - outside any scheduler: NULL for every pointer argument (-1/NULL with EINVAL;
 *     evco_free(NULL) does nothing), the calls that need a coroutine (EPERM), a panic inside
 *     the library (ENOTRECOVERABLE, and the program goes on), evco_wait_fd's argument checks
 *     (EINVAL, EBADF; EPERM outside a coroutine), coroutine-local values of the thread itself;
 *   - a scheduler: one per thread (EEXIST), bad attributes and functions (EINVAL);
 *   - spawned coroutines: evco_self, evco_name (copied), evco_is_done, evco_stack_used, a
 *     join that times out (ETIMEDOUT, the handle still valid) outside and inside a coroutine,
 *     and what a spawned coroutine may not do (EPERM, EINVAL);
 *   - evco_hook_set: with the hooks off a coroutine's usleep holds the thread, back on it
 *     does not; evco_attr_t.hooks = 0;
 *   - evco_wait_fd inside a coroutine;
 *   - coroutine-local values: per coroutine, destructors at a coroutine's end, deleted keys;
 *   - created coroutines: evco_create/evco_resume/evco_suspend, resuming a running or a
 *     finished one (EINVAL), evco_free of a suspended one;
 *   - another thread: every handle and the scheduler refuse it (EPERM), it may have a scheduler
 *     of its own, and evco_sched_post from it spawns on the scheduler's thread;
 *   - evco_sched_attach on a host's own event_base, dispatched by the host.
 * Nothing here may crash: a crash is a failure of the test like any failed check. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evco.h"
#include "check.h"

/* ---- libevent, declared (its headers need not be installed: libevent 2.1's stable ABI) ---- */
struct timeval;
struct event_base *event_base_new(void);
void event_base_free(struct event_base *);
int event_base_dispatch(struct event_base *);
int event_base_loop(struct event_base *, int);
int event_base_loopexit(struct event_base *, const struct timeval *);
#define EV_TIMEOUT 0x01
#define EV_READ 0x02
#define EV_WRITE 0x04
#define EV_SIGNAL 0x08
#define EV_PERSIST 0x10
#define EVLOOP_NONBLOCK 0x02

static void nothing(void *arg) {
    (void)arg;
}

/* Writes to `n` bytes of stack: what evco_stack_used should then count. */
static void touch_stack(size_t n) {
    volatile char buf[16384];
    size_t i;
    if (n > sizeof buf) {
        n = sizeof buf;
    }
    for (i = 0; i < n; i++) {
        buf[i] = (char)i;
    }
}

static int pair(int sv[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
}

static void close_pair(int sv[2]) {
    close(sv[0]);
    close(sv[1]);
}

/* ---- outside any scheduler ------------------------------------------------------------- */

static evco_key_t key;
static int thread_value;

static void without_a_scheduler(void) {
    int e;

    EXPECT(evco_sched_run(NULL), -1, EINVAL);
    EXPECT(evco_sched_free(NULL, 0), -1, EINVAL);
    EXPECT_NULL(evco_sched_attach(NULL), EINVAL);
    EXPECT_NULL(evco_sched_base(NULL), EINVAL);
    EXPECT(evco_sched_post(NULL, nothing, NULL), -1, EINVAL);
    EXPECT_NULL(evco_spawn(NULL, NULL, nothing, NULL), EINVAL);
    EXPECT_NULL(evco_create(NULL, NULL, nothing, NULL), EINVAL);
    EXPECT(evco_join(NULL, -1), -1, EINVAL);
    EXPECT(evco_detach(NULL), -1, EINVAL);
    EXPECT(evco_cancel(NULL), -1, EINVAL);
    EXPECT(evco_resume(NULL), -1, EINVAL);
    EXPECT(evco_is_done(NULL), -1, EINVAL);
    EXPECT_NULL(evco_name(NULL), EINVAL);
    EXPECT(evco_stack_used(NULL), 0, EINVAL);
    EXPECT(evco_key_create(NULL, NULL), -1, EINVAL);
    errno = 0;
    evco_free(NULL);
    e = errno;
    check(e == 0, "evco_free(NULL) does nothing (errno stays 0: %d)", e);

    errno = EINTR;
    check(evco_self() == NULL, "evco_self() is NULL outside a coroutine");
    e = errno;
    check(e == EINTR, "evco_self() outside a coroutine leaves errno alone (%d)", e);
    EXPECT(evco_suspend(), -1, EPERM);
    EXPECT(evco_sleep_ms(1), -1, EPERM);
    EXPECT(evco_yield(), -1, EPERM);
    EXPECT(evco_hook_set(1), -1, EPERM);
    EXPECT(evco_hook_set(0), -1, EPERM);

    EXPECT(evco_selftest_panic(), -1, ENOTRECOVERABLE);
    check(evco_version() != NULL && evco_hooks_active() == 1,
          "the program goes on after the panic: evco_version and evco_hooks_active answer");

    EXPECT(evco_wait_fd(0, 0, 0), -1, EINVAL);
    EXPECT(evco_wait_fd(0, EV_TIMEOUT, 0), -1, EINVAL);
    EXPECT(evco_wait_fd(0, EV_SIGNAL, 0), -1, EINVAL);
    EXPECT(evco_wait_fd(0, EV_READ | EV_PERSIST, 0), -1, EINVAL);
    EXPECT(evco_wait_fd(-1, EV_READ, 0), -1, EBADF);
    EXPECT(evco_wait_fd(0, EV_READ, 0), -1, EPERM);

    /* Coroutine-local values outside coroutines are the thread's. */
    EXPECT(evco_key_create(&key, NULL), 0, 0);
    check(evco_getspecific(key) == NULL, "a new key has no value on the thread");
    EXPECT(evco_setspecific(key, &thread_value), 0, 0);
    check(evco_getspecific(key) == &thread_value, "the thread's value of the key");
}

/* ---- one scheduler per thread, bad arguments ------------------------------------------------ */

static void scheduler_arguments(evco_sched_t *s) {
    evco_attr_t bad = EVCO_ATTR_INIT;
    struct event_base *base = evco_sched_base(s);

    check(base != NULL, "evco_sched_base(s) is the scheduler's base");
    EXPECT_NULL(evco_sched_new(), EEXIST);
    EXPECT_NULL(evco_sched_attach(base), EEXIST);
    EXPECT_NULL(evco_spawn(s, NULL, NULL, NULL), EINVAL);
    EXPECT_NULL(evco_create(s, NULL, NULL, NULL), EINVAL);
    EXPECT(evco_sched_post(s, NULL, NULL), -1, EINVAL);
    bad.struct_size = 0;
    EXPECT_NULL(evco_spawn(s, &bad, nothing, NULL), EINVAL);
    EXPECT_NULL(evco_create(s, &bad, nothing, NULL), EINVAL);
    EXPECT(evco_sched_run(s), 0, 0);
}

/* ---- spawned coroutines ----------------------------------------------------------------- */

struct worker {
    evco_t *h;
    int sv[2];
    int self_ok;      /* evco_self() was its handle */
    int done_inside;  /* evco_is_done on itself, while running */
    int name_ok;      /* evco_name(evco_self()) was its name */
    int got;          /* its read got the byte */
};

/* Touches 16 KiB of stack, then waits in read for main's byte. */
static void worker(void *arg) {
    struct worker *w = arg;
    const char *name;
    char c;
    touch_stack(16384);
    w->self_ok = evco_self() == w->h;
    w->done_inside = evco_is_done(w->h);
    name = evco_name(evco_self());
    w->name_ok = name != NULL && strcmp(name, "worker-1") == 0;
    w->got = read(w->sv[0], &c, 1) == 1;
}

struct joiner {
    evco_t *target;
    int wfd;
};

/* Joins from inside a coroutine: first with a timeout that passes, then after unblocking it. */
static void joiner(void *arg) {
    struct joiner *j = arg;
    EXPECT(evco_join(j->target, 20), -1, ETIMEDOUT);
    EXPECT(evco_is_done(j->target), 0, 0);
    EXPECT(write(j->wfd, "x", 1), 1, 0);
    EXPECT(evco_join(j->target, -1), 0, 0);
}

/* What a spawned coroutine may not do, and a panic caught on its stack. */
static void misuse(void *arg) {
    evco_sched_t *s = arg;
    evco_t *me = evco_self();
    int r, e;
    EXPECT(evco_suspend(), -1, EPERM);
    EXPECT_NULL(evco_sched_new(), EPERM);
    EXPECT(evco_sched_run(s), -1, EPERM);
    errno = 0;
    r = evco_sched_free(s, 0);
    e = errno;
    check(r == -1 && e != 0, "evco_sched_free inside a coroutine fails (errno %d: %s)", e,
          strerror(e));
    EXPECT(evco_resume(me), -1, EINVAL);
    errno = 0;
    evco_free(me);
    e = errno;
    check(e == EINVAL, "evco_free of a spawned coroutine's handle: EINVAL (errno %d)", e);
    EXPECT(evco_selftest_panic(), -1, ENOTRECOVERABLE);
    check(evco_self() == me, "the coroutine goes on after the panic");
}

static void spawned(evco_sched_t *s) {
    evco_attr_t a = EVCO_ATTR_INIT;
    char name[16] = "worker-1";
    struct worker w;
    struct joiner j;
    evco_t *h, *plain, *m;
    size_t used;

    memset(&w, 0, sizeof w);
    check(pair(w.sv) == 0, "socketpair");
    a.name = name;
    h = evco_spawn(s, &a, worker, &w);
    w.h = h;
    check(h != NULL, "evco_spawn with a name");
    name[0] = 'X';
    check(evco_name(h) != NULL && strcmp(evco_name(h), "worker-1") == 0,
          "evco_name: the name was copied at the spawn");
    EXPECT(evco_is_done(h), 0, 0);
    EXPECT(evco_join(h, 50), -1, ETIMEDOUT);
    check(w.self_ok && w.done_inside == 0 && w.name_ok,
          "inside: evco_self is its handle, evco_is_done 0, evco_name its name");
    EXPECT(evco_is_done(h), 0, 0);
    check(strcmp(evco_name(h), "worker-1") == 0, "the handle is still valid after ETIMEDOUT");
    used = evco_stack_used(h);
    check(used >= 16384, "evco_stack_used of a coroutine that touched 16 KiB: %zu bytes", used);
    EXPECT(write(w.sv[1], "x", 1), 1, 0);
    EXPECT(evco_join(h, -1), 0, 0);
    check(w.got, "the joined coroutine's read got the byte");

    plain = evco_spawn(s, NULL, nothing, NULL);
    check(plain != NULL, "evco_spawn without attributes");
    check(evco_name(plain) == NULL, "evco_name of a coroutine without one is NULL");
    EXPECT(evco_sched_run(s), 0, 0);
    EXPECT(evco_is_done(plain), 1, 0);
    printf("note evco_stack_used of a finished coroutine: %zu\n", evco_stack_used(plain));
    EXPECT(evco_join(plain, 0), 0, 0);

    /* A join with a timeout from inside a coroutine. */
    memset(&w, 0, sizeof w);
    check(pair(w.sv) == 0, "socketpair");
    name[0] = 'w';
    w.h = evco_spawn(s, &a, worker, &w);
    j.target = w.h;
    j.wfd = w.sv[1];
    check(w.h != NULL && evco_detach(evco_spawn(s, NULL, joiner, &j)) == 0,
          "spawn a worker and a coroutine that joins it");
    EXPECT(evco_sched_run(s), 0, 0);
    check(w.got, "the worker joined from a coroutine got its byte");

    m = evco_spawn(s, NULL, misuse, s);
    check(m != NULL, "spawn the misuse coroutine");
    EXPECT(evco_join(m, -1), 0, 0);
    close_pair(w.sv);
}

/* ---- evco_hook_set ------------------------------------------------------------------------- */

static int hook_ticks;

/* Spawned after the sleeper: runs only when the sleeper suspends. */
static void hook_ticker(void *arg) {
    (void)arg;
    hook_ticks++;
}

static void hook_sleeper(void *arg) {
    (void)arg;
    EXPECT(evco_hook_set(0), 1, 0);
    EXPECT(usleep(20000), 0, 0);
    check(hook_ticks == 0, "hooks off: usleep is libc's, it held the thread (the ready "
                           "coroutine did not run)");
    EXPECT(evco_hook_set(1), 0, 0);
    EXPECT(usleep(20000), 0, 0);
    check(hook_ticks == 1, "hooks back on: usleep suspended the coroutine (the ready one ran)");
}

static void hooks_were_off(void *arg) {
    int *was = arg;
    *was = evco_hook_set(1);
}

static void hook_set(evco_sched_t *s) {
    evco_attr_t off = EVCO_ATTR_INIT;
    int was = -1;
    check(evco_detach(evco_spawn(s, NULL, hook_sleeper, NULL)) == 0 &&
              evco_detach(evco_spawn(s, NULL, hook_ticker, NULL)) == 0,
          "spawn a sleeper and a coroutine ready behind it");
    EXPECT(evco_sched_run(s), 0, 0);
    off.hooks = 0;
    EXPECT(evco_join(evco_spawn(s, &off, hooks_were_off, &was), -1), 0, 0);
    check(was == 0, "evco_attr_t.hooks = 0: evco_hook_set inside says they were off (%d)", was);
}

/* ---- evco_wait_fd --------------------------------------------------------------------------- */

struct waits {
    evco_sched_t *s;
    int sv[2];
    int waiting;     /* the waiter is inside its last wait */
    int saw_waiting; /* the writer ran while it was */
};

static void fd_writer(void *arg) {
    struct waits *w = arg;
    w->saw_waiting = w->waiting;
    EXPECT(write(w->sv[1], "x", 1), 1, 0);
}

static void fd_waiter(void *arg) {
    struct waits *w = arg;
    EXPECT(evco_wait_fd(w->sv[0], 0, 10), -1, EINVAL);
    EXPECT(evco_wait_fd(w->sv[0], EV_SIGNAL, 10), -1, EINVAL);
    EXPECT(evco_wait_fd(w->sv[0], EV_READ | EV_PERSIST, 10), -1, EINVAL);
    EXPECT(evco_wait_fd(-1, EV_READ, 10), -1, EBADF);
    EXPECT(evco_wait_fd(w->sv[0], EV_READ, 20), 0, 0);
    EXPECT(evco_wait_fd(w->sv[0], EV_WRITE, -1), EV_WRITE, 0);
    /* The writer starts only once this coroutine suspends in the wait below. */
    check(evco_detach(evco_spawn(w->s, NULL, fd_writer, w)) == 0, "spawn the writer");
    w->waiting = 1;
    EXPECT(evco_wait_fd(w->sv[0], EV_READ, -1), EV_READ, 0);
    w->waiting = 0;
}

static void wait_fd(evco_sched_t *s) {
    struct waits w;
    memset(&w, 0, sizeof w);
    w.s = s;
    check(pair(w.sv) == 0, "socketpair");
    check(evco_detach(evco_spawn(s, NULL, fd_waiter, &w)) == 0, "spawn the fd waiter");
    EXPECT(evco_sched_run(s), 0, 0);
    check(w.saw_waiting, "evco_wait_fd(EV_READ) suspended its coroutine until the writer wrote");
    close_pair(w.sv);
}

/* ---- coroutine-local values -------------------------------------------------------------- */

static int dtor_runs;
static void *dtor_values[4];

static void dtor(void *v) {
    if (dtor_runs < 4) {
        dtor_values[dtor_runs] = v;
    }
    dtor_runs++;
}

struct local {
    evco_key_t k;
    int mine;
    int ok;
};

/* Sets its own value, lets the other coroutine set its, and still sees its own. */
static void local_user(void *arg) {
    struct local *l = arg;
    int first = evco_getspecific(l->k) == NULL;
    int set = evco_setspecific(l->k, &l->mine) == 0;
    int yielded = evco_yield() == 0;
    l->ok = first && set && yielded && evco_getspecific(l->k) == &l->mine;
}

/* Sets a value and clears it: no destructor runs for NULL. */
static void local_clearer(void *arg) {
    struct local *l = arg;
    l->ok = evco_setspecific(l->k, &l->mine) == 0 && evco_setspecific(l->k, NULL) == 0 &&
            evco_getspecific(l->k) == NULL;
}

static void locals(evco_sched_t *s) {
    struct local a, b, c;
    evco_key_t k2;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    EXPECT(evco_key_create(&a.k, dtor), 0, 0);
    b.k = c.k = a.k;
    check(evco_detach(evco_spawn(s, NULL, local_user, &a)) == 0 &&
              evco_detach(evco_spawn(s, NULL, local_user, &b)) == 0,
          "spawn two coroutines that use one key");
    EXPECT(evco_sched_run(s), 0, 0);
    check(a.ok && b.ok, "each coroutine saw NULL first, then its own value across a yield");
    check(dtor_runs == 2 &&
              ((dtor_values[0] == &a.mine && dtor_values[1] == &b.mine) ||
               (dtor_values[0] == &b.mine && dtor_values[1] == &a.mine)),
          "the destructor ran once per coroutine, on its value, at its end (%d runs)", dtor_runs);
    check(evco_getspecific(a.k) == NULL, "the thread has no value for the new key");
    check(evco_getspecific(key) == &thread_value,
          "the thread's value of the first key is still its own");
    EXPECT(evco_join(evco_spawn(s, NULL, local_clearer, &c), -1), 0, 0);
    check(c.ok && dtor_runs == 2, "a value set back to NULL has no destructor run");

    EXPECT(evco_key_delete(a.k), 0, 0);
    check(evco_getspecific(a.k) == NULL, "a deleted key has no value");
    EXPECT(evco_setspecific(a.k, &a.mine), -1, EINVAL);
    EXPECT(evco_key_delete(a.k), -1, EINVAL);
    EXPECT(evco_key_create(&k2, NULL), 0, 0);
    check(evco_getspecific(k2) == NULL, "a key made after a delete sees no old value");
    EXPECT(evco_key_delete(k2), 0, 0);
}

/* ---- created coroutines ------------------------------------------------------------------- */

struct created {
    evco_t *h;
    int steps;
    int free_errno;     /* evco_free of itself while running */
    int after_the_free; /* set if it ever ran after being freed suspended */
};

static void created_body(void *arg) {
    struct created *c = arg;
    c->steps++;
    check(evco_self() == c->h, "evco_self in a created coroutine is its handle");
    EXPECT(evco_resume(c->h), -1, EINVAL);
    errno = 0;
    evco_free(c->h);
    c->free_errno = errno;
    EXPECT(evco_is_done(c->h), 0, 0);
    EXPECT(evco_yield(), -1, EPERM);
    EXPECT(evco_sleep_ms(1), -1, EPERM);
    touch_stack(16384);
    EXPECT(evco_suspend(), 0, 0);
    c->steps++;
    EXPECT(evco_suspend(), 0, 0);
    c->after_the_free = 1;
}

static void created(evco_sched_t *s) {
    struct created c;
    evco_t *done;
    size_t used;
    memset(&c, 0, sizeof c);
    c.h = evco_create(s, NULL, created_body, &c);
    check(c.h != NULL, "evco_create");
    EXPECT(evco_is_done(c.h), 0, 0);
    EXPECT(evco_resume(c.h), 0, 0);
    check(c.steps == 1, "evco_resume ran it to its evco_suspend");
    check(c.free_errno == EINVAL, "evco_free of itself, running: refused with EINVAL (%d)",
          c.free_errno);
    used = evco_stack_used(c.h);
    check(used >= 16384, "evco_stack_used of a created coroutine that touched 16 KiB: %zu", used);
    EXPECT(evco_is_done(c.h), 0, 0);
    EXPECT(evco_resume(c.h), 0, 0);
    check(c.steps == 2, "the second evco_resume ran it to its second evco_suspend");
    EXPECT(evco_join(c.h, 0), -1, EINVAL);
    EXPECT(evco_detach(c.h), -1, EINVAL);
    evco_free(c.h);
    check(c.after_the_free == 0, "evco_free of a suspended coroutine: it never ran again");

    done = evco_create(s, NULL, nothing, NULL);
    check(done != NULL, "evco_create");
    EXPECT(evco_resume(done), 0, 0);
    EXPECT(evco_is_done(done), 1, 0);
    EXPECT(evco_resume(done), -1, EINVAL);
    evco_free(done);
}

/* ---- another thread ------------------------------------------------------------------------ */

struct foreign {
    evco_sched_t *s;
    evco_t *spawned;
    evco_t *created;
};

static void foreign_sleeper(void *arg) {
    int *slept = arg;
    *slept = usleep(1000) == 0;
}

static void *foreign_thread(void *arg) {
    struct foreign *f = arg;
    evco_sched_t *own;
    int e, slept = 0;

    EXPECT_NULL(evco_spawn(f->s, NULL, nothing, NULL), EPERM);
    EXPECT_NULL(evco_create(f->s, NULL, nothing, NULL), EPERM);
    EXPECT(evco_sched_run(f->s), -1, EPERM);
    EXPECT(evco_sched_free(f->s, 0), -1, EPERM);
    EXPECT(evco_join(f->spawned, 0), -1, EPERM);
    EXPECT(evco_detach(f->spawned), -1, EPERM);
    EXPECT(evco_cancel(f->spawned), -1, EPERM);
    EXPECT(evco_is_done(f->spawned), -1, EPERM);
    EXPECT_NULL(evco_name(f->spawned), EPERM);
    EXPECT(evco_stack_used(f->spawned), 0, EPERM);
    EXPECT(evco_resume(f->created), -1, EPERM);
    errno = 0;
    evco_free(f->created);
    e = errno;
    check(e == EPERM, "evco_free from the wrong thread: EPERM, nothing freed (errno %d)", e);
    check(evco_getspecific(key) == NULL, "this thread has values of its own (none yet)");

    own = evco_sched_new();
    check(own != NULL, "another thread may have a scheduler of its own");
    check(evco_detach(evco_spawn(own, NULL, foreign_sleeper, &slept)) == 0, "spawn on it");
    EXPECT(evco_sched_run(own), 0, 0);
    check(slept, "a coroutine on the other thread's scheduler slept in usleep");
    EXPECT(evco_sched_free(own, 1000), 0, 0);
    return NULL;
}

static void wrong_thread(evco_sched_t *s) {
    struct foreign f;
    pthread_t t;
    f.s = s;
    f.spawned = evco_spawn(s, NULL, nothing, NULL);
    f.created = evco_create(s, NULL, nothing, NULL);
    check(f.spawned != NULL && f.created != NULL, "a spawned and a created coroutine");
    check(pthread_create(&t, NULL, foreign_thread, &f) == 0 && pthread_join(t, NULL) == 0,
          "the other thread ran its checks");
    EXPECT(evco_join(f.spawned, -1), 0, 0);
    EXPECT(evco_resume(f.created), 0, 0);
    EXPECT(evco_is_done(f.created), 1, 0);
    evco_free(f.created);
}

/* ---- evco_sched_post from another thread ----------------------------------------------------- */

struct post {
    evco_sched_t *s;
    int sv[2];
    int ret, err, null_ret, null_err; /* the poster's results */
    int ran, in_coroutine, got;
    pthread_t ran_on;
};

/* Posted: runs as a coroutine on the scheduler's thread, and wakes the waiter. */
static void posted(void *arg) {
    struct post *p = arg;
    p->ran_on = pthread_self();
    p->in_coroutine = evco_self() != NULL;
    p->ran = 1;
    EXPECT(write(p->sv[1], "p", 1), 1, 0);
}

static void *poster(void *arg) {
    struct post *p = arg;
    errno = 0;
    p->null_ret = evco_sched_post(p->s, NULL, p);
    p->null_err = errno;
    errno = 0;
    p->ret = evco_sched_post(p->s, posted, p);
    p->err = errno;
    return NULL;
}

/* Keeps the scheduler's loop running until the posted coroutine writes. */
static void post_waiter(void *arg) {
    struct post *p = arg;
    char c;
    p->got = read(p->sv[0], &c, 1) == 1 && c == 'p';
}

static void post(evco_sched_t *s) {
    struct post p;
    pthread_t t;
    memset(&p, 0, sizeof p);
    p.s = s;
    check(pair(p.sv) == 0, "socketpair");
    check(evco_detach(evco_spawn(s, NULL, post_waiter, &p)) == 0, "spawn the waiter");
    check(pthread_create(&t, NULL, poster, &p) == 0, "start the posting thread");
    EXPECT(evco_sched_run(s), 0, 0);
    check(pthread_join(t, NULL) == 0, "join the posting thread");
    check(p.null_ret == -1 && p.null_err == EINVAL,
          "evco_sched_post(s, NULL, ...) from another thread: -1, EINVAL (%d, %d)", p.null_ret,
          p.null_err);
    check(p.ret == 0, "evco_sched_post from another thread -> 0 (%d, errno %d)", p.ret, p.err);
    check(p.ran && p.in_coroutine && p.got,
          "the posted function ran as a coroutine and woke the waiter");
    check(pthread_equal(p.ran_on, pthread_self()),
          "it ran on the scheduler's thread, not the poster's");
    close_pair(p.sv);
}

/* ---- evco_sched_attach ---------------------------------------------------------------------- */

struct host {
    struct event_base *base;
    int sv[2];
    int live; /* coroutines not yet returned: the last one ends the host's dispatch */
    int ping, pong;
};

static void host_done(struct host *h) {
    if (--h->live == 0) {
        EXPECT(event_base_loopexit(h->base, NULL), 0, 0);
    }
}

static void host_pinger(void *arg) {
    struct host *h = arg;
    char c;
    h->ping = usleep(1000) == 0 && write(h->sv[1], "i", 1) == 1 && read(h->sv[1], &c, 1) == 1 &&
              c == 'o';
    host_done(h);
}

static void host_ponger(void *arg) {
    struct host *h = arg;
    char c;
    h->pong = read(h->sv[0], &c, 1) == 1 && c == 'i' && write(h->sv[0], "o", 1) == 1;
    host_done(h);
}

static void attach(void) {
    struct host h;
    evco_sched_t *s;
    memset(&h, 0, sizeof h);
    h.base = event_base_new();
    check(h.base != NULL, "event_base_new (the host's own base)");
    s = evco_sched_attach(h.base);
    check(s != NULL, "evco_sched_attach(the host's base)");
    check(evco_sched_base(s) == h.base, "evco_sched_base is the host's base");
    EXPECT_NULL(evco_sched_new(), EEXIST);
    check(pair(h.sv) == 0, "socketpair");
    h.live = 2;
    check(evco_detach(evco_spawn(s, NULL, host_ponger, &h)) == 0 &&
              evco_detach(evco_spawn(s, NULL, host_pinger, &h)) == 0,
          "spawn two coroutines");
    EXPECT(event_base_dispatch(h.base), 0, 0);
    check(h.ping && h.pong, "the host's event_base_dispatch ran both coroutines through a "
                            "usleep and a hooked ping-pong");
    EXPECT(evco_sched_free(s, 1000), 0, 0);
    EXPECT(event_base_loop(h.base, EVLOOP_NONBLOCK), 1, 0);
    event_base_free(h.base);
    close_pair(h.sv);
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    evco_sched_t *s;
    checks_begin();
    check(argc == 2 && evco_version() != NULL && strcmp(evco_version(), argv[1]) == 0,
          "evco_version() is \"%s\", Cargo.toml's version (got \"%s\")",
          argc == 2 ? argv[1] : "?", evco_version() ? evco_version() : "(null)");
    without_a_scheduler();
    s = evco_sched_new();
    check(s != NULL, "evco_sched_new");
    scheduler_arguments(s);
    spawned(s);
    hook_set(s);
    wait_fd(s);
    locals(s);
    created(s);
    wrong_thread(s);
    post(s);
    EXPECT(evco_sched_free(s, 1000), 0, 0);
    attach();
    puts("RESULT ok=1");
    return 0;
}
