/*
 * echo_load.c: a lean load client for the echo comparison (scripts/echo-compare --load c), for
 * when examples/echo_client saturates its own CPU before the server does.
 *
 * N connections over one level-triggered epoll, each with one message in flight: write a
 * message, read until all of it is back (memcmp'd against what was sent), write the next. With
 * --mode churn each connection carries one message and is then closed and replaced by a new one
 * (connect, one echo, close: what a server pays per accepted connection). Same command line and
 * last line as examples/echo_client (msgs_per_sec is connections per second in churn mode):
 *
 *   echo_load --addr 127.0.0.1:7878 --conns 100 --size 64 --secs 5 [--mode echo|churn] [--rate R]
 *   RESULT msgs_per_sec=<f> p50_us=<f> p99_us=<f> errors=<n> cpu_ns_per_msg=<f>
 *
 * cpu_ns_per_msg is the client's own CPU time (user + system, getrusage) per message over the
 * run: whether the load generator itself was near a CPU's worth.
 *
 * --rate R paces the echo mode at R messages per second in all: a connection whose echo is back
 * waits in a queue until the next message is due (due times spaced 1/R apart from the start,
 * released in bursts of what fell due while the client slept, at most one per idle connection;
 * messages that fall due while every connection is still waiting for its echo are not made up
 * later). Every server then gets the same offered load, so the server CPU per message of two
 * servers compares at equal work instead of in whatever batching mode a saturated closed loop
 * falls into; a server that cannot keep up shows as msgs_per_sec below R.
 *
 * Plain libc, no libevent: cc -O2 -o echo_load echo_load.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t sent; /* bytes of the current message written */
    size_t got;  /* bytes of its echo read back */
    uint64_t seq;
    double t0; /* when the message's first byte went out */
    unsigned char *out, *back;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* This process's CPU time so far (user + system), in seconds. */
static double cpu_secs(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *msg) {
    fprintf(stderr, "echo_load: %s\n", msg);
    exit(2);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void fill(struct conn *c, size_t id, size_t size) {
    for (size_t i = 0; i < size; i++) {
        c->out[i] = (unsigned char)(id ^ (c->seq * 31) ^ i);
    }
}

/* Connects connection i (a blocking connect: the listen backlog takes it without the server's
 * help), makes it non-blocking, registers it and sends its first message; -1 on error. */
static int open_conn(struct conn *c, size_t i, size_t size, int ep, const struct sockaddr_in *sin);

/* Writes what is left of the current message; -1 on error. */
static int pump_out(struct conn *c, size_t size) {
    while (c->sent < size) {
        ssize_t n = write(c->fd, c->out + c->sent, size - c->sent);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0; /* the echo's arrival makes progress; the server reads as we write */
        } else {
            return -1;
        }
    }
    return 0;
}

/* Source addresses for churn: each new connection leaves a TIME_WAIT socket behind, and with
 * one source address the kernel's search for a free ephemeral port soon costs the client more
 * CPU than the server spends per connection. Spreading them over 127.0.0.2-127.0.0.33 (with the
 * port chosen at connect time) keeps that search short. */
static int spread_sources = 0;

int open_conn(struct conn *c, size_t i, size_t size, int ep, const struct sockaddr_in *sin) {
    static unsigned next_source = 0;
    c->sent = c->got = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd >= 0 && spread_sources && (ntohl(sin->sin_addr.s_addr) >> 24) == 127) {
        int one = 1;
        struct sockaddr_in src = {.sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(0x7f000002u + next_source++ % 32)};
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (const struct sockaddr *)&src, sizeof src) < 0) {
            perror("echo_load: bind");
        }
    }
    if (c->fd < 0 || connect(c->fd, (const struct sockaddr *)sin, sizeof *sin) < 0) {
        perror("echo_load: connect");
        if (c->fd >= 0) {
            close(c->fd);
        }
        c->fd = -1;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) {
        die("fcntl");
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    fill(c, i, size);
    c->t0 = now();
    if (pump_out(c, size) < 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1:7878";
    size_t conns = 100, size = 64;
    double secs = 5.0;
    int churn = 0;
    double rate = 0; /* 0: closed loop, each connection sends its next message at once */
    const char *usage =
        "usage: echo_load [--addr A] [--conns N] [--size BYTES] [--secs S] [--mode echo|churn] "
        "[--rate MSGS_PER_S]";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            die(usage);
        }
        if (strcmp(a, "--addr") == 0) {
            addr = v;
        } else if (strcmp(a, "--conns") == 0) {
            conns = strtoul(v, NULL, 10);
        } else if (strcmp(a, "--size") == 0) {
            size = strtoul(v, NULL, 10);
        } else if (strcmp(a, "--secs") == 0) {
            secs = strtod(v, NULL);
        } else if (strcmp(a, "--rate") == 0) {
            rate = strtod(v, NULL);
            if (!(rate > 0)) {
                die("--rate must be a positive number of messages per second");
            }
        } else if (strcmp(a, "--mode") == 0 && strcmp(v, "echo") == 0) {
            churn = 0;
        } else if (strcmp(a, "--mode") == 0 && strcmp(v, "churn") == 0) {
            churn = 1;
            spread_sources = 1;
        } else {
            die(usage);
        }
        i++;
    }
    if (conns == 0 || size == 0) {
        die("--conns and --size must be positive");
    }
    if (rate > 0 && churn) {
        die("--rate paces the echo mode only");
    }
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        die("bad --addr");
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        die("bad host in --addr");
    }
    signal(SIGPIPE, SIG_IGN);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc(conns, sizeof *cs);
    size_t lat_cap = 1 << 20, lat_len = 0;
    uint32_t *lat = malloc(lat_cap * sizeof *lat);
    /* --rate: connections whose echo is back and whose next message is not yet due (a ring). */
    size_t *idle = malloc(conns * sizeof *idle), idle_head = 0, idle_len = 0;
    uint64_t released = 0; /* messages started, the first one of every connection included */
    if (ep < 0 || !cs || !lat || !idle) {
        die("out of memory");
    }
    double start = now(), deadline = start + secs;
    double cpu_start = cpu_secs();
    uint64_t msgs = 0, errors = 0;
    size_t live = 0;
    for (size_t i = 0; i < conns; i++) {
        struct conn *c = &cs[i];
        c->out = malloc(size);
        c->back = malloc(size);
        if (!c->out || !c->back) {
            die("out of memory");
        }
        if (open_conn(c, i, size, ep, &sin) < 0) {
            errors++;
            continue;
        }
        live++;
        released++;
    }

    struct epoll_event evs[256];
    while (live > 0) {
        int timeout_ms = 100;
        if (rate > 0 && idle_len > 0) {
            double due = start + (double)(released + 1) / rate - now();
            timeout_ms = due <= 0 ? 0 : due >= 0.1 ? 100 : (int)(due * 1e3) + 1;
        }
        int n = epoll_wait(ep, evs, 256, timeout_ms);
        double t = now();
        for (int k = 0; k < n; k++) {
            size_t i = (size_t)evs[k].data.u64;
            struct conn *c = &cs[i];
            if (c->fd < 0) {
                continue;
            }
            int failed = 0;
            for (;;) {
                ssize_t r = read(c->fd, c->back + c->got, size - c->got);
                if (r > 0) {
                    c->got += (size_t)r;
                    if (c->got < size) {
                        if (c->sent < size && pump_out(c, size) < 0) {
                            failed = 1;
                            break;
                        }
                        continue;
                    }
                    if (memcmp(c->back, c->out, size) != 0) {
                        if (errors < 5) {
                            fprintf(stderr, "echo_load: connection %zu: message %llu came back "
                                            "corrupted\n",
                                    i, (unsigned long long)c->seq);
                        }
                        failed = 1;
                        break;
                    }
                    double us = (t - c->t0) * 1e6;
                    if (lat_len == lat_cap) {
                        lat_cap *= 2;
                        lat = realloc(lat, lat_cap * sizeof *lat);
                        if (!lat) {
                            die("out of memory");
                        }
                    }
                    lat[lat_len++] = us > 4e9 ? 4000000000u : (uint32_t)us;
                    msgs++;
                    if (t >= deadline) {
                        close(c->fd);
                        c->fd = -1;
                        live--;
                        break;
                    }
                    c->seq++;
                    if (rate > 0) {
                        idle[(idle_head + idle_len++) % conns] = i;
                        break;
                    }
                    if (churn) {
                        /* Closing deregisters it from the epoll set. */
                        close(c->fd);
                        if (open_conn(c, i, size, ep, &sin) < 0) {
                            c->fd = -1;
                            failed = 1;
                        }
                        break;
                    }
                    c->sent = c->got = 0;
                    fill(c, i, size);
                    c->t0 = t;
                    if (pump_out(c, size) < 0) {
                        failed = 1;
                    }
                    break;
                } else if (r < 0 && errno == EINTR) {
                    continue;
                } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    if (c->sent < size && pump_out(c, size) < 0) {
                        failed = 1;
                    }
                    break;
                } else {
                    if (errors < 5) {
                        fprintf(stderr, "echo_load: connection %zu: %s\n", i,
                                r == 0 ? "closed by the server" : strerror(errno));
                    }
                    failed = 1;
                    break;
                }
            }
            if (failed) {
                errors++;
                if (c->fd >= 0) {
                    close(c->fd);
                }
                c->fd = -1;
                live--;
            }
        }
        if (rate > 0) {
            double t = now();
            uint64_t due = (uint64_t)((t - start) * rate);
            while (idle_len > 0 && (released < due || t >= deadline)) {
                size_t i = idle[idle_head];
                idle_head = (idle_head + 1) % conns;
                idle_len--;
                struct conn *c = &cs[i];
                if (t >= deadline) {
                    close(c->fd);
                    c->fd = -1;
                    live--;
                    continue;
                }
                c->sent = c->got = 0;
                fill(c, i, size);
                c->t0 = t;
                released++;
                if (pump_out(c, size) < 0) {
                    errors++;
                    close(c->fd);
                    c->fd = -1;
                    live--;
                }
            }
            if (released < due) {
                released = due; /* every connection is busy: those messages are not sent */
            }
        }
        if (n == 0 && now() > deadline + 10) {
            fprintf(stderr, "echo_load: %zu connections got no echo for 10 s\n", live);
            errors += live;
            break;
        }
    }
    double elapsed = now() - start;
    qsort(lat, lat_len, sizeof *lat, cmp_u32);
    double p50 = lat_len ? lat[(size_t)((double)(lat_len - 1) * 0.5)] : 0;
    double p99 = lat_len ? lat[(size_t)((double)(lat_len - 1) * 0.99)] : 0;
    double achieved = (double)msgs / elapsed;
    double cpu_ns_per_msg = msgs ? (cpu_secs() - cpu_start) * 1e9 / (double)msgs : 0;
    printf("%zu conns x %zu B: %.0f msgs/s, latency p50 %.0f us, p99 %.0f us, %llu errors\n", conns,
           size, achieved, p50, p99, (unsigned long long)errors);
    printf("RESULT msgs_per_sec=%.1f p50_us=%.1f p99_us=%.1f errors=%llu cpu_ns_per_msg=%.0f\n",
           achieved, p50, p99, (unsigned long long)errors, cpu_ns_per_msg);
    return errors ? 1 : 0;
}
