//! evco::net::lookup_host: name lookups through libevent's evdns that suspend the coroutine,
//! answered by a small DNS server on 127.0.0.1 that runs as another coroutine of the same
//! thread (so a lookup that blocked the thread could never be answered: the watchdog would fire).

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use common::{dns_question as question, watchdog};
use evco::coroutine::Cancelled;
use evco::net::{UdpSocket, lookup_host, set_nameservers};

/// Names the test server knows, with their A and AAAA records.
type Zone = HashMap<&'static str, (Vec<Ipv4Addr>, Vec<Ipv6Addr>)>;

fn zone() -> Zone {
    let mut z = Zone::new();
    z.insert(
        "svc.evco.test",
        (
            vec![Ipv4Addr::new(127, 0, 0, 7), Ipv4Addr::new(127, 0, 0, 8)],
            vec![Ipv6Addr::LOCALHOST],
        ),
    );
    z.insert(
        "v4only.evco.test",
        (vec![Ipv4Addr::new(127, 0, 0, 9)], vec![]),
    );
    z
}

/// The answer to one query: the zone's A (type 1) or AAAA (type 28) records for a known name
/// (none for a type it lacks), NXDOMAIN for an unknown one.
fn answer(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(q)?;
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[..2]); // id
    let known = zone.get(name.as_str());
    let rcode = if known.is_some() { 0 } else { 3 };
    r.extend_from_slice(&[0x81, 0x80 | rcode]); // QR, RD, RA, rcode
    let records: Vec<Vec<u8>> = match (known, qtype) {
        (Some((v4, _)), 1) => v4.iter().map(|a| a.octets().to_vec()).collect(),
        (Some((_, v6)), 28) => v6.iter().map(|a| a.octets().to_vec()).collect(),
        _ => Vec::new(),
    };
    r.extend_from_slice(&1u16.to_be_bytes()); // one question
    r.extend_from_slice(&(records.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional records
    r.extend_from_slice(&q[12..end]);
    for data in records {
        r.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes()); // class IN
        r.extend_from_slice(&60u32.to_be_bytes()); // TTL
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

/// The test name server, a coroutine of this thread; dropping it stops it (`evco::run` waits
/// for every coroutine, and this one would serve forever).
struct NameServer {
    addr: SocketAddr,
    queries: Rc<Cell<usize>>,
    serving: evco::JoinHandle<()>,
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.serving.cancel().unwrap();
    }
}

/// Starts the test name server.
fn name_server() -> NameServer {
    name_server_holding(0)
}

/// Starts the test name server holding back its answers until it has seen `hold` queries
/// (then answering those and every later one at once).
fn name_server_holding(hold: usize) -> NameServer {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let queries = Rc::new(Cell::new(0));
    let count = queries.clone();
    let zone = zone();
    let serving = evco::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut held = Vec::new();
        loop {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            count.set(count.get() + 1);
            if let Some(reply) = answer(&buf[..n], &zone) {
                held.push((reply, from));
            }
            if count.get() >= hold {
                for (reply, to) in held.drain(..) {
                    sock.send_to(&reply, to).unwrap();
                }
            }
        }
    });
    NameServer {
        addr,
        queries,
        serving,
    }
}

/// Runs `f` in `evco::run` with the test name server as this thread's resolver.
fn with_name_server<T: 'static>(f: impl FnOnce(&NameServer) -> T + 'static) -> T {
    evco::run(|| {
        let server = name_server();
        set_nameservers(&[server.addr]).unwrap();
        f(&server)
    })
}

/// Makes this thread's resolver ask a socket that never answers (kept open by the caller).
fn silent_name_server() -> UdpSocket {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    set_nameservers(&[silent.local_addr().unwrap()]).unwrap();
    silent
}

/// A coroutine looking `host` up, run until it waits for the answer.
fn waiting_lookup(host: &'static str) -> evco::JoinHandle<std::io::Result<Vec<SocketAddr>>> {
    let started = Rc::new(Cell::new(false));
    let flag = started.clone();
    let asking = evco::spawn(move || {
        flag.set(true);
        lookup_host(host, 80)
    });
    while !started.get() {
        evco::yield_now().unwrap();
    }
    // It ran up to its wait for the answer (a coroutine only stops at a wait).
    assert!(!asking.is_finished());
    asking
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

#[test]
fn lookup_host_gets_every_a_and_aaaa_record_from_the_name_server() {
    let _w = watchdog(30);
    with_name_server(|server| {
        let got = sorted(lookup_host("svc.evco.test", 8080).unwrap());
        let want = sorted(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), 8080),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8)), 8080),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080),
        ]);
        assert_eq!(got, want);
        assert!(server.queries.get() >= 2, "one query per record type");
        // A name with no AAAA record: its A record alone.
        let got = lookup_host("v4only.evco.test", 1).unwrap();
        assert_eq!(got, ["127.0.0.9:1".parse::<SocketAddr>().unwrap()]);
    });
}

/// Twenty lookups are in flight at once: the name server answers none of them before it has
/// seen all forty queries (an A and an AAAA each), so lookups made one after another (or one
/// that blocked the thread) would never be answered and the watchdog would fire.
#[test]
fn lookups_in_several_coroutines_wait_side_by_side() {
    let _w = watchdog(30);
    evco::run(|| {
        let server = name_server_holding(40);
        set_nameservers(&[server.addr]).unwrap();
        let lookups: Vec<_> = (0..20u16)
            .map(|i| evco::spawn(move || lookup_host("svc.evco.test", i).unwrap()))
            .collect();
        for (i, h) in lookups.into_iter().enumerate() {
            let got = h.join().unwrap();
            assert_eq!(got.len(), 3);
            assert!(got.iter().all(|a| a.port() == i as u16));
        }
        assert_eq!(server.queries.get(), 40);
    });
}

#[test]
fn an_unknown_name_is_not_found() {
    let _w = watchdog(30);
    with_name_server(|server| {
        let e = lookup_host("nowhere.evco.test", 80).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(server.queries.get() >= 1);
    });
}

#[test]
fn address_literals_and_bad_names_ask_no_name_server() {
    let _w = watchdog(30);
    with_name_server(|server| {
        assert_eq!(
            lookup_host("127.0.0.1", 80).unwrap(),
            ["127.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            lookup_host("::1", 443).unwrap(),
            ["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
        let e = lookup_host("bad\0name", 80).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            set_nameservers(&[]).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(server.queries.get(), 0);
    });
}

/// A lookup whose coroutine is cancelled is cancelled with it: the resolver's socket and
/// timeout events leave the loop (nothing would retransmit to the name server later), and the
/// callback libevent still makes for the cancelled request touches nothing freed.
#[test]
fn a_cancelled_lookup_cancels_its_request() {
    let _w = watchdog(30);
    evco::run(|| {
        let _silent = silent_name_server();
        let base = evco::scheduler::base().unwrap();
        let idle = base.added_events();
        let asking = waiting_lookup("svc.evco.test");
        assert!(
            base.added_events() > idle,
            "the lookup's events are in the loop"
        );
        asking.cancel().unwrap();
        let p = asking.join().unwrap_err();
        assert!(p.downcast_ref::<Cancelled>().is_some());
        // libevent reports the cancellation through deferred callbacks on the loop's next turn:
        // give it up to a hundred turns (each sleep is at least one), far fewer than the
        // seconds evdns would take to give up on a request left in flight.
        for _ in 0..100 {
            if base.added_events() == idle {
                break;
            }
            evco::time::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            base.added_events(),
            idle,
            "the cancelled lookup left events behind"
        );
    });
}

/// Replacing the resolver while a lookup waits on it leaves that lookup on the old one (it
/// is cancelled here, its report arriving after the replacement), and later lookups use the
/// new servers. Under Memcheck (CI) this is where freeing a resolver too early would show.
#[test]
fn set_nameservers_while_a_lookup_waits_keeps_the_old_resolver_alive() {
    let _w = watchdog(30);
    evco::run(|| {
        let _silent = silent_name_server();
        let stuck = waiting_lookup("svc.evco.test");
        let server = name_server();
        set_nameservers(&[server.addr]).unwrap();
        // A resolver freed or torn down under it would fail the lookup on the loop's next turn
        // (libevent reports that through deferred callbacks): turn the loop, then check it is
        // still waiting, and that it did not move to the new server either.
        evco::time::sleep(std::time::Duration::from_millis(1));
        assert!(
            !stuck.is_finished(),
            "the waiting lookup ended with the old resolver"
        );
        assert_eq!(server.queries.get(), 0);
        stuck.cancel().unwrap();
        let p = stuck.join().unwrap_err();
        assert!(p.downcast_ref::<Cancelled>().is_some());
        let got = lookup_host("v4only.evco.test", 5).unwrap();
        assert_eq!(got, ["127.0.0.9:5".parse::<SocketAddr>().unwrap()]);
    });
}

/// Outside coroutines (here: `main`'s own code, with the name server spawned on this thread's
/// scheduler) a lookup runs the event loop until its answer comes.
#[test]
fn outside_coroutines_a_lookup_runs_the_loop_until_answered() {
    let _w = watchdog(30);
    let server = name_server();
    set_nameservers(&[server.addr]).unwrap();
    let got = lookup_host("v4only.evco.test", 7).unwrap();
    assert_eq!(got, ["127.0.0.9:7".parse::<SocketAddr>().unwrap()]);
    assert!(server.queries.get() >= 1);
}
