/* review.c: regressions for what a hostile review of the C ABI found (tests/c_api.rs runs one
 * mode per test):
 *   free-in-callback  evco_sched_free from a callback of the scheduler's own base is EBUSY and
 *                     frees nothing (it freed the base under the running loop); after the loop
 *                     returned, the free works.
 *   post-burst        8 threads post 5,000 functions each while the loop runs: every post that
 *                     returned 0 runs (before, a burst spawned them all in one turn, and past
 *                     the stack mappings' limit the rest were dropped).
 *   cancel-resumer    a created coroutine B, resumed by A, cancels A: A is cancelled, B is not
 *                     (before, the running caller was cancelled instead).
 *   fork-post         after fork, with the child's loop running, posts in the parent all run in
 *                     the parent (before, the post box's eventfd was shared, and the child's
 *                     loop could take the parent's wake-ups). */
#define _GNU_SOURCE
#include <evco.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

struct event;
struct timeval;
struct event *event_new(struct event_base *, int, short, void (*)(int, short, void *), void *);
int event_add(struct event *, const struct timeval *);
void event_free(struct event *);
int event_base_loopbreak(struct event_base *);

/* ---- free-in-callback ---------------------------------------------------------------- */

static evco_sched_t *S;
static struct event *tick;
static int free_ret = 99, free_errno;

static void on_tick(int fd, short what, void *arg) {
    (void)fd, (void)what, (void)arg;
    errno = 0;
    free_ret = evco_sched_free(S, 100);
    free_errno = errno;
    event_base_loopbreak(evco_sched_base(S));
}

static void parked(void *arg) {
    (void)arg;
    evco_sleep_ms(200);
}

static void free_in_callback(void) {
    S = evco_sched_new();
    check(S != NULL, "evco_sched_new");
    tick = event_new(evco_sched_base(S), -1, 0, on_tick, NULL);
    check(tick != NULL, "event_new on the scheduler's base");
    struct { long s, us; } tv = {0, 1000};
    check(event_add(tick, (const struct timeval *)(const void *)&tv) == 0, "event_add 1 ms");
    evco_t *c = evco_spawn(S, NULL, parked, NULL);
    check(c != NULL, "spawn a coroutine that sleeps 200 ms");
    int j = evco_join(c, -1);
    check(free_ret == -1 && free_errno == EBUSY,
          "evco_sched_free from a callback of its base -> -1 EBUSY (got %d, %s)", free_ret,
          strerror(free_errno));
    check(j == 0, "the join that ran the loop returned 0 (the coroutine finished)");
    event_free(tick);
    check(evco_sched_free(S, 100) == 0, "evco_sched_free after the loop returned -> 0");
}

/* ---- post-burst ---------------------------------------------------------------------- */

#define POSTERS 8
#define POSTS 5000

static long ran;
static int done_pipe[2];

static void posted(void *arg) {
    (void)arg;
    if (++ran == (long)POSTERS * POSTS) {
        check(write(done_pipe[1], "x", 1) == 1, "the last post says so");
    }
}

static void *poster(void *arg) {
    evco_sched_t *s = arg;
    for (int i = 0; i < POSTS; i++) {
        if (evco_sched_post(s, posted, NULL) != 0) {
            check(0, "evco_sched_post: %s", strerror(errno));
        }
    }
    return NULL;
}

static void until_all_ran(void *arg) {
    (void)arg;
    char b;
    check(read(done_pipe[0], &b, 1) == 1, "the waiting coroutine saw the last post run");
}

static void post_burst(void) {
    evco_sched_t *s = evco_sched_new();
    check(s != NULL, "evco_sched_new");
    check(pipe(done_pipe) == 0, "pipe");
    evco_t *w = evco_spawn(s, NULL, until_all_ran, NULL);
    check(w != NULL, "spawn the waiter");
    pthread_t t[POSTERS];
    for (int i = 0; i < POSTERS; i++) {
        check(pthread_create(&t[i], NULL, poster, s) == 0, "start poster %d", i);
    }
    check(evco_join(w, -1) == 0, "join the waiter");
    for (int i = 0; i < POSTERS; i++) {
        pthread_join(t[i], NULL);
    }
    check(ran == (long)POSTERS * POSTS, "every one of %d posts ran (%ld)", POSTERS * POSTS, ran);
    check(evco_sched_free(s, 1000) == 0, "evco_sched_free");
}

/* ---- cancel-resumer ------------------------------------------------------------------ */

static evco_t *A, *B;
static int a_second, a_errno, b_first;

static void fb(void *arg) {
    (void)arg;
    check(evco_cancel(A) == 0, "B cancels A, which resumed it");
    b_first = evco_suspend();
}

static void fa(void *arg) {
    (void)arg;
    check(evco_resume(B) == 0, "A resumes B");
    errno = 0;
    a_second = evco_suspend();
    a_errno = errno;
}

static void cancel_resumer(void) {
    evco_sched_t *s = evco_sched_new();
    check(s != NULL, "evco_sched_new");
    A = evco_create(s, NULL, fa, NULL);
    B = evco_create(s, NULL, fb, NULL);
    check(A && B, "create A and B");
    check(evco_resume(A) == 0, "resume A");
    check(b_first == 0, "B, not cancelled, suspended (got %d)", b_first);
    check(a_second == -1 && a_errno == ECANCELED,
          "A, cancelled, cannot suspend: -1 ECANCELED (got %d, %s)", a_second, strerror(a_errno));
    check(evco_is_done(A) == 1, "A returned");
    evco_free(A);
    evco_free(B);
    check(evco_sched_free(s, 100) == 0, "evco_sched_free");
}

/* ---- fork-post ----------------------------------------------------------------------- */

#define FORK_POSTS 2000

static long fork_ran;
static int fork_done[2];

static void fork_posted(void *arg) {
    (void)arg;
    if (++fork_ran == FORK_POSTS) {
        check(write(fork_done[1], "x", 1) == 1, "the last post says so");
    }
}

static void wait_fork_posts(void *arg) {
    (void)arg;
    int r = evco_wait_fd(fork_done[0], 0x02, 10000);
    check(r == 0x02, "every post ran in the parent within 10 s (%ld of %d)", fork_ran,
          FORK_POSTS);
}

static void child_waits(void *arg) {
    int *fds = arg;
    char b;
    check(write(fds[1], "r", 1) == 1, "child: its loop runs");
    (void)read(fds[0], &b, 1); /* until the parent is done */
}

static void fork_post(void) {
    evco_sched_t *s = evco_sched_new();
    check(s != NULL, "evco_sched_new");
    int up[2], down[2];
    check(pipe(up) == 0 && pipe(down) == 0 && pipe(fork_done) == 0, "pipes");
    pid_t pid = fork();
    check(pid >= 0, "fork");
    if (pid == 0) {
        int fds[2] = {down[0], up[1]};
        evco_detach(evco_spawn(s, NULL, child_waits, fds));
        evco_sched_run(s);
        _exit(0);
    }
    char b;
    check(read(up[0], &b, 1) == 1, "parent: the child's loop runs");
    for (int i = 0; i < FORK_POSTS; i++) {
        check(evco_sched_post(s, fork_posted, NULL) == 0 || 0, "post");
    }
    evco_t *w = evco_spawn(s, NULL, wait_fork_posts, NULL);
    check(evco_join(w, -1) == 0, "join the waiter");
    check(write(down[1], "q", 1) == 1, "let the child go");
    int st;
    check(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the child exited 0");
    check(evco_sched_free(s, 100) == 0, "evco_sched_free");
}

int main(int argc, char **argv) {
    checks_begin();
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "free-in-callback")) {
        free_in_callback();
    } else if (!strcmp(mode, "post-burst")) {
        post_burst();
    } else if (!strcmp(mode, "cancel-resumer")) {
        cancel_resumer();
    } else if (!strcmp(mode, "fork-post")) {
        fork_post();
    } else {
        check(0, "unknown mode '%s'", mode);
    }
    printf("RESULT ok=1\n");
    return 0;
}
