/* libco_names.c: a program that defines functions named co_create, co_resume and co_self (and
 * co_yield_ct), as one ported from libco keeps them, links with libevco.a and runs: evco
 * defines none of those names (include/evco.h: every name of it is evco_*), so neither the
 * linker (a duplicate definition) nor the dynamic linker (the program's co_* interposing
 * evco's) mixes them up. Here they are a small libco-style layer over evco_create,
 * evco_resume, evco_suspend and evco_self. */
#define _GNU_SOURCE
#include "evco.h"
#include "check.h"

typedef struct co {
    evco_t *c;
    void *(*fn)(void *);
    void *arg;
    void *ret;
} co_t;

static evco_sched_t *sched;
static co_t *running;

int co_create(co_t **out, const void *attr, void *(*fn)(void *), void *arg);
void co_resume(co_t *co);
void co_yield_ct(void);
co_t *co_self(void);

static void trampoline(void *arg) {
    co_t *co = arg;
    co->ret = co->fn(co->arg);
}

int co_create(co_t **out, const void *attr, void *(*fn)(void *), void *arg) {
    co_t *co = calloc(1, sizeof *co);
    (void)attr;
    if (co == NULL) {
        return -1;
    }
    co->fn = fn;
    co->arg = arg == NULL ? co : arg;
    co->c = evco_create(sched, NULL, trampoline, co);
    if (co->c == NULL) {
        free(co);
        return -1;
    }
    *out = co;
    return 0;
}

void co_resume(co_t *co) {
    co_t *was = running;
    running = co;
    evco_resume(co->c);
    running = was;
}

void co_yield_ct(void) {
    evco_suspend();
}

co_t *co_self(void) {
    return running;
}

static int steps;
static int self_ok;

static void *routine(void *arg) {
    co_t *me = arg;
    self_ok = co_self() == me && evco_self() == me->c;
    steps++;
    co_yield_ct();
    steps++;
    return &steps;
}

int main(void) {
    co_t *co = NULL;
    checks_begin();
    sched = evco_sched_new();
    check(sched != NULL, "evco_sched_new");
    check(co_create(&co, NULL, routine, NULL) == 0, "the program's own co_create");
    co_resume(co);
    check(steps == 1 && self_ok, "co_resume runs the routine to its co_yield_ct; co_self and "
                                 "evco_self name it inside (steps=%d self_ok=%d)",
          steps, self_ok);
    check(co_self() == NULL && evco_self() == NULL, "co_self and evco_self are NULL outside");
    co_resume(co);
    check(steps == 2 && co->ret == &steps && evco_is_done(co->c) == 1,
          "the second co_resume runs it to its end (steps=%d)", steps);
    evco_free(co->c);
    free(co);
    EXPECT(evco_sched_free(sched, 1000), 0, 0);
    puts("RESULT ok=1");
    return 0;
}
