//! Name resolution through the hooks: `getaddrinfo`, `getnameinfo`, and the `gethostbyname`
//! family (`hostent`), replaced rather than wrapped.
//!
//! glibc (2.34 and later) resolves inside libc, with no interposable call between
//! `getaddrinfo` and its `recvmsg` on the name server's socket: wrapping it cannot make it
//! cooperative. So inside a scheduled coroutine with the hooks on, evco answers the call
//! itself; everywhere else the hook is libc's function, called with the caller's arguments.
//!
//! # Where an answer comes from (inside a coroutine)
//!
//! 1. **Numeric hosts** (`AI_NUMERICHOST`, or a host libc parses as an address): libc's own
//!    call, which needs no lookup. evco asks libc first with `AI_NUMERICHOST` added: success is
//!    the answer, an error other than `EAI_NONAME` (a bad service, family or flag) is the
//!    answer too, exactly as glibc would give it; only a name goes on. This is also why evdns,
//!    which calls the system's `getaddrinfo` for numeric hosts, is never reached with one (no
//!    recursion into the hook).
//! 2. **`nsswitch.conf`'s `hosts:` line names only `files` and `dns`** (`net::dns::conf`): the
//!    hosts file, then `localhost`/`*.localhost` as the loopback addresses (never the network),
//!    then the name servers through evdns on the scheduler's own resolver (`query`), each
//!    name of the search list in `res_search`'s order (`dns_answer`): only the calling
//!    coroutine is suspended. No query is made when the hosts file answers, and nothing is
//!    suspended then.
//! 3. **Other NSS sources** (`myhostname`, `mdns`, `resolve`, `ldap`, ...), IDN flags and names
//!    that are not UTF-8: glibc's own `getaddrinfo`, run on a small thread pool (`pool`) while
//!    the coroutine is parked.
//! 4. **An answer that came truncated**: the questions asked again over TCP of the same name
//!    servers (`tcp`), on the pool, the coroutine parked (evdns 2.1 has no TCP).
//!
//! # The result
//!
//! Every result is glibc's own layout, so that libc's `freeaddrinfo` (not hooked) frees it: it
//! is made by libc's `getaddrinfo` itself, called with `AI_NUMERICHOST` once for each family
//! found (with its unspecified address, `0.0.0.0` or `::`), with the caller's service, family,
//! socket type, protocol and flags; every address of that family gets those entries (copies,
//! one allocation each as glibc's, past the first address) with its own address put in. Its
//! socket-type expansion, port, `AI_V4MAPPED` mapping and `AI_ADDRCONFIG` filtering are
//! therefore glibc's.
//! With `AI_CANONNAME`, the first entry's `ai_canonname` (a separate allocation, as glibc's) is
//! the hosts file's canonical name or the name that answered (the search list's, without the
//! root's dot): evdns's plain queries do not report CNAMEs. Addresses come in the hosts file's
//! order, or A records before AAAA ones, without glibc's RFC 6724 sorting (`/etc/gai.conf`):
//! where glibc puts `::1` before `127.0.0.1` for a `localhost` the hosts file lists with both,
//! the hooks put it after.
//!
//! # Errors
//!
//! libc's `EAI_*` codes: `EAI_NONAME` for NXDOMAIN, `EAI_NODATA` for a name without addresses
//! of the families asked, `EAI_AGAIN` when the name servers time out (or fail), `EAI_FAIL` for
//! other failures. A coroutine cancelled during the lookup gets `EAI_SYSTEM` with `errno =
//! ECANCELED` (the lookup is cancelled with it; a pooled call still runs to its end, its result
//! freed).
//!
//! `getnameinfo` (reverse lookups) runs on the pool unless `NI_NUMERICHOST` asks for no lookup,
//! and so do `gethostbyaddr` and `gethostbyaddr_r` (see `hostent`).

mod hostent;
mod pool;
mod query;
mod tcp;

use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::net::IpAddr;

use super::{errno, errno_of, stop_cancellation};
use crate::net::dns::{conf::Conf, resolver};
use crate::os::real::{self, set_errno};
use crate::scheduler::{self, Scheduler};
use query::Answer;

pub(super) use hostent::{
    gethostbyaddr, gethostbyaddr_r, gethostbyname, gethostbyname_r, gethostbyname2,
    gethostbyname2_r,
};

/// glibc's `AI_IDN` and `AI_CANONIDN`: names to convert with libidn2, which only glibc does.
const AI_IDN_FLAGS: c_int = 0x0040 | 0x0080;

/// An `addrinfo` list in glibc's layout, owned: freed with libc's `freeaddrinfo`.
pub(super) struct AiList(*mut libc::addrinfo);

// SAFETY: the list is plain memory from libc's allocator, owned by this value alone; freeing it
// on another thread is fine.
unsafe impl Send for AiList {}

impl Drop for AiList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a list libc's getaddrinfo made, owned here, freed once.
            unsafe { libc::freeaddrinfo(self.0) };
        }
    }
}

impl AiList {
    /// The list, handed over to the caller (who frees it with `freeaddrinfo`).
    fn into_raw(self) -> *mut libc::addrinfo {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    /// Appends `other` to this list.
    fn append(&mut self, other: AiList) {
        let tail = other.into_raw();
        if self.0.is_null() {
            self.0 = tail;
            return;
        }
        let mut p = self.0;
        // SAFETY: a well-formed list owned by `self`: each node valid until its `ai_next` is
        // null.
        unsafe {
            while !(*p).ai_next.is_null() {
                p = (*p).ai_next;
            }
            (*p).ai_next = tail;
        }
    }

    /// Sets every entry's `ai_flags` to `flags`: glibc copies the caller's flags into each
    /// entry, and the lists made here come from calls with `AI_NUMERICHOST` added (and
    /// `AI_CANONNAME` taken out), which would show otherwise.
    fn set_flags(&mut self, flags: c_int) {
        let mut p = self.0;
        // SAFETY: a well-formed list owned by `self`: each node valid until its `ai_next` is
        // null.
        unsafe {
            while let Some(ai) = p.as_mut() {
                ai.ai_flags = flags;
                p = ai.ai_next;
            }
        }
    }

    /// The entries' addresses, in order (IPv4 and IPv6 entries only).
    pub(super) fn addresses(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        let mut p = self.0.cast_const();
        // SAFETY: a well-formed list owned by `self`; each `ai_addr` holds `ai_addrlen` bytes of
        // the family it names.
        unsafe {
            while let Some(ai) = p.as_ref() {
                let sa = ai.ai_addr.cast_const();
                if !sa.is_null() {
                    let len = ai.ai_addrlen as usize;
                    match c_int::from((*sa).sa_family) {
                        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                            let v4 = &*sa.cast::<libc::sockaddr_in>();
                            out.push(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()));
                        }
                        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                            let v6 = &*sa.cast::<libc::sockaddr_in6>();
                            out.push(IpAddr::from(v6.sin6_addr.s6_addr));
                        }
                        _ => {}
                    }
                }
                p = ai.ai_next;
            }
        }
        out
    }

    /// The first entry's canonical name, if it has one.
    pub(super) fn canonical_name(&self) -> Option<&CStr> {
        // SAFETY: a well-formed list owned by `self`; a non-null `ai_canonname` is a C string
        // that lives as long as the list.
        unsafe { self.0.as_ref().and_then(|ai| ai.ai_canonname.as_ref()) }
            .map(|c| unsafe { CStr::from_ptr(c) })
    }
}

/// A failed lookup: its `EAI_*` code, and the `errno` that goes with `EAI_SYSTEM`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Failure {
    pub(super) code: c_int,
    pub(super) errno: c_int,
}

impl Failure {
    fn code(code: c_int) -> Failure {
        Failure { code, errno: 0 }
    }

    /// The failure of a lookup whose wait failed (cancellation: `ECANCELED`).
    pub(super) fn of(e: &io::Error) -> Failure {
        Failure {
            code: libc::EAI_SYSTEM,
            errno: errno_of(e),
        }
    }
}

type Lookup = Result<AiList, Failure>;

/// libc's `getaddrinfo`, with owned arguments.
fn libc_getaddrinfo(node: &CStr, service: Option<&CStr>, hints: &libc::addrinfo) -> Lookup {
    let mut res = std::ptr::null_mut();
    let service = service.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: C strings and hints that outlive the call; `res` receives the list.
    let code = unsafe { real::getaddrinfo(node.as_ptr(), service, hints, &mut res) };
    let list = AiList(res);
    if code == 0 {
        Ok(list)
    } else {
        Err(Failure {
            code,
            errno: errno(),
        })
    }
}

/// glibc's hints when the caller passes none.
fn default_hints() -> libc::addrinfo {
    // SAFETY: addrinfo is plain data; all-zero is an empty set of hints.
    let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
    h.ai_family = libc::AF_UNSPEC;
    h.ai_flags = libc::AI_V4MAPPED | libc::AI_ADDRCONFIG;
    h
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const libc::addrinfo,
    res: *mut *mut libc::addrinfo,
) -> c_int {
    // SAFETY: a non-null `hints` is the caller's addrinfo.
    let h = unsafe { hints.as_ref() }
        .copied()
        .unwrap_or_else(default_hints);
    if node.is_null()
        || res.is_null()
        || h.ai_flags & libc::AI_NUMERICHOST != 0
        || !scheduler::in_scheduled_coroutine()
    {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::getaddrinfo(node, service, hints, res) };
    }
    // SAFETY: non-null strings are the caller's C strings.
    let (node, service) = unsafe {
        (
            CStr::from_ptr(node),
            service.as_ref().map(|s| CStr::from_ptr(s)),
        )
    };
    match lookup(node, service, &h) {
        Ok(list) => {
            // SAFETY: `res` is the caller's out-pointer (checked non-null).
            unsafe { *res = list.into_raw() };
            0
        }
        Err(f) => {
            if f.code == libc::EAI_SYSTEM {
                set_errno(f.errno);
            }
            f.code
        }
    }
}

/// The cooperative `getaddrinfo` (module docs), inside a scheduled coroutine: its list, or the
/// failure libc reports.
pub(super) fn lookup(node: &CStr, service: Option<&CStr>, hints: &libc::addrinfo) -> Lookup {
    let mut numeric = *hints;
    numeric.ai_flags |= libc::AI_NUMERICHOST;
    match libc_getaddrinfo(node, service, &numeric) {
        Err(f) if f.code == libc::EAI_NONAME => {}
        answered => {
            return answered.map(|mut list| {
                list.set_flags(hints.ai_flags);
                list
            });
        }
    }
    if let Some(failure) = service_failure(service, hints) {
        return Err(failure);
    }
    match stop_cancellation(|| lookup_name(node, service, hints)) {
        Ok(answer) => answer,
        Err(e) => Err(Failure::of(&e)),
    }
}

/// glibc's failure for `service` alone, when it has one that the numeric probe in [`lookup`]
/// reports as `EAI_NONAME` too: a service name with `AI_NUMERICSERV`. Without this the name
/// would be looked up and every address's entry refused, which reads as `EAI_NODATA`. Asked of
/// libc with no host (the loopback addresses, of both families: nothing else can fail).
fn service_failure(service: Option<&CStr>, hints: &libc::addrinfo) -> Option<Failure> {
    let service = service?;
    if hints.ai_flags & libc::AI_NUMERICSERV == 0 {
        return None;
    }
    // SAFETY: addrinfo is plain data; all-zero is an empty set of hints.
    let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
    h.ai_flags = libc::AI_NUMERICSERV;
    h.ai_socktype = hints.ai_socktype;
    h.ai_protocol = hints.ai_protocol;
    let mut res = std::ptr::null_mut();
    // SAFETY: no host, the caller's service (a C string), hints and `res` that outlive the
    // call.
    let code = unsafe { real::getaddrinfo(std::ptr::null(), service.as_ptr(), &h, &mut res) };
    drop(AiList(res));
    (code != 0).then(|| Failure {
        code,
        errno: errno(),
    })
}

/// A name's lookup: the hosts file and evdns, or glibc's on the pool (module docs).
fn lookup_name(node: &CStr, service: Option<&CStr>, hints: &libc::addrinfo) -> io::Result<Lookup> {
    let Ok(name) = node.to_str() else {
        return pooled(node, service, hints);
    };
    let sched = Scheduler::current_or_install()?;
    let conf = Conf::current(sched)?;
    if !conf.files_and_dns_only() || hints.ai_flags & AI_IDN_FLAGS != 0 {
        return pooled(node, service, hints);
    }
    let mapped = hints.ai_family == libc::AF_INET6 && hints.ai_flags & libc::AI_V4MAPPED != 0;
    let v4 = hints.ai_family != libc::AF_INET6 || mapped;
    let v6 = hints.ai_family != libc::AF_INET;
    let (canonical, mut addrs) = match conf.local_answer(name, v4, v6) {
        Some(found) => found,
        // A name no query can carry (a label over 63 bytes, over 253 in all): glibc's
        // res_mkquery refuses it and getaddrinfo reports EAI_NONAME; evdns would refuse the
        // request, which reads as EAI_FAIL.
        None if !fits_a_query(name) => return Ok(Err(Failure::code(libc::EAI_NONAME))),
        None => match dns_answer(&conf, sched, name, v4, v6)? {
            Ok(found) => found,
            Err(f) => return Ok(Err(f)),
        },
    };
    if mapped && hints.ai_flags & libc::AI_ALL == 0 && addrs.iter().any(IpAddr::is_ipv6) {
        // AI_V4MAPPED without AI_ALL: IPv4 addresses only when there is no IPv6 one.
        addrs.retain(IpAddr::is_ipv6);
    }
    Ok(glibc_list(&canonical, &addrs, service, hints))
}

/// The name servers' answer for `name`: its canonical name (the name that answered) and
/// addresses. Each of the search list's names is asked in turn (`Conf::candidates`) as
/// glibc's `res_search` does: the first with addresses answers; NXDOMAIN and no data go on to
/// the next; a timeout or another failure ends the search. A truncated answer is asked again
/// over TCP on the pool. When none answers: `EAI_NODATA` if one of them exists, else the last
/// failure.
fn dns_answer(
    conf: &Conf,
    sched: &Scheduler,
    name: &str,
    v4: bool,
    v6: bool,
) -> io::Result<Result<(String, Vec<IpAddr>), Failure>> {
    let dns = resolver(sched)?;
    let (mut nodata, mut last) = (false, libc::EAI_NONAME);
    for candidate in conf.candidates(name) {
        // A search domain can make a name too long to ask: glibc skips it too.
        if !fits_a_query(&candidate) {
            continue;
        }
        let Ok(asked) = CString::new(candidate) else {
            continue;
        };
        let answer = match query::query(dns, &asked, v4, v6)? {
            Answer::Truncated => {
                let servers = conf.servers().to_vec();
                let asked = asked.to_str().unwrap_or_default().to_string();
                pool::run(move || tcp::query(&servers, &asked, v4, v6))?
            }
            answer => answer,
        };
        match answer {
            Answer::Addrs(addrs) => {
                let mut canonical = asked.into_string().unwrap_or_default();
                if canonical.ends_with('.') {
                    canonical.pop();
                }
                return Ok(Ok((canonical, addrs)));
            }
            Answer::Failed(libc::EAI_SYSTEM) => {
                return Ok(Err(Failure {
                    code: libc::EAI_SYSTEM,
                    errno: libc::ECANCELED,
                }));
            }
            Answer::Failed(code @ (libc::EAI_NONAME | libc::EAI_NODATA)) => {
                nodata |= code == libc::EAI_NODATA;
                last = code;
            }
            Answer::Failed(code) => return Ok(Err(Failure::code(code))),
            // The TCP retry's answer is never truncated (it reads whole replies).
            Answer::Truncated => return Ok(Err(Failure::code(libc::EAI_FAIL))),
        }
    }
    Ok(Err(Failure::code(if nodata {
        libc::EAI_NODATA
    } else {
        last
    })))
}

/// Whether `name` fits in a DNS question: labels of at most 63 bytes, at most 253 in all
/// (without the root's trailing dot).
fn fits_a_query(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    name.len() <= 253 && name.split(|&b| b == b'.').all(|label| label.len() <= 63)
}

/// `addrs` as libc's own list for `service` and `hints` (see "The result" in the module docs).
///
/// libc is asked once per family, with that family's unspecified address (`0.0.0.0`, `::`):
/// what glibc makes of a numeric host (the family's refusal, `AI_V4MAPPED`'s mapping,
/// `AI_ADDRCONFIG`, the entries of each socket type and their port) depends on its family
/// alone. Each address then gets a copy of its family's entries ([`copy_entries`]) with the
/// address put in ([`set_address`]); the first address of a family takes libc's entries
/// themselves.
fn glibc_list(
    canonical: &str,
    addrs: &[IpAddr],
    service: Option<&CStr>,
    hints: &libc::addrinfo,
) -> Lookup {
    let mut each = *hints;
    each.ai_flags = (each.ai_flags | libc::AI_NUMERICHOST) & !libc::AI_CANONNAME;
    let mut list = AiList(std::ptr::null_mut());
    /// What libc made of one family so far.
    #[derive(Clone, Copy)]
    enum Family {
        NotAsked,
        /// Left out (the hints' family, `AI_ADDRCONFIG`).
        Refused,
        /// The first address's `count` entries from `head`, in `list` (which owns them).
        Entries(*const libc::addrinfo, usize),
    }
    let mut families = [Family::NotAsked; 2];
    for &addr in addrs {
        let (family, unspecified) = match addr {
            IpAddr::V4(_) => (&mut families[0], c"0.0.0.0"),
            IpAddr::V6(_) => (&mut families[1], c"::"),
        };
        let entries = match *family {
            Family::Refused => continue,
            Family::Entries(head, count) => copy_entries(head, count, addr)?,
            Family::NotAsked => match libc_getaddrinfo(unspecified, service, &each) {
                Ok(mut entries) => {
                    let mut count = 0;
                    let mut p = entries.0;
                    // SAFETY: the list libc just made, owned by `entries`: each node valid
                    // until its `ai_next` is null.
                    while let Some(ai) = unsafe { p.as_mut() } {
                        set_address(ai, addr);
                        count += 1;
                        p = ai.ai_next;
                    }
                    *family = Family::Entries(entries.0.cast_const(), count);
                    entries.set_flags(hints.ai_flags);
                    entries
                }
                // A family AI_ADDRCONFIG (or the hints' family) leaves out.
                Err(f)
                    if matches!(f.code, libc::EAI_NONAME | libc::EAI_FAMILY | EAI_ADDRFAMILY) =>
                {
                    *family = Family::Refused;
                    continue;
                }
                Err(f) => return Err(f),
            },
        };
        list.append(entries);
    }
    if list.0.is_null() {
        return Err(Failure::code(libc::EAI_NODATA));
    }
    if hints.ai_flags & libc::AI_CANONNAME != 0 {
        let name = CString::new(canonical).map_err(|_| Failure::code(libc::EAI_FAIL))?;
        // SAFETY: strdup copies a C string into libc's allocator, as glibc's own canonical
        // names are (freeaddrinfo frees it); the head entry is ours.
        unsafe {
            let copy = libc::strdup(name.as_ptr());
            if copy.is_null() {
                return Err(Failure::code(libc::EAI_MEMORY));
            }
            (*list.0).ai_canonname = copy;
        }
    }
    Ok(list)
}

/// Copies of the `count` entries from `head` on, each with `addr` put in, as a list of its
/// own in glibc's layout: each entry one `malloc`ed block, the `addrinfo` followed by its
/// `ai_addrlen` bytes of sockaddr (`ai_addr` points there), no canonical name; libc's
/// `freeaddrinfo` frees it as it frees glibc's.
///
/// `head` starts a run of at least `count` well-formed entries of a list that outlives the
/// call, with no canonical name past its first (the lists `glibc_list` asks libc for).
fn copy_entries(head: *const libc::addrinfo, count: usize, addr: IpAddr) -> Lookup {
    let mut copies = AiList(std::ptr::null_mut());
    let mut tail: *mut *mut libc::addrinfo = &mut copies.0;
    let mut p = head;
    for _ in 0..count {
        // SAFETY: `p` is one of the `count` valid entries from `head` (the caller's word).
        let from = unsafe { &*p };
        let len = from.ai_addrlen as usize;
        // SAFETY: a fresh block of `addrinfo` and sockaddr sizes, written whole below before
        // anything reads it: the addrinfo (8-aligned, malloc's alignment), then the `len`
        // sockaddr bytes copied from the entry's, which holds that many; the new entry is
        // linked at the end of `copies` (through `tail`, its last `ai_next`), which frees it.
        unsafe {
            let block = libc::malloc(size_of::<libc::addrinfo>() + len).cast::<libc::addrinfo>();
            if block.is_null() {
                return Err(Failure::code(libc::EAI_MEMORY));
            }
            let sa = block.add(1).cast::<libc::sockaddr>();
            std::ptr::copy_nonoverlapping(from.ai_addr.cast::<u8>(), sa.cast::<u8>(), len);
            block.write(libc::addrinfo {
                ai_addr: sa,
                ai_canonname: std::ptr::null_mut(),
                ai_next: std::ptr::null_mut(),
                ..*from
            });
            set_address(&mut *block, addr);
            *tail = block;
            tail = &raw mut (*block).ai_next;
        }
        p = from.ai_next;
    }
    Ok(copies)
}

/// Puts `addr` in an entry of its family's (an IPv4 address in an `AF_INET6` entry as
/// `AI_V4MAPPED` maps it), leaving its port and the rest as they are.
fn set_address(ai: &mut libc::addrinfo, addr: IpAddr) {
    let len = ai.ai_addrlen as usize;
    // SAFETY: an entry of a well-formed list: `ai_addr` holds `ai_addrlen` bytes of the family
    // `ai_family` names, checked against the sockaddr's size before it is written.
    unsafe {
        match (ai.ai_family, addr) {
            (libc::AF_INET, IpAddr::V4(v4)) if len >= size_of::<libc::sockaddr_in>() => {
                let sin = &mut *ai.ai_addr.cast::<libc::sockaddr_in>();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            }
            (libc::AF_INET6, _) if len >= size_of::<libc::sockaddr_in6>() => {
                let sin6 = &mut *ai.ai_addr.cast::<libc::sockaddr_in6>();
                sin6.sin6_addr.s6_addr = match addr {
                    IpAddr::V6(v6) => v6.octets(),
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                };
            }
            // glibc makes no AF_INET entry of an IPv6 address.
            _ => {}
        }
    }
}

/// glibc's `EAI_ADDRFAMILY` (not in the libc crate for Linux): the host has no address of the
/// family asked.
pub(super) const EAI_ADDRFAMILY: c_int = -9;

/// glibc's own `getaddrinfo`, on the pool, with the coroutine parked.
fn pooled(node: &CStr, service: Option<&CStr>, hints: &libc::addrinfo) -> io::Result<Lookup> {
    let node = node.to_owned();
    let service = service.map(CStr::to_owned);
    let (flags, family, socktype, protocol) = (
        hints.ai_flags,
        hints.ai_family,
        hints.ai_socktype,
        hints.ai_protocol,
    );
    pool::run(move || {
        // SAFETY: addrinfo is plain data; all-zero is an empty set of hints.
        let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
        h.ai_flags = flags;
        h.ai_family = family;
        h.ai_socktype = socktype;
        h.ai_protocol = protocol;
        libc_getaddrinfo(&node, service.as_deref(), &h)
    })
}

/// Hook: reverse lookups on the pool inside a scheduled coroutine (see the module docs).
#[unsafe(no_mangle)]
pub(super) unsafe extern "C" fn getnameinfo(
    sa: *const libc::sockaddr,
    salen: libc::socklen_t,
    host: *mut c_char,
    hostlen: libc::socklen_t,
    serv: *mut c_char,
    servlen: libc::socklen_t,
    flags: c_int,
) -> c_int {
    let asks_a_name = !host.is_null() && hostlen > 0 && flags & libc::NI_NUMERICHOST == 0;
    if !asks_a_name
        || sa.is_null()
        || salen as usize > size_of::<libc::sockaddr_storage>()
        || !scheduler::in_scheduled_coroutine()
    {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::getnameinfo(sa, salen, host, hostlen, serv, servlen, flags) };
    }
    // SAFETY: `sa` points at `salen` bytes of the caller's (getnameinfo's contract).
    let addr = unsafe { std::slice::from_raw_parts(sa.cast::<u8>(), salen as usize) }.to_vec();
    let want_serv = !serv.is_null() && servlen > 0;
    let (hl, sl) = (
        (hostlen as usize).min(MAX_NAME_BUFFER),
        if want_serv {
            (servlen as usize).min(MAX_NAME_BUFFER)
        } else {
            0
        },
    );
    let call = move || {
        // Not NUL: what glibc wrote is what ends with the first NUL (see `copy_out`).
        let (mut h, mut s) = (vec![0xffu8; hl], vec![0xffu8; sl]);
        // SAFETY: a copy of the caller's sockaddr (sockaddr_storage-aligned by copying into
        // one), and buffers of the lengths given.
        let code = unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(
                addr.as_ptr(),
                (&raw mut storage).cast::<u8>(),
                addr.len(),
            );
            let serv = if sl > 0 {
                s.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
            real::getnameinfo(
                (&raw const storage).cast(),
                addr.len() as libc::socklen_t,
                h.as_mut_ptr().cast(),
                hl as libc::socklen_t,
                serv,
                sl as libc::socklen_t,
                flags,
            )
        };
        (code, errno(), h, s)
    };
    let outcome = stop_cancellation(|| pool::run(call));
    match outcome {
        Ok((code, err, h, s)) => {
            // What glibc wrote, failed or not (a host name before a service that does not
            // fit, say), and nothing else: glibc writes each string and its NUL only.
            // SAFETY: the caller's buffers of `hostlen` and `servlen` bytes; `h` and `s` are
            // no longer than those.
            unsafe {
                copy_out(&h, host);
                if sl > 0 {
                    copy_out(&s, serv);
                }
            }
            if code == libc::EAI_SYSTEM {
                set_errno(err);
            }
            code
        }
        Err(e) => {
            set_errno(errno_of(&e));
            libc::EAI_SYSTEM
        }
    }
}

/// The most bytes of each `getnameinfo` buffer a pooled call is given (a caller's larger
/// buffer gets at most this many written, and a name longer than this is `EAI_OVERFLOW`; no
/// DNS name comes near it): the scratch copies are filled in whole before the call.
const MAX_NAME_BUFFER: usize = 1 << 16;

/// Copies the string glibc wrote into `scratch` (pre-filled with non-NUL bytes), through its
/// NUL, to `out`; nothing when it wrote none.
///
/// # Safety
///
/// `out` is writable for `scratch.len()` bytes.
unsafe fn copy_out(scratch: &[u8], out: *mut c_char) {
    if let Some(nul) = scratch.iter().position(|&b| b == 0) {
        // SAFETY: `nul + 1 <= scratch.len()` bytes, which `out` has room for (the caller's
        // contract).
        unsafe { std::ptr::copy_nonoverlapping(scratch.as_ptr(), out.cast::<u8>(), nul + 1) };
    }
}
