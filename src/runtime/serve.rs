//! Serving one address from every thread: a `SO_REUSEPORT` listener per runtime thread, each
//! with an accept loop that spawns a coroutine per connection on its own thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::{Handle, Runtime};
use crate::net::{TcpListener, TcpStream, reuseport_socket, unshared_reuseport_socket};
use crate::scheduler::Msg;

thread_local! {
    /// This runtime thread's accept loops, cancelled first at shutdown.
    static LISTENERS: RefCell<Vec<crate::JoinHandle<()>>> = const { RefCell::new(Vec::new()) };
    /// The connections its accept loops handed to handlers still running: (fd, its generation
    /// in the fd table when accepted), by a serial number.
    static CONNECTIONS: RefCell<HashMap<u64, (RawFd, u32)>> = RefCell::new(HashMap::new());
    static NEXT_CONNECTION: Cell<u64> = const { Cell::new(0) };
}

/// Lists one connection while its handler runs (see [`reset_connections`]).
struct Listed(u64);

impl Listed {
    fn new(fd: RawFd) -> Listed {
        let id = NEXT_CONNECTION.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        let generation = crate::fd_table::generation(fd);
        CONNECTIONS.with(|c| c.borrow_mut().insert(id, (fd, generation)));
        Listed(id)
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let _ = CONNECTIONS.try_with(|c| c.borrow_mut().remove(&self.0));
    }
}

/// Shutdown, at the deadline, before the handlers left are cancelled: sets `SO_LINGER` to
/// zero on their connections, so that the close their unwinding makes is a reset the peer
/// sees, never a clean end of stream that could pass for a complete answer. A connection whose
/// fd was closed since (its generation moved on) is left alone: the number may be another
/// socket's now.
pub(super) fn reset_connections() {
    let open: Vec<(RawFd, u32)> =
        CONNECTIONS.with(|c| c.borrow_mut().drain().map(|(_, v)| v).collect());
    for (fd, generation) in open {
        if crate::fd_table::generation_unless_closing(fd) != Some(generation) {
            continue;
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `fd` is open (its generation has not moved since it was accepted, and it is
        // not being closed); setsockopt reads `size_of::<linger>()` bytes from `linger`.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// Shutdown's first step on a runtime thread: cancels its accept loops, which drops (closes)
/// their listeners.
pub(super) fn close_listeners() {
    let loops = LISTENERS.with(|l| std::mem::take(&mut *l.borrow_mut()));
    for h in loops {
        let _ = h.cancel();
    }
}

impl Runtime {
    /// See [`Handle::serve`].
    pub fn serve<F>(&self, addr: impl ToSocketAddrs, handler: F) -> io::Result<SocketAddr>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        self.handle.serve(addr, handler)
    }
}

impl Handle {
    /// Serves `addr` from every thread: binds one `SO_REUSEPORT` listener per thread (the
    /// kernel spreads connections over them; port 0 picks one port for all), and on each
    /// thread an accept loop runs `handler` in a coroutine of its own per connection. Returns
    /// the bound address once every listener is bound (connections queue from then on). An
    /// `AddrInUse` error when something listens on `addr` already, `SO_REUSEPORT` or not. A
    /// thread that has begun shutting down when the call reaches it closes its listener at
    /// once instead (connections to it are refused).
    ///
    /// [`Runtime::shutdown`] closes the listeners first: connections queued on a listener and
    /// not yet accepted are reset by the kernel; accepted ones carry on until the deadline. An
    /// accept loop also ends when its listener fails for good (anything but running out of
    /// fds, which it waits out); the failure is logged.
    ///
    /// ```
    /// use evco::runtime::Builder;
    /// use std::io::{Read, Write};
    ///
    /// let rt = Builder::new().threads(2).build().unwrap();
    /// let addr = rt
    ///     .serve("127.0.0.1:0", |mut conn| {
    ///         let mut buf = [0u8; 64];
    ///         while let Ok(n @ 1..) = conn.read(&mut buf) {
    ///             if conn.write_all(&buf[..n]).is_err() {
    ///                 break;
    ///             }
    ///         }
    ///     })
    ///     .unwrap();
    /// let mut c = std::net::TcpStream::connect(addr).unwrap();
    /// c.write_all(b"ping").unwrap();
    /// let mut back = [0u8; 4];
    /// c.read_exact(&mut back).unwrap();
    /// assert_eq!(&back, b"ping");
    /// drop(c);
    /// rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
    /// ```
    pub fn serve<F>(&self, addr: impl ToSocketAddrs, handler: F) -> io::Result<SocketAddr>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        if self.shared.in_forked_child() {
            return Err(super::forked_child());
        }
        // Not into a group already listening there (an earlier serve's, another server's).
        let first = unshared_reuseport_socket(addr)?;
        let bound = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("a TCP listener with a non-IP address"))?;
        let mut listeners = vec![std::net::TcpListener::from(first)];
        for _ in 1..self.threads() {
            listeners.push(reuseport_socket(bound)?.into());
        }
        let handler = Arc::new(handler);
        let stack_size = self.shared.stack_size;
        for (i, listener) in listeners.into_iter().enumerate() {
            let handler = handler.clone();
            self.shared.inboxes()[i].post(Msg::Run(Box::new(move || {
                if super::worker::stopping() {
                    // Past `close_listeners`: an accept loop now would never be cancelled,
                    // and a shutdown with no deadline would wait for it for ever.
                    drop(listener);
                    return;
                }
                let accept = move || accept_loop(listener, handler, stack_size);
                match crate::coroutine::Builder::new().spawn(accept) {
                    Ok(h) => LISTENERS.with(|l| l.borrow_mut().push(h)),
                    Err(e) => log::error!("evco: serve: no accept loop on this thread: {e}"),
                }
            })))?;
        }
        Ok(bound)
    }
}

fn accept_loop<F>(listener: std::net::TcpListener, handler: Arc<F>, stack_size: usize)
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("evco: serve: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                log::error!("evco: serve: accept failed, this thread stops accepting: {e}");
                return;
            }
        };
        let handler = handler.clone();
        let listed = Listed::new(stream.as_raw_fd());
        let spawned = crate::coroutine::Builder::new()
            .stack_size(stack_size)
            .spawn(move || {
                let _listed = listed;
                handler(stream)
            });
        if let Err(e) = spawned {
            // Out of stacks: this connection is dropped (closed), the others go on.
            log::warn!("evco: serve: cannot serve a connection: {e}");
        }
    }
}
