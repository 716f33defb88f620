/*
 * spawn_bench.c: what one C coroutine costs from evco_spawn to its end, with pooled stacks:
 * ROUNDS rounds of BATCH coroutines, each spawned, detached and run to its end by
 * evco_sched_run (so the stacks of one round are the pool of the next). Prints the mean
 * nanoseconds per coroutine of the best round and of all rounds. The target: <= 2 us.
 *
 *   scripts/c-spawn-bench   (builds it against target/release/libevco.a and runs it)
 */
#define _POSIX_C_SOURCE 200809L
#include <evco.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 1000
#define ROUNDS 50

static long finished;

static void body(void *arg) {
    (void)arg;
    finished++;
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(void) {
    evco_sched_t *s = evco_sched_new();
    if (!s) {
        perror("evco_sched_new");
        return 1;
    }
    double best = 1e300, total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (int i = 0; i < BATCH; i++) {
            evco_t *c = evco_spawn(s, NULL, body, NULL);
            if (!c || evco_detach(c) != 0) {
                perror("evco_spawn");
                return 1;
            }
        }
        if (evco_sched_run(s) != 0) {
            perror("evco_sched_run");
            return 1;
        }
        double per = (now_ns() - t0) / BATCH;
        total += per;
        if (per < best)
            best = per;
    }
    if (finished != (long)BATCH * ROUNDS) {
        fprintf(stderr, "only %ld of %d coroutines finished\n", finished, BATCH * ROUNDS);
        return 1;
    }
    printf("C spawn+detach+finish, pooled stacks: best round %.0f ns, mean %.0f ns per coroutine\n",
           best, total / ROUNDS);
    return evco_sched_free(s, 1000) == 0 ? 0 : 1;
}
