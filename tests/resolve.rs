//! Name resolution through the hooks: std's `to_socket_addrs`, `getaddrinfo`,
//! `gethostbyname` and friends called inside coroutines, answered by a DNS responder on
//! 127.0.0.1 that runs on threads of its own (UDP, and TCP for the truncated answer's retry).
//!
//! The resolver reads its configuration (`EVCO_RESOLV_CONF`, `EVCO_HOSTS`, `EVCO_NSSWITCH`)
//! when a scheduler makes its first one. The variables are set once per process, before any
//! test does anything else, to files in a directory of this process; each test holds `LOCK`
//! while it writes those files and runs its own scheduler on a thread of its own (so a fresh
//! resolver reads them), so the tests never see one another's configuration.
//!
//! Without the `hook` feature there is nothing here to test (lookup_host's own tests are in
//! tests/dns.rs).
#![cfg(feature = "hook")]

mod common;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use common::{dns_question as question, watchdog};

// ---- configuration ----

static LOCK: Mutex<()> = Mutex::new(());
static ENV: Once = Once::new();

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("evco-resolve-{}", std::process::id()))
}

/// Takes the configuration for this test: `resolv` (None: no file at all), `hosts` and the
/// nsswitch `hosts:` sources.
fn configure(resolv: Option<&str>, hosts: &str, nss: &str) -> MutexGuard<'static, ()> {
    ENV.call_once(|| {
        std::fs::create_dir_all(dir()).unwrap();
        // SAFETY: the first thing every test does, under `Once`: no other thread of this
        // process reads the environment meanwhile (the other tests wait here, and no resolver
        // or pool thread exists yet).
        unsafe {
            std::env::set_var("EVCO_RESOLV_CONF", dir().join("resolv.conf"));
            std::env::set_var("EVCO_HOSTS", dir().join("hosts"));
            std::env::set_var("EVCO_NSSWITCH", dir().join("nsswitch.conf"));
        }
    });
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let resolv_path = dir().join("resolv.conf");
    match resolv {
        Some(text) => std::fs::write(&resolv_path, text).unwrap(),
        None => {
            let _ = std::fs::remove_file(&resolv_path);
        }
    }
    std::fs::write(dir().join("hosts"), hosts).unwrap();
    std::fs::write(
        dir().join("nsswitch.conf"),
        format!("passwd: files\nhosts: {nss}\n"),
    )
    .unwrap();
    guard
}

/// A resolv.conf naming `server`, with short timeouts.
fn resolv_conf(server: SocketAddr) -> String {
    format!("nameserver {server}\noptions timeout:0.3 attempts:1\n")
}

/// Runs `f` in `evco::run` on a thread of its own (a fresh scheduler, so a fresh resolver).
fn on_new_scheduler<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || evco::run(f)).join().unwrap()
}

// ---- the responder ----

/// What the responder does with a name.
#[derive(Clone)]
enum Record {
    Addrs(Vec<Ipv4Addr>, Vec<Ipv6Addr>),
    /// Never answered.
    Silent,
    /// Over UDP a truncated reply with no records; over TCP these addresses.
    Truncated(Vec<Ipv4Addr>),
}

/// A DNS server on 127.0.0.1 (UDP and TCP on the same port), on threads of its own.
struct Responder {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// When the responder sends its UDP answers.
#[derive(Clone, Default)]
struct Hold {
    /// Not before this long after the first query.
    delay: Duration,
    /// Not before it has seen this many queries.
    queries: usize,
    /// Not before this counter has grown by `ticks` since the last of those queries came.
    ticker: Option<(Arc<AtomicUsize>, usize)>,
}

impl Responder {
    fn start(zone: HashMap<&'static str, Record>, hold: Hold) -> Responder {
        // A UDP port whose TCP twin is free too (another test's connection may hold it).
        let (udp, tcp) = (0..100)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
                let tcp = TcpListener::bind(udp.local_addr().unwrap()).ok()?;
                Some((udp, tcp))
            })
            .expect("no port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let zone = Arc::new(zone);
        let udp_thread = {
            let (zone, queries, stop) = (zone.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || serve_udp(udp, &zone, hold, &queries, &stop))
        };
        let tcp_thread = {
            let (zone, tcp_queries, stop) = (zone.clone(), tcp_queries.clone(), stop.clone());
            std::thread::spawn(move || serve_tcp(tcp, &zone, &tcp_queries, &stop))
        };
        Responder {
            addr,
            queries,
            tcp_queries,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(SeqCst)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // The UDP thread reads with a short timeout; the TCP one is woken by a connection.
        let _ = std::net::TcpStream::connect(self.addr);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

fn serve_udp(
    sock: UdpSocket,
    zone: &HashMap<&str, Record>,
    hold: Hold,
    queries: &AtomicUsize,
    stop: &AtomicBool,
) {
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut first: Option<Instant> = None;
    let mut ticks_at_last: usize = 0;
    let mut buf = [0u8; 1500];
    while !stop.load(SeqCst) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n == 0 {
                continue;
            }
            queries.fetch_add(1, SeqCst);
            first.get_or_insert_with(Instant::now);
            if let Some((t, _)) = &hold.ticker {
                ticks_at_last = t.load(SeqCst);
            }
            if let Some(reply) = answer(&buf[..n], zone, false) {
                held.push((reply, from));
            }
        }
        let due = first.is_some_and(|f| f.elapsed() >= hold.delay)
            && queries.load(SeqCst) >= hold.queries
            && hold
                .ticker
                .as_ref()
                .is_none_or(|(t, n)| t.load(SeqCst) >= ticks_at_last + n);
        if due {
            for (reply, to) in held.drain(..) {
                sock.send_to(&reply, to).unwrap();
            }
        }
    }
}

fn serve_tcp(
    listener: TcpListener,
    zone: &HashMap<&str, Record>,
    queries: &AtomicUsize,
    stop: &AtomicBool,
) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
        if stop.load(SeqCst) {
            return;
        }
        let mut len = [0u8; 2];
        while conn.read_exact(&mut len).is_ok() {
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if conn.read_exact(&mut q).is_err() {
                break;
            }
            queries.fetch_add(1, SeqCst);
            let Some(reply) = answer(&q, zone, true) else {
                break;
            };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if conn.write_all(&framed).is_err() {
                break;
            }
        }
    }
}

/// The reply to one query (`None`: no reply).
fn answer(q: &[u8], zone: &HashMap<&str, Record>, over_tcp: bool) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(q)?;
    let record = zone.get(name.as_str());
    let (truncated, v4, v6) = match record {
        None => (false, vec![], vec![]),
        Some(Record::Silent) => return None,
        Some(Record::Addrs(v4, v6)) => (false, v4.clone(), v6.clone()),
        Some(Record::Truncated(v4)) if over_tcp => (false, v4.clone(), vec![]),
        Some(Record::Truncated(_)) => (true, vec![], vec![]),
    };
    let rdata: Vec<Vec<u8>> = match qtype {
        1 => v4.iter().map(|a| a.octets().to_vec()).collect(),
        28 => v6.iter().map(|a| a.octets().to_vec()).collect(),
        _ => vec![],
    };
    let mut r = q[..2].to_vec();
    r.push(0x81 | if truncated { 0x02 } else { 0 }); // QR, RD, TC
    r.push(0x80 | if record.is_none() { 3 } else { 0 }); // RA, rcode
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..end]);
    for data in rdata {
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

fn zone() -> HashMap<&'static str, Record> {
    let mut z = HashMap::new();
    z.insert(
        "svc.evco.test",
        Record::Addrs(
            vec![Ipv4Addr::new(127, 0, 0, 7), Ipv4Addr::new(127, 0, 0, 8)],
            vec![Ipv6Addr::LOCALHOST],
        ),
    );
    z.insert("silent.evco.test", Record::Silent);
    z.insert(
        "big.evco.test",
        Record::Truncated((1..=3).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect()),
    );
    z
}

// ---- calling libc ----

/// libc's (the hooked) `getaddrinfo` for `host` with `SOCK_STREAM` and `family`: the addresses,
/// or the `EAI_*` code and errno.
fn getaddrinfo(host: &str, family: i32) -> Result<Vec<IpAddr>, (i32, i32)> {
    let host = CString::new(host).unwrap();
    // SAFETY: all-zero addrinfo is empty hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = family;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res = std::ptr::null_mut();
    // SAFETY: valid C string, hints and out-pointer.
    let rc = unsafe { libc::getaddrinfo(host.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        return Err((
            rc,
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    let mut out = Vec::new();
    let mut p = res;
    // SAFETY: the list getaddrinfo returned, read then freed once with libc's freeaddrinfo.
    unsafe {
        while let Some(ai) = p.as_ref() {
            out.push(match ai.ai_family {
                libc::AF_INET => {
                    let v4 = &*ai.ai_addr.cast::<libc::sockaddr_in>();
                    IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes())
                }
                _ => IpAddr::from((*ai.ai_addr.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr),
            });
            p = ai.ai_next;
        }
        libc::freeaddrinfo(res);
    }
    Ok(out)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|a| a.parse().unwrap()).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

// ---- tests ----

/// The test: 50 coroutines resolve through std's `to_socket_addrs` against a
/// responder that answers after 200 ms, while a 10 ms ticker runs. The responder answers
/// nothing before it has all 100 queries (an A and an AAAA each) and the ticker has ticked
/// three times since the last came: lookups that blocked the thread, or ran one after another,
/// would never be answered (the watchdog would fire).
///
/// The time bounds (all done within 1.5 x 200 ms, at most one tick missed) are printed,
/// not asserted: 204-208 ms and 21 ticks natively here, but 297 ms and 21 of 29 ticks under
/// Memcheck (scripts/ci-faults runs this binary under it), where they would fail on a slow
/// day. The responder's conditions above are the proof of overlap that does not depend on it.
#[test]
fn fifty_coroutines_resolve_side_by_side_while_a_ticker_ticks() {
    let _w = watchdog(60);
    let ticks = Arc::new(AtomicUsize::new(0));
    let hold = Hold {
        delay: Duration::from_millis(200),
        queries: 100,
        ticker: Some((ticks.clone(), 3)),
    };
    let server = Responder::start(zone(), hold);
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    let (elapsed, ticked) = on_new_scheduler(move || {
        let done = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (ticks, done) = (ticks.clone(), done.clone());
            evco::spawn(move || {
                while !done.load(SeqCst) {
                    evco::time::sleep(Duration::from_millis(10));
                    ticks.fetch_add(1, SeqCst);
                }
            })
        };
        let start = Instant::now();
        let lookups: Vec<_> = (0..50u16)
            .map(|i| {
                evco::spawn(move || {
                    ("svc.evco.test", 1000 + i)
                        .to_socket_addrs()
                        .map(Vec::from_iter)
                })
            })
            .collect();
        for (i, h) in lookups.into_iter().enumerate() {
            let got = h.join().unwrap().unwrap();
            let found = sorted(got.iter().map(SocketAddr::ip).collect());
            assert_eq!(found, ips(&["127.0.0.7", "127.0.0.8", "::1"]));
            assert!(got.iter().all(|a| a.port() == 1000 + i as u16));
        }
        let elapsed = start.elapsed();
        done.store(true, SeqCst);
        ticker.join().unwrap();
        (elapsed, ticks.load(SeqCst))
    });
    assert_eq!(server.queries(), 100);
    let expected = elapsed.as_millis() / 10;
    println!("50 lookups: {elapsed:?}, {ticked} ticks of 10 ms (about {expected} fit)");
}

/// A coroutine that counts its turns (yielding each time) until told to stop: a lookup that
/// returns before it had a turn did not suspend; one that returns after did.
fn turn_counter() -> (Arc<AtomicUsize>, Arc<AtomicBool>, evco::JoinHandle<()>) {
    let (turns, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (t, s) = (turns.clone(), stop.clone());
    let h = evco::spawn(move || {
        while !s.load(SeqCst) {
            t.fetch_add(1, SeqCst);
            evco::yield_now().unwrap();
        }
    });
    (turns, stop, h)
}

#[test]
fn an_unknown_name_is_eai_noname() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    let got = on_new_scheduler(|| {
        let e = ("nowhere.evco.test", 80).to_socket_addrs().unwrap_err();
        println!("std's error: {e}");
        getaddrinfo("nowhere.evco.test", libc::AF_UNSPEC)
    });
    assert_eq!(got.unwrap_err().0, libc::EAI_NONAME);
    assert!(server.queries() >= 2, "asked the name server");
}

/// The responder never answers: evdns gives up after `timeout:0.3 attempts:1` and the call
/// reports `EAI_AGAIN`, as glibc's does for a name server that does not answer.
#[test]
fn an_unanswered_query_times_out_with_eai_again() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    let (got, elapsed) = on_new_scheduler(|| {
        let start = Instant::now();
        (
            getaddrinfo("silent.evco.test", libc::AF_INET),
            start.elapsed(),
        )
    });
    println!("timed out after {elapsed:?}");
    assert_eq!(got.unwrap_err().0, libc::EAI_AGAIN);
    assert!(server.queries() >= 1);
}

/// Hosts-file names, `localhost`, `*.localhost` and numeric hosts are answered without a
/// query, and without suspending the caller (a coroutine ready to run gets no turn).
#[test]
fn hosts_file_names_and_numeric_hosts_make_no_query() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let hosts = "10.1.2.3 db.evco.test db\nfd00::3 db.evco.test db\n";
    let _g = configure(Some(&resolv_conf(server.addr)), hosts, "files dns");
    on_new_scheduler(|| {
        let (turns, stop, counter) = turn_counter();
        assert_eq!(
            sorted(getaddrinfo("db.evco.test", libc::AF_UNSPEC).unwrap()),
            ips(&["10.1.2.3", "fd00::3"])
        );
        assert_eq!(
            getaddrinfo("DB", libc::AF_INET).unwrap(),
            ips(&["10.1.2.3"])
        );
        assert_eq!(
            getaddrinfo("db", libc::AF_INET6).unwrap(),
            ips(&["fd00::3"])
        );
        assert_eq!(
            getaddrinfo("localhost", libc::AF_UNSPEC).unwrap(),
            ips(&["127.0.0.1", "::1"])
        );
        assert_eq!(
            getaddrinfo("a.b.localhost", libc::AF_INET).unwrap(),
            ips(&["127.0.0.1"])
        );
        assert_eq!(
            getaddrinfo("10.0.0.1", libc::AF_UNSPEC).unwrap(),
            ips(&["10.0.0.1"])
        );
        assert_eq!(getaddrinfo("::2", libc::AF_UNSPEC).unwrap(), ips(&["::2"]));
        // libc's own errors for numeric hosts: an IPv6 literal asked as IPv4.
        assert_eq!(getaddrinfo("::2", libc::AF_INET).unwrap_err().0, -9); // EAI_ADDRFAMILY
        let std: Vec<SocketAddr> = ("db.evco.test", 5432).to_socket_addrs().unwrap().collect();
        assert!(std.contains(&"10.1.2.3:5432".parse().unwrap()));
        assert_eq!(
            turns.load(SeqCst),
            0,
            "a lookup answered without a query suspended"
        );
        stop.store(true, SeqCst);
        counter.join().unwrap();
    });
    assert_eq!(server.queries(), 0);
}

/// With no resolv.conf at all, hosts-file names and `localhost` still resolve (evdns's
/// `INITIALIZE_NAMESERVERS` used to fail then, and with it every lookup).
#[test]
fn a_missing_resolv_conf_still_resolves_hosts_names_and_localhost() {
    let _w = watchdog(30);
    let _g = configure(None, "10.1.2.4 cache.evco.test\n", "files dns");
    on_new_scheduler(|| {
        assert_eq!(
            getaddrinfo("cache.evco.test", libc::AF_UNSPEC).unwrap(),
            ips(&["10.1.2.4"])
        );
        assert_eq!(
            getaddrinfo("localhost", libc::AF_INET).unwrap(),
            ips(&["127.0.0.1"])
        );
        let found = evco::net::lookup_host("cache.evco.test", 1).unwrap();
        assert_eq!(found, ["10.1.2.4:1".parse::<SocketAddr>().unwrap()]);
        assert_eq!(evco::net::lookup_host("localhost", 2).unwrap().len(), 2);
    });
}

/// `lookup_host` reads `EVCO_RESOLV_CONF` too, a port on the `nameserver` line included.
#[test]
fn lookup_host_asks_the_name_server_of_evco_resolv_conf() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    let found = on_new_scheduler(|| evco::net::lookup_host("svc.evco.test", 9).unwrap());
    let found = sorted(found.iter().map(SocketAddr::ip).collect());
    assert_eq!(found, ips(&["127.0.0.7", "127.0.0.8", "::1"]));
    assert!(server.queries() >= 2);
}

/// A truncated UDP answer is asked again over TCP (evdns 2.1 has no TCP), of the same server,
/// on the pool (so in a child process: see `in_child`).
#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let _w = watchdog(30);
    if !in_child("a_truncated_answer_is_asked_again_over_tcp") {
        return;
    }
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    let got = on_new_scheduler(|| getaddrinfo("big.evco.test", libc::AF_INET));
    assert_eq!(got.unwrap(), ips(&["10.9.0.1", "10.9.0.2", "10.9.0.3"]));
    assert!(server.tcp_queries.load(SeqCst) >= 1, "no TCP retry");
    println!("child-finished");
}

/// Whether this is the child process `test` runs in; in the parent, runs it there (and checks
/// it passed) first. Tests that use the pool run in children: its threads, started from a
/// coroutine's stack and kept for the process's life, would be reported by Memcheck
/// (scripts/ci-faults runs this binary under it) as possibly lost, with no stack to suppress
/// them by; and glibc, which they call, keeps per-thread resolver state.
fn in_child(test: &str) -> bool {
    if common::is_child() {
        return true;
    }
    common::child_passes(test, &[]);
    false
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// How many resolver pool threads (`evco-dns`) this process has.
fn pool_threads() -> usize {
    thread_names().iter().filter(|n| *n == "evco-dns").count()
}

/// With only files and dns in nsswitch.conf, no pool thread is involved; with another NSS
/// source, glibc's own `getaddrinfo` runs on the pool (a thread named `evco-dns` appears) and
/// answers what libc answers outside coroutines. In a child process of its own, so that no
/// other test's lookups started the pool first.
#[test]
fn other_nss_sources_run_glibc_on_the_pool() {
    let _w = watchdog(60);
    if !in_child("other_nss_sources_run_glibc_on_the_pool") {
        return;
    }
    // Outside coroutines the hook is libc's call.
    let want = getaddrinfo("localhost", libc::AF_INET);
    {
        let _g = configure(None, "10.1.2.5 files.evco.test\n", "files dns");
        let got = on_new_scheduler(|| {
            (
                getaddrinfo("files.evco.test", libc::AF_INET),
                getaddrinfo("localhost", libc::AF_INET),
            )
        });
        assert_eq!(got, (Ok(ips(&["10.1.2.5"])), Ok(ips(&["127.0.0.1"]))));
        assert_eq!(pool_threads(), 0, "files and dns need no pool");
    }
    let _g = configure(
        None,
        "10.1.2.5 files.evco.test\n",
        "files [NOTFOUND=return] myhostname dns",
    );
    let (local, got) = on_new_scheduler(|| {
        (
            getaddrinfo("files.evco.test", libc::AF_INET),
            getaddrinfo("localhost", libc::AF_INET),
        )
    });
    assert_eq!(got, want);
    // glibc reads /etc/hosts, not EVCO_HOSTS: the name is unknown to it.
    assert!(local.is_err(), "{local:?}");
    assert_eq!(pool_threads(), 1);
    println!("child-finished");
}

/// Reverse lookups run on the pool too, and answer what libc answers outside coroutines (in a
/// child process: see `in_child`).
#[test]
fn getnameinfo_answers_as_libc_does() {
    let _w = watchdog(30);
    if !in_child("getnameinfo_answers_as_libc_does") {
        return;
    }
    let _g = configure(None, "", "files dns");
    fn name_of_loopback() -> (i32, String) {
        let sa = socket2::SockAddr::from("127.0.0.1:80".parse::<SocketAddr>().unwrap());
        let mut host = [0u8; 256];
        // SAFETY: a valid sockaddr of its length; a host buffer of its length; no service.
        let rc = unsafe {
            libc::getnameinfo(
                sa.as_ptr().cast(),
                sa.len(),
                host.as_mut_ptr().cast(),
                host.len() as u32,
                std::ptr::null_mut(),
                0,
                0,
            )
        };
        let name = CStr::from_bytes_until_nul(&host)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        (rc, name)
    }
    let want = name_of_loopback();
    assert_eq!(pool_threads(), 0, "outside coroutines: libc's own call");
    let got = on_new_scheduler(name_of_loopback);
    assert!(pool_threads() >= 1, "inside: the pool ran it");
    assert_eq!(got, want);
    println!("child-finished");
}

/// `gethostbyaddr` and `gethostbyaddr_r` inside a coroutine run glibc's reverse lookup on the
/// pool and answer what libc answers outside coroutines: name, aliases and address, in the
/// coroutine's buffer or the caller's (`ERANGE` when that is too small); an address of the
/// wrong length is libc's to refuse. In a child process: see `in_child`.
#[test]
fn gethostbyaddr_answers_as_libc_does() {
    let _w = watchdog(30);
    if !in_child("gethostbyaddr_answers_as_libc_does") {
        return;
    }
    let _g = configure(None, "", "files dns");
    /// Name, aliases and addresses of a reverse lookup of 127.0.0.1, both forms, and what a
    /// 2-byte buffer and a 3-byte address get.
    type Answer = (Option<(String, Vec<String>, Vec<IpAddr>)>, i32, i32, bool);
    fn reverse_loopback() -> [Answer; 2] {
        let addr = [127u8, 0, 0, 1];
        // SAFETY: 4 bytes of an IPv4 address.
        let ent = unsafe { gethostbyaddr(addr.as_ptr().cast(), 4, libc::AF_INET) };
        // SAFETY: `ent` is NULL or the hostent gethostbyaddr just returned, read before any
        // other call could reuse its buffer.
        let plain = (unsafe { described(ent) }, 0, 0, false);
        // SAFETY: all-zero is a valid hostent to fill.
        let mut ret: libc::hostent = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        let (mut h, mut h_small) = (0, 0);
        let mut buf = vec![0u8; 4096];
        let mut small = [0u8; 2];
        // SAFETY: valid pointers and buffers of the lengths given, for each call.
        let (rc, rc_small, bad) = unsafe {
            let rc_small = gethostbyaddr_r(
                addr.as_ptr().cast(),
                4,
                libc::AF_INET,
                &mut ret,
                small.as_mut_ptr().cast(),
                small.len(),
                &mut result,
                &mut h_small,
            );
            let rc = gethostbyaddr_r(
                addr.as_ptr().cast(),
                4,
                libc::AF_INET,
                &mut ret,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
                &mut h,
            );
            let bad = gethostbyaddr(addr.as_ptr().cast(), 3, libc::AF_INET).is_null();
            (rc, rc_small, bad)
        };
        // SAFETY: `result` is NULL or `&ret`, filled in from `buf`, both alive here.
        let r = (unsafe { described(result) }, rc, rc_small, bad);
        [plain, r]
    }
    let want = reverse_loopback();
    assert_eq!(pool_threads(), 0, "outside coroutines: libc's own call");
    let got = on_new_scheduler(reverse_loopback);
    assert!(pool_threads() >= 1, "inside: the pool ran it");
    println!("gethostbyaddr(127.0.0.1): {:?}", want[0].0);
    assert_eq!(got, want);
    assert_eq!(want[1].2, libc::ERANGE, "a 2-byte buffer is too small");
    assert!(want[1].3, "a 3-byte IPv4 address is refused");
    println!("child-finished");
}

/// A hostent's name, aliases and addresses; `None` for NULL.
///
/// # Safety
///
/// `ent` is NULL or a valid hostent.
unsafe fn described(ent: *const libc::hostent) -> Option<(String, Vec<String>, Vec<IpAddr>)> {
    if ent.is_null() {
        return None;
    }
    // SAFETY: the caller's contract; aliases are a NULL-terminated list of C strings.
    unsafe {
        let (name, addrs) = hostent(ent);
        let mut aliases = Vec::new();
        let mut p = (*ent).h_aliases;
        while !(*p).is_null() {
            aliases.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
            p = p.add(1);
        }
        Some((name, aliases, addrs))
    }
}

/// A lookup cancelled with its coroutine fails with `EAI_SYSTEM` and `errno = ECANCELED`.
#[test]
fn a_cancelled_lookup_is_eai_system_with_ecanceled() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let conf = format!(
        "nameserver {}\noptions timeout:20 attempts:1\n",
        server.addr
    );
    let _g = configure(Some(&conf), "", "files dns");
    let got = on_new_scheduler(|| {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        let asking = evco::spawn(move || {
            *g.lock().unwrap() = Some(getaddrinfo("silent.evco.test", libc::AF_INET));
        });
        while server_queries_pending(&asking) {
            evco::yield_now().unwrap();
        }
        asking.cancel().unwrap();
        let _ = asking.join();
        got.lock().unwrap().take()
    });
    assert_eq!(got, Some(Err((libc::EAI_SYSTEM, libc::ECANCELED))));
}

/// Whether `h` has not reached its wait yet (it runs on its first turn up to it).
fn server_queries_pending(h: &evco::JoinHandle<()>) -> bool {
    !h.is_finished() && evco::scheduler::base().unwrap().added_events() == 0
}

/// The calling coroutine's `gethostbyname` buffer: two coroutines whose calls interleave (each
/// suspends in its lookup, then yields) keep their own answers. glibc's one static buffer would
/// show the second answer to both.
#[test]
fn two_coroutines_interleaving_gethostbyname_keep_their_own_answers() {
    let _w = watchdog(30);
    let mut z = zone();
    z.insert(
        "db.evco.test",
        Record::Addrs(vec![Ipv4Addr::new(127, 0, 0, 9)], vec![]),
    );
    let server = Responder::start(z, Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    on_new_scheduler(|| {
        let asking: Vec<_> = [
            ("svc.evco.test", vec!["127.0.0.7", "127.0.0.8"]),
            ("db.evco.test", vec!["127.0.0.9"]),
        ]
        .into_iter()
        .map(|(name, want)| {
            evco::spawn(move || {
                let c = CString::new(name).unwrap();
                // SAFETY: a valid C string; the hostent is read before this coroutine's
                // next call.
                let ent = unsafe { gethostbyname(c.as_ptr()) };
                for _ in 0..3 {
                    evco::yield_now().unwrap();
                }
                // SAFETY: non-null: the answer, in this coroutine's buffer.
                let (canon, addrs) = unsafe { hostent(ent) };
                assert_eq!(canon, name);
                assert_eq!(sorted(addrs), ips(&want));
            })
        })
        .collect();
        for h in asking {
            h.join().unwrap();
        }
    });
    assert!(server.queries() >= 2, "each name was asked");
}

/// The `_r` and family forms, and `h_errno` for an unknown name.
#[test]
fn gethostbyname_r_and_gethostbyname2_fill_the_callers_hostent() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    on_new_scheduler(|| {
        let name = CString::new("svc.evco.test").unwrap();
        // SAFETY: all-zero is a valid hostent to fill.
        let mut ent: libc::hostent = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        let mut h_errno = 0;
        let mut small = [0u8; 16];
        // SAFETY: valid pointers and a buffer of the length given, for each call.
        let rc = unsafe {
            gethostbyname_r(
                name.as_ptr(),
                &mut ent,
                small.as_mut_ptr().cast(),
                16,
                &mut result,
                &mut h_errno,
            )
        };
        assert_eq!(rc, libc::ERANGE, "a buffer too small");
        let mut buf = [0u8; 1024];
        // SAFETY: as above.
        let rc = unsafe {
            gethostbyname_r(
                name.as_ptr(),
                &mut ent,
                buf.as_mut_ptr().cast(),
                1024,
                &mut result,
                &mut h_errno,
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: the call succeeded: `result` is `ent`, pointing into `buf`.
        let (canon, addrs) = unsafe { hostent(result) };
        assert_eq!(
            (canon.as_str(), sorted(addrs)),
            ("svc.evco.test", ips(&["127.0.0.7", "127.0.0.8"]))
        );
        // SAFETY: a valid C string.
        let v6 = unsafe { hostent(gethostbyname2(name.as_ptr(), libc::AF_INET6)) };
        assert_eq!(v6.1, ips(&["::1"]));
        let unknown = CString::new("nowhere.evco.test").unwrap();
        // SAFETY: as above.
        let rc = unsafe {
            gethostbyname_r(
                unknown.as_ptr(),
                &mut ent,
                buf.as_mut_ptr().cast(),
                1024,
                &mut result,
                &mut h_errno,
            )
        };
        assert_eq!((rc, result.is_null(), h_errno), (0, true, 1)); // HOST_NOT_FOUND
    });
}

// libc's declarations (the libc crate has no `gethostbyname*` for Linux).
unsafe extern "C" {
    fn gethostbyaddr(
        addr: *const libc::c_void,
        len: libc::socklen_t,
        ty: libc::c_int,
    ) -> *mut libc::hostent;
    fn gethostbyaddr_r(
        addr: *const libc::c_void,
        len: libc::socklen_t,
        ty: libc::c_int,
        ret: *mut libc::hostent,
        buf: *mut libc::c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::hostent,
        h_errnop: *mut libc::c_int,
    ) -> libc::c_int;
    fn gethostbyname(name: *const libc::c_char) -> *mut libc::hostent;
    fn gethostbyname2(name: *const libc::c_char, af: libc::c_int) -> *mut libc::hostent;
    fn gethostbyname2_r(
        name: *const libc::c_char,
        af: libc::c_int,
        ret: *mut libc::hostent,
        buf: *mut libc::c_char,
        len: libc::size_t,
        result: *mut *mut libc::hostent,
        h_errnop: *mut libc::c_int,
    ) -> libc::c_int;
    fn __h_errno_location() -> *mut libc::c_int;
    fn gethostbyname_r(
        name: *const libc::c_char,
        ret: *mut libc::hostent,
        buf: *mut libc::c_char,
        len: libc::size_t,
        result: *mut *mut libc::hostent,
        h_errnop: *mut libc::c_int,
    ) -> libc::c_int;
}

/// A hostent's name and addresses.
///
/// # Safety
///
/// `ent` is null (a failed call: this panics) or a valid hostent.
unsafe fn hostent(ent: *const libc::hostent) -> (String, Vec<IpAddr>) {
    // SAFETY: the caller's contract.
    let ent = unsafe { ent.as_ref() }.expect("the lookup failed");
    let mut addrs = Vec::new();
    // SAFETY: a valid hostent: a C string name and a NULL-terminated list of h_length-byte
    // addresses.
    unsafe {
        let mut p = ent.h_addr_list;
        while !(*p).is_null() {
            let a = *p as *const u8;
            addrs.push(match ent.h_length {
                4 => IpAddr::from(*(a as *const [u8; 4])),
                _ => IpAddr::from(*(a as *const [u8; 16])),
            });
            p = p.add(1);
        }
        (
            CStr::from_ptr(ent.h_name).to_string_lossy().into_owned(),
            addrs,
        )
    }
}

/// Every field of every entry of a `getaddrinfo` list: flags, family, socket type, protocol,
/// the sockaddr's bytes, the canonical name.
type Entry = (i32, i32, i32, i32, Vec<u8>, Option<String>);

/// libc's (the hooked) `getaddrinfo` with these hints `(flags, family, socktype, protocol)`
/// (`None`: a NULL hints pointer): every entry, or the `EAI_*` code.
fn getaddrinfo_entries(
    node: &str,
    service: Option<&str>,
    hints: Option<[i32; 4]>,
) -> Result<Vec<Entry>, i32> {
    let node = CString::new(node).unwrap();
    let service = service.map(|s| CString::new(s).unwrap());
    // SAFETY: all-zero addrinfo is empty hints.
    let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
    if let Some([flags, family, socktype, protocol]) = hints {
        (h.ai_flags, h.ai_family, h.ai_socktype, h.ai_protocol) =
            (flags, family, socktype, protocol);
    }
    let mut res = std::ptr::null_mut();
    // SAFETY: valid C strings (or NULL), hints (or NULL) and out-pointer.
    let rc = unsafe {
        libc::getaddrinfo(
            node.as_ptr(),
            service.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            if hints.is_some() {
                &h
            } else {
                std::ptr::null()
            },
            &mut res,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    let mut out = Vec::new();
    let mut p = res;
    // SAFETY: the list getaddrinfo returned: each `ai_addr` holds `ai_addrlen` bytes, a
    // non-null `ai_canonname` is a C string; freed once, with libc's freeaddrinfo.
    unsafe {
        while let Some(ai) = p.as_ref() {
            let addr = std::slice::from_raw_parts(ai.ai_addr.cast::<u8>(), ai.ai_addrlen as usize);
            let canon = ai
                .ai_canonname
                .as_ref()
                .map(|c| CStr::from_ptr(c).to_string_lossy().into_owned());
            out.push((
                ai.ai_flags,
                ai.ai_family,
                ai.ai_socktype,
                ai.ai_protocol,
                addr.to_vec(),
                canon,
            ));
            p = ai.ai_next;
        }
        libc::freeaddrinfo(res);
    }
    Ok(out)
}

/// Each entry's `ai_flags` are the caller's, as glibc's are (the hooks used to leave the
/// `AI_NUMERICHOST` of their own calls in them, and take `AI_CANONNAME` out): numeric hosts
/// compared with libc's own answer outside coroutines, hosts-file names with the hints given.
#[test]
fn entries_carry_the_callers_flags_as_glibcs_do() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let hosts = "10.1.2.6 flags.evco.test\nfd00::6 flags.evco.test\n";
    let _g = configure(Some(&resolv_conf(server.addr)), hosts, "files dns");
    let numeric = [
        ("127.0.0.1", Some("80"), Some([libc::AI_CANONNAME, 0, 0, 0])),
        ("127.1", None, None),
        (
            "::1",
            Some("80"),
            Some([libc::AI_PASSIVE, 0, libc::SOCK_DGRAM, 0]),
        ),
        (
            "fe80::1%lo",
            Some("80"),
            Some([libc::AI_ADDRCONFIG, 0, 0, 0]),
        ),
    ];
    let call_all = move || {
        numeric
            .iter()
            .map(|(n, s, h)| getaddrinfo_entries(n, *s, *h))
            .collect::<Vec<_>>()
    };
    let want = call_all();
    assert_eq!(on_new_scheduler(call_all), want);
    let named = on_new_scheduler(|| {
        [
            Some([libc::AI_CANONNAME, 0, 0, 0]),
            Some([
                libc::AI_V4MAPPED | libc::AI_ALL | libc::AI_CANONNAME,
                libc::AF_INET6,
                0,
                0,
            ]),
            Some([libc::AI_PASSIVE, 0, libc::SOCK_STREAM, 0]),
            None,
        ]
        .map(|h| {
            (
                h,
                getaddrinfo_entries("flags.evco.test", Some("80"), h).unwrap(),
            )
        })
    });
    for (hints, entries) in named {
        // glibc's flags for NULL hints: AI_V4MAPPED | AI_ADDRCONFIG.
        let flags = hints.map_or(libc::AI_V4MAPPED | libc::AI_ADDRCONFIG, |h| h[0]);
        assert!(!entries.is_empty());
        for e in &entries {
            assert_eq!(e.0, flags, "{hints:?}: {entries:?}");
        }
        if flags & libc::AI_CANONNAME != 0 {
            assert_eq!(entries[0].5.as_deref(), Some("flags.evco.test"));
        }
    }
    assert_eq!(server.queries(), 0);
}

/// A name with several addresses of each family gets, for each address in the hosts file's
/// order, exactly the entries libc gives that address as a numeric host (outside coroutines)
/// with the same service and hints: each socket type's entry, its port, `AI_V4MAPPED`'s
/// mapping, the caller's flags; the canonical name on the first entry only. The hooks make
/// later addresses' entries as copies of their family's first (`glibc_list`); libc's
/// `freeaddrinfo` frees them (Memcheck checks this file in scripts/ci-faults).
#[test]
fn every_address_gets_the_entries_libc_gives_it_as_a_numeric_host() {
    let _w = watchdog(30);
    let hosts = "10.1.2.9 many.evco.test\nfd00::9 many.evco.test\n\
                 10.1.2.10 many.evco.test\nfd00::a many.evco.test\n10.1.2.11 many.evco.test\n";
    let _g = configure(None, hosts, "files dns");
    let order = ["10.1.2.9", "fd00::9", "10.1.2.10", "fd00::a", "10.1.2.11"];
    let cases: [(Option<&'static str>, [i32; 4]); 6] = [
        (Some("80"), [0, 0, libc::SOCK_STREAM, 0]),
        (Some("53"), [0, 0, 0, 0]),
        (None, [libc::AI_CANONNAME, 0, libc::SOCK_DGRAM, 0]),
        (Some("443"), [0, libc::AF_INET, 0, libc::IPPROTO_TCP]),
        (
            Some("80"),
            [libc::AI_V4MAPPED | libc::AI_ALL, libc::AF_INET6, 0, 0],
        ),
        (Some("80"), [libc::AI_V4MAPPED, libc::AF_INET6, 0, 0]),
    ];
    let want: Vec<Vec<Entry>> = cases
        .iter()
        .map(|(service, [flags, family, socktype, protocol])| {
            let numeric = [
                flags & !libc::AI_CANONNAME | libc::AI_NUMERICHOST,
                *family,
                *socktype,
                *protocol,
            ];
            let mut all = Vec::new();
            for addr in order {
                if let Ok(entries) = getaddrinfo_entries(addr, *service, Some(numeric)) {
                    all.extend(entries.into_iter().map(|mut e| {
                        e.0 = *flags;
                        e
                    }));
                }
            }
            if flags & libc::AI_V4MAPPED != 0 && flags & libc::AI_ALL == 0 {
                // IPv4 addresses only when there is no IPv6 one.
                all.retain(|e| e.4[8..20] != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
            }
            if flags & libc::AI_CANONNAME != 0 {
                all[0].5 = Some("many.evco.test".to_string());
            }
            all
        })
        .collect();
    assert_eq!(
        want[1].len(),
        15,
        "three socket types for each of five addresses"
    );
    let got = on_new_scheduler(move || {
        cases
            .iter()
            .map(|(service, hints)| {
                getaddrinfo_entries("many.evco.test", *service, Some(*hints)).unwrap()
            })
            .collect::<Vec<_>>()
    });
    for ((hints, want), got) in cases.iter().zip(&want).zip(&got) {
        assert_eq!(got, want, "{hints:?}");
    }
}

/// A service name with `AI_NUMERICSERV` is glibc's `EAI_NONAME`, for a name as for a numeric
/// host, and asks no name server (the hooks used to look the name up, refuse every address's
/// entry, and report `EAI_NODATA`).
#[test]
fn a_service_name_with_ai_numericserv_is_eai_noname() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(
        Some(&resolv_conf(server.addr)),
        "10.1.2.7 serv.evco.test\n",
        "files dns",
    );
    let hints = Some([libc::AI_NUMERICSERV, 0, libc::SOCK_STREAM, 0]);
    let want = getaddrinfo_entries("127.0.0.1", Some("http"), hints);
    assert_eq!(want, Err(libc::EAI_NONAME));
    let (refused, numeric_port) = on_new_scheduler(move || {
        (
            ["127.0.0.1", "serv.evco.test", "svc.evco.test"]
                .map(|host| getaddrinfo_entries(host, Some("http"), hints)),
            getaddrinfo_entries("serv.evco.test", Some("80"), hints),
        )
    });
    assert_eq!(refused, [want.clone(), want.clone(), want]);
    assert_eq!(numeric_port.unwrap().len(), 1, "a numeric port is fine");
    assert_eq!(server.queries(), 0, "no name server asked");
}

/// `gethostbyname2` and `gethostbyname2_r` of an address literal of the other family answer
/// as libc's do outside coroutines: `HOST_NOT_FOUND`, the `_r` form returning 0 (the hooks
/// used to report `NO_RECOVERY`, and `EIO` from `_r`); of its own family, the address.
#[test]
fn gethostbyname2_of_a_literal_of_the_other_family_is_host_not_found() {
    let _w = watchdog(30);
    let _g = configure(None, "", "files dns");
    /// A call's hostent (name, aliases, addresses), h_errno when it failed, `_r`'s value.
    type Outcome = (Option<(String, Vec<String>, Vec<IpAddr>)>, i32, i32);
    fn call_all() -> Vec<Outcome> {
        let cases = [
            ("::1", libc::AF_INET),
            ("1.2.3.4", libc::AF_INET6),
            ("1.2.3.4", libc::AF_INET),
            ("::1", libc::AF_INET6),
        ];
        let mut out = Vec::new();
        for (name, af) in cases {
            let c = CString::new(name).unwrap();
            // SAFETY: a valid C string; the hostent is read before the next call; glibc's
            // h_errno location is this thread's.
            let (plain, h) = unsafe {
                let ent = gethostbyname2(c.as_ptr(), af);
                (described(ent), *__h_errno_location())
            };
            // h_errno says something only when the call failed.
            let h = if plain.is_none() { h } else { 0 };
            out.push((plain, h, 0));
            // SAFETY: all-zero is a valid hostent to fill.
            let mut ret: libc::hostent = unsafe { std::mem::zeroed() };
            let mut result = std::ptr::null_mut();
            let mut h = 0;
            let mut buf = [0u8; 1024];
            // SAFETY: valid pointers and a buffer of the length given.
            let rc = unsafe {
                gethostbyname2_r(
                    c.as_ptr(),
                    af,
                    &mut ret,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                    &mut h,
                )
            };
            // SAFETY: NULL or `ret`, filled in.
            let r = unsafe { described(result) };
            out.push((r, if rc == 0 && result.is_null() { h } else { 0 }, rc));
        }
        out
    }
    let want = call_all();
    assert_eq!(want[0], (None, 1, 0), "libc: HOST_NOT_FOUND");
    assert_eq!(on_new_scheduler(call_all), want);
}

/// A name no DNS question can carry (a label over 63 bytes, over 253 bytes in all) is
/// glibc's `EAI_NONAME` (its res_mkquery refuses it, so nothing is sent), and no query is
/// made; `gethostbyname` says `HOST_NOT_FOUND`. The hooks used to hand it to evdns, which
/// refused the request, and report `EAI_FAIL`. A hosts-file entry of such a name still
/// answers, as glibc's files source does.
#[test]
fn a_name_no_query_can_carry_is_eai_noname() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let long_label = format!("{}.evco.test", "b".repeat(64));
    let long_name = format!("{}.evco.test", "a.".repeat(130));
    let hosts = format!("10.1.2.8 {long_label}\n");
    let _g = configure(Some(&resolv_conf(server.addr)), &hosts, "files dns");
    let (got, h_errno, listed) = on_new_scheduler(move || {
        let got = [long_name.as_str(), &format!("c{long_label}")]
            .map(|n| getaddrinfo(n, libc::AF_UNSPEC).map_err(|e| e.0));
        let c = CString::new(long_name).unwrap();
        // SAFETY: a valid C string; glibc's h_errno location is this thread's.
        let h_errno = unsafe {
            assert!(gethostbyname(c.as_ptr()).is_null());
            *__h_errno_location()
        };
        (got, h_errno, getaddrinfo(&long_label, libc::AF_INET))
    });
    assert_eq!(got, [Err(libc::EAI_NONAME), Err(libc::EAI_NONAME)]);
    assert_eq!(h_errno, 1, "HOST_NOT_FOUND");
    assert_eq!(listed, Ok(ips(&["10.1.2.8"])));
    assert_eq!(server.queries(), 0, "nothing sent");
}

/// `getnameinfo` inside a coroutine writes the caller's buffers as libc's does outside one:
/// each string and its NUL, nothing past them, and the host name even when the service then
/// does not fit (`EAI_OVERFLOW`). The hook used to copy back the whole of each buffer
/// (zero-filled past the string) and, on any failure, nothing. Buffers are pre-filled with
/// 0xAA to show every byte written. In a child process: see `in_child`.
#[test]
fn getnameinfo_writes_only_what_libc_writes() {
    let _w = watchdog(30);
    if !in_child("getnameinfo_writes_only_what_libc_writes") {
        return;
    }
    let _g = configure(None, "", "files dns");
    fn calls() -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let sa = socket2::SockAddr::from("127.0.0.1:80".parse::<SocketAddr>().unwrap());
        let mut out = vec![];
        // (hostlen, servlen, flags)
        for (hl, sl, flags) in [
            (64, 16, 0),
            (64, 2, 0),
            (64, 16, libc::NI_NUMERICSERV),
            (64, 0, 0),
            (3, 16, 0),
            (1, 16, 0),
        ] {
            let (mut host, mut serv) = (vec![0xaau8; 80], vec![0xaau8; 32]);
            let serv_ptr = if sl > 0 {
                serv.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
            // SAFETY: a valid sockaddr of its length; buffers longer than the lengths given.
            let rc = unsafe {
                libc::getnameinfo(
                    sa.as_ptr().cast(),
                    sa.len(),
                    host.as_mut_ptr().cast(),
                    hl,
                    serv_ptr,
                    sl,
                    flags,
                )
            };
            out.push((rc, host, serv));
        }
        out
    }
    let want = calls();
    assert_eq!(want[1].0, libc::EAI_OVERFLOW, "a 2-byte service buffer");
    let got = on_new_scheduler(calls);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "call {i}");
    }
    println!("child-finished");
}

/// With a search list, a truncated answer is still asked again over TCP, for the search-list
/// name that came truncated, and the names are tried in `res_search`'s order (`ndots`);
/// `AI_CANONNAME` is the name that answered. evdns's own search moved on to the next name on
/// the truncation (as on any error), and the lookup ended with the last name's NXDOMAIN:
/// the hooks answered `EAI_NONAME` for a name with addresses. In a child process (the pool):
/// see `in_child`.
#[test]
fn a_truncated_answer_to_a_search_list_name_is_asked_again_over_tcp() {
    let _w = watchdog(30);
    if !in_child("a_truncated_answer_to_a_search_list_name_is_asked_again_over_tcp") {
        return;
    }
    let server = Responder::start(zone(), Hold::default());
    let conf = format!(
        "search nope.test evco.test\nnameserver {}\noptions timeout:0.3 attempts:1 ndots:2\n",
        server.addr
    );
    let _g = configure(Some(&conf), "", "files dns");
    let (got, canonical) = on_new_scheduler(|| {
        let got = ["big", "big.evco.test", "svc", "nowhere"]
            .map(|name| getaddrinfo(name, libc::AF_INET).map_err(|e| e.0));
        let canon = getaddrinfo_entries("svc", None, Some([libc::AI_CANONNAME, 0, 1, 0]));
        (got, canon.unwrap()[0].5.clone())
    });
    let big = ips(&["10.9.0.1", "10.9.0.2", "10.9.0.3"]);
    let svc = ips(&["127.0.0.7", "127.0.0.8"]);
    assert_eq!(
        got,
        [Ok(big.clone()), Ok(big), Ok(svc), Err(libc::EAI_NONAME)]
    );
    assert_eq!(canonical.as_deref(), Some("svc.evco.test"));
    assert!(server.tcp_queries.load(SeqCst) >= 2, "a TCP retry for each");
    println!("child-finished");
}

/// A hosts file (or resolv.conf, nsswitch.conf) with bytes that are not UTF-8, here a Latin-1
/// comment, still counts: its entries answer, with no query. The files used to be read as
/// UTF-8 and, failing that, as empty: every hosts-file name went to the name servers (here
/// `EAI_NONAME`), where glibc, which reads bytes, answers from the file.
#[test]
fn a_hosts_file_with_latin1_bytes_still_answers() {
    let _w = watchdog(30);
    let server = Responder::start(zone(), Hold::default());
    let _g = configure(Some(&resolv_conf(server.addr)), "", "files dns");
    std::fs::write(
        dir().join("hosts"),
        b"# caf\xe9 (Latin-1)\n10.1.2.9 latin.evco.test\n",
    )
    .unwrap();
    let got = on_new_scheduler(|| getaddrinfo("latin.evco.test", libc::AF_INET));
    assert_eq!(got, Ok(ips(&["10.1.2.9"])));
    assert_eq!(server.queries(), 0);
}

/// One coroutine making pooled lookups one after another never has more than one of them in
/// flight, so the pool needs one thread for all of them. Before, a thread counted as busy
/// from its job's start until it came back for the next one, after its answer was already
/// out: a lookup asked in that window started a thread more (under Memcheck, where threads
/// run one at a time, `other_nss_sources_run_glibc_on_the_pool` found two). In a child
/// process: see `in_child`.
///
/// And every lookup answers. Each request's eventfd often takes the number of the previous
/// request's, which the pool thread may still be closing (past the system call, before evco's
/// close path ends): the wait read that close's `CLOSING` mark as its own fd's close, and the
/// lookup failed `EAI_SYSTEM` with `EBADF` (found by CI; 9-12 runs in 60 here, about one lookup
/// in 10,000; none in 100 runs since the request adopts its eventfd).
#[test]
fn sequential_pooled_lookups_use_one_pool_thread() {
    let _w = watchdog(60);
    if !in_child("sequential_pooled_lookups_use_one_pool_thread") {
        return;
    }
    let _g = configure(None, "", "files myhostname dns");
    let failed = on_new_scheduler(|| {
        (0..2000)
            .map(|_| getaddrinfo("localhost", libc::AF_INET))
            .filter_map(Result::err)
            .collect::<Vec<_>>()
    });
    assert_eq!(failed, [], "every lookup answers");
    assert_eq!(pool_threads(), 1);
    println!("child-finished");
}
