//! Name resolution that suspends the coroutine, not the thread: libevent's evdns.
//!
//! [`lookup_host`] turns a host name (or an address literal) into socket addresses. Inside a
//! scheduled coroutine it sends the queries through this thread's resolver and suspends until
//! the answers come (other coroutines run meanwhile); elsewhere it runs this thread's event
//! loop until then, as [`JoinHandle::join`](crate::JoinHandle::join) does outside coroutines.
//!
//! The resolver is libevent's evdns on the scheduler's own event base: made on first use from
//! `/etc/resolv.conf` (name servers, `search`, `ndots`, `timeout`, `attempts`), or the file
//! the environment variable `EVCO_RESOLV_CONF` names, and `/etc/hosts` (or `EVCO_HOSTS`'s
//! file); a missing or empty resolv.conf leaves glibc's defaults (the name server on
//! 127.0.0.1), and hosts-file names still resolve. `localhost` and `*.localhost` never go to
//! the network: the hosts file's entries for them, or the loopback addresses.
//! [`set_nameservers`] replaces the resolver with one that asks the given servers (and still
//! reads the hosts file). Unlike glibc's `getaddrinfo` it does not follow
//! `/etc/nsswitch.conf` (no mDNS, LDAP, ...) nor sort by `/etc/gai.conf`. Its sockets take part in the loop only while a
//! lookup is in flight (`EVDNS_BASE_DISABLE_WHEN_INACTIVE`), so an idle resolver neither keeps
//! `evco::run` from returning nor hides a deadlock.
//!
//! ```
//! evco::run(|| {
//!     // Address literals need no query.
//!     let addrs = evco::net::lookup_host("127.0.0.1", 80).unwrap();
//!     let expected: std::net::SocketAddr = "127.0.0.1:80".parse().unwrap();
//!     assert_eq!(addrs, [expected]);
//! });
//! ```
//!
//! std's `ToSocketAddrs` (and so `TcpStream::connect("name:port")`) goes through libc's
//! `getaddrinfo`: with the `hook` feature, evco's replacement of it resolves through the same
//! resolver inside coroutines (see `hook`'s "Name resolution"); without it, glibc's blocks the
//! thread: resolve with [`lookup_host`] first and connect to the addresses.
//!
//! # Lifecycle invariants
//!
//! - A resolver is never freed while its event base's loop may run again: libevent's
//!   getaddrinfo callbacks read their resolver, and some come on a later loop turn even after
//!   the lookup was answered or cancelled (the other address family's late answer, a
//!   cancellation's report; libevent issues #962 and #1278 are the same family of bugs). So
//!   [`set_nameservers`] keeps the resolver it replaces, and the scheduler frees its
//!   resolvers only when its base goes with it (the loop never runs again, and libevent
//!   discards what it had queued); on a base that outlives the scheduler they are left
//!   allocated.
//! - A lookup's state is an `Rc<Lookup>`; one reference is handed to libevent as the callback
//!   argument. libevent calls [`answered`] at most once per request (an answer, an error, a
//!   timeout or a cancellation; synchronously from `evdns_getaddrinfo` when no query is
//!   needed), and that call takes the reference back: the state outlives the request whatever
//!   becomes of the coroutine that asked. Only a request still in flight when its base is
//!   freed never gets the call, and its state is leaked with libevent's own.
//! - `answered` wakes the asking coroutine through its [`Waker`], which does nothing (and never
//!   touches the scheduler) unless the coroutine is still parked: a scheduler that goes with
//!   coroutines parked marks them unparkable first.
//! - A coroutine that leaves the wait before the answer (cancellation unwinding it) cancels
//!   the request ([`CancelOnDrop`]) and forgets its waker; the `answered` that libevent still
//!   makes then finds nobody to wake.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::raw::{c_int, c_void};
use std::rc::Rc;

use socket2::SockAddr;

use crate::scheduler::{self, Scheduler, Waker};
use crate::sys;

pub(crate) mod conf;

/// libevent's `EVUTIL_EAI_CANCEL`: the request was cancelled.
const EAI_CANCEL: c_int = -90001;
/// `EAI_NODATA` (glibc and musl: the name exists but has no address), which the libc crate
/// does not define for Linux.
const EAI_NODATA: c_int = -5;

/// Resolves `host` to the socket addresses it names, each with `port`.
///
/// `host` is a name (looked up in the hosts file, then asked of the name servers for A and AAAA
/// records) or an IPv4/IPv6 address literal (returned as is, no query). Suspends only the
/// calling coroutine; see the module docs for where the resolver's configuration comes from.
/// An unknown name, or one without addresses, is an error of kind [`io::ErrorKind::NotFound`];
/// other failures (e.g. no name server answering within the resolver's timeout and attempts)
/// carry libevent's message.
pub fn lookup_host(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = CString::new(host).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "host name contains a NUL byte")
    })?;
    let sched = Scheduler::current_or_install()?;
    let dns = resolver(sched)?;
    if conf::is_localhost(host) {
        // Never to the network: the hosts file's entries, or the loopback addresses.
        let local = conf::Conf::current(sched)?.local_answer(host, true, true);
        let (_, addrs) = local.unwrap_or_default();
        return Ok(addrs
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect());
    }
    let lookup = Rc::new(Lookup {
        port,
        done: Cell::new(false),
        result: Cell::new(None),
        waiter: Cell::new(None),
    });
    // SAFETY: addrinfo is plain data; all-zero is an empty set of hints.
    let mut hints: sys::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    // One entry per address (not one per socket type).
    hints.ai_socktype = libc::SOCK_STREAM;
    let arg = Rc::into_raw(lookup.clone()) as *mut c_void;
    // SAFETY: `dns` is this scheduler's live resolver; `name` and `hints` outlive the call
    // (libevent copies what it keeps); `arg` is a reference `answered` takes back at most once
    // (module invariants).
    let request = unsafe {
        sys::evdns_getaddrinfo(
            dns,
            name.as_ptr(),
            std::ptr::null(),
            &hints,
            Some(answered),
            arg,
        )
    };
    if !lookup.done.get() {
        let cancel = CancelOnDrop {
            lookup: &lookup,
            request,
        };
        match Waker::current() {
            Ok(waker) => {
                lookup.waiter.set(Some(waker));
                while !lookup.done.get() {
                    scheduler::park()?;
                }
            }
            // In a bare Coroutine: it cannot wait (the error says so).
            Err(e) if crate::coroutine::is_coroutine() => return Err(e),
            Err(_) => {
                scheduler::block_outside(|| lookup.done.get(), None)?;
            }
        }
        drop(cancel);
    }
    lookup.result.take().unwrap_or_else(|| {
        Err(io::Error::other(
            "the resolver reported no outcome for this lookup",
        ))
    })
}

/// Makes this thread's later lookups ask `servers` (in that order of preference) instead of
/// the name servers of the resolv.conf file, with no search domains, keeping the hosts file.
/// Lookups already in flight finish on the resolver they started on. Installs this thread's
/// scheduler if there is none.
pub fn set_nameservers(servers: &[SocketAddr]) -> io::Result<()> {
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "set_nameservers needs at least one name server",
        ));
    }
    let sched = Scheduler::current_or_install()?;
    let dns = conf::new_resolver(sched, Some(servers))?;
    for server in servers {
        let addr = SockAddr::from(*server);
        // SAFETY: `dns` is live; `addr` is a valid sockaddr of the length given.
        let rc = unsafe {
            sys::evdns_base_nameserver_sockaddr_add(dns, addr.as_ptr().cast(), addr.len(), 0)
        };
        if rc != 0 {
            // SAFETY: `dns` was made above and has no requests.
            unsafe { sys::evdns_base_free(dns, 1) };
            return Err(io::Error::other(format!(
                "evdns cannot use {server} as a name server"
            )));
        }
    }
    // The one it replaces is not freed: see the module invariants.
    sched.resolvers().replace(dns);
    Ok(())
}

/// This scheduler's resolver, made from the system's configuration on first use (see
/// [`conf`]).
pub(crate) fn resolver(sched: &Scheduler) -> io::Result<*mut sys::evdns_base> {
    let current = sched.resolvers().current();
    if !current.is_null() {
        return Ok(current);
    }
    let dns = conf::new_resolver(sched, None)?;
    sched.resolvers().replace(dns);
    Ok(dns)
}

/// One lookup's outcome, shared by the asking coroutine and libevent's callback.
struct Lookup {
    port: u16,
    done: Cell<bool>,
    result: Cell<Option<io::Result<Vec<SocketAddr>>>>,
    /// The coroutine waiting for it, if one is suspended.
    waiter: Cell<Option<Waker>>,
}

/// Cancels a request still in flight when the wait ends without its answer (cancellation
/// unwinding the coroutine, or a deadlock reported outside coroutines).
struct CancelOnDrop<'a> {
    lookup: &'a Lookup,
    request: *mut sys::evdns_getaddrinfo_request,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.lookup.waiter.take();
        if !self.lookup.done.get() && !self.request.is_null() {
            // SAFETY: not answered yet, so libevent still holds the request; cancelling makes
            // it call `answered` once more, with EVUTIL_EAI_CANCEL (module invariants).
            unsafe { sys::evdns_getaddrinfo_cancel(self.request) };
        }
    }
}

/// libevent's callback for every lookup: records the outcome and wakes the waiting coroutine.
unsafe extern "C" fn answered(code: c_int, res: *mut sys::addrinfo, arg: *mut c_void) {
    // SAFETY: `arg` is the reference `lookup_host` handed over with `Rc::into_raw`; libevent
    // calls this at most once per request (once when answered or cancelled; never when the
    // resolver goes with its requests in flight, which leaks the reference), so it is taken
    // back at most once.
    let lookup = unsafe { Rc::from_raw(arg as *const Lookup) };
    let outcome = if code == 0 {
        // SAFETY: on success `res` is the list libevent allocated for this answer.
        Ok(unsafe { addresses(res, lookup.port) })
    } else {
        Err(gai_error(code))
    };
    if !res.is_null() {
        // SAFETY: the list is ours to free, once, and nothing refers to it any more.
        unsafe { sys::evutil_freeaddrinfo(res) };
    }
    lookup.result.set(Some(outcome));
    lookup.done.set(true);
    if let Some(waiter) = lookup.waiter.take() {
        waiter.wake();
    }
}

/// The IPv4 and IPv6 addresses of an `addrinfo` list, with `port`, in the list's order.
///
/// # Safety
///
/// `res` is null or the head of a valid `addrinfo` list.
unsafe fn addresses(mut res: *const sys::addrinfo, port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    // SAFETY: the caller's contract: every node and its `ai_addr` of `ai_addrlen` bytes is
    // valid; the family says which sockaddr it is.
    unsafe {
        while let Some(ai) = res.as_ref() {
            let sa = ai.ai_addr as *const libc::sockaddr;
            if !sa.is_null() {
                match c_int::from((*sa).sa_family) {
                    libc::AF_INET if ai.ai_addrlen as usize >= size_of::<libc::sockaddr_in>() => {
                        let v4 = &*(sa as *const libc::sockaddr_in);
                        let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                        out.push(SocketAddr::new(ip.into(), port));
                    }
                    libc::AF_INET6 if ai.ai_addrlen as usize >= size_of::<libc::sockaddr_in6>() => {
                        let v6 = &*(sa as *const libc::sockaddr_in6);
                        let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
                        let flow = u32::from_be(v6.sin6_flowinfo);
                        out.push(SocketAddrV6::new(ip, port, flow, v6.sin6_scope_id).into());
                    }
                    _ => {}
                }
            }
            res = ai.ai_next;
        }
    }
    out
}

/// An `io::Error` for an `EVUTIL_EAI_*` code, with libevent's message.
fn gai_error(code: c_int) -> io::Error {
    // SAFETY: evutil_gai_strerror returns a static string for any code.
    let text = unsafe { CStr::from_ptr(sys::evutil_gai_strerror(code)) }.to_string_lossy();
    let kind = match code {
        libc::EAI_NONAME | EAI_NODATA => io::ErrorKind::NotFound,
        libc::EAI_AGAIN => io::ErrorKind::TimedOut,
        EAI_CANCEL => io::ErrorKind::Interrupted,
        libc::EAI_MEMORY => io::ErrorKind::OutOfMemory,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("name lookup failed: {text}"))
}
