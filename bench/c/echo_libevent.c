/*
 * echo_libevent.c: the hand-written callback echo server on raw libevent that evco's echo
 * example is measured against (scripts/echo-compare).
 *
 * One persistent EV_READ event per connection. On readable: one read() into a 4 KiB buffer,
 * then write() straight back. Only when the write comes up short (EAGAIN) does the connection
 * switch to its persistent EV_WRITE event until the rest is out, then back to EV_READ. That is
 * the least a libevent program can do per message, so it is the bar for evco.
 *
 *   cc -O2 -o echo_libevent echo_libevent.c -l:libevent_core-2.1.so.7
 *   ./echo_libevent [--addr 127.0.0.1:7878]     prints "listening on <addr>"
 *
 * It builds where only libevent's runtime library is installed (no headers, no unversioned
 * .so): without <event2/event.h> it declares the few functions and constants it uses, which are
 * libevent 2.1's stable ABI.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<event2/event.h>)
#define HAVE_EVENT2_HEADERS 1
#endif
#endif

#ifdef HAVE_EVENT2_HEADERS
#include <event2/event.h>
#else
struct event_base;
struct event;
typedef int evutil_socket_t;
typedef void (*event_callback_fn)(evutil_socket_t, short, void *);
#define EV_TIMEOUT 0x01
#define EV_READ 0x02
#define EV_WRITE 0x04
#define EV_SIGNAL 0x08
#define EV_PERSIST 0x10
struct event_base *event_base_new(void);
void event_base_free(struct event_base *);
int event_base_dispatch(struct event_base *);
int event_base_loopbreak(struct event_base *);
struct event *event_new(struct event_base *, evutil_socket_t, short, event_callback_fn, void *);
void event_free(struct event *);
int event_add(struct event *, const struct timeval *);
int event_del(struct event *);
#endif

/* The same buffer as evco's echo example and bench's tokio_echo. */
#define BUF_SIZE 4096

struct conn {
    struct event *rev; /* EV_READ | EV_PERSIST: added while idle */
    struct event *wev; /* EV_WRITE | EV_PERSIST: added only while a write is pending */
    int fd;
    size_t off, len; /* pending bytes buf[off..len] while wev is added */
    char buf[BUF_SIZE];
};

static struct event_base *base;

static void conn_close(struct conn *c) {
    event_free(c->rev); /* event_free deletes an added event first */
    event_free(c->wev);
    close(c->fd);
    free(c);
}

/* Writes buf[off..len]; returns 0 when all is out, 1 on EAGAIN (rest pending), -1 on error. */
static int conn_flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = write(c->fd, c->buf + c->off, c->len - c->off);
        if (n > 0) {
            c->off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 1;
        } else {
            return -1;
        }
    }
    return 0;
}

static void write_cb(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    (void)fd;
    (void)what;
    int rc = conn_flush(c);
    if (rc < 0 || (rc == 0 && (event_del(c->wev) < 0 || event_add(c->rev, NULL) < 0))) {
        conn_close(c);
    }
}

static void read_cb(evutil_socket_t fd, short what, void *arg) {
    struct conn *c = arg;
    (void)what;
    ssize_t n = read(fd, c->buf, sizeof c->buf);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return;
    }
    if (n <= 0) {
        conn_close(c);
        return;
    }
    c->off = 0;
    c->len = (size_t)n;
    int rc = conn_flush(c);
    if (rc < 0 || (rc == 1 && (event_del(c->rev) < 0 || event_add(c->wev, NULL) < 0))) {
        conn_close(c);
    }
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg) {
    (void)what;
    (void)arg;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                perror("echo_libevent: accept");
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = malloc(sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->off = c->len = 0;
        c->rev = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, c);
        c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, write_cb, c);
        if (!c->rev || !c->wev || event_add(c->rev, NULL) < 0) {
            if (c->rev) {
                event_free(c->rev);
            }
            if (c->wev) {
                event_free(c->wev);
            }
            close(fd);
            free(c);
        }
    }
}

static void signal_cb(evutil_socket_t sig, short what, void *arg) {
    (void)sig;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1:7878";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--addr") == 0 && i + 1 < argc) {
            addr = argv[++i];
        } else {
            fprintf(stderr, "usage: echo_libevent [--addr HOST:PORT]\n");
            return 2;
        }
    }
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        fprintf(stderr, "echo_libevent: bad --addr %s\n", addr);
        return 2;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        fprintf(stderr, "echo_libevent: bad host %s\n", host);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, 4096) < 0) {
        perror("echo_libevent: bind/listen");
        return 1;
    }
    socklen_t len = sizeof sin;
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    char shown[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sin.sin_addr, shown, sizeof shown);
    printf("echo_libevent: listening on %s:%d\n", shown, ntohs(sin.sin_port));
    fflush(stdout);

    base = event_base_new();
    if (!base) {
        fprintf(stderr, "echo_libevent: event_base_new failed\n");
        return 1;
    }
    struct event *lev = event_new(base, lfd, EV_READ | EV_PERSIST, accept_cb, NULL);
    struct event *sigint = event_new(base, SIGINT, EV_SIGNAL | EV_PERSIST, signal_cb, NULL);
    struct event *sigterm = event_new(base, SIGTERM, EV_SIGNAL | EV_PERSIST, signal_cb, NULL);
    event_add(lev, NULL);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    event_base_dispatch(base);
    event_free(lev);
    event_free(sigint);
    event_free(sigterm);
    event_base_free(base);
    close(lfd);
    return 0;
}
