/* host_loop.c: evco inside a program that owns its libevent loop.
 *
 * The host makes its event_base and a persistent 10 ms timer of its own (counting ticks), as a
 * libevent program already has; then it attaches evco to that base (evco_sched_attach), spawns
 * 100 coroutines and calls event_base_dispatch as before. The coroutines talk to each other
 * over 127.0.0.1 with plain blocking calls, which evco makes cooperative: 50 servers, each on
 * its own listener, accept, read a request, usleep, write the reply and read until EOF; 50
 * clients, in every round r, connect to server (client + r) % 50, write a request, read and
 * check the reply, close, and usleep before the next round. The host's timer goes on ticking
 * the whole time: the coroutines wait in the host's loop, never block it.
 *
 * The last coroutine to return ends the dispatch (event_base_loopexit); the timer ends it too
 * if they take longer than 30 s. The host then checks that evco_sched_base is still its base,
 * frees the scheduler (evco_sched_free), its timer and its base, prints what happened and
 * exits 0 only if every coroutine finished with every check passed, the timer ticked while they
 * ran, and evco_sched_free left nothing behind.
 *
 *   cc -std=c99 -O2 -Iinclude examples/c/host_loop.c target/release/libevco.a \
 *      -l:libevent_core-2.1.so.7 -l:libevent-2.1.so.7 -lgcc_s -lutil -lrt -lpthread -lm -ldl \
 *      -o host_loop
 *   ./host_loop [--rounds N]      (default 25 rounds per client, about a second)
 *
 * The last line is machine-readable:
 *   RESULT coroutines=<n> finished=<n> errors=<n> ticks=<n> ticks_while_running=<n>
 *          ticks_seen_by_clients=<n> elapsed_s=<f> ticks_per_s=<f> max_tick_gap_ms=<f>
 *          base_is_hosts=<0|1> left=<n>
 *
 * libevent's headers are not needed: the few functions used are declared below (libevent 2.1's
 * stable ABI), so this builds where only its runtime libraries are installed. */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "evco.h"

/* ---- libevent, declared (see above) ---- */
struct event;
#define EV_TIMEOUT 0x01
#define EV_PERSIST 0x10
struct event_base *event_base_new(void);
void event_base_free(struct event_base *);
int event_base_dispatch(struct event_base *);
int event_base_loopexit(struct event_base *, const struct timeval *);
struct event *event_new(struct event_base *, int, short, void (*)(int, short, void *), void *);
int event_add(struct event *, const struct timeval *);
int event_del(struct event *);
void event_free(struct event *);

#define PAIRS 50
#define COROUTINES (2 * PAIRS)
#define DEFAULT_ROUNDS 25
/* A client's pause between rounds, and a server's before it replies (microseconds). */
#define CLIENT_PAUSE_US 40000
#define SERVER_PAUSE_US 2000
#define TICK_MS 10
#define DEADLINE_S 30.0
#define MAGIC 0x65766330u /* "evc0" */

/* A request, and its reply (the same words, `server` filled in). */
struct msg {
    uint32_t magic, client, round, server;
};

struct host {
    struct event_base *base;
    struct event *timer;
    evco_sched_t *sched;
    int rounds;
    int listeners[PAIRS];
    struct sockaddr_in addrs[PAIRS];
    int running;     /* coroutines that started and have not returned */
    int live;        /* coroutines that have not returned */
    int finished;    /* coroutines that returned with every check passed */
    int errors;
    unsigned long ticks, ticks_while_running, ticks_seen_by_clients;
    double start, last_tick, max_gap, end;
    int timed_out;
};

struct role {
    struct host *h;
    int id;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The host's own timer: counts ticks, and ends the dispatch past the deadline. */
static void tick(int fd, short what, void *arg) {
    struct host *h = arg;
    double t = now();
    (void)fd;
    (void)what;
    h->ticks++;
    if (h->running > 0) {
        h->ticks_while_running++;
    }
    if (t - h->last_tick > h->max_gap) {
        h->max_gap = t - h->last_tick;
    }
    h->last_tick = t;
    if (h->live > 0 && t - h->start > DEADLINE_S) {
        h->timed_out = 1;
        event_base_loopexit(h->base, NULL);
    }
}

static int fail(struct host *h, const char *who, int id, const char *what) {
    fprintf(stderr, "host_loop: %s %d: %s (errno %d: %s)\n", who, id, what, errno, strerror(errno));
    h->errors++;
    return -1;
}

static int read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            if (n == 0) {
                errno = EPIPE;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Every coroutine starts and ends here; the last one to end stops the host's dispatch. */
static void started(struct host *h) {
    h->running++;
}

static void ended(struct host *h, int ok) {
    h->running--;
    h->live--;
    h->finished += ok;
    if (h->live == 0) {
        h->end = now();
        event_base_loopexit(h->base, NULL);
    }
}

/* Server `id`: `rounds` connections on its listener, one request each. */
static int serve(struct host *h, int id) {
    for (int k = 0; k < h->rounds; k++) {
        int fd = accept(h->listeners[id], NULL, NULL);
        if (fd < 0) {
            return fail(h, "server", id, "accept");
        }
        struct msg m;
        int rc = read_full(fd, &m, sizeof m);
        if (rc < 0) {
            fail(h, "server", id, "reading a request");
        } else if (m.magic != MAGIC || m.round >= (uint32_t)h->rounds || m.client >= PAIRS ||
                   (m.client + m.round) % PAIRS != (uint32_t)id) {
            errno = 0;
            rc = fail(h, "server", id, "a request meant for another server");
        } else if (usleep(SERVER_PAUSE_US) < 0) {
            rc = fail(h, "server", id, "usleep");
        } else {
            m.server = (uint32_t)id;
            char end;
            if (write_full(fd, &m, sizeof m) < 0) {
                rc = fail(h, "server", id, "writing a reply");
            } else if (read(fd, &end, 1) != 0) {
                rc = fail(h, "server", id, "the client sent more than its request");
            }
        }
        close(fd);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* Client `id`: in round r, one request to server (id + r) % PAIRS. */
static int ask(struct host *h, int id) {
    unsigned long seen = h->ticks;
    for (int r = 0; r < h->rounds; r++) {
        int server = (id + r) % PAIRS;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return fail(h, "client", id, "socket");
        }
        struct msg m = {MAGIC, (uint32_t)id, (uint32_t)r, 0}, back;
        int rc = -1;
        if (connect(fd, (struct sockaddr *)&h->addrs[server], sizeof h->addrs[server]) < 0) {
            fail(h, "client", id, "connect");
        } else if (write_full(fd, &m, sizeof m) < 0) {
            fail(h, "client", id, "writing a request");
        } else if (read_full(fd, &back, sizeof back) < 0) {
            fail(h, "client", id, "reading the reply");
        } else if (back.magic != MAGIC || back.client != m.client || back.round != m.round ||
                   back.server != (uint32_t)server) {
            errno = 0;
            fail(h, "client", id, "a reply to another request");
        } else {
            rc = 0;
        }
        close(fd);
        if (rc < 0) {
            return -1;
        }
        if (usleep(CLIENT_PAUSE_US) < 0) {
            return fail(h, "client", id, "usleep");
        }
        /* The host's timer ran while this coroutine was suspended. */
        if (h->ticks != seen) {
            h->ticks_seen_by_clients++;
            seen = h->ticks;
        }
    }
    return 0;
}

static void server_co(void *arg) {
    struct role *r = arg;
    started(r->h);
    ended(r->h, serve(r->h, r->id) == 0);
}

static void client_co(void *arg) {
    struct role *r = arg;
    started(r->h);
    ended(r->h, ask(r->h, r->id) == 0);
}

/* The listeners, on 127.0.0.1 with ports the kernel picks. */
static int listen_all(struct host *h) {
    for (int i = 0; i < PAIRS; i++) {
        struct sockaddr_in *a = &h->addrs[i];
        socklen_t len = sizeof *a;
        memset(a, 0, sizeof *a);
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        h->listeners[i] = fd;
        if (fd < 0 || bind(fd, (struct sockaddr *)a, sizeof *a) < 0 || listen(fd, 64) < 0 ||
            getsockname(fd, (struct sockaddr *)a, &len) < 0) {
            perror("host_loop: listener");
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    static struct host h;
    static struct role roles[COROUTINES];
    h.rounds = DEFAULT_ROUNDS;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0) {
            h.rounds = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: host_loop [--rounds N]   (default %d)\n", DEFAULT_ROUNDS);
            return 2;
        }
    }
    for (int i = 0; i < PAIRS; i++) {
        h.listeners[i] = -1;
    }
    if (listen_all(&h) < 0) {
        return 1;
    }

    /* The host's loop and its timer, as before evco. */
    h.base = event_base_new();
    if (h.base == NULL) {
        fprintf(stderr, "host_loop: event_base_new failed\n");
        return 1;
    }
    struct timeval every = {0, TICK_MS * 1000};
    h.timer = event_new(h.base, -1, EV_TIMEOUT | EV_PERSIST, tick, &h);
    if (h.timer == NULL || event_add(h.timer, &every) < 0) {
        fprintf(stderr, "host_loop: the host's timer cannot be added\n");
        return 1;
    }

    /* evco joins the host's loop. */
    h.sched = evco_sched_attach(h.base);
    if (h.sched == NULL) {
        fprintf(stderr, "host_loop: evco_sched_attach: %s\n", strerror(errno));
        return 1;
    }
    /* Without the hooks (a link that lost them) the coroutines' calls would block the host. */
    if (!evco_hooks_active()) {
        fprintf(stderr, "host_loop: evco's hooks are not linked in\n");
        return 1;
    }
    for (int i = 0; i < COROUTINES; i++) {
        roles[i].h = &h;
        roles[i].id = i % PAIRS;
        evco_t *c = evco_spawn(h.sched, NULL, i < PAIRS ? server_co : client_co, &roles[i]);
        if (c == NULL || evco_detach(c) < 0) {
            fprintf(stderr, "host_loop: evco_spawn: %s\n", strerror(errno));
            return 1;
        }
        h.live++;
    }

    h.start = h.last_tick = now();
    int dispatched = event_base_dispatch(h.base);
    if (h.end == 0) {
        h.end = now();
    }
    double elapsed = h.end - h.start;

    int base_is_hosts = evco_sched_base(h.sched) == h.base;
    /* No ticks counted from here on: the host's own teardown. */
    event_del(h.timer);
    /* What is left (after a deadline only) is cancelled; 0 when every coroutine returned. */
    int left = evco_sched_free(h.sched, 1000);
    event_free(h.timer);
    event_base_free(h.base);
    for (int i = 0; i < PAIRS; i++) {
        close(h.listeners[i]);
    }

    printf("host_loop: %d of %d coroutines finished, %d errors, in %.3f s%s\n", h.finished,
           COROUTINES, h.errors, elapsed, h.timed_out ? " (deadline passed)" : "");
    printf("host_loop: the host's %d ms timer ticked %lu times (%.1f per second), %lu of them "
           "while coroutines ran; the longest gap between ticks was %.1f ms; clients saw it tick "
           "during %lu of their pauses\n",
           TICK_MS, h.ticks, (double)h.ticks / elapsed, h.ticks_while_running, h.max_gap * 1e3,
           h.ticks_seen_by_clients);
    printf("RESULT coroutines=%d finished=%d errors=%d ticks=%lu ticks_while_running=%lu "
           "ticks_seen_by_clients=%lu elapsed_s=%.3f ticks_per_s=%.1f max_tick_gap_ms=%.1f "
           "base_is_hosts=%d left=%d\n",
           COROUTINES, h.finished, h.errors, h.ticks, h.ticks_while_running,
           h.ticks_seen_by_clients, elapsed, (double)h.ticks / elapsed, h.max_gap * 1e3,
           base_is_hosts, left);
    int ok = dispatched == 0 && h.finished == COROUTINES && h.errors == 0 && !h.timed_out &&
             base_is_hosts && left == 0 && h.ticks_while_running > 0;
    return ok ? 0 : 1;
}
