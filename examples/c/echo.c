/* echo.c: examples/echo.rs in C: an echo server written with plain blocking POSIX calls
 * (accept, read, write, close) inside coroutines on evco. One coroutine per connection; EOF
 * and errors end that connection only; SIGINT and SIGTERM stop the server cleanly.
 *
 *   cc -std=c99 -O2 -Iinclude examples/c/echo.c target/release/libevco.a \
 *      -l:libevent_core-2.1.so.7 -l:libevent-2.1.so.7 -lgcc_s -lutil -lrt -lpthread -lm -ldl \
 *      -o echo_c
 *   ./echo_c [--addr 127.0.0.1:7878]        prints "evco echo (C): listening on <addr>"
 *   nc 127.0.0.1 7878
 *
 * Same command line, output and exit statuses as examples/echo (scripts/echo-compare and the
 * tests run both the same way): `--addr HOST:PORT` (port 0 picks a free one; the "listening
 * on" line says which), `--help`; on stopping it prints "stopped after N connections" to
 * stderr and exits 0, 1 on an error, 2 on a bad argument.
 *
 * How it is put together: main makes a scheduler (evco_sched_new) and spawns two coroutines,
 * the listener (accept in a loop, one detached coroutine per connection) and the signal
 * watcher (SIGINT/SIGTERM arrive on a signalfd, waited for with evco_wait_fd). On a signal
 * the watcher cancels the listener, whose accept then fails with ECANCELED; main, joined to
 * the listener, then frees the scheduler, which cancels the connections (their read or write
 * fails with ECANCELED, they close and return). Nothing here knows about libevent. */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evco.h"

#define PROG "evco echo (C)"

/* As examples/echo.rs: a 4 KiB buffer and the hooked I/O path fit in 32 KiB. */
#define CONN_STACK (32 * 1024)
#define BUF_SIZE 4096
/* evco's TcpListener's backlog, which examples/echo listens with. */
#define BACKLOG 1024
/* libevent's EV_READ, for evco_wait_fd. */
#define WAIT_READ 0x02

struct server {
    evco_sched_t *sched;
    int lfd;
    int sfd;            /* the signalfd of SIGINT and SIGTERM */
    evco_t *listener;   /* joined by main */
    unsigned long served;
    int error;          /* the errno that ended the listener, 0 when it was cancelled */
};

/* Writes all `len` bytes of `buf` (a hooked write on a blocking socket already queues it all
 * or fails; the loop is for the contract of write, not for evco). */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A connection's coroutine: echo until EOF or an error (ECANCELED when the server stops). */
static void serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[BUF_SIZE];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0 || write_all(fd, buf, (size_t)n) < 0) {
            break;
        }
    }
    close(fd);
}

/* Whether an accept error is about this one connection or a passing shortage, not the
 * listener: the loop goes on after it. */
static int accept_error_passes(int e) {
    return e == EINTR || e == ECONNABORTED || e == EPROTO || e == EPERM || e == EMFILE ||
           e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

static void listener(void *arg) {
    struct server *sv = arg;
    evco_attr_t attr = EVCO_ATTR_INIT;
    attr.stack_size = CONN_STACK;
    for (;;) {
        int fd = accept(sv->lfd, NULL, NULL);
        if (fd < 0) {
            int e = errno;
            if (e == ECANCELED) {
                return;
            }
            if (!accept_error_passes(e)) {
                sv->error = e;
                return;
            }
            if (e != EINTR && e != ECONNABORTED) {
                /* Out of fds or memory: let connections end before trying again. */
                fprintf(stderr, PROG ": accept: %s\n", strerror(e));
                if (evco_sleep_ms(100) < 0 && errno == ECANCELED) {
                    return;
                }
            }
            continue;
        }
        sv->served++;
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        evco_t *c = evco_spawn(sv->sched, &attr, serve, (void *)(intptr_t)fd);
        if (c == NULL) {
            /* Out of stacks: refuse this connection, keep the others. */
            fprintf(stderr, PROG ": cannot serve a connection: %s\n", strerror(errno));
            close(fd);
            continue;
        }
        evco_detach(c);
    }
}

/* Waits for SIGINT or SIGTERM, then cancels the listener. Cancelled itself (the listener
 * failed and main frees the scheduler), its wait fails with ECANCELED and it returns. */
static void signal_watcher(void *arg) {
    struct server *sv = arg;
    for (;;) {
        if (evco_wait_fd(sv->sfd, WAIT_READ, -1) < 0) {
            return;
        }
        struct signalfd_siginfo si;
        if (read(sv->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            fprintf(stderr, PROG ": shutting down\n");
            evco_cancel(sv->listener);
            return;
        }
    }
}

static void usage(FILE *to) {
    fprintf(to, "usage: echo [--addr HOST:PORT]   (default 127.0.0.1:7878)\n");
}

/* `HOST:PORT` (HOST may be a name, an IPv4 address or a bracketed IPv6 one) resolved, bound
 * and listening; -1 with a message on failure. */
static int listen_on(const char *addr) {
    char host[256];
    const char *colon = strrchr(addr, ':');
    size_t hlen = colon ? (size_t)(colon - addr) : 0;
    if (!colon || hlen >= sizeof host || colon[1] == '\0') {
        fprintf(stderr, PROG ": bad --addr %s (HOST:PORT)\n", addr);
        return -1;
    }
    memcpy(host, addr, hlen);
    host[hlen] = '\0';
    char *h = host;
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host[hlen - 1] = '\0';
        h = host + 1;
    }
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, PROG ": %s: %s\n", addr, gai_strerror(rc));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, BACKLOG) == 0) {
            break;
        }
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, PROG ": %s: %s\n", addr, strerror(e));
    }
    return fd;
}

/* Prints the "listening on" line with the bound address, as Rust's SocketAddr shows it. */
static int say_listening(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char ip[INET6_ADDRSTRLEN];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        return -1;
    }
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        printf(PROG ": listening on [%s]:%u\n", ip, (unsigned)ntohs(s6->sin6_port));
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        printf(PROG ": listening on %s:%u\n", ip, (unsigned)ntohs(s4->sin_port));
    }
    return fflush(stdout);
}

/* One fd per connection: take the hard limit of open files, not the soft one (often 1,024). */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1:7878";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--addr") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "echo: --addr needs a value\n");
                return 2;
            }
            addr = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "echo: unknown argument \"%s\" (try --help)\n", argv[i]);
            return 2;
        }
    }
    raise_fd_limit();
    /* A write to a connection the peer closed fails with EPIPE instead of killing us. */
    signal(SIGPIPE, SIG_IGN);
    /* SIGINT and SIGTERM arrive on the signalfd only: blocked before any thread exists. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    struct server sv;
    memset(&sv, 0, sizeof sv);
    if (sigprocmask(SIG_BLOCK, &stop, NULL) < 0 ||
        (sv.sfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        fprintf(stderr, PROG ": signalfd: %s\n", strerror(errno));
        return 1;
    }
    sv.lfd = listen_on(addr);
    if (sv.lfd < 0 || say_listening(sv.lfd) < 0) {
        return 1;
    }

    sv.sched = evco_sched_new();
    if (sv.sched == NULL) {
        fprintf(stderr, PROG ": evco_sched_new: %s\n", strerror(errno));
        return 1;
    }
    /* Without the hooks (a link that lost them) accept and read would block the thread. */
    if (!evco_hooks_active()) {
        fprintf(stderr, PROG ": evco's hooks are not linked in\n");
        return 1;
    }
    evco_t *watcher = NULL;
    sv.listener = evco_spawn(sv.sched, NULL, listener, &sv);
    if (sv.listener != NULL) {
        watcher = evco_spawn(sv.sched, NULL, signal_watcher, &sv);
    }
    if (watcher == NULL) {
        fprintf(stderr, PROG ": evco_spawn: %s\n", strerror(errno));
        return 1;
    }
    evco_detach(watcher);
    /* Runs the loop until the listener ends: a signal cancelled it, or its socket failed. A
     * cancelled coroutine's join may say ECANCELED: it returned all the same. */
    if (evco_join(sv.listener, -1) < 0 && errno != ECANCELED) {
        fprintf(stderr, PROG ": evco_join: %s\n", strerror(errno));
        return 1;
    }
    /* Cancels the connections and the watcher, and waits (a second at most) for them. */
    int left = evco_sched_free(sv.sched, 1000);
    close(sv.lfd);
    close(sv.sfd);
    if (sv.error != 0) {
        fprintf(stderr, PROG ": accept: %s\n", strerror(sv.error));
        return 1;
    }
    if (left != 0) {
        fprintf(stderr, PROG ": %d coroutines did not stop\n", left);
        return 1;
    }
    fprintf(stderr, PROG ": stopped after %lu connections\n", sv.served);
    return 0;
}
