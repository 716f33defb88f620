/* check.h: the checks the C programs of tests/c_api.rs make.
 *
 * Every check prints one line: "ok   <what>" when it holds, "FAIL <what>: <why>" when it does
 * not, and a failed check ends the program at once with exit status 1 (tests/c_api.rs shows
 * its output). stdout is line-buffered (checks_begin), so a program that hangs and is killed
 * still shows how far it got. Header-only: each program includes it once. */
#ifndef EVCO_TEST_CHECK_H
#define EVCO_TEST_CHECK_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline void checks_begin(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
}

/* Fails the program unless `ok`; `what` is a printf format. */
static inline void check(int ok, const char *what, ...) __attribute__((format(printf, 2, 3)));
static inline void check(int ok, const char *what, ...) {
    va_list ap;
    va_start(ap, what);
    fputs(ok ? "ok   " : "FAIL ", stdout);
    vprintf(what, ap);
    fputc('\n', stdout);
    va_end(ap);
    if (!ok) {
        fflush(stdout);
        exit(1);
    }
}

/* `call` (an int or ssize_t result) returned `want` and left errno `werr` (0: not checked). */
static inline void expect_ret(const char *call, long got, int got_errno, long want, int werr) {
    if (got == want && (werr == 0 || got_errno == werr)) {
        if (werr) {
            check(1, "%s -> %ld, errno %s", call, want, strerror(werr));
        } else {
            check(1, "%s -> %ld", call, want);
        }
        return;
    }
    check(0, "%s -> %ld%s%s: got %ld, errno %d (%s)", call, want, werr ? ", errno " : "",
          werr ? strerror(werr) : "", got, got_errno, strerror(got_errno));
}

/* `call` (a pointer result) returned NULL and left errno `werr`. */
static inline void expect_null(const char *call, const void *got, int got_errno, int werr) {
    if (got == NULL && got_errno == werr) {
        check(1, "%s -> NULL, errno %s", call, strerror(werr));
        return;
    }
    check(0, "%s -> NULL, errno %s: got %p, errno %d (%s)", call, strerror(werr),
          (void *)(uintptr_t)got, got_errno, strerror(got_errno));
}

/* EXPECT(call, want, werr): `call` returns `want` with errno `werr` (0: any errno). errno is
 * cleared before the call and read right after it. */
#define EXPECT(call, want, werr)                                                               \
    do {                                                                                       \
        long got_;                                                                             \
        int e_;                                                                                \
        errno = 0;                                                                             \
        got_ = (long)(call);                                                                   \
        e_ = errno;                                                                            \
        expect_ret(#call, got_, e_, (long)(want), (werr));                                     \
    } while (0)

/* EXPECT_NULL(call, werr): `call` returns NULL with errno `werr`. */
#define EXPECT_NULL(call, werr)                                                                \
    do {                                                                                       \
        const void *got_;                                                                      \
        int e_;                                                                                \
        errno = 0;                                                                             \
        got_ = (const void *)(call);                                                           \
        e_ = errno;                                                                            \
        expect_null(#call, got_, e_, (werr));                                                  \
    } while (0)

/* Milliseconds on the monotonic clock. */
static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

#endif /* EVCO_TEST_CHECK_H */
