//! The name-server half of a hooked lookup: evdns's A and AAAA queries on the scheduler's
//! resolver, with the calling coroutine parked until both are answered.
//!
//! These are evdns's plain requests (`evdns_base_resolve_ipv4`/`_ipv6`), not its
//! `evdns_getaddrinfo`: that one reports a timeout, a truncated answer and a refusal all as
//! `EAI_FAIL`, and the hooks must tell them apart (a timeout is `EAI_AGAIN`, as glibc's; a
//! truncated answer is asked again through glibc, which retries over TCP, as libevent 2.1 does
//! not). Each request asks one name (`DNS_QUERY_NO_SEARCH`): the caller tries the search
//! list's names itself (`Conf::candidates`), since evdns's search moves on to the next name on
//! any error, a truncated answer's included, and so never reports it. The resolver's timeouts
//! and attempts apply as to `lookup_host`.
//!
//! # Lifecycle
//!
//! Each request gets its own boxed [`Part`] as libevent's callback argument, holding an `Rc`
//! of the lookup's state; libevent calls [`answered`] exactly once per request it accepted (an
//! answer, an error, a timeout, or `DNS_ERR_CANCEL` after a cancellation, always from the
//! loop: evdns defers every callback), and that call takes the box back. A request still
//! unanswered when the waiting coroutine leaves (cancellation) is cancelled by [`Pending`]'s
//! drop; the state outlives it through the parts' `Rc`s, so the late callbacks touch nothing
//! freed. The resolver outlives its requests (`net::dns`'s lifecycle invariants).

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use crate::scheduler::{self, Waker};
use crate::sys;

// libevent's `DNS_ERR_*` result codes (event2/dns.h; bindgen leaves the macros out).
const DNS_ERR_NONE: c_int = 0;
const DNS_ERR_SERVERFAILED: c_int = 2;
const DNS_ERR_NOTEXIST: c_int = 3;
const DNS_ERR_TRUNCATED: c_int = 65;
const DNS_ERR_TIMEOUT: c_int = 67;
const DNS_ERR_CANCEL: c_int = 69;
const DNS_ERR_NODATA: c_int = 70;
/// evdns's `DNS_QUERY_NO_SEARCH`: the name as given (the caller tries the search list).
const DNS_QUERY_NO_SEARCH: c_int = 1;
/// The outcome of a request evdns refused to start (no name server, no memory): `EAI_FAIL`, as
/// `evdns_getaddrinfo` reports it.
const REFUSED: c_int = -1;
/// `DNS_IPv4_A` and `DNS_IPv6_AAAA`: the `type` of a successful answer.
const DNS_IPV4_A: c_char = 1;
const DNS_IPV6_AAAA: c_char = 3;

/// What the name servers said about a name.
#[derive(Debug)]
pub(super) enum Answer {
    /// Its addresses (A first, then AAAA), possibly none of one family.
    Addrs(Vec<IpAddr>),
    /// An `EAI_*` code: `EAI_NONAME` (NXDOMAIN), `EAI_NODATA` (no address of the families
    /// asked), `EAI_AGAIN` (a timeout or a server failure), `EAI_FAIL` (anything else).
    Failed(c_int),
    /// An answer came truncated: the caller asks glibc, which retries over TCP.
    Truncated,
}

/// One request's outcome: its `DNS_ERR_*` code and addresses.
type Outcome = (c_int, Vec<IpAddr>);

/// The lookup's state, shared by the waiting coroutine and the requests' callbacks.
struct Lookup {
    v4: Cell<Option<Outcome>>,
    v6: Cell<Option<Outcome>>,
    /// Requests not answered yet.
    pending: Cell<u8>,
    waiter: Cell<Option<Waker>>,
}

/// libevent's callback argument for one request.
struct Part {
    lookup: Rc<Lookup>,
    v6: bool,
}

/// Asks `dns` for `name`'s A (`v4`) and AAAA (`v6`) records, without the search list, and
/// parks the running scheduled
/// coroutine until both are answered. Errors: the coroutine was cancelled (or cannot wait).
pub(super) fn query(
    dns: *mut sys::evdns_base,
    name: &CStr,
    v4: bool,
    v6: bool,
) -> io::Result<Answer> {
    let lookup = Rc::new(Lookup {
        v4: Cell::new(None),
        v6: Cell::new(None),
        pending: Cell::new(0),
        waiter: Cell::new(None),
    });
    let mut pending = Pending {
        dns,
        lookup: &lookup,
        requests: [std::ptr::null_mut(); 2],
    };
    for (i, want) in [v4, v6].into_iter().enumerate() {
        if !want {
            continue;
        }
        let is_v6 = i == 1;
        let arg = Box::into_raw(Box::new(Part {
            lookup: lookup.clone(),
            v6: is_v6,
        }));
        let resolve = if is_v6 {
            sys::evdns_base_resolve_ipv6
        } else {
            sys::evdns_base_resolve_ipv4
        };
        // SAFETY: `dns` is this scheduler's live resolver; `name` outlives the call (evdns
        // copies it); `arg` is taken back by `answered`, once (module docs).
        let request = unsafe {
            resolve(
                dns,
                name.as_ptr(),
                DNS_QUERY_NO_SEARCH,
                Some(answered),
                arg.cast(),
            )
        };
        if request.is_null() {
            // Refused at once, with no callback to come: the argument is ours again.
            // SAFETY: made by Box::into_raw above and handed to nobody.
            drop(unsafe { Box::from_raw(arg) });
            let slot = if is_v6 { &lookup.v6 } else { &lookup.v4 };
            slot.set(Some((REFUSED, Vec::new())));
        } else {
            lookup.pending.set(lookup.pending.get() + 1);
            pending.requests[i] = request;
        }
    }
    if lookup.pending.get() > 0 {
        lookup.waiter.set(Some(Waker::current()?));
        while lookup.pending.get() > 0 {
            scheduler::park()?;
        }
    }
    drop(pending);
    Ok(merge(lookup.v4.take(), lookup.v6.take()))
}

/// Cancels the requests still unanswered when the wait ends early (cancellation).
struct Pending<'a> {
    dns: *mut sys::evdns_base,
    lookup: &'a Lookup,
    /// The A and AAAA requests (null: not made, or refused).
    requests: [*mut sys::evdns_request; 2],
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.lookup.waiter.take();
        let slots = [&self.lookup.v4, &self.lookup.v6];
        for (request, slot) in self.requests.into_iter().zip(slots) {
            // A request's handle is valid until its callback has run (which fills the slot).
            let answered = {
                let outcome = slot.take();
                let done = outcome.is_some();
                slot.set(outcome);
                done
            };
            if !request.is_null() && !answered {
                // SAFETY: not answered yet, so libevent still holds the request; it calls
                // `answered` once more, with DNS_ERR_CANCEL (module docs).
                unsafe { sys::evdns_cancel_request(self.dns, request) };
            }
        }
    }
}

/// libevent's callback for each request: records the outcome, wakes the coroutine after the
/// last one.
unsafe extern "C" fn answered(
    result: c_int,
    kind: c_char,
    count: c_int,
    _ttl: c_int,
    addresses: *mut c_void,
    arg: *mut c_void,
) {
    // SAFETY: `arg` is the box `query` handed over for this request; libevent calls this once
    // per request, so it is taken back once.
    let part = unsafe { Box::from_raw(arg.cast::<Part>()) };
    let n = usize::try_from(count).unwrap_or(0);
    let mut addrs = Vec::with_capacity(n);
    if result == DNS_ERR_NONE && !addresses.is_null() {
        if kind == DNS_IPV4_A {
            // SAFETY: an A answer is `count` IPv4 addresses in network byte order.
            let raw = unsafe { std::slice::from_raw_parts(addresses.cast::<[u8; 4]>(), n) };
            addrs.extend(raw.iter().map(|a| IpAddr::V4(Ipv4Addr::from(*a))));
        } else if kind == DNS_IPV6_AAAA {
            // SAFETY: an AAAA answer is `count` 16-byte `in6_addr`s.
            let raw = unsafe { std::slice::from_raw_parts(addresses.cast::<[u8; 16]>(), n) };
            addrs.extend(raw.iter().map(|a| IpAddr::V6(Ipv6Addr::from(*a))));
        }
    }
    let lookup = &part.lookup;
    let slot = if part.v6 { &lookup.v6 } else { &lookup.v4 };
    slot.set(Some((result, addrs)));
    lookup.pending.set(lookup.pending.get().saturating_sub(1));
    if lookup.pending.get() == 0 {
        if let Some(waiter) = lookup.waiter.take() {
            waiter.wake();
        }
    }
}

/// The two requests' outcomes as one answer, the way glibc weighs them: any address is an
/// answer; a truncated reply is asked again; NXDOMAIN is final; both timed out is `EAI_AGAIN`;
/// a name with no address of either family is `EAI_NODATA`.
fn merge(v4: Option<Outcome>, v6: Option<Outcome>) -> Answer {
    let mut codes = [None; 2];
    let mut addrs = Vec::new();
    for (code, outcome) in codes.iter_mut().zip([v4, v6]) {
        if let Some((c, a)) = outcome {
            *code = Some(c);
            if addrs.is_empty() {
                addrs = a;
            } else {
                addrs.extend(a);
            }
        }
    }
    if !addrs.is_empty() {
        return Answer::Addrs(addrs);
    }
    let codes = codes.iter().flatten().copied();
    let has = |code: c_int| codes.clone().any(|c| c == code);
    if has(DNS_ERR_TRUNCATED) {
        return Answer::Truncated;
    }
    if has(DNS_ERR_NOTEXIST) {
        return Answer::Failed(libc::EAI_NONAME);
    }
    if has(DNS_ERR_CANCEL) {
        return Answer::Failed(libc::EAI_SYSTEM);
    }
    let timed_out = |c: c_int| c == DNS_ERR_TIMEOUT || c == DNS_ERR_SERVERFAILED;
    if codes.clone().next().is_some() && codes.clone().all(timed_out) {
        return Answer::Failed(libc::EAI_AGAIN);
    }
    if has(DNS_ERR_NONE) || has(DNS_ERR_NODATA) {
        return Answer::Failed(libc::EAI_NODATA);
    }
    Answer::Failed(libc::EAI_FAIL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(a: Answer) -> c_int {
        match a {
            Answer::Failed(code) => code,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn dns_outcomes_merge_as_glibc_weighs_them() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let ok = |a: Vec<IpAddr>| Some((DNS_ERR_NONE, a));
        let err = |c: c_int| Some((c, Vec::new()));
        assert!(matches!(merge(ok(vec![v4]), err(DNS_ERR_TIMEOUT)), Answer::Addrs(a) if a == [v4]));
        assert!(matches!(
            merge(ok(vec![]), err(DNS_ERR_TRUNCATED)),
            Answer::Truncated
        ));
        assert_eq!(
            failed(merge(err(DNS_ERR_NOTEXIST), err(DNS_ERR_NOTEXIST))),
            libc::EAI_NONAME
        );
        assert_eq!(failed(merge(err(DNS_ERR_TIMEOUT), None)), libc::EAI_AGAIN);
        assert_eq!(
            failed(merge(err(DNS_ERR_TIMEOUT), err(DNS_ERR_SERVERFAILED))),
            libc::EAI_AGAIN
        );
        assert_eq!(
            failed(merge(err(DNS_ERR_TIMEOUT), err(DNS_ERR_NODATA))),
            libc::EAI_NODATA
        );
        assert_eq!(failed(merge(ok(vec![]), None)), libc::EAI_NODATA);
        assert_eq!(
            failed(merge(err(DNS_ERR_CANCEL), err(DNS_ERR_CANCEL))),
            libc::EAI_SYSTEM
        );
        assert_eq!(failed(merge(err(REFUSED), None)), libc::EAI_FAIL);
    }
}
