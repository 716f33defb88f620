//! UDP: [`UdpSocket`].

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::io::Interest;
use crate::net::tcp::each_addr;
use crate::net::{
    Sock, Timeouts, connected_datagram_io, fd_traits, nonblocking_accessor, timeout_accessors,
};

/// A UDP socket whose sends and receives suspend the calling coroutine.
///
/// ```
/// evco::run(|| {
///     let a = evco::net::UdpSocket::bind("127.0.0.1:0").unwrap();
///     let b = evco::net::UdpSocket::bind("127.0.0.1:0").unwrap();
///     a.send_to(b"ping", b.local_addr().unwrap()).unwrap();
///     let mut buf = [0u8; 8];
///     let (n, from) = b.recv_from(&mut buf).unwrap();
///     assert_eq!((&buf[..n], from), (&b"ping"[..], a.local_addr().unwrap()));
/// });
/// ```
pub struct UdpSocket {
    inner: Sock<std::net::UdpSocket>,
    timeouts: Timeouts,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl UdpSocket {
    /// Binds to the first address of `addr` that works.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        each_addr(addr, |a| UdpSocket::from_std(std::net::UdpSocket::bind(a)?))
    }

    /// Wraps a std socket, setting it non-blocking.
    pub fn from_std(inner: std::net::UdpSocket) -> io::Result<UdpSocket> {
        inner.set_nonblocking(true)?;
        Ok(UdpSocket {
            inner: Sock::new(inner),
            timeouts: Timeouts::default(),
        })
    }

    /// Unwraps the std socket (still non-blocking).
    pub fn into_std(self) -> std::net::UdpSocket {
        self.inner.into_inner()
    }

    /// Sends one datagram to `addr`.
    pub fn send_to(&self, buf: &[u8], addr: impl ToSocketAddrs) -> io::Result<usize> {
        each_addr(addr, |a| {
            self.inner
                .retry(Interest::WRITABLE, self.timeouts.write.get(), || {
                    self.inner.send_to(buf, a)
                })
        })
    }

    /// Receives one datagram and its sender.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                self.inner.recv_from(buf)
            })
    }

    /// Connects: `send`/`recv` then talk to `addr` only.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        each_addr(addr, |a| self.inner.connect(a))
    }

    connected_datagram_io!();

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The connected peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Sets `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.inner.set_broadcast(on)
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.inner.set_ttl(ttl)
    }

    /// Gets `IP_TTL`.
    pub fn ttl(&self) -> io::Result<u32> {
        self.inner.ttl()
    }

    /// Receives the next datagram without consuming it (`MSG_PEEK`), waiting like `recv`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                self.inner.peek(buf)
            })
    }

    /// Receives the next datagram and its sender without consuming it, waiting like
    /// `recv_from`.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner
            .retry(Interest::READABLE, self.timeouts.read.get(), || {
                self.inner.peek_from(buf)
            })
    }

    /// Takes the pending socket error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// A second handle on the same socket (a `dup`), with the same timeouts.
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            inner: self.inner.try_clone(|s| s.try_clone())?,
            timeouts: self.timeouts.clone(),
        })
    }

    timeout_accessors!();
    nonblocking_accessor!();
}

fd_traits!(UdpSocket, std::net::UdpSocket);
