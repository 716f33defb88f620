/* cancel.c: cancelling coroutines parked in hooked calls, from C. tests/c_api.rs runs it in
 * three modes:
 *
 *   cancel      evco_cancel of a coroutine parked in a hooked read: the read fails with
 *               ECANCELED, and from then on its usleep, evco_sleep_ms, evco_wait_fd, read and
 *               recv fail at once (before a 5 s sleep that began earlier ends); the same for a
 *               coroutine cancelled before it first ran and one that cancels itself; a created
 *               (evco_create) one cancelled while suspended fails its next evco_suspend.
 *   free N      N coroutines parked in hooked reads, each returning on ECANCELED:
 *               evco_sched_free(s, 1000) cancels them all and returns 0.
 *               RESULT coroutines=<N> pairs=<socketpairs used> free_ms=<elapsed of the free>
 *   stubborn    coroutines that ignore ECANCELED (some loop on evco_yield, some retry their
 *               read forever) beside coroutines that return on it: evco_sched_free(s, 200)
 *               returns how many it left (the stubborn ones), their handles' evco_join says
 *               ECANCELED, and the process goes on: a new scheduler on the same thread runs
 *               hooked I/O and frees with nothing left, and no given-up coroutine runs again.
 *               RESULT left=<n> free_ms=<elapsed of the free> */
#define _GNU_SOURCE
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evco.h"
#include "check.h"

#define EV_READ 0x02

static int pair(int sv[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
}

/* ---- cancel --------------------------------------------------------------------------- */

/* A coroutine asleep for 5 s from before the cancel: a call that returns while it still
 * sleeps returned without waiting out its own 10 s (or any time near it). Whether the failing
 * call lets other coroutines run once on its way out is not checked: `ticks`, counted by a
 * coroutine that stays ready, is printed. */
static int witness_woke;
static unsigned long ticks;
static int stop_ticking;

static void witness(void *arg) {
    (void)arg;
    witness_woke = evco_sleep_ms(5000) == 0;
}

static void ticker(void *arg) {
    (void)arg;
    while (!stop_ticking) {
        ticks++;
        if (evco_yield() != 0) {
            break;
        }
    }
}

struct reader {
    int fd;
    int parked;    /* inside its first read */
    long read_ret; /* that read's result and errno */
    int read_errno;
    int returned;
};

static evco_t *reader_handle;
static int canceller_saw_parked;

/* After the cancel: each blocking call fails at once with ECANCELED. */
static void fails_at_once(const char *who, int fd) {
    unsigned long before = ticks;
    double t0 = now_ms();
    char c;

    EXPECT(usleep(10 * 1000 * 1000), -1, ECANCELED);
    check(!witness_woke, "%s: usleep(10 s) failed at once, before a 5 s sleep that started "
                         "earlier ended (%.3f ms)",
          who, now_ms() - t0);
    EXPECT(evco_sleep_ms(10000), -1, ECANCELED);
    EXPECT(evco_wait_fd(fd, EV_READ, -1), -1, ECANCELED);
    EXPECT(read(fd, &c, 1), -1, ECANCELED);
    EXPECT(recv(fd, &c, 1, 0), -1, ECANCELED);
    check(!witness_woke, "%s: evco_sleep_ms(10 s), evco_wait_fd, read and recv failed at once "
                         "too (%.3f ms for all five)",
          who, now_ms() - t0);
    printf("note %s: a ready coroutine got %lu turns during its five failing calls\n", who,
           ticks - before);
}

static void reader(void *arg) {
    struct reader *r = arg;
    char c;
    r->parked = 1;
    errno = 0;
    r->read_ret = (long)read(r->fd, &c, 1);
    r->read_errno = errno;
    r->parked = 0;
    expect_ret("the parked read(fd, &c, 1) after evco_cancel", r->read_ret, r->read_errno, -1,
               ECANCELED);
    fails_at_once("the cancelled reader", r->fd);
    r->returned = 1;
}

/* Spawned after the reader: runs once the reader is parked in its read. */
static void canceller(void *arg) {
    canceller_saw_parked = ((struct reader *)arg)->parked;
    EXPECT(evco_cancel(reader_handle), 0, 0);
}

static void cancel_before_start(void *arg) {
    int *fd = arg;
    char c;
    EXPECT(read(*fd, &c, 1), -1, ECANCELED);
}

static void cancel_self(void *arg) {
    int *fd = arg;
    char c;
    EXPECT(evco_cancel(evco_self()), 0, 0);
    EXPECT(read(*fd, &c, 1), -1, ECANCELED);
    check(!witness_woke, "a coroutine that cancelled itself: its read failed at once");
}

static int created_steps;

/* Suspends once; cancelled while suspended and resumed, its next evco_suspend fails with
 * ECANCELED at once (the suspension in progress when it was cancelled ends as a plain resume:
 * printed, not checked). */
static void created(void *arg) {
    int r;
    (void)arg;
    created_steps++;
    errno = 0;
    r = evco_suspend();
    printf("note the evco_suspend in progress at the cancel returned %d (errno %d)\n", r, errno);
    created_steps++;
    EXPECT(evco_suspend(), -1, ECANCELED);
    created_steps++;
}

static int mode_cancel(void) {
    evco_sched_t *s = evco_sched_new();
    struct reader r;
    evco_t *w, *t, *early, *c;
    int sv[2];

    check(s != NULL, "evco_sched_new");
    check(pair(sv) == 0, "socketpair");
    memset(&r, 0, sizeof r);
    r.fd = sv[0];

    w = evco_spawn(s, NULL, witness, NULL);
    check(w != NULL, "spawn the 5 s sleeper");
    /* The reader parks; the canceller, spawned after it, runs only once it has. */
    reader_handle = evco_spawn(s, NULL, reader, &r);
    check(reader_handle != NULL, "spawn the reader");
    check(evco_detach(evco_spawn(s, NULL, canceller, &r)) == 0, "spawn the canceller");
    t = evco_spawn(s, NULL, ticker, NULL);
    check(t != NULL, "spawn the ticker");
    EXPECT(evco_join(reader_handle, -1), 0, 0);
    check(canceller_saw_parked, "the canceller ran while the reader was parked in read");
    check(r.returned, "the cancelled reader returned after its checks (its join said 0)");

    /* Cancelled before it first ran. */
    early = evco_spawn(s, NULL, cancel_before_start, &sv[0]);
    check(early != NULL, "spawn a coroutine");
    EXPECT(evco_cancel(early), 0, 0);
    EXPECT(evco_join(early, -1), 0, 0);

    /* Cancels itself. */
    EXPECT(evco_join(evco_spawn(s, NULL, cancel_self, &sv[0]), -1), 0, 0);

    stop_ticking = 1;
    EXPECT(evco_join(t, -1), 0, 0);
    EXPECT(evco_cancel(w), 0, 0);
    EXPECT(evco_join(w, -1), 0, 0);
    check(!witness_woke, "the 5 s sleeper was still asleep at the end (then cancelled)");

    /* A created coroutine, cancelled while suspended: its evco_suspend fails with ECANCELED. */
    c = evco_create(s, NULL, created, NULL);
    check(c != NULL, "evco_create");
    EXPECT(evco_resume(c), 0, 0);
    check(created_steps == 1, "the created coroutine ran to its evco_suspend");
    EXPECT(evco_cancel(c), 0, 0);
    EXPECT(evco_resume(c), 0, 0);
    check(created_steps == 3 && evco_is_done(c) == 1,
          "the cancelled created coroutine ran to its end (steps %d of 3)", created_steps);
    evco_free(c);

    EXPECT(evco_sched_free(s, 1000), 0, 0);
    close(sv[0]);
    close(sv[1]);
    puts("RESULT ok=1");
    return 0;
}

/* ---- free N --------------------------------------------------------------------------------- */

/* Parks in a read of `fd`, counted in `*parked` meanwhile: 1 when the read failed with
 * ECANCELED. */
static int parked_until_cancelled(int fd, int *parked) {
    char c;
    int cancelled;
    ++*parked;
    cancelled = read(fd, &c, 1) == -1 && errno == ECANCELED;
    --*parked;
    return cancelled;
}

static int parked;
static int saw_ecanceled;

static void parked_reader(void *arg) {
    saw_ecanceled += parked_until_cancelled(*(int *)arg, &parked);
}

/* Until `*count` reaches `want`: what ends once the coroutines spawned before it are parked. */
struct until {
    const int *count;
    int want;
};

static void until_parked(void *arg) {
    struct until *u = arg;
    while (*u->count < u->want) {
        if (evco_yield() != 0) {
            return;
        }
    }
}

static void wait_parked(evco_sched_t *s, const int *count, int want) {
    struct until u;
    u.count = count;
    u.want = want;
    EXPECT(evco_join(evco_spawn(s, NULL, until_parked, &u), -1), 0, 0);
    check(*count == want, "%d coroutines parked in read", *count);
}

/* How many socketpairs the fd limit allows for `n` readers (raising the soft limit first);
 * readers share pairs beyond that. */
static int pairs_for(int n) {
    struct rlimit rl;
    long room;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 1;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
            return 1;
        }
    }
    if (rl.rlim_cur >= (rlim_t)n * 2 + 64) {
        return n;
    }
    room = ((long)rl.rlim_cur - 64) / 2;
    return room < 1 ? 1 : (int)room;
}

static int mode_free(int n) {
    evco_sched_t *s = evco_sched_new();
    int npairs = pairs_for(n), i, left, *fds;
    double t0, t1;

    check(s != NULL, "evco_sched_new");
    fds = calloc((size_t)npairs * 2, sizeof *fds);
    check(fds != NULL, "calloc");
    for (i = 0; i < npairs; i++) {
        if (pair(&fds[2 * i]) != 0) {
            check(0, "socketpair %d of %d: %s", i, npairs, strerror(errno));
        }
    }
    for (i = 0; i < n; i++) {
        evco_t *c = evco_spawn(s, NULL, parked_reader, &fds[2 * (i % npairs)]);
        if (c == NULL || evco_detach(c) != 0) {
            check(0, "spawn reader %d: %s", i, strerror(errno));
        }
    }
    wait_parked(s, &parked, n);
    t0 = now_ms();
    left = evco_sched_free(s, 1000);
    t1 = now_ms();
    check(left == 0, "evco_sched_free(s, 1000) -> 0 with %d coroutines parked in hooked reads "
                     "(got %d, errno %d; %.1f ms)",
          n, left, errno, t1 - t0);
    check(saw_ecanceled == n && parked == 0,
          "every parked read failed with ECANCELED and its coroutine returned (%d of %d)",
          saw_ecanceled, n);
    for (i = 0; i < 2 * npairs; i++) {
        close(fds[i]);
    }
    free(fds);
    printf("RESULT coroutines=%d pairs=%d free_ms=%.1f\n", n, npairs, t1 - t0);
    return 0;
}

/* ---- stubborn ------------------------------------------------------------------------------ */

#define EACH 5

static int stubborn_parked, good_returned, yielders_cancelled;
static unsigned long yields, retries;

/* Returns on ECANCELED. */
static void good(void *arg) {
    good_returned += parked_until_cancelled(*(int *)arg, &stubborn_parked);
}

/* Ignores ECANCELED and loops on evco_yield for good. */
static void yielder(void *arg) {
    yielders_cancelled += parked_until_cancelled(*(int *)arg, &stubborn_parked);
    for (;;) {
        yields++;
        evco_yield();
    }
}

/* Ignores ECANCELED and retries its read for good, as a blocking read loop that treats every
 * error as passing would. */
static void retrier(void *arg) {
    int fd = *(int *)arg;
    char c;
    stubborn_parked++;
    for (;;) {
        if (read(fd, &c, 1) == -1) {
            retries++;
        }
    }
}

struct ping {
    int sv[2];
    int got;
};

static void pinger(void *arg) {
    struct ping *p = arg;
    if (usleep(1000) == 0 && write(p->sv[1], "p", 1) == 1) {
        p->got++;
    }
}

static void ponger(void *arg) {
    struct ping *p = arg;
    char c;
    if (read(p->sv[0], &c, 1) == 1 && c == 'p') {
        p->got++;
    }
}

static int mode_stubborn(void) {
    evco_sched_t *s = evco_sched_new();
    evco_t *goods[EACH], *stubborn[2 * EACH];
    int sv[3 * EACH][2], i, left;
    unsigned long yields_then, retries_then;
    double t0, t1;
    struct ping p;

    check(s != NULL, "evco_sched_new");
    for (i = 0; i < 3 * EACH; i++) {
        if (pair(sv[i]) != 0) {
            check(0, "socketpair %d: %s", i, strerror(errno));
        }
    }
    for (i = 0; i < EACH; i++) {
        goods[i] = evco_spawn(s, NULL, good, &sv[i][0]);
        stubborn[i] = evco_spawn(s, NULL, yielder, &sv[EACH + i][0]);
        stubborn[EACH + i] = evco_spawn(s, NULL, retrier, &sv[2 * EACH + i][0]);
        if (!goods[i] || !stubborn[i] || !stubborn[EACH + i]) {
            check(0, "spawn: %s", strerror(errno));
        }
    }
    wait_parked(s, &stubborn_parked, 3 * EACH);

    t0 = now_ms();
    left = evco_sched_free(s, 200);
    t1 = now_ms();
    check(left == 2 * EACH, "evco_sched_free(s, 200) -> %d, the coroutines that ignore "
                            "ECANCELED (got %d; %.1f ms)",
          2 * EACH, left, t1 - t0);
    check(good_returned == EACH, "the %d coroutines that return on ECANCELED did (%d)", EACH,
          good_returned);
    check(yielders_cancelled == EACH && yields > 0 && retries > 0,
          "the others saw ECANCELED and went on (%d yielders, %lu yields, %lu failed reads)",
          yielders_cancelled, yields, retries);
    for (i = 0; i < EACH; i++) {
        EXPECT(evco_join(goods[i], 0), 0, 0);
    }
    for (i = 0; i < 2 * EACH; i++) {
        EXPECT(evco_join(stubborn[i], 0), -1, ECANCELED);
    }

    /* The process goes on: a new scheduler on this thread runs a hooked read, usleep and
     * write, nothing is left at its free, and no given-up coroutine ran again. */
    yields_then = yields;
    retries_then = retries;
    for (i = 0; i < 3 * EACH; i++) {
        close(sv[i][0]);
        close(sv[i][1]);
    }
    s = evco_sched_new();
    check(s != NULL, "a new scheduler on the same thread after the free");
    memset(&p, 0, sizeof p);
    check(pair(p.sv) == 0, "socketpair");
    check(evco_detach(evco_spawn(s, NULL, ponger, &p)) == 0 &&
              evco_detach(evco_spawn(s, NULL, pinger, &p)) == 0,
          "spawn two coroutines");
    EXPECT(evco_sched_run(s), 0, 0);
    check(p.got == 2, "hooked read, usleep and write between two coroutines (%d of 2)", p.got);
    EXPECT(evco_sched_free(s, 1000), 0, 0);
    check(yields == yields_then && retries == retries_then,
          "no given-up coroutine ran after the free");
    close(p.sv[0]);
    close(p.sv[1]);
    printf("RESULT left=%d free_ms=%.1f\n", left, t1 - t0);
    return 0;
}

int main(int argc, char **argv) {
    checks_begin();
    if (argc >= 2 && strcmp(argv[1], "cancel") == 0) {
        return mode_cancel();
    }
    if (argc >= 3 && strcmp(argv[1], "free") == 0) {
        return mode_free(atoi(argv[2]));
    }
    if (argc >= 2 && strcmp(argv[1], "stubborn") == 0) {
        return mode_stubborn();
    }
    fprintf(stderr, "usage: cancel cancel | free N | stubborn\n");
    return 2;
}
