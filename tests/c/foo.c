/* foo.c: libfoo.so (see foo.h). Each function is the plain libc call: the dynamic linker binds
 * these calls to the program's definitions (evco's hooks, from libevco.a) before libc's, so
 * they are cooperative inside coroutines although this library knows nothing of evco. */
#define _GNU_SOURCE
#include <unistd.h>

#include "foo.h"

ssize_t foo_read(int fd, void *buf, size_t len) {
    return read(fd, buf, len);
}

ssize_t foo_write(int fd, const void *buf, size_t len) {
    return write(fd, buf, len);
}

int foo_accept(int fd, struct sockaddr *addr, socklen_t *len) {
    return accept(fd, addr, len);
}

int foo_connect(int fd, const struct sockaddr *addr, socklen_t len) {
    return connect(fd, addr, len);
}

int foo_poll(struct pollfd *fds, nfds_t n, int timeout_ms) {
    return poll(fds, n, timeout_ms);
}

int foo_usleep(unsigned us) {
    return usleep(us);
}

int foo_nanosleep(const struct timespec *req, struct timespec *rem) {
    return nanosleep(req, rem);
}
