//! A hooked `getaddrinfo` (what std's `to_socket_addrs` and C clients call) beside
//! `evco::net::lookup_host`, both inside a coroutine, both on the same resolver:
//!
//! | bench                          | what is resolved                                          |
//! |--------------------------------|-----------------------------------------------------------|
//! | `dns/lookup_host`              | a name asked of a DNS responder on 127.0.0.1 (A + AAAA)   |
//! | `dns/getaddrinfo (hooked)`     | the same, through libc's `getaddrinfo` + `freeaddrinfo`   |
//! | `hosts/lookup_host`            | a name of the hosts file (no query)                       |
//! | `hosts/getaddrinfo (hooked)`   | the same                                                  |
//!
//! Issue 18's target: a hooked `getaddrinfo` costs at most 1.2x `lookup_host`. The responder
//! answers on a thread of its own; the configuration comes through `EVCO_RESOLV_CONF` and
//! `EVCO_HOSTS`, set before the first scheduler is made.
//!
//! Run with `cargo bench -p evco-bench --bench resolve` (about 20 s).

use std::ffi::CString;
use std::hint::black_box;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

const NAME: &str = "svc.evco.bench";
const HOSTS_NAME: &str = "db.evco.bench";

/// Answers every A query with 127.0.0.7 and every AAAA query with ::1, at once, forever.
fn responder() -> std::net::SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Some(reply) = reply(&buf[..n]) {
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    addr
}

/// The reply to one query: one record of the type asked (A or AAAA), none for others.
fn reply(q: &[u8]) -> Option<Vec<u8>> {
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + *q.get(i)? as usize;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let end = i + 5;
    let data: &[u8] = match qtype {
        1 => &[127, 0, 0, 7],
        28 => &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        _ => &[],
    };
    let mut r = q.get(..2)?.to_vec();
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(!data.is_empty()), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..end)?);
    if !data.is_empty() {
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 60, 0, data.len() as u8]);
        r.extend_from_slice(data);
    }
    Some(r)
}

/// libc's (hooked) `getaddrinfo` as std calls it, and `freeaddrinfo`; the number of entries.
fn getaddrinfo(name: &CString) -> usize {
    // SAFETY: all-zero addrinfo is empty hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res = std::ptr::null_mut();
    // SAFETY: a valid C string, hints and out-pointer.
    let rc = unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut res) };
    assert_eq!(rc, 0, "getaddrinfo failed");
    let mut n = 0;
    let mut p = res;
    // SAFETY: the list just returned, walked then freed once.
    unsafe {
        while let Some(ai) = p.as_ref() {
            n += 1;
            p = ai.ai_next;
        }
        libc::freeaddrinfo(res);
    }
    n
}

/// `iters` lookups of `name` inside one `evco::run`, timed.
fn timed(iters: u64, name: &'static str, hooked: bool) -> Duration {
    evco::run(move || {
        let c = CString::new(name).expect("name");
        let start = Instant::now();
        for _ in 0..iters {
            if hooked {
                black_box(getaddrinfo(&c));
            } else {
                black_box(evco::net::lookup_host(name, 80).expect("lookup_host"));
            }
        }
        start.elapsed()
    })
}

fn resolve(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("evco-bench-resolve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let server = responder();
    std::fs::write(dir.join("resolv.conf"), format!("nameserver {server}\n")).expect("write");
    std::fs::write(dir.join("hosts"), format!("10.1.2.3 {HOSTS_NAME}\n")).expect("write");
    // SAFETY: set before any scheduler or resolver exists; the only other thread (the
    // responder) does not read the environment.
    unsafe {
        std::env::set_var("EVCO_RESOLV_CONF", dir.join("resolv.conf"));
        std::env::set_var("EVCO_HOSTS", dir.join("hosts"));
        std::env::set_var("EVCO_NSSWITCH", dir.join("nsswitch.conf"));
    }
    std::fs::write(dir.join("nsswitch.conf"), "hosts: files dns\n").expect("write");
    for (group, name) in [("dns", NAME), ("hosts", HOSTS_NAME)] {
        let mut g = c.benchmark_group(group);
        g.bench_function("lookup_host", |b| b.iter_custom(|n| timed(n, name, false)));
        g.bench_function("getaddrinfo (hooked)", |b| {
            b.iter_custom(|n| timed(n, name, true))
        });
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = resolve
}
criterion_main!(benches);
