//! A soak test of evco's echo server: 1,000 connections of checksummed traffic with connection
//! churn, for N seconds, over loopback.
//!
//! ```text
//! cargo run --release --example soak -- [--secs 10] [--conns 1000]
//! ```
//!
//! The server is this same binary re-run with `--serve` (the echo server's logic, one coroutine
//! per connection, counting what it echoes), so that its RSS is its own: it is read from
//! /proc/<pid>/status once every client has connected and again at the end. The clients are
//! coroutines in this process: each connects, sends 1 to 64 messages of 1 to 16,384
//! pseudo-random bytes, reads each one back, checks an FNV-1a checksum of everything it sent
//! against everything it received, closes, and connects again until the time is up. At the
//! end the server is stopped with SIGTERM and reports its byte counts.
//!
//! Prints a summary and exits non-zero on any error, checksum mismatch, or byte-count
//! mismatch (client out, client in, server in, server out must all be equal), or if the server
//! does not stop cleanly. The last line is machine-readable:
//! `SOAK ok=<bool> secs=<f> conns=<n> connections=<n> messages=<n> bytes=<n> errors=<n>
//! mismatches=<n> server_rss_start_kib=<n> server_rss_end_kib=<n>`.
//!
//! Churn closes cleanly from the client side, so its ports go through TIME_WAIT; Linux reuses
//! them for loopback connects (`net.ipv4.tcp_tw_reuse` = 2, the default). With reuse off, a
//! long soak can run out of ephemeral ports: connect then fails with `AddrNotAvailable`, which
//! is reported as an error.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evco::coroutine::Builder;
use evco::net::{TcpListener, TcpStream};

const MAX_MSG: usize = 16 * 1024;
const MAX_MSGS_PER_CONN: u64 = 64;
/// No single read or write may stall this long: a hung server is an error, not a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Opts {
    secs: f64,
    conns: usize,
    serve: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        secs: 10.0,
        conns: 1000,
        serve: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--secs" => o.secs = val().parse().unwrap_or_else(|_| die("bad --secs")),
            "--conns" => o.conns = val().parse().unwrap_or_else(|_| die("bad --conns")),
            "--serve" => o.serve = true,
            "-h" | "--help" => {
                println!("usage: soak [--secs N] [--conns N]   (defaults: 10 s, 1000)");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a:?} (try --help)")),
        }
    }
    if o.conns == 0 || o.secs <= 0.0 {
        die("--conns and --secs must be positive");
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("soak: {msg}");
    std::process::exit(2)
}

fn main() {
    let o = parse();
    if o.serve {
        serve();
    } else {
        std::process::exit(drive(&o));
    }
}

// ---------------------------------------------------------------------------------------------
// The server: examples/echo.rs's logic, counting bytes.

static SERVER_IN: AtomicU64 = AtomicU64::new(0);
static SERVER_OUT: AtomicU64 = AtomicU64::new(0);
static SERVER_CONNS: AtomicU64 = AtomicU64::new(0);

fn serve() {
    let result = evco::run(|| -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        println!("listening on {}", listener.local_addr()?);
        io::stdout().flush()?;
        common::serve_until_signalled(None, move || -> io::Result<()> {
            loop {
                let (stream, _) = listener.accept()?;
                SERVER_CONNS.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = Builder::new()
                    .stack_size(32 * 1024)
                    .spawn(move || echo(stream))
                {
                    eprintln!("soak server: cannot serve a connection: {e}");
                }
            }
        })
    });
    if let Err(e) = result {
        eprintln!("soak server: {e}");
        std::process::exit(1);
    }
    println!(
        "SERVER bytes_in={} bytes_out={} conns={}",
        SERVER_IN.load(Ordering::Relaxed),
        SERVER_OUT.load(Ordering::Relaxed),
        SERVER_CONNS.load(Ordering::Relaxed)
    );
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        SERVER_IN.fetch_add(n as u64, Ordering::Relaxed);
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
        SERVER_OUT.fetch_add(n as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The clients.

/// xorshift64*: the traffic, message sizes and connection lengths.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// FNV-1a, 64-bit, over a stream of bytes.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Default)]
struct Stats {
    bytes_out: Cell<u64>,
    bytes_in: Cell<u64>,
    messages: Cell<u64>,
    connections: Cell<u64>,
    errors: Cell<u64>,
    mismatches: Cell<u64>,
    /// Clients that have connected at least once.
    started: Cell<usize>,
    first_errors: RefCell<Vec<String>>,
}

impl Stats {
    fn error(&self, what: String) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_errors.borrow_mut();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// One client coroutine: connections one after another until `deadline`.
fn client(id: usize, addr: std::net::SocketAddr, deadline: Instant, stats: &Stats) {
    let mut rng = Rng::new(id as u64 + 1);
    let mut out = vec![0u8; MAX_MSG];
    let mut back = vec![0u8; MAX_MSG];
    let mut first = true;
    while Instant::now() < deadline {
        let s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                stats.error(format!("client {id}: connect: {e}"));
                // Do not spin on a persistent failure.
                evco::time::sleep(Duration::from_millis(10));
                continue;
            }
        };
        stats.connections.set(stats.connections.get() + 1);
        if first {
            first = false;
            stats.started.set(stats.started.get() + 1);
        }
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let (mut sent, mut got) = (Fnv::new(), Fnv::new());
        let msgs = 1 + rng.below(MAX_MSGS_PER_CONN);
        let mut failed = false;
        for m in 0..msgs {
            if Instant::now() >= deadline {
                break;
            }
            let len = 1 + rng.below(MAX_MSG as u64) as usize;
            rng.fill(&mut out[..len]);
            sent.update(&out[..len]);
            if let Err(e) = (&s).write_all(&out[..len]) {
                stats.error(format!("client {id}: write of message {m}: {e}"));
                failed = true;
                break;
            }
            stats.bytes_out.set(stats.bytes_out.get() + len as u64);
            if let Err(e) = (&s).read_exact(&mut back[..len]) {
                stats.error(format!("client {id}: read of message {m}: {e}"));
                failed = true;
                break;
            }
            got.update(&back[..len]);
            stats.bytes_in.set(stats.bytes_in.get() + len as u64);
            stats.messages.set(stats.messages.get() + 1);
        }
        // A connection that failed is already an error; its checksums cannot agree.
        if !failed && sent.0 != got.0 {
            stats.mismatches.set(stats.mismatches.get() + 1);
            stats.error(format!("client {id}: checksum mismatch on a connection"));
        }
        // Churn: close, and connect again.
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn start_server() -> (
    Child,
    std::net::SocketAddr,
    BufReader<std::process::ChildStdout>,
) {
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    let mut child = Command::new(exe)
        .arg("--serve")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start the server: {e}")));
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    out.read_line(&mut line)
        .unwrap_or_else(|e| die(&format!("server output: {e}")));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| die(&format!("server said {line:?}, not 'listening on <addr>'")));
    (child, addr, out)
}

/// Runs the soak; returns the exit code.
fn drive(o: &Opts) -> i32 {
    let (mut server, addr, mut server_out) = start_server();
    let pid = server.id();
    let secs = o.secs;
    let conns = o.conns;
    let start = Instant::now();
    let stats = Rc::new(Stats::default());
    let st = stats.clone();
    let (rss_start, rss_end) = evco::run(move || {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let hs: Vec<_> = (0..conns)
            .map(|id| {
                let st = st.clone();
                Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || client(id, addr, deadline, &st))
                    .unwrap_or_else(|e| die(&format!("spawn: {e}")))
            })
            .collect();
        // The server's RSS once every client is connected, and when the time is up.
        while st.started.get() < conns && Instant::now() < deadline {
            evco::time::sleep(Duration::from_millis(20));
        }
        let rss_start = rss_kib(pid);
        if let Some(left) = deadline.checked_duration_since(Instant::now()) {
            evco::time::sleep(left);
        }
        let rss_end = rss_kib(pid);
        for h in hs {
            if h.join().is_err() {
                st.error("a client coroutine panicked".into());
            }
        }
        (rss_start, rss_end)
    });
    let elapsed = start.elapsed().as_secs_f64();

    // Stop the server the way an operator would, and collect its counts.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let mut rest = String::new();
    let _ = server_out.read_to_string(&mut rest);
    let status = server.wait().unwrap_or_else(|e| die(&format!("wait: {e}")));
    let field = |name: &str| -> Option<u64> {
        rest.lines()
            .find(|l| l.starts_with("SERVER "))?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let (server_in, server_out_bytes) = (field("bytes_in"), field("bytes_out"));

    let s = &*stats;
    let mut problems = Vec::new();
    if s.errors.get() > 0 {
        problems.push(format!("{} errors", s.errors.get()));
    }
    if s.mismatches.get() > 0 {
        problems.push(format!("{} checksum mismatches", s.mismatches.get()));
    }
    if s.bytes_in.get() != s.bytes_out.get() {
        problems.push(format!(
            "client bytes in {} != out {}",
            s.bytes_in.get(),
            s.bytes_out.get()
        ));
    }
    if server_in != Some(s.bytes_out.get()) || server_out_bytes != Some(s.bytes_out.get()) {
        problems.push(format!(
            "server in {server_in:?} / out {server_out_bytes:?} != client out {}",
            s.bytes_out.get()
        ));
    }
    if !status.success() {
        problems.push(format!("the server did not stop cleanly: {status}"));
    }
    if s.started.get() < conns {
        problems.push(format!(
            "only {} of {conns} clients ever connected",
            s.started.get()
        ));
    }

    println!("soak: {elapsed:.1} s, {conns} concurrent connections, echo server pid {pid}");
    println!(
        "  connections made: {}   messages: {}   bytes out: {}   bytes in: {}",
        s.connections.get(),
        s.messages.get(),
        s.bytes_out.get(),
        s.bytes_in.get()
    );
    println!(
        "  server echoed: in {}   out {}   ({} MiB/s each way)",
        server_in.map_or("?".into(), |v| v.to_string()),
        server_out_bytes.map_or("?".into(), |v| v.to_string()),
        (s.bytes_out.get() as f64 / elapsed / (1 << 20) as f64).round()
    );
    println!(
        "  errors: {}   checksum mismatches: {}   server RSS: {rss_start} KiB at start, \
         {rss_end} KiB at end",
        s.errors.get(),
        s.mismatches.get()
    );
    for e in s.first_errors.borrow().iter() {
        println!("  error: {e}");
    }
    let ok = problems.is_empty();
    if !ok {
        println!("  FAILED: {}", problems.join("; "));
    }
    println!(
        "SOAK ok={ok} secs={elapsed:.1} conns={conns} connections={} messages={} bytes={} \
         errors={} mismatches={} server_rss_start_kib={rss_start} server_rss_end_kib={rss_end}",
        s.connections.get(),
        s.messages.get(),
        s.bytes_out.get(),
        s.errors.get(),
        s.mismatches.get()
    );
    if ok { 0 } else { 1 }
}
