/* hooks.c: evco's hooks in a C program that calls only evco_* functions and plain POSIX calls.
 *
 * tests/c_api.rs links it with libevco.a in several shapes (plain, --gc-sections, --as-needed,
 * with the blocking calls made by a shared library of its own: -DEVCO_TEST_FOO, see foo.h) and
 * with libevco.so. In each, the program proves that the hooks are in place and cooperative by
 * the order things happen in, not by timing: a coroutine blocks in a call that only a coroutine
 * spawned after it can satisfy. Had the call blocked the thread, the second coroutine would
 * never run and the program would hang (tests/c_api.rs kills it past its deadline: a failure).
 *
 * The last line is machine-readable: RESULT active=<0|1> sleep_ms=<elapsed of two coroutines
 * sleeping 200 ms each, at once>. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evco.h"
#include "check.h"

#ifdef EVCO_TEST_FOO
#include "foo.h"
#define READ foo_read
#define WRITE foo_write
#define ACCEPT foo_accept
#define CONNECT foo_connect
#define POLL foo_poll
#define USLEEP foo_usleep
#define NANOSLEEP foo_nanosleep
#define CALLER "libfoo.so's "
#else
#define READ read
#define WRITE write
#define ACCEPT accept
#define CONNECT connect
#define POLL poll
#define USLEEP usleep
#define NANOSLEEP nanosleep
#define CALLER ""
#endif

/* ---- a blocked coroutine and the one that unblocks it ---------------------------------- */

enum how { BY_READ, BY_POLL };

struct rendezvous {
    enum how how;
    int rfd, wfd;
    int blocked;     /* the blocker is inside its call */
    int saw_blocked; /* the unblocker ran while the blocker was inside its call */
    int wrote;       /* the unblocker wrote its byte */
    int got;         /* the blocker's call returned that byte, after the write */
};

/* Waits for a byte on `rfd` (read, or poll then read). */
static void blocker(void *arg) {
    struct rendezvous *r = arg;
    char c = 0;
    ssize_t n;
    r->blocked = 1;
    if (r->how == BY_POLL) {
        struct pollfd p;
        p.fd = r->rfd;
        p.events = POLLIN;
        p.revents = 0;
        n = POLL(&p, 1, -1);
        r->blocked = 0;
        if (n != 1 || !(p.revents & POLLIN)) {
            return;
        }
        n = READ(r->rfd, &c, 1);
    } else {
        n = READ(r->rfd, &c, 1);
        r->blocked = 0;
    }
    r->got = n == 1 && c == 'x' && r->wrote;
}

/* Spawned after the blocker: runs only if the blocker's call suspended it. */
static void unblocker(void *arg) {
    struct rendezvous *r = arg;
    r->saw_blocked = r->blocked;
    r->wrote = WRITE(r->wfd, "x", 1) == 1;
}

static void rendezvous(evco_sched_t *s, const char *what, enum how how, int rfd, int wfd) {
    struct rendezvous r;
    memset(&r, 0, sizeof r);
    r.how = how;
    r.rfd = rfd;
    r.wfd = wfd;
    check(evco_detach(evco_spawn(s, NULL, blocker, &r)) == 0, "spawn the %s blocker", what);
    check(evco_detach(evco_spawn(s, NULL, unblocker, &r)) == 0, "spawn the %s unblocker", what);
    EXPECT(evco_sched_run(s), 0, 0);
    check(r.saw_blocked && r.wrote && r.got,
          "%s%s suspends only its coroutine: the one spawned after it ran while it waited, "
          "and its write ended the wait (saw_blocked=%d wrote=%d got=%d)",
          CALLER, what, r.saw_blocked, r.wrote, r.got);
}

/* ---- loopback TCP: accept, connect, write, read ------------------------------------------- */

struct tcp {
    int listener;
    struct sockaddr_in addr;
    int in_accept;         /* the server is inside accept */
    int client_saw_accept; /* the client ran while the server was inside accept */
    int served;            /* the server echoed 5 bytes */
    int echoed;            /* the client got its 5 bytes back */
};

static int read_full(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = READ(fd, buf, len);
        if (n <= 0) {
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void server(void *arg) {
    struct tcp *t = arg;
    char buf[5];
    int c;
    t->in_accept = 1;
    c = ACCEPT(t->listener, NULL, NULL);
    t->in_accept = 0;
    if (c < 0) {
        return;
    }
    if (read_full(c, buf, sizeof buf) == 0 && WRITE(c, buf, sizeof buf) == (ssize_t)sizeof buf) {
        t->served = 1;
    }
    close(c);
}

/* Its read of the echo can only end after the server ran again (read, write): a read that
 * blocked the thread would wait for good. */
static void client(void *arg) {
    struct tcp *t = arg;
    char buf[5];
    int fd;
    t->client_saw_accept = t->in_accept;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return;
    }
    if (CONNECT(fd, (const struct sockaddr *)&t->addr, sizeof t->addr) == 0 &&
        WRITE(fd, "hello", 5) == 5 && read_full(fd, buf, sizeof buf) == 0 &&
        memcmp(buf, "hello", 5) == 0) {
        t->echoed = 1;
    }
    close(fd);
}

static void tcp(evco_sched_t *s) {
    struct tcp t;
    socklen_t len = sizeof t.addr;
    memset(&t, 0, sizeof t);
    t.listener = socket(AF_INET, SOCK_STREAM, 0);
    check(t.listener >= 0, "socket(AF_INET, SOCK_STREAM)");
    t.addr.sin_family = AF_INET;
    t.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(bind(t.listener, (struct sockaddr *)&t.addr, sizeof t.addr) == 0 &&
              listen(t.listener, 16) == 0 &&
              getsockname(t.listener, (struct sockaddr *)&t.addr, &len) == 0,
          "listen on 127.0.0.1:0");
    check(evco_detach(evco_spawn(s, NULL, server, &t)) == 0, "spawn the server");
    check(evco_detach(evco_spawn(s, NULL, client, &t)) == 0, "spawn the client");
    EXPECT(evco_sched_run(s), 0, 0);
    check(t.client_saw_accept, CALLER "accept suspends only its coroutine: the client ran "
                               "while the server was inside it");
    check(t.served && t.echoed,
          CALLER "connect, write and read over loopback TCP: the client's read of the echo "
                 "waited for the server (served=%d echoed=%d)",
          t.served, t.echoed);
    close(t.listener);
}

/* ---- two sleeps at once --------------------------------------------------------------------- */

struct sleepers {
    int started;
    int woke_after_both_started;
};

static void sleep_us(void *arg) {
    struct sleepers *z = arg;
    z->started++;
    if (USLEEP(200000) == 0 && z->started == 2) {
        z->woke_after_both_started++;
    }
}

static void sleep_ns(void *arg) {
    struct sleepers *z = arg;
    struct timespec ts;
    ts.tv_sec = 0;
    ts.tv_nsec = 200000000L;
    z->started++;
    if (NANOSLEEP(&ts, NULL) == 0 && z->started == 2) {
        z->woke_after_both_started++;
    }
}

/* Two coroutines sleep 200 ms each (usleep, nanosleep): both started before either woke, so
 * neither sleep held the thread. Returns the elapsed milliseconds. */
static double sleeps(evco_sched_t *s) {
    struct sleepers z;
    double t0, t1;
    memset(&z, 0, sizeof z);
    t0 = now_ms();
    check(evco_detach(evco_spawn(s, NULL, sleep_us, &z)) == 0, "spawn the usleep sleeper");
    check(evco_detach(evco_spawn(s, NULL, sleep_ns, &z)) == 0, "spawn the nanosleep sleeper");
    EXPECT(evco_sched_run(s), 0, 0);
    t1 = now_ms();
    check(z.woke_after_both_started == 2,
          CALLER "usleep and nanosleep of 200 ms suspend only their coroutines: each woke after "
                 "both had started (%d of 2; %.1f ms in all)",
          z.woke_after_both_started, t1 - t0);
    return t1 - t0;
}

int main(void) {
    evco_sched_t *s;
    int active, sp[2], pp[2];
    double slept;
    checks_begin();
    s = evco_sched_new();
    check(s != NULL, "evco_sched_new");
    active = evco_hooks_active();
    check(active == 1, "evco_hooks_active() == 1: read, accept, connect and usleep resolve to "
                       "evco's hooks (got %d)",
          active);
    check(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0, "socketpair");
    rendezvous(s, "read on a socketpair", BY_READ, sp[0], sp[1]);
    rendezvous(s, "poll on a socketpair", BY_POLL, sp[0], sp[1]);
    check(pipe(pp) == 0, "pipe");
    rendezvous(s, "read on a pipe", BY_READ, pp[0], pp[1]);
    tcp(s);
    slept = sleeps(s);
    EXPECT(evco_sched_free(s, 1000), 0, 0);
    close(sp[0]);
    close(sp[1]);
    close(pp[0]);
    close(pp[1]);
    printf("RESULT active=%d sleep_ms=%.1f\n", active, slept);
    return 0;
}
