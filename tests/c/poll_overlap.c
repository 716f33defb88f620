/* poll_overlap.c: poll, select and epoll_wait over an eventfd and a socket, as C client
 * libraries wait (curl 8 waits with poll([eventfd, socket, eventfd], 3, 1000)), in many
 * coroutines at once on one scheduler.
 *
 * Usage: poll_overlap <port> <n>. tests/c_api.rs runs a server on 127.0.0.1:<port> that reads
 * one request ("req NN\n") from each of <n> connections and answers none ("ans NN\n") before
 * all <n> are in: the answers come 300 ms after the requests, and only if every coroutine
 * got to send its request, i.e. only if every wait before it suspended its coroutine, not the
 * thread (a wait that held the thread would keep the rest from sending: the server gives up,
 * and the program fails).
 *
 * Three phases:
 * 1. outside coroutines, the three calls are libc's: what is ready, and timeouts that pass;
 * 2. in a coroutine with hooks off, beside a ticking coroutine, they are libc's too: each
 *    times out with the thread held (the ticker does not tick during it);
 * 3. <n> coroutines, a third each waiting with poll (curl 8's list), select and epoll_wait
 *    (an epoll fd over the socket and the eventfd), each on its own TCP connection and
 *    eventfd, beside a ticker coroutine that sleeps 10 ms in a loop (usleep and nanosleep in
 *    turn). Once all <n> requests are out, the ticker writes every eventfd (as
 *    curl_multi_wakeup does); each waiter ends once it has seen both its wake-up and its
 *    answer, so every kind of wait is woken by the eventfd and by the socket. The ticker
 *    ticked between the last request and the first answer: it kept running while all <n>
 *    waited.
 *
 * No timing is asserted; the figures are printed: the last line is machine-readable,
 * RESULT ok=1 backend=<libevent's method> answered=<n> wait_ms=<last request sent to last
 * answer read> elapsed_ms=<spawn to last answer> ticks=<ticks in phase 3>
 * ticks_waiting=<ticks between the last request and the first answer>
 * max_gap_ms=<longest time between two ticks> timeouts=<waits that timed out>. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evco.h"
#include "check.h"

/* libevent's, declared here: the test needs no libevent header. */
const char *event_base_get_method(const struct event_base *base);

/* A check made by every worker, or on every tick: a line only when it fails. */
#define REQUIRE(ok, ...)                                                                       \
    do {                                                                                       \
        if (!(ok)) {                                                                           \
            check(0, __VA_ARGS__);                                                             \
        }                                                                                      \
    } while (0)

#define MAX_WORKERS 96
#define MSG_LEN 7 /* "req NN\n", "ans NN\n" */

enum kind { BY_POLL, BY_SELECT, BY_EPOLL };
static const char *const KIND_NAMES[] = {"poll", "select", "epoll_wait"};

/* What a wait found ready. */
enum { READY_EVENTFD = 1, READY_SOCKET = 2 };

struct worker {
    int id;
    enum kind kind;
    int sock, efd, ep;
    int woken;    /* it saw its eventfd readable and drained it */
    int answered; /* it read its answer */
};

static struct {
    int n;
    struct sockaddr_in addr;
    struct worker w[MAX_WORKERS];
    int sent, answered, finished, woke;
    long ticks, ticks_last_sent, ticks_first_answer;
    int timeouts;
    double t_start, t_last_sent, t_last_answer, max_gap;
    int stop_ticker; /* phase 2 */
} R;

/* ---- the ticker ------------------------------------------------------------------------- */

/* Ticks every 10 ms (usleep and nanosleep in turn) until every worker finished or
 * R.stop_ticker; once all requests are out, writes every worker's eventfd, once. */
static void ticker(void *arg) {
    double last = now_ms();
    (void)arg;
    while (!R.stop_ticker && (R.n == 0 || R.finished < R.n)) {
        double t;
        if (R.ticks % 2 == 0) {
            REQUIRE(usleep(10000) == 0, "the ticker's usleep(10000)");
        } else {
            struct timespec ts = {0, 10000000L};
            REQUIRE(nanosleep(&ts, NULL) == 0, "the ticker's nanosleep of 10 ms");
        }
        t = now_ms();
        if (t - last > R.max_gap) {
            R.max_gap = t - last;
        }
        last = t;
        R.ticks++;
        if (R.n > 0 && R.sent == R.n && !R.woke) {
            uint64_t one = 1;
            int i;
            for (i = 0; i < R.n; i++) {
                REQUIRE(write(R.w[i].efd, &one, sizeof one) == (ssize_t)sizeof one,
                        "the ticker wakes worker %d through its eventfd", i);
            }
            R.woke = 1;
        }
    }
}

/* ---- the waits -------------------------------------------------------------------------- */

/* One wait of `w`'s kind over its eventfd and (until answered) its socket, at most
 * `timeout_ms`: what was ready (READY_* bits), 0 on timeout, -1 with errno. */
static int wait_once(struct worker *w, int timeout_ms) {
    int sock = w->answered ? -1 : w->sock;
    int ready = 0;
    if (w->kind == BY_POLL) {
        /* curl 8's list: its wake-up eventfd twice, around the transfer's socket. */
        struct pollfd p[3];
        int n, nonzero = 0, i;
        p[0].fd = w->efd;
        p[1].fd = sock;
        p[2].fd = w->efd;
        for (i = 0; i < 3; i++) {
            p[i].events = POLLIN;
            p[i].revents = 0;
        }
        n = poll(p, 3, timeout_ms);
        if (n <= 0) {
            return n;
        }
        for (i = 0; i < 3; i++) {
            nonzero += p[i].revents != 0;
        }
        REQUIRE(n == nonzero, "worker %d: poll returned %d, the entries with revents (%d)", w->id,
                n, nonzero);
        REQUIRE((p[0].revents & POLLIN) == (p[2].revents & POLLIN),
                "worker %d: poll reports the eventfd listed twice alike", w->id);
        if (p[0].revents & POLLIN) {
            ready |= READY_EVENTFD;
        }
        if (p[1].revents & POLLIN) {
            ready |= READY_SOCKET;
        }
    } else if (w->kind == BY_SELECT) {
        fd_set rd;
        struct timeval tv;
        int n, max = w->efd > sock ? w->efd : sock, bits;
        FD_ZERO(&rd);
        FD_SET(w->efd, &rd);
        if (sock >= 0) {
            FD_SET(sock, &rd);
        }
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000L;
        n = select(max + 1, &rd, NULL, NULL, &tv);
        if (n <= 0) {
            return n;
        }
        bits = FD_ISSET(w->efd, &rd) + (sock >= 0 && FD_ISSET(sock, &rd));
        REQUIRE(n == bits, "worker %d: select returned %d, the bits it set (%d)", w->id, n, bits);
        if (FD_ISSET(w->efd, &rd)) {
            ready |= READY_EVENTFD;
        }
        if (sock >= 0 && FD_ISSET(sock, &rd)) {
            ready |= READY_SOCKET;
        }
    } else {
        struct epoll_event ev[4];
        int n, i;
        n = epoll_wait(w->ep, ev, 4, timeout_ms);
        if (n <= 0) {
            return n;
        }
        for (i = 0; i < n; i++) {
            REQUIRE(ev[i].data.u32 == READY_EVENTFD || ev[i].data.u32 == READY_SOCKET,
                    "worker %d: epoll_wait reports a registered fd (%u)", w->id, ev[i].data.u32);
            ready |= (int)ev[i].data.u32;
        }
    }
    return ready;
}

static void read_full(int fd, char *buf, size_t len, int id) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        REQUIRE(n > 0, "worker %d reads its answer: read -> %ld (%s)", id, (long)n,
                n < 0 ? strerror(errno) : "the server closed the connection unanswered");
        buf += n;
        len -= (size_t)n;
    }
}

static void worker(void *arg) {
    struct worker *w = arg;
    char req[MSG_LEN + 1], ans[MSG_LEN + 1], want[MSG_LEN + 1];
    w->sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    REQUIRE(w->sock >= 0 && w->efd >= 0, "worker %d: socket and eventfd", w->id);
    if (w->kind == BY_EPOLL) {
        struct epoll_event ev;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        REQUIRE(w->ep >= 0, "worker %d: epoll_create1", w->id);
        ev.events = EPOLLIN;
        ev.data.u32 = READY_EVENTFD;
        REQUIRE(epoll_ctl(w->ep, EPOLL_CTL_ADD, w->efd, &ev) == 0, "worker %d: epoll_ctl(eventfd)",
                w->id);
        ev.data.u32 = READY_SOCKET;
        REQUIRE(epoll_ctl(w->ep, EPOLL_CTL_ADD, w->sock, &ev) == 0, "worker %d: epoll_ctl(socket)",
                w->id);
    }
    REQUIRE(connect(w->sock, (const struct sockaddr *)&R.addr, sizeof R.addr) == 0,
            "worker %d connects to 127.0.0.1:%d (%s)", w->id, ntohs(R.addr.sin_port),
            strerror(errno));
    snprintf(req, sizeof req, "req %02d\n", w->id);
    REQUIRE(write(w->sock, req, MSG_LEN) == MSG_LEN, "worker %d sends its request", w->id);
    if (++R.sent == R.n) {
        R.ticks_last_sent = R.ticks;
        R.t_last_sent = now_ms();
    }
    while (!w->woken || !w->answered) {
        int ready = wait_once(w, 1000);
        REQUIRE(ready >= 0, "worker %d: %s failed (%s)", w->id, KIND_NAMES[w->kind],
                strerror(errno));
        if (ready == 0) {
            R.timeouts++; /* curl's loop goes round again; so does this one */
            continue;
        }
        if (ready & READY_EVENTFD) {
            uint64_t v = 0;
            REQUIRE(read(w->efd, &v, sizeof v) == (ssize_t)sizeof v && v == 1,
                    "worker %d drains its eventfd (%s)", w->id, KIND_NAMES[w->kind]);
            REQUIRE(!w->woken, "worker %d is woken once", w->id);
            w->woken = 1;
        }
        if (ready & READY_SOCKET) {
            read_full(w->sock, ans, MSG_LEN, w->id);
            snprintf(want, sizeof want, "ans %02d\n", w->id);
            REQUIRE(memcmp(ans, want, MSG_LEN) == 0, "worker %d gets its own answer", w->id);
            if (R.answered++ == 0) {
                R.ticks_first_answer = R.ticks;
            }
            R.t_last_answer = now_ms();
            w->answered = 1;
            if (w->kind == BY_EPOLL) {
                REQUIRE(epoll_ctl(w->ep, EPOLL_CTL_DEL, w->sock, NULL) == 0,
                        "worker %d: epoll_ctl(EPOLL_CTL_DEL, socket)", w->id);
            }
        }
    }
    close(w->sock);
    close(w->efd);
    if (w->kind == BY_EPOLL) {
        close(w->ep);
    }
    R.finished++;
}

/* ---- phases 1 and 2: libc's calls --------------------------------------------------------- */

struct fds {
    int efd, sp[2], ep;
};

static void fds_open(struct fds *f) {
    struct epoll_event ev;
    f->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    check(f->efd >= 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, f->sp) == 0,
          "an eventfd and a socketpair");
    f->ep = epoll_create1(EPOLL_CLOEXEC);
    ev.events = EPOLLIN;
    ev.data.u32 = READY_SOCKET;
    check(f->ep >= 0 && epoll_ctl(f->ep, EPOLL_CTL_ADD, f->sp[0], &ev) == 0,
          "an epoll fd over the socket");
}

static void fds_close(struct fds *f) {
    close(f->efd);
    close(f->sp[0]);
    close(f->sp[1]);
    close(f->ep);
}

/* poll([efd, sock, efd]) for `ms`. */
static int poll3(struct fds *f, struct pollfd *p, int ms) {
    p[0].fd = f->efd;
    p[1].fd = f->sp[0];
    p[2].fd = f->efd;
    p[0].events = p[1].events = p[2].events = POLLIN;
    p[0].revents = p[1].revents = p[2].revents = 0;
    return poll(p, 3, ms);
}

/* select over efd and sock for `ms`; `rd` gets the answer, `tv` what is left. */
static int select2(struct fds *f, fd_set *rd, struct timeval *tv, int ms) {
    FD_ZERO(rd);
    FD_SET(f->efd, rd);
    FD_SET(f->sp[0], rd);
    tv->tv_sec = 0;
    tv->tv_usec = ms * 1000L;
    return select((f->efd > f->sp[0] ? f->efd : f->sp[0]) + 1, rd, NULL, NULL, tv);
}

/* Phase 1, on the main thread outside any coroutine: libc's answers. */
static void outside_coroutines(void) {
    struct fds f;
    struct pollfd p[3];
    fd_set rd;
    struct timeval tv;
    struct epoll_event ev[2];
    uint64_t one = 1, v;
    fds_open(&f);
    EXPECT(poll3(&f, p, 20), 0, 0);
    EXPECT(select2(&f, &rd, &tv, 20), 0, 0);
    check(tv.tv_sec == 0 && tv.tv_usec == 0, "outside coroutines, select's timeout left is 0");
    EXPECT(epoll_wait(f.ep, ev, 2, 20), 0, 0);
    check(write(f.efd, &one, sizeof one) == (ssize_t)sizeof one, "write the eventfd");
    EXPECT(poll3(&f, p, 20), 2, 0);
    check(p[0].revents == POLLIN && p[1].revents == 0 && p[2].revents == POLLIN,
          "outside coroutines, poll reports the eventfd listed twice, not the socket");
    EXPECT(select2(&f, &rd, &tv, 20), 1, 0);
    check(FD_ISSET(f.efd, &rd) && !FD_ISSET(f.sp[0], &rd),
          "outside coroutines, select reports the eventfd, not the socket");
    check(read(f.efd, &v, sizeof v) == (ssize_t)sizeof v && write(f.sp[1], "x", 1) == 1,
          "drain the eventfd, write the socket's peer");
    EXPECT(epoll_wait(f.ep, ev, 2, 20), 1, 0);
    check(ev[0].data.u32 == READY_SOCKET, "outside coroutines, epoll_wait reports the socket");
    fds_close(&f);
}

/* Phase 2: in a coroutine with hooks off, each call on fds with nothing to read times out
 * (libc's: only after its whole timeout) and the ticker coroutine did not run meanwhile: the
 * call held the thread. */
static void hooks_off(void *arg) {
    struct fds f;
    struct pollfd p[3];
    fd_set rd;
    struct timeval tv;
    struct epoll_event ev[2];
    long ticks;
    double t0;
    (void)arg;
    fds_open(&f);
    ticks = R.ticks;
    t0 = now_ms();
    EXPECT(poll3(&f, p, 30), 0, 0);
    EXPECT(select2(&f, &rd, &tv, 30), 0, 0);
    EXPECT(epoll_wait(f.ep, ev, 2, 30), 0, 0);
    check(R.ticks == ticks,
          "hooks off: poll, select and epoll_wait of 30 ms each held the thread (%.1f ms, the "
          "ticker ticked %ld times meanwhile)",
          now_ms() - t0, R.ticks - ticks);
    fds_close(&f);
    R.stop_ticker = 1;
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    evco_sched_t *s;
    evco_attr_t off = EVCO_ATTR_INIT;
    char backend[32];
    int i, port;
    double elapsed;
    checks_begin();
    check(argc == 3, "usage: poll_overlap <port> <n>");
    port = atoi(argv[1]);
    R.n = atoi(argv[2]);
    check(port > 0 && port < 65536 && R.n > 0 && R.n <= MAX_WORKERS, "port %d, %d workers",
          port, R.n);
    R.addr.sin_family = AF_INET;
    R.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    R.addr.sin_port = htons((uint16_t)port);

    outside_coroutines();

    s = evco_sched_new();
    check(s != NULL, "evco_sched_new");
    snprintf(backend, sizeof backend, "%s", event_base_get_method(evco_sched_base(s)));
    printf("note libevent backend: %s\n", backend);
    backend[strcspn(backend, " ")] = '\0'; /* "epoll (with changelist)": its first word */

    off.hooks = 0;
    {
        int n = R.n;
        R.n = 0; /* the ticker knows no workers yet */
        check(evco_detach(evco_spawn(s, NULL, ticker, NULL)) == 0, "spawn the ticker");
        check(evco_detach(evco_spawn(s, &off, hooks_off, NULL)) == 0,
              "spawn a coroutine with hooks off");
        EXPECT(evco_sched_run(s), 0, 0);
        R.n = n;
    }

    R.stop_ticker = 0;
    R.ticks = 0;
    R.max_gap = 0;
    R.t_start = now_ms();
    check(evco_detach(evco_spawn(s, NULL, ticker, NULL)) == 0, "spawn the ticker");
    for (i = 0; i < R.n; i++) {
        R.w[i].id = i;
        R.w[i].kind = (enum kind)(i % 3);
        R.w[i].ep = -1;
        check(evco_detach(evco_spawn(s, NULL, worker, &R.w[i])) == 0, "spawn worker %d (%s)", i,
              KIND_NAMES[R.w[i].kind]);
    }
    EXPECT(evco_sched_run(s), 0, 0);
    elapsed = R.t_last_answer - R.t_start;
    check(R.finished == R.n && R.answered == R.n,
          "all %d workers (poll, select and epoll_wait in turn) got their answers and their "
          "wake-ups: every request was out before the server answered any, so the waits "
          "overlapped (%d answered)",
          R.n, R.answered);
    check(R.ticks_first_answer > R.ticks_last_sent,
          "the ticker ticked while all %d waited: %ld ticks between the last request and the "
          "first answer",
          R.n, R.ticks_first_answer - R.ticks_last_sent);
    printf("note %d requests, waited with poll/select/epoll_wait in coroutines: %.1f ms from "
           "spawn to the last answer, %.1f ms from the last request; %ld ticks of 10 ms "
           "(%ld while all waited), longest gap %.1f ms; %d waits timed out\n",
           R.n, elapsed, R.t_last_answer - R.t_last_sent, R.ticks,
           R.ticks_first_answer - R.ticks_last_sent, R.max_gap, R.timeouts);
    EXPECT(evco_sched_free(s, 1000), 0, 0);
    printf("RESULT ok=1 backend=%s answered=%d wait_ms=%.1f elapsed_ms=%.1f ticks=%ld "
           "ticks_waiting=%ld max_gap_ms=%.1f timeouts=%d\n",
           backend, R.answered, R.t_last_answer - R.t_last_sent, elapsed, R.ticks,
           R.ticks_first_answer - R.ticks_last_sent, R.max_gap, R.timeouts);
    return 0;
}
