/* foo.h: libfoo.so, a shared library of the test's own (tests/c/foo.c) whose functions make
 * the blocking calls for tests/c/hooks.c in its "libfoo" link shape: as a C client library
 * linked with the program would. */
#ifndef EVCO_TEST_FOO_H
#define EVCO_TEST_FOO_H

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

ssize_t foo_read(int fd, void *buf, size_t len);
ssize_t foo_write(int fd, const void *buf, size_t len);
int foo_accept(int fd, struct sockaddr *addr, socklen_t *len);
int foo_connect(int fd, const struct sockaddr *addr, socklen_t len);
int foo_poll(struct pollfd *fds, nfds_t n, int timeout_ms);
int foo_usleep(unsigned us);
int foo_nanosleep(const struct timespec *req, struct timespec *rem);

#endif /* EVCO_TEST_FOO_H */
