//! TCP: [`TcpListener`] and [`TcpStream`].

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::io::Interest;
use crate::net::{Sock, Timeouts, fd_traits, nonblocking_accessor, stream_io, timeout_accessors};

/// A TCP listening socket whose `accept` suspends the calling coroutine.
///
/// `accept` survives descriptor exhaustion: on `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` it logs,
/// sleeps (1 ms, doubling up to 100 ms) and tries again instead of failing or spinning, so a
/// server keeps serving the connections it has and resumes accepting when fds free up (in
/// non-blocking mode, `set_nonblocking(true)`, it returns the error instead, as std does).
///
/// ```
/// evco::run(|| {
///     let listener = evco::net::TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = listener.local_addr().unwrap();
///     let client = evco::spawn(move || evco::net::TcpStream::connect(addr).unwrap());
///     let (_conn, peer) = listener.accept().unwrap();
///     assert_eq!(peer, client.join().unwrap().local_addr().unwrap());
/// });
/// ```
pub struct TcpListener {
    inner: Sock<std::net::TcpListener>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

impl TcpListener {
    /// Binds to the first address of `addr` that works (with `SO_REUSEADDR`, backlog 1024).
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        each_addr(addr, |a| {
            let socket = Socket::new(Domain::for_address(a), Type::STREAM.nonblocking(), None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&a.into())?;
            socket.listen(1024)?;
            Ok(TcpListener {
                inner: Sock::new(socket.into()),
            })
        })
    }

    /// Binds like [`bind`](TcpListener::bind), with `SO_REUSEPORT` too: several listeners (one
    /// per thread, say, or one per process) may bind the same address, and the kernel spreads
    /// incoming connections over them. Every listener on the address must set it. Closing one
    /// drops the connections queued on it that were not accepted yet (the kernel resets them).
    /// See [`Runtime::serve`](crate::runtime::Runtime::serve).
    pub fn bind_reuseport(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: Sock::new(reuseport_socket(addr)?.into()),
        })
    }

    /// Wraps a std listener, setting it non-blocking.
    pub fn from_std(inner: std::net::TcpListener) -> io::Result<TcpListener> {
        inner.set_nonblocking(true)?;
        Ok(TcpListener {
            inner: Sock::new(inner),
        })
    }

    /// Unwraps the std listener (still non-blocking).
    pub fn into_std(self) -> std::net::TcpListener {
        self.inner.into_inner()
    }

    /// Accepts one connection; the stream is non-blocking from the start.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let fd = self.inner.as_raw_fd();
        let mut backoff = Duration::from_millis(1);
        loop {
            match self.inner.retry(Interest::READABLE, None, || {
                crate::os::accept_nonblocking(fd)
            }) {
                Ok((owned, addr)) => {
                    let addr = addr.as_socket().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP peer")
                    })?;
                    let stream = TcpStream::wrap(std::net::TcpStream::from(owned));
                    crate::reactor::register_accepted(stream.as_raw_fd());
                    return Ok((stream, addr));
                }
                // In non-blocking mode the caller gets the error, as from std.
                Err(e) if is_resource_exhaustion(&e) && !self.inner.is_nonblocking() => {
                    log::warn!("evco: accept on {fd}: {e}; retrying in {backoff:?}");
                    crate::time::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
                // The peer gave up between SYN and accept: not the listener's problem.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// An endless iterator of accepted streams (see [`accept`](Self::accept)).
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.inner.set_ttl(ttl)
    }

    /// Gets `IP_TTL`.
    pub fn ttl(&self) -> io::Result<u32> {
        self.inner.ttl()
    }

    /// Takes the pending socket error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// A second handle on the same socket (a `dup`).
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: self.inner.try_clone(|s| s.try_clone())?,
        })
    }

    nonblocking_accessor!();
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The iterator [`TcpListener::incoming`] returns; it never yields `None`.
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;
    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A TCP connection whose reads, writes and connect suspend the calling coroutine.
///
/// `&TcpStream` implements `Read` and `Write`, so two coroutines can read and write one stream
/// at once (share it through an `Rc`), or use [`try_clone`](Self::try_clone).
///
/// ```
/// use std::io::{Read, Write};
///
/// evco::run(|| {
///     let listener = evco::net::TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = listener.local_addr().unwrap();
///     evco::spawn(move || {
///         let (mut conn, _) = listener.accept().unwrap();
///         conn.write_all(b"hi").unwrap();
///     });
///     let mut stream = evco::net::TcpStream::connect(addr).unwrap();
///     let mut buf = String::new();
///     stream.read_to_string(&mut buf).unwrap();
///     assert_eq!(buf, "hi");
/// });
/// ```
pub struct TcpStream {
    inner: Sock<std::net::TcpStream>,
    timeouts: Timeouts,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl TcpStream {
    fn wrap(inner: std::net::TcpStream) -> TcpStream {
        TcpStream {
            inner: Sock::new(inner),
            timeouts: Timeouts::default(),
        }
    }

    /// Connects to the first address of `addr` that accepts.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        each_addr(addr, |a| connect_addr(a, None))
    }

    /// Connects to `addr`, failing with [`io::ErrorKind::TimedOut`] after `timeout`.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        connect_addr(*addr, Some(timeout))
    }

    /// Wraps a std stream, setting it non-blocking.
    pub fn from_std(inner: std::net::TcpStream) -> io::Result<TcpStream> {
        inner.set_nonblocking(true)?;
        Ok(TcpStream::wrap(inner))
    }

    /// Unwraps the std stream (still non-blocking).
    pub fn into_std(self) -> std::net::TcpStream {
        self.inner.into_inner()
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay)
    }

    /// Gets `TCP_NODELAY`.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.nodelay()
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.inner.set_ttl(ttl)
    }

    /// Gets `IP_TTL`.
    pub fn ttl(&self) -> io::Result<u32> {
        self.inner.ttl()
    }

    /// Sets `SO_LINGER` (`Some(0)` makes `close` send a reset).
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        socket2::SockRef::from(&*self.inner).set_linger(linger)
    }

    /// Gets `SO_LINGER`.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        socket2::SockRef::from(&*self.inner).linger()
    }

    /// Takes the pending socket error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Reads without consuming (`MSG_PEEK`), waiting like `read`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                self.inner.peek(buf)
            })
    }

    /// A second stream on the same connection (a `dup`), e.g. for a reader and a writer
    /// coroutine. It copies this stream's timeouts.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: self.inner.try_clone(|s| s.try_clone())?,
            timeouts: self.timeouts.clone(),
        })
    }

    timeout_accessors!();
    nonblocking_accessor!();
}

stream_io!(TcpStream);
fd_traits!(TcpStream, std::net::TcpStream);
fd_traits!(TcpListener, std::net::TcpListener);

impl From<OwnedFd> for TcpStream {
    /// Takes a connected TCP socket fd and makes it non-blocking.
    fn from(fd: OwnedFd) -> TcpStream {
        // SAFETY: `OwnedFd` is an open fd we now own.
        unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
    }
}

/// Non-blocking connect: `EINPROGRESS`, wait for writability, then `SO_ERROR`.
fn connect_addr(addr: SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    // It waits below, before `Sock::new` would do this.
    crate::reactor::adopted(socket.as_raw_fd());
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            crate::io::wait_for(socket.as_fd().as_raw_fd(), Interest::WRITABLE, timeout)?;
            if let Some(err) = socket.take_error()? {
                return Err(err);
            }
        }
        Err(e) => return Err(e),
    }
    Ok(TcpStream::wrap(socket.into()))
}

/// A non-blocking listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`, bound to the first
/// address of `addr` that works.
pub(crate) fn reuseport_socket(addr: impl ToSocketAddrs) -> io::Result<Socket> {
    each_addr(addr, |a| {
        let socket = Socket::new(Domain::for_address(a), Type::STREAM.nonblocking(), None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&a.into())?;
        socket.listen(1024)?;
        Ok(socket)
    })
}

/// [`reuseport_socket`] for a new group of listeners (`Runtime::serve`'s first): refused with
/// `AddrInUse` when something listens on the address already, even with `SO_REUSEPORT` set
/// (which would let the new group join it and split the connections with it unseen). A probe
/// socket with `SO_REUSEADDR` only binds there first: Linux refuses it whenever any listener
/// holds the address, and lets it pass over connections and `TIME_WAIT`s. Port 0 needs no
/// probe (the kernel picks a port no group uses).
pub(crate) fn unshared_reuseport_socket(addr: impl ToSocketAddrs) -> io::Result<Socket> {
    each_addr(addr, |a| {
        if a.port() != 0 {
            let probe = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
            probe.set_reuse_address(true)?;
            probe.bind(&a.into()).map_err(|e| {
                if e.kind() == io::ErrorKind::AddrInUse {
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{a}: address in use (something listens there already)"),
                    )
                } else {
                    e
                }
            })?;
        }
        reuseport_socket(a)
    })
}

/// Tries `f` on every address `addr` resolves to; returns the first success or the last error.
pub(crate) fn each_addr<T>(
    addr: impl ToSocketAddrs,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match f(a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}
