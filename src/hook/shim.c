/* evco's variadic hooks: fcntl and ioctl take `...`, which stable Rust cannot define. Each
 * reads its one optional argument as the kernel does (an integer or a pointer, passed in the
 * same register on every ABI evco supports) and hands it to evco's Rust side, which records
 * what it must (O_NONBLOCK, duplicated fds) and calls the real function. See src/hook/mod.rs. */
#include <stdarg.h>

int evco_hook_fcntl(int fd, int cmd, unsigned long arg);
int evco_hook_ioctl(int fd, unsigned long request, unsigned long arg);

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    unsigned long arg = va_arg(ap, unsigned long);
    va_end(ap);
    return evco_hook_fcntl(fd, cmd, arg);
}

/* glibc 2.28+ also exports fcntl64. On 64-bit targets it is the same call (one struct flock),
 * so it may share the hook; on 32-bit ones it takes struct flock64 where fcntl takes struct
 * flock, and forwarding it to the real fcntl would misread record locks: there it stays libc's
 * (and an O_NONBLOCK set through it is not seen by the hooks). */
#if defined(__LP64__)
int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));
#endif

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    unsigned long arg = va_arg(ap, unsigned long);
    va_end(ap);
    return evco_hook_ioctl(fd, request, arg);
}
