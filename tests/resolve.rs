//! Name resolution through the hooks: std's `to_socket_addrs`, `getaddrinfo`,
//! `gethostbyname` and friends called inside coroutines, answered by a DNS responder on
//! 127.0.0.1 that runs on threads of its own (UDP, and TCP for the truncated answer's retry).
//!
//! The resolver reads its configuration (`EVCO_RESOLV_CONF`, `EVCO_HOSTS`, `EVCO_NSSWITCH`)
//! when a scheduler makes its first one. The variables are set once per process, before any
//! test does anything else, to files in a directory of this process; each test holds `LOCK`
//! while it writes those files and runs its own scheduler on a thread of its own (so a fresh
//! resolver reads them), so the tests never see one another's configuration.

mod common;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use common::watchdog;

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
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let zone = Arc::new(zone);
        {
            let (zone, queries, stop) = (zone.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || serve_udp(udp, &zone, hold, &queries, &stop));
        }
        {
            let (zone, tcp_queries) = (zone.clone(), tcp_queries.clone());
            tcp.set_nonblocking(false).unwrap();
            std::thread::spawn(move || serve_tcp(tcp, &zone, &tcp_queries));
        }
        Responder {
            addr,
            queries,
            tcp_queries,
            stop,
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(SeqCst)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the UDP thread (it reads with a short timeout too) and the TCP one.
        let _ = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"", self.addr));
        let _ = std::net::TcpStream::connect(self.addr);
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

fn serve_tcp(listener: TcpListener, zone: &HashMap<&str, Record>, queries: &AtomicUsize) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { return };
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
        if queries.load(SeqCst) == usize::MAX {
            return;
        }
    }
}

/// The question of a DNS query: its name (lower case), type, and where the question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
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
    assert!(
        elapsed < Duration::from_millis(300),
        "not within 1.5 x 200 ms: {elapsed:?}"
    );
}
