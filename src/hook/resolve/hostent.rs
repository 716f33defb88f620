//! The `gethostbyname` family: `gethostbyname`, `gethostbyname2` and their `_r` forms, answered
//! inside a scheduled coroutine by the cooperative `getaddrinfo` (`super::lookup`, same
//! sources and routing) and laid out as a `hostent`. The reverse forms, `gethostbyaddr` and
//! `gethostbyaddr_r`, run glibc's own `gethostbyaddr_r` on the resolver pool (as
//! `getnameinfo` does) while the coroutine is parked, and lay its answer (name, aliases,
//! address) out the same way: inside a coroutine they answer what glibc answers outside one.
//!
//! The `hostent` has the canonical name (the hosts file's, or the name asked for; a numeric
//! host is its own), no aliases, and the addresses of the family asked (`AF_INET` for
//! `gethostbyname`). `gethostbyname` and `gethostbyname2` return a buffer of the calling
//! coroutine's own, valid until its next call of either: two coroutines interleaving them keep
//! their own answers (glibc's is one static buffer for the whole process). The buffers of a
//! thread's last [`MAX_BUFFERS`] callers are kept, so a coroutine whose answer is older than
//! that many other coroutines' calls on its thread finds it reused; they are freed with the
//! thread.
//!
//! Errors, as glibc reports them: `h_errno` `HOST_NOT_FOUND` (NXDOMAIN), `NO_DATA` (no address
//! of the family), `TRY_AGAIN` (timeout; the `_r` forms return `EAGAIN`), `NO_RECOVERY`
//! (other failures; `_r`: `EIO`), `NETDB_INTERNAL` with `errno` (a cancelled coroutine:
//! `ECANCELED`; a family other than `AF_INET`/`AF_INET6`: `EAFNOSUPPORT`). The `_r` forms
//! return `ERANGE` when the caller's buffer is too small (callers retry with a larger one).

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::net::IpAddr;

use super::{EAI_ADDRFAMILY, Failure, errno_of, lookup, pool, stop_cancellation};
use crate::os::real::{self, set_errno};
use crate::scheduler;

/// Coroutines per thread whose `gethostbyname` buffer is kept (see the module docs).
const MAX_BUFFERS: usize = 256;

// h_errno values (netdb.h).
const NETDB_INTERNAL: c_int = -1;
const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_RECOVERY: c_int = 3;
const NO_DATA: c_int = 4;

unsafe extern "C" {
    /// glibc's thread-local `h_errno`.
    fn __h_errno_location() -> *mut c_int;
}

fn set_h_errno(e: c_int) {
    // SAFETY: glibc's h_errno location for this thread, always valid.
    unsafe { *__h_errno_location() = e };
}

/// A successful lookup: the canonical name and the addresses, of one family.
struct Host {
    name: Vec<u8>,
    /// Alias names (the reverse forms'; none by name).
    aliases: Vec<Vec<u8>>,
    family: c_int,
    addrs: Vec<IpAddr>,
}

/// Looks `name` up for family `af` (AF_INET or AF_INET6) cooperatively.
fn resolve(name: &CStr, af: c_int) -> Result<Host, Failure> {
    // SAFETY: addrinfo is plain data; all-zero is an empty set of hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = af;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = libc::AI_CANONNAME;
    let list = lookup(name, None, &hints)?;
    let canonical = list.canonical_name().unwrap_or(name);
    Ok(Host {
        name: canonical.to_bytes().to_vec(),
        aliases: Vec::new(),
        family: af,
        addrs: list.addresses(),
    })
}

/// The `h_errno` and the `_r` forms' return value for a failure (module docs).
fn errors_of(f: Failure) -> (c_int, c_int) {
    match f.code {
        // An address of the other family (`gethostbyname2("::1", AF_INET)`): glibc's
        // HOST_NOT_FOUND, `_r` returning 0.
        libc::EAI_NONAME | EAI_ADDRFAMILY => (HOST_NOT_FOUND, 0),
        libc::EAI_NODATA => (NO_DATA, 0),
        libc::EAI_AGAIN => (TRY_AGAIN, libc::EAGAIN),
        libc::EAI_SYSTEM => (NETDB_INTERNAL, f.errno),
        _ => (NO_RECOVERY, libc::EIO),
    }
}

/// The bytes a `hostent` for `host` needs in a buffer starting at `buf` (alignment included).
fn needed(host: &Host, buf: *const c_char) -> usize {
    let ptr = size_of::<*mut c_char>();
    let align = buf.align_offset(align_of::<*mut c_char>());
    let names: usize = host.aliases.iter().map(|a| a.len() + 1).sum();
    align
        + ptr * (host.aliases.len() + 1 + host.addrs.len() + 1)
        + host.addrs.len() * 16
        + host.name.len()
        + 1
        + names
}

/// Lays `host` out in `ret` and the `len` bytes at `buf`: `Err(needed)` when they do not fit.
///
/// # Safety
///
/// `ret` is a writable `hostent`; `buf` is writable for `len` bytes.
unsafe fn fill(
    host: &Host,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: usize,
) -> Result<(), usize> {
    let need = needed(host, buf);
    if need > len {
        return Err(need);
    }
    let addr_len = if host.family == libc::AF_INET6 { 16 } else { 4 };
    let n = host.addrs.len();
    // SAFETY: `need` bytes fit in the caller's buffer: the aligned pointer arrays (aliases and
    // a NULL; addresses: n and a NULL), then the addresses, then the name and the aliases,
    // each with its NUL.
    unsafe {
        let ptrs = buf
            .add(buf.align_offset(align_of::<*mut c_char>()))
            .cast::<*mut c_char>();
        let aliases = ptrs;
        let list = ptrs.add(host.aliases.len() + 1);
        let mut data = list.add(n + 1).cast::<u8>();
        for (i, addr) in host.addrs.iter().enumerate() {
            let bytes: Vec<u8> = match addr {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, addr_len);
            *list.add(i) = data.cast();
            data = data.add(addr_len);
        }
        *list.add(n) = std::ptr::null_mut();
        let mut put = |bytes: &[u8]| {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
            *data.add(bytes.len()) = 0;
            let at = data;
            data = data.add(bytes.len() + 1);
            at.cast::<c_char>()
        };
        let name = put(&host.name);
        for (i, alias) in host.aliases.iter().enumerate() {
            *aliases.add(i) = put(alias);
        }
        *aliases.add(host.aliases.len()) = std::ptr::null_mut();
        *ret = libc::hostent {
            h_name: name,
            h_aliases: aliases,
            h_addrtype: host.family,
            h_length: addr_len as c_int,
            h_addr_list: list,
        };
    }
    Ok(())
}

/// One coroutine's `gethostbyname` answer.
struct Buffer {
    owner: u64,
    last_use: u64,
    ent: libc::hostent,
    /// `u64`s, for the pointers' alignment.
    data: Vec<u64>,
}

thread_local! {
    /// This thread's coroutines' buffers, and a use counter (see the module docs). Boxed: the
    /// `hostent` handed out must stay put when the list grows.
    #[allow(clippy::vec_box)]
    static BUFFERS: RefCell<(Vec<Box<Buffer>>, u64)> = const { RefCell::new((Vec::new(), 0)) };
}

/// `gethostbyname2`'s cooperative form: a pointer to the calling coroutine's buffer, or NULL
/// with `h_errno` (and `errno`) set.
fn by_name_buffered(name: &CStr, af: c_int) -> *mut libc::hostent {
    buffered(resolve(name, af).map_err(|f| {
        let (h, _) = errors_of(f);
        (h, f.errno)
    }))
}

/// An answer in the calling coroutine's buffer, or NULL with `h_errno` (and, for
/// `NETDB_INTERNAL`, `errno`) set from the failure's `(h_errno, errno)`.
fn buffered(answer: Result<Host, (c_int, c_int)>) -> *mut libc::hostent {
    let host = match answer {
        Ok(h) => h,
        Err((h, errno)) => {
            set_h_errno(h);
            if h == NETDB_INTERNAL {
                set_errno(errno);
            }
            return std::ptr::null_mut();
        }
    };
    let owner = crate::coroutine::current_core().map_or(0, |c| c.id().as_u64());
    BUFFERS.with(|b| {
        let (buffers, clock) = &mut *b.borrow_mut();
        *clock += 1;
        let i = match buffers.iter().position(|b| b.owner == owner) {
            Some(i) => i,
            None if buffers.len() < MAX_BUFFERS => {
                buffers.push(Box::new(Buffer {
                    owner,
                    last_use: 0,
                    // SAFETY: hostent is plain data; all-zero is valid.
                    ent: unsafe { std::mem::zeroed() },
                    data: Vec::new(),
                }));
                buffers.len() - 1
            }
            None => {
                let oldest = buffers.iter().enumerate().min_by_key(|(_, b)| b.last_use);
                let i = oldest.map_or(0, |(i, _)| i);
                buffers[i].owner = owner;
                i
            }
        };
        let buf = &mut buffers[i];
        buf.last_use = *clock;
        let mut need = needed(&host, std::ptr::null());
        loop {
            buf.data.resize(need.div_ceil(8), 0);
            let len = buf.data.len() * 8;
            // SAFETY: `ent` and `data` (of `len` bytes) are this buffer's, boxed: their
            // addresses stay put while the box is in the list.
            match unsafe { fill(&host, &mut buf.ent, buf.data.as_mut_ptr().cast(), len) } {
                Ok(()) => break,
                Err(more) => need = more,
            }
        }
        &mut buf.ent as *mut libc::hostent
    })
}

/// `gethostbyname2_r`'s cooperative form.
///
/// # Safety
///
/// The `_r` contract: `ret`, `result` and `h_errnop` writable; `buf` writable for `len` bytes.
unsafe fn by_name_r(
    name: &CStr,
    af: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: usize,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        answer_r(
            resolve(name, af).map_err(errors_of),
            ret,
            buf,
            len,
            result,
            h_errnop,
        )
    }
}

/// The `_r` forms' last step: lays `answer` out in the caller's `ret` and buffer, or reports
/// its failure `(h_errno, return value)`; sets `*result`, `*h_errnop` and `errno`.
///
/// # Safety
///
/// As [`by_name_r`].
unsafe fn answer_r(
    answer: Result<Host, (c_int, c_int)>,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: usize,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: the caller's out-pointers.
    unsafe { *result = std::ptr::null_mut() };
    let (h, rc) = match answer {
        // SAFETY: the caller's hostent and buffer.
        Ok(host) => match unsafe { fill(&host, ret, buf, len) } {
            Ok(()) => {
                // SAFETY: as above.
                unsafe { *result = ret };
                (0, 0)
            }
            Err(_) => (NETDB_INTERNAL, libc::ERANGE),
        },
        Err(e) => e,
    };
    // SAFETY: as above.
    unsafe { *h_errnop = h };
    if rc != 0 {
        set_errno(rc);
    }
    rc
}

/// Whether the calls below are cooperative: inside a scheduled coroutine, for a family
/// `hostent` can hold.
fn cooperative(name: *const c_char, af: c_int) -> bool {
    !name.is_null()
        && (af == libc::AF_INET || af == libc::AF_INET6)
        && scheduler::in_scheduled_coroutine()
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(in crate::hook) unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut libc::hostent {
    if !cooperative(name, libc::AF_INET) {
        // SAFETY: the caller's argument, passed on.
        return unsafe { real::gethostbyname2(name, None) };
    }
    // SAFETY: a non-null name is the caller's C string.
    by_name_buffered(unsafe { CStr::from_ptr(name) }, libc::AF_INET)
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(in crate::hook) unsafe extern "C" fn gethostbyname2(
    name: *const c_char,
    af: c_int,
) -> *mut libc::hostent {
    if !cooperative(name, af) {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::gethostbyname2(name, Some(af)) };
    }
    // SAFETY: a non-null name is the caller's C string.
    by_name_buffered(unsafe { CStr::from_ptr(name) }, af)
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(in crate::hook) unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: libc::size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if !cooperative(name, libc::AF_INET) || ret.is_null() || result.is_null() || h_errnop.is_null()
    {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::gethostbyname_r(name, ret, buf, len, result, h_errnop) };
    }
    // SAFETY: the caller's arguments under the `_r` contract.
    unsafe {
        by_name_r(
            CStr::from_ptr(name),
            libc::AF_INET,
            ret,
            buf,
            len,
            result,
            h_errnop,
        )
    }
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(in crate::hook) unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    len: libc::size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if !cooperative(name, af) || ret.is_null() || result.is_null() || h_errnop.is_null() {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { real::gethostbyname2_r(name, af, ret, buf, len, result, h_errnop) };
    }
    // SAFETY: the caller's arguments under the `_r` contract.
    unsafe { by_name_r(CStr::from_ptr(name), af, ret, buf, len, result, h_errnop) }
}

/// The reverse forms' arguments, when the call is cooperative: inside a scheduled coroutine,
/// an address of the length its family has. Else `None` (libc answers).
fn reverse_query(addr: *const c_void, len: libc::socklen_t, ty: c_int) -> Option<Vec<u8>> {
    let want = match ty {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        _ => return None,
    };
    if addr.is_null() || len as usize != want || !scheduler::in_scheduled_coroutine() {
        return None;
    }
    // SAFETY: `addr` points at `len` bytes of the caller's (gethostbyaddr's contract).
    Some(unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), want) }.to_vec())
}

/// Copies a `hostent` glibc filled in into owned data.
///
/// # Safety
///
/// `ent` is a `hostent` as glibc fills it in: NUL-terminated strings, NULL-terminated lists,
/// `h_length`-byte addresses.
unsafe fn owned(ent: &libc::hostent) -> Host {
    // SAFETY: glibc's hostent (the caller's contract).
    unsafe {
        let strings = |mut p: *mut *mut c_char| {
            let mut v = Vec::new();
            while !p.is_null() && !(*p).is_null() {
                v.push(CStr::from_ptr(*p).to_bytes().to_vec());
                p = p.add(1);
            }
            v
        };
        let mut addrs = Vec::new();
        let mut p = ent.h_addr_list;
        while !p.is_null() && !(*p).is_null() {
            let a = (*p).cast::<u8>();
            addrs.push(match ent.h_length {
                16 => IpAddr::from(std::ptr::read_unaligned(a.cast::<[u8; 16]>())),
                _ => IpAddr::from(std::ptr::read_unaligned(a.cast::<[u8; 4]>())),
            });
            p = p.add(1);
        }
        Host {
            name: if ent.h_name.is_null() {
                Vec::new()
            } else {
                CStr::from_ptr(ent.h_name).to_bytes().to_vec()
            },
            aliases: strings(ent.h_aliases),
            family: ent.h_addrtype,
            addrs,
        }
    }
}

/// Most bytes glibc's `gethostbyaddr_r` is offered before its `ERANGE` is taken as final.
const MAX_REVERSE_BUFFER: usize = 1 << 20;

/// Runs glibc's `gethostbyaddr_r` on the resolver pool, the calling coroutine parked: the
/// answer, or `(h_errno, errno)`.
fn by_addr(addr: Vec<u8>, ty: c_int) -> Result<Host, (c_int, c_int)> {
    let call = move || {
        let mut buf = vec![0u64; 128];
        loop {
            // SAFETY: hostent is plain data; all-zero is valid.
            let mut ent: libc::hostent = unsafe { std::mem::zeroed() };
            let mut result = std::ptr::null_mut();
            let mut h = 0;
            // SAFETY: the address's bytes, a hostent, a buffer of its length in bytes and the
            // out-pointers, as gethostbyaddr_r asks.
            let rc = unsafe {
                real::gethostbyaddr_r(
                    addr.as_ptr().cast(),
                    addr.len() as libc::socklen_t,
                    ty,
                    &mut ent,
                    buf.as_mut_ptr().cast(),
                    buf.len() * 8,
                    &mut result,
                    &mut h,
                )
            };
            if rc == libc::ERANGE && buf.len() * 8 < MAX_REVERSE_BUFFER {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc == 0 && !result.is_null() {
                // SAFETY: glibc filled `ent` in (and the buffer it points into, alive here).
                return Ok(unsafe { owned(&ent) });
            }
            return Err(reverse_failure(rc, h));
        }
    };
    match stop_cancellation(|| pool::run(call)) {
        Ok(answer) => answer,
        Err(e) => Err((NETDB_INTERNAL, errno_of(&e))),
    }
}

/// A failed `gethostbyaddr_r`'s `(h_errno, errno)` from its return value `rc` and `h_errno`
/// `h`: glibc's own `h_errno` whenever it set one (`TRY_AGAIN` with `EAGAIN` for a name server
/// that timed out; `NETDB_INTERNAL` with `ERANGE`), so the hooks report what glibc reports.
fn reverse_failure(rc: c_int, h: c_int) -> (c_int, c_int) {
    match (rc, h) {
        (0, 0) => (HOST_NOT_FOUND, 0),
        (0, h) => (h, 0),
        (rc, 0) => (NETDB_INTERNAL, rc),
        (rc, h) => (h, rc),
    }
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
pub(in crate::hook) unsafe extern "C" fn gethostbyaddr(
    addr: *const c_void,
    len: libc::socklen_t,
    ty: c_int,
) -> *mut libc::hostent {
    match reverse_query(addr, len, ty) {
        Some(a) => buffered(by_addr(a, ty)),
        // SAFETY: the caller's arguments, passed on.
        None => unsafe { real::gethostbyaddr(addr, len, ty) },
    }
}

/// Hook: see the module docs.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // glibc's signature
pub(in crate::hook) unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: libc::socklen_t,
    ty: c_int,
    ret: *mut libc::hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut libc::hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let query = match reverse_query(addr, len, ty) {
        Some(a) if !ret.is_null() && !result.is_null() && !h_errnop.is_null() => a,
        // SAFETY: the caller's arguments, passed on.
        _ => unsafe {
            return real::gethostbyaddr_r(addr, len, ty, ret, buf, buflen, result, h_errnop);
        },
    };
    // The `_r` return value of a failure: glibc's errno for NETDB_INTERNAL, EAGAIN for
    // TRY_AGAIN, 0 for the others (h_errno says it).
    let answer = by_addr(query, ty).map_err(|(h, e)| match (h, e) {
        (TRY_AGAIN, 0) => (h, libc::EAGAIN),
        _ => (h, e),
    });
    // SAFETY: the caller's out-pointers (checked non-null) and buffer of `buflen` bytes.
    unsafe { answer_r(answer, ret, buf, buflen, result, h_errnop) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_reverse_failures_keep_glibcs_h_errno() {
        assert_eq!(
            reverse_failure(libc::EAGAIN, TRY_AGAIN),
            (TRY_AGAIN, libc::EAGAIN)
        );
        assert_eq!(
            reverse_failure(libc::ERANGE, NETDB_INTERNAL),
            (NETDB_INTERNAL, libc::ERANGE)
        );
        assert_eq!(reverse_failure(libc::EIO, 0), (NETDB_INTERNAL, libc::EIO));
        assert_eq!(reverse_failure(0, NO_DATA), (NO_DATA, 0));
        assert_eq!(reverse_failure(0, 0), (HOST_NOT_FOUND, 0));
    }
}
