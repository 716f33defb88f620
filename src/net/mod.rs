//! Cooperative networking: std's socket types, made to suspend the coroutine instead of the
//! thread.
//!
//! Every type here wraps the std (or socket2) socket in non-blocking mode, and every blocking
//! call is the same loop ([`io::retry`](crate::io)): try the non-blocking syscall; on
//! `WouldBlock`, wait for readiness (inside a coroutine, for the next edge of the socket's
//! persistent registration in the thread's reactor, or a one-shot event where the backend has
//! no edge triggering; `poll(2)` outside a coroutine, so the types also work as plain blocking
//! sockets); try again. Timeouts set with `set_read_timeout`/`set_write_timeout` bound those
//! waits.
//!
//! # Send
//!
//! The socket types are `!Send`: under epoll a socket's first wait registers it with the
//! reactor of its thread, which is cheapest to leave from that thread. Move a socket to another
//! thread with `into_std` and `from_std` (which drops its registration first):
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<evco::net::TcpStream>();
//! ```
//!
//! # Non-blocking mode
//!
//! `set_nonblocking(true)` means what it means in std: a call that would wait returns
//! [`std::io::ErrorKind::WouldBlock`] at once instead (inside a coroutine as outside);
//! `set_nonblocking(false)`, the default, restores the cooperative waits.
//!
//! Writes never raise `SIGPIPE` (every stream write is a `send`/`sendmsg` with `MSG_NOSIGNAL`); EOF is `Ok(0)`; a reset peer is
//! [`std::io::ErrorKind::ConnectionReset`].
//!
//! ```
//! use std::io::{Read, Write};
//! use evco::net::{TcpListener, TcpStream};
//!
//! evco::run(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let server = evco::spawn(move || {
//!         let (mut conn, _) = listener.accept().unwrap();
//!         let mut buf = [0u8; 5];
//!         conn.read_exact(&mut buf).unwrap();
//!         conn.write_all(&buf).unwrap();
//!     });
//!     let mut client = TcpStream::connect(addr).unwrap();
//!     client.write_all(b"hello").unwrap();
//!     let mut back = [0u8; 5];
//!     client.read_exact(&mut back).unwrap();
//!     assert_eq!(&back, b"hello");
//!     server.join().unwrap();
//! });
//! ```

pub(crate) mod dns;
mod fds;
mod sock;
mod tcp;
mod udp;
mod unix;

pub(crate) use sock::Sock;

pub use dns::{lookup_host, set_nameservers};
pub use tcp::{Incoming, TcpListener, TcpStream};
pub(crate) use tcp::{reuseport_socket, unshared_reuseport_socket};
pub use udp::UdpSocket;
pub use unix::{Incoming as UnixIncoming, UnixDatagram, UnixListener, UnixStream};

use std::cell::Cell;
use std::time::Duration;

/// Per-direction timeouts of a socket, checked by evco (not `SO_RCVTIMEO`, which would not bound
/// a coroutine's wait).
#[derive(Debug, Default, Clone)]
pub(crate) struct Timeouts {
    pub(crate) read: Cell<Option<Duration>>,
    pub(crate) write: Cell<Option<Duration>>,
}

impl Timeouts {
    pub(crate) fn set(slot: &Cell<Option<Duration>>, t: Option<Duration>) -> std::io::Result<()> {
        if t == Some(Duration::ZERO) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        slot.set(t);
        Ok(())
    }
}

/// Generates `set_read_timeout`/`read_timeout`/`set_write_timeout`/`write_timeout`.
macro_rules! timeout_accessors {
    () => {
        /// Bounds every later read (std semantics; `None` waits forever; zero is an error).
        pub fn set_read_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()> {
            crate::net::Timeouts::set(&self.timeouts.read, t)
        }
        /// The read timeout.
        pub fn read_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
            Ok(self.timeouts.read.get())
        }
        /// Bounds every later write (std semantics; `None` waits forever; zero is an error).
        pub fn set_write_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()> {
            crate::net::Timeouts::set(&self.timeouts.write, t)
        }
        /// The write timeout.
        pub fn write_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
            Ok(self.timeouts.write.get())
        }
    };
}
pub(crate) use timeout_accessors;

/// Generates `Read`/`Write` for a stream type and for references to it, each call one
/// [`retry`](crate::io::retry): `read` and `write` are `recv`/`send` on its fd straight into
/// libc (`crate::os`, past evco's hooks: the per-message path), the vectored calls std's and
/// socket2's (through the hooks, which pass evco's non-blocking sockets on unchanged).
macro_rules! stream_io {
    ($ty:ty) => {
        impl std::io::Read for &$ty {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let fd = std::os::fd::AsFd::as_fd(&*self.inner);
                let len = buf.len();
                self.inner
                    .read_owned(self.timeouts.read.get(), len, || crate::os::recv(fd, buf))
            }
            fn read_vectored(
                &mut self,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::io::Result<usize> {
                let mut inner = &*self.inner;
                let len = bufs.iter().map(|b| b.len()).sum();
                self.inner.read_owned(self.timeouts.read.get(), len, || {
                    std::io::Read::read_vectored(&mut inner, bufs)
                })
            }
        }
        impl std::io::Write for &$ty {
            // send/sendmsg with MSG_NOSIGNAL: std's write_vectored is a writev, which raises
            // SIGPIPE on a closed peer (TCP and Unix streams alike).
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let fd = std::os::fd::AsFd::as_fd(&*self.inner);
                self.inner.retry(
                    crate::io::Interest::WRITABLE,
                    self.timeouts.write.get(),
                    || crate::os::send(fd, buf),
                )
            }
            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                let fd = std::os::fd::AsFd::as_fd(&*self.inner);
                self.inner.retry(
                    crate::io::Interest::WRITABLE,
                    self.timeouts.write.get(),
                    || crate::os::send_vectored(fd, bufs),
                )
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl std::io::Read for $ty {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                (&*self).read(buf)
            }
            fn read_vectored(
                &mut self,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::io::Result<usize> {
                (&*self).read_vectored(bufs)
            }
        }
        impl std::io::Write for $ty {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                (&*self).write(buf)
            }
            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                (&*self).write_vectored(bufs)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use stream_io;

/// Generates `send`/`recv` to the connected peer for a datagram type whose `inner` is a std
/// socket, each one [`retry`](crate::io::retry).
macro_rules! connected_datagram_io {
    () => {
        /// Sends one datagram to the connected peer.
        pub fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
            self.inner.retry(
                crate::io::Interest::WRITABLE,
                self.timeouts.write.get(),
                || self.inner.send(buf),
            )
        }

        /// Receives one datagram from the connected peer.
        pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.inner.retry(
                crate::io::Interest::READABLE,
                self.timeouts.read.get(),
                || self.inner.recv(buf),
            )
        }
    };
}
pub(crate) use connected_datagram_io;

/// Generates `set_nonblocking` for a type whose `inner` is a [`Sock`].
macro_rules! nonblocking_accessor {
    () => {
        /// std's non-blocking mode. With `true`, every later call on this handle that would
        /// wait (inside a coroutine: suspend; outside: block in `poll`) returns
        /// [`WouldBlock`](std::io::ErrorKind::WouldBlock) at once instead; `false` (the
        /// default) restores the cooperative waits. The fd is `O_NONBLOCK` in both modes, and
        /// the handles `try_clone` makes share the mode, as they would `O_NONBLOCK` in std.
        /// `from_std` starts cooperative whatever the std socket's mode was.
        pub fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
            self.inner.set_nonblocking(nonblocking);
            Ok(())
        }
    };
}
pub(crate) use nonblocking_accessor;

/// Generates the fd traits (`AsRawFd`, `AsFd`, `IntoRawFd`, `FromRawFd`, `From<OwnedFd>`) for a
/// type whose `inner` is a std socket. `FromRawFd` sets the fd non-blocking.
macro_rules! fd_traits {
    ($ty:ty, $inner:ty) => {
        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(&*self.inner)
            }
        }
        impl std::os::fd::AsFd for $ty {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&*self.inner)
            }
        }
        impl std::os::fd::IntoRawFd for $ty {
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(self.inner.into_inner())
            }
        }
        impl std::os::fd::FromRawFd for $ty {
            /// Takes ownership of `fd` (a socket of the right kind) and makes it non-blocking.
            unsafe fn from_raw_fd(fd: std::os::fd::RawFd) -> Self {
                // SAFETY: the caller passes an owned, open socket fd (FromRawFd's contract).
                let inner = unsafe { <$inner as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                <$ty>::from_std(inner).expect("FIONBIO on a valid socket fd cannot fail")
            }
        }
    };
}
pub(crate) use fd_traits;
