//! Unix-domain sockets: [`UnixListener`], [`UnixStream`], [`UnixDatagram`].

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{self as std_unix, SocketAddr};
use std::path::Path;

use crate::io::Interest;
use crate::net::fds;
use crate::net::{
    Sock, Timeouts, connected_datagram_io, fd_traits, nonblocking_accessor, stream_io,
    timeout_accessors,
};

/// A Unix-domain listening socket whose `accept` suspends the calling coroutine.
pub struct UnixListener {
    inner: Sock<std_unix::UnixListener>,
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl UnixListener {
    /// Binds to `path`.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        UnixListener::from_std(std_unix::UnixListener::bind(path)?)
    }

    /// Binds to `addr`, a pathname or (on Linux) abstract-namespace address, like std's
    /// `UnixListener::bind_addr`.
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixListener> {
        UnixListener::from_std(std_unix::UnixListener::bind_addr(addr)?)
    }

    /// Wraps a std listener, setting it non-blocking.
    pub fn from_std(inner: std_unix::UnixListener) -> io::Result<UnixListener> {
        inner.set_nonblocking(true)?;
        Ok(UnixListener {
            inner: Sock::new(inner),
        })
    }

    /// Unwraps the std listener (still non-blocking).
    pub fn into_std(self) -> std_unix::UnixListener {
        self.inner.into_inner()
    }

    /// Accepts one connection.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, a) = self
            .inner
            .retry(Interest::READABLE, None, || self.inner.accept())?;
        let stream = UnixStream::from_std(s)?;
        crate::reactor::register_accepted(stream.as_raw_fd());
        Ok((stream, a))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// An endless iterator of accepted streams (see [`accept`](Self::accept)), like std's
    /// `UnixListener::incoming`.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    nonblocking_accessor!();
}

/// The iterator [`UnixListener::incoming`] returns; it never yields `None`.
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a UnixListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<UnixStream>;
    fn next(&mut self) -> Option<io::Result<UnixStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A Unix-domain stream whose reads and writes suspend the calling coroutine.
///
/// ```
/// use std::io::{Read, Write};
///
/// evco::run(|| {
///     let (a, mut b) = evco::net::UnixStream::pair().unwrap();
///     evco::spawn(move || (&a).write_all(b"yo").unwrap());
///     let mut buf = [0u8; 2];
///     b.read_exact(&mut buf).unwrap();
///     assert_eq!(&buf, b"yo");
/// });
/// ```
pub struct UnixStream {
    inner: Sock<std_unix::UnixStream>,
    timeouts: Timeouts,
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl UnixStream {
    /// Connects to the socket at `path` (Unix connects complete or fail at once).
    pub fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        UnixStream::from_std(std_unix::UnixStream::connect(path)?)
    }

    /// Connects to `addr`, a pathname or (on Linux) abstract-namespace address, like std's
    /// `UnixStream::connect_addr`.
    pub fn connect_addr(addr: &SocketAddr) -> io::Result<UnixStream> {
        UnixStream::from_std(std_unix::UnixStream::connect_addr(addr)?)
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std_unix::UnixStream::pair()?;
        Ok((UnixStream::from_std(a)?, UnixStream::from_std(b)?))
    }

    /// Wraps a std stream, setting it non-blocking.
    pub fn from_std(inner: std_unix::UnixStream) -> io::Result<UnixStream> {
        inner.set_nonblocking(true)?;
        Ok(UnixStream {
            inner: Sock::new(inner),
            timeouts: Timeouts::default(),
        })
    }

    /// Unwraps the std stream (still non-blocking).
    pub fn into_std(self) -> std_unix::UnixStream {
        self.inner.into_inner()
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Reads without consuming (`MSG_PEEK`), waiting like `recv`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                crate::net::sock::peek(std::os::fd::AsFd::as_fd(&*self.inner), buf)
            })
    }

    /// Sends `buf` with the descriptors `fds` (an `SCM_RIGHTS` message, at most 253; the
    /// receiver gets its own copies), waiting like `write`. Evco's stable form of std's unstable
    /// `send_vectored_with_ancillary`.
    ///
    /// `buf` must not be empty when `fds` is not (`InvalidInput`): on a stream, descriptors
    /// travel with data.
    pub fn send_fds(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if buf.is_empty() && !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a stream sends descriptors only with at least one byte of data",
            ));
        }
        send_fds_on(&self.inner, &self.timeouts, buf, fds)
    }

    /// Receives into `buf`, appending the descriptors that came with the data to `fds` (each
    /// close-on-exec), waiting like `read`. A control message truncated by the kernel
    /// (`MSG_CTRUNC`, e.g. when the process has no descriptors free) is an error, and the
    /// descriptors of it that did arrive are closed rather than leaked.
    pub fn recv_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        recv_fds_on(&self.inner, &self.timeouts, buf, fds)
    }

    /// A second stream on the same connection (a `dup`), with the same timeouts.
    pub fn try_clone(&self) -> io::Result<UnixStream> {
        Ok(UnixStream {
            inner: self.inner.try_clone(|s| s.try_clone())?,
            timeouts: self.timeouts.clone(),
        })
    }

    timeout_accessors!();
    nonblocking_accessor!();
}

stream_io!(UnixStream);
fd_traits!(UnixStream, std_unix::UnixStream);
fd_traits!(UnixListener, std_unix::UnixListener);

/// A Unix-domain datagram socket whose sends and receives suspend the calling coroutine.
pub struct UnixDatagram {
    inner: Sock<std_unix::UnixDatagram>,
    timeouts: Timeouts,
}

impl fmt::Debug for UnixDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl UnixDatagram {
    /// Binds to `path`.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixDatagram> {
        UnixDatagram::from_std(std_unix::UnixDatagram::bind(path)?)
    }

    /// Binds to `addr`, a pathname or (on Linux) abstract-namespace address, like std's
    /// `UnixDatagram::bind_addr`.
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixDatagram> {
        UnixDatagram::from_std(std_unix::UnixDatagram::bind_addr(addr)?)
    }

    /// An unbound socket.
    pub fn unbound() -> io::Result<UnixDatagram> {
        UnixDatagram::from_std(std_unix::UnixDatagram::unbound()?)
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let (a, b) = std_unix::UnixDatagram::pair()?;
        Ok((UnixDatagram::from_std(a)?, UnixDatagram::from_std(b)?))
    }

    /// Wraps a std socket, setting it non-blocking.
    pub fn from_std(inner: std_unix::UnixDatagram) -> io::Result<UnixDatagram> {
        inner.set_nonblocking(true)?;
        Ok(UnixDatagram {
            inner: Sock::new(inner),
            timeouts: Timeouts::default(),
        })
    }

    /// Unwraps the std socket (still non-blocking).
    pub fn into_std(self) -> std_unix::UnixDatagram {
        self.inner.into_inner()
    }

    /// Connects to the socket at `path`.
    pub fn connect(&self, path: impl AsRef<Path>) -> io::Result<()> {
        self.inner.connect(path)
    }

    /// Connects to `addr` (a pathname or abstract-namespace address).
    pub fn connect_addr(&self, addr: &SocketAddr) -> io::Result<()> {
        self.inner.connect_addr(addr)
    }

    /// Sends one datagram to `addr` (a pathname or abstract-namespace address).
    pub fn send_to_addr(&self, buf: &[u8], addr: &SocketAddr) -> io::Result<usize> {
        self.inner
            .retry(Interest::WRITABLE, self.timeouts.write.get(), || {
                self.inner.send_to_addr(buf, addr)
            })
    }

    /// Receives the next datagram and its sender without consuming it (`MSG_PEEK`), waiting
    /// like `recv_from`.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self
            .inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                // SAFETY: initialised bytes are valid `MaybeUninit<u8>`s, and socket2 only
                // writes initialised bytes into the buffer.
                let uninit = unsafe { &mut *(&mut *buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
                socket2::SockRef::from(&*self.inner).peek_from(uninit)
            })?;
        Ok((n, std_unix_addr(&from)?))
    }

    /// Sends `buf` with the descriptors `fds` (an `SCM_RIGHTS` message, at most 253; the
    /// receiver gets its own copies), waiting like `send`. Evco's stable form of std's unstable
    /// `send_vectored_with_ancillary`.
    pub fn send_fds(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        send_fds_on(&self.inner, &self.timeouts, buf, fds)
    }

    /// Receives into `buf`, appending the descriptors that came with the data to `fds` (each
    /// close-on-exec), waiting like `recv`. A control message truncated by the kernel
    /// (`MSG_CTRUNC`, e.g. when the process has no descriptors free) is an error, and the
    /// descriptors of it that did arrive are closed rather than leaked.
    pub fn recv_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        recv_fds_on(&self.inner, &self.timeouts, buf, fds)
    }

    /// Sends one datagram to `path`.
    pub fn send_to(&self, buf: &[u8], path: impl AsRef<Path>) -> io::Result<usize> {
        let path = path.as_ref();
        self.inner
            .retry(Interest::WRITABLE, self.timeouts.write.get(), || {
                self.inner.send_to(buf, path)
            })
    }

    /// Receives one datagram and its sender.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                self.inner.recv_from(buf)
            })
    }

    connected_datagram_io!();

    /// Reads without consuming (`MSG_PEEK`), waiting like `recv`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                crate::net::sock::peek(std::os::fd::AsFd::as_fd(&*self.inner), buf)
            })
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    timeout_accessors!();
    nonblocking_accessor!();
}

fd_traits!(UnixDatagram, std_unix::UnixDatagram);

/// `send_fds` on either Unix socket type: one [`fds::send_fds`] per attempt.
fn send_fds_on<T: AsFd + AsRawFd>(
    sock: &Sock<T>,
    timeouts: &Timeouts,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    sock.retry(Interest::WRITABLE, timeouts.write.get(), || {
        fds::send_fds(sock.as_fd(), buf, fds)
    })
}

/// `recv_fds` on either Unix socket type: one [`fds::recv_fds`] per attempt.
fn recv_fds_on<T: AsFd + AsRawFd>(
    sock: &Sock<T>,
    timeouts: &Timeouts,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    sock.retry(Interest::READABLE, timeouts.read.get(), || {
        fds::recv_fds(sock.as_fd(), buf, fds, fds::MAX_FDS)
    })
}

/// A socket2 Unix address as std's `SocketAddr`: a pathname, an abstract name, or unnamed.
fn std_unix_addr(addr: &socket2::SockAddr) -> io::Result<SocketAddr> {
    if let Some(path) = addr.as_pathname() {
        return SocketAddr::from_pathname(path);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = addr.as_abstract_namespace() {
        return <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name);
    }
    // Linux reports an unbound sender with an address length of 0.
    if addr.len() == 0 || addr.is_unnamed() {
        // std has no constructor for an unnamed address; an empty pathname is one.
        return SocketAddr::from_pathname("");
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "not a Unix-domain address",
    ))
}
