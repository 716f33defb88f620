//! The `gethostbyname` family: `gethostbyname`, `gethostbyname2` and their `_r` forms, answered
//! inside a scheduled coroutine by the cooperative `getaddrinfo` (`super::lookup`, same
//! sources and routing) and laid out as a `hostent`.
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
use std::ffi::{CStr, c_char, c_int};
use std::net::IpAddr;

use super::{Failure, lookup};
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
        family: af,
        addrs: list.addresses(),
    })
}

/// The `h_errno` and the `_r` forms' return value for a failure (module docs).
fn errors_of(f: Failure) -> (c_int, c_int) {
    match f.code {
        libc::EAI_NONAME => (HOST_NOT_FOUND, 0),
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
    align + ptr * (host.addrs.len() + 2) + host.addrs.len() * 16 + host.name.len() + 1
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
    // SAFETY: `need` bytes fit in the caller's buffer: the aligned pointer arrays (aliases: one
    // NULL; addresses: n and a NULL), then the addresses, then the name and its NUL.
    unsafe {
        let ptrs = buf
            .add(buf.align_offset(align_of::<*mut c_char>()))
            .cast::<*mut c_char>();
        let aliases = ptrs;
        let list = ptrs.add(1);
        let mut data = list.add(n + 1).cast::<u8>();
        *aliases = std::ptr::null_mut();
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
        std::ptr::copy_nonoverlapping(host.name.as_ptr(), data, host.name.len());
        *data.add(host.name.len()) = 0;
        *ret = libc::hostent {
            h_name: data.cast(),
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
    let host = match resolve(name, af) {
        Ok(h) => h,
        Err(f) => {
            let (h, _) = errors_of(f);
            set_h_errno(h);
            if h == NETDB_INTERNAL {
                set_errno(f.errno);
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
    // SAFETY: the caller's out-pointers.
    unsafe { *result = std::ptr::null_mut() };
    let (h, rc) = match resolve(name, af) {
        // SAFETY: the caller's hostent and buffer.
        Ok(host) => match unsafe { fill(&host, ret, buf, len) } {
            Ok(()) => {
                // SAFETY: as above.
                unsafe { *result = ret };
                (0, 0)
            }
            Err(_) => (NETDB_INTERNAL, libc::ERANGE),
        },
        Err(f) => errors_of(f),
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
