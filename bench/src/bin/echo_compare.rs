//! The runner behind `scripts/echo-compare`: evco's echo example against a raw C libevent echo
//! server and a tokio current-thread one, side by side on the same load; with `--hooked`, also
//! `examples/echo_hooked` (the same server on blocking std::net, made cooperative by evco's libc
//! hooks), and with `--evco-c`, `examples/c/echo.c` (the same server in C on evco's C API, plain
//! POSIX calls in coroutines).
//!
//! For each round, configuration (connections × message size) and server, in that nesting (so
//! the servers alternate A B C A B C and share whatever the machine is doing), it starts a fresh
//! server pinned to one CPU, runs `echo_client` pinned to another, and records the client's
//! messages/s and latency, the server's CPU time (utime + stime from `/proc/<pid>/stat`, before
//! and after; utime also on its own, for the user-space/kernel split of the summary) and its
//! peak RSS (`VmHWM`). Ratios to the C server, and echo_hooked's and echo.c's to evco's
//! echo, are taken within one round and configuration, then the median over rounds is reported.
//!
//! Writes `<out>/echo.csv` (one row per run) and `<out>/echo.svg` (ratios to C, grouped bars),
//! and prints a table of medians. Without `--hooked` and `--evco-c` the CSV, chart and table are
//! those of the three-server comparison, so older result files stay comparable (the CSV's
//! columns keep their order; files from before fec31f6 lack the last two, the user-space CPU).
//! See `scripts/echo-compare --help` for the options.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plotters::prelude::*;

/// How many server slots there are.
const SLOTS: usize = 5;
/// The server slots (the CSV's `server` column), in the order they run within a round; the
/// first is the reference. `evco_c` and `hooked` run only when `--evco-c` and `--hooked` name
/// their binaries.
const SERVERS: [&str; SLOTS] = ["c", "evco", "evco_c", "hooked", "tokio"];
/// Indices into [`SERVERS`] (and into the per-server arrays of [`Summary`]).
const C: usize = 0;
const EVCO: usize = 1;
const EVCO_C: usize = 2;
const HOOKED: usize = 3;
const TOKIO: usize = 4;
/// The optional slots, each reported against evco's echo in the target lines (>= 0.9): the
/// slot, what it is (the table's note), its target-line label.
const VS_EVCO: [(usize, &str, &str); 2] = [
    (
        EVCO_C,
        "evco_c: examples/c/echo.c, evco's echo in C on evco's C API (plain accept/read/write \
         in coroutines, the hooks making them cooperative)",
        "evco_c/evco",
    ),
    (
        HOOKED,
        "hooked: examples/echo_hooked, evco's echo written against blocking std::net and made \
         cooperative by evco's libc hooks",
        "hooked/evco",
    ),
];

/// Column headings of the tables, per server slot: messages/s, ratio to C, CPU per message,
/// CPU use, peak RSS.
const HEADINGS: [[&str; 5]; SLOTS] = [
    ["C msg/s", "", "C ns", "C%", "C MiB"],
    ["evco", "evco/C", "evco", "ev%", "evco"],
    ["evco_c", "ec/C", "evco_c", "ec%", "evco_c"],
    ["hooked", "hook/C", "hooked", "hk%", "hooked"],
    ["tokio", "tok/C", "tokio", "tk%", "tokio"],
];

struct Opts {
    /// Per server slot, its binary; `None` for `evco_c` and `hooked` without their flags.
    bins: [Option<PathBuf>; SLOTS],
    /// The slots that run (those with a binary), in [`SERVERS`] order.
    servers: Vec<usize>,
    client: PathBuf,
    out: PathBuf,
    stem: String,
    rounds: usize,
    secs: f64,
    conns: Vec<usize>,
    sizes: Vec<usize>,
    server_cpu: String,
    client_cpu: String,
    port: u16,
    settle: Duration,
    /// `--rate`: messages per second the client offers in all (paced), or closed loop.
    rate: Option<f64>,
    /// Run each server under cachegrind and report user-space instructions and L1 data misses
    /// per message.
    valgrind: bool,
}

const USAGE: &str = "\
usage: echo_compare --c BIN --evco BIN --tokio BIN --client BIN [--evco-c BIN] [--hooked BIN]
                    [options]
  --evco-c BIN       also run this server (examples/c/echo.c built on libevco.a) in every
                     round and configuration, after evco (\"evco_c\" in the CSV); the table
                     adds its columns and the targets its msgs/s ratio to evco (>= 0.9)
  --hooked BIN       also run this server (examples/echo_hooked) in every round and
                     configuration, between evco and tokio (\"hooked\" in the CSV); the table
                     adds its columns and the targets its msgs/s ratio to evco (>= 0.9)
  --out DIR          where the CSV and SVG go (default bench/results)
  --stem NAME        their file name without extension (default echo)
  --rounds N         rounds of every configuration and server (default 5)
  --secs S           seconds of load per run (default 3)
  --conns LIST       connection counts, comma-separated (default 1,100,1000)
  --sizes LIST       message sizes in bytes (default 64,4096)
  --quick            --rounds 3 --secs 1 (about a minute)
  --cachegrind       run each server under valgrind's cachegrind and report its user-space
                     instructions and (simulated) L1 data-cache misses per message: slow
                     servers, but counts that other work on the machine does not disturb
                     (sets --rounds 1; kernel work not counted; --callgrind is the old name)
  --server-cpu CPU   taskset CPU list for the servers (default 0)
  --client-cpu CPU   taskset CPU list for the load client (default 1)
  --port P           first TCP port; each run takes the next one (default 21000)
  --settle S         before each run, wait up to S seconds for the two CPUs to be idle
                     (default 2); the CSV's others_cpu_util says how busy they were anyway
  --rate R           pace the load at R messages per second in all (the client's --rate;
                     bench/c/echo_load.c has it): every server gets the same offered load, so
                     server CPU per message compares at equal work rather than in whichever
                     batching mode a saturated closed loop settles into; a server that cannot
                     keep up shows as msgs/s below R (default: closed loop, as fast as it goes)";

fn die(msg: &str) -> ! {
    eprintln!("echo_compare: {msg}");
    std::process::exit(2)
}

fn list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| die(&format!("bad list {s:?}")))
        })
        .collect()
}

fn parse() -> Opts {
    let mut o = Opts {
        bins: Default::default(),
        servers: Vec::new(),
        client: PathBuf::new(),
        out: PathBuf::from("bench/results"),
        stem: "echo".into(),
        rounds: 5,
        secs: 3.0,
        conns: vec![1, 100, 1000],
        sizes: vec![64, 4096],
        server_cpu: "0".into(),
        client_cpu: "1".into(),
        port: 21000,
        settle: Duration::from_secs(2),
        rate: None,
        valgrind: false,
    };
    let mut client = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--c" => o.bins[C] = Some(val().into()),
            "--evco" => o.bins[EVCO] = Some(val().into()),
            "--evco-c" => o.bins[EVCO_C] = Some(val().into()),
            "--hooked" => o.bins[HOOKED] = Some(val().into()),
            "--tokio" => o.bins[TOKIO] = Some(val().into()),
            "--client" => client = Some(PathBuf::from(val())),
            "--out" => o.out = val().into(),
            "--stem" => o.stem = val(),
            "--rounds" => o.rounds = val().parse().unwrap_or_else(|_| die("bad --rounds")),
            "--secs" => o.secs = val().parse().unwrap_or_else(|_| die("bad --secs")),
            "--conns" => o.conns = list(&val()),
            "--sizes" => o.sizes = list(&val()),
            "--quick" => {
                o.rounds = 3;
                o.secs = 1.0;
            }
            "--cachegrind" | "--callgrind" => {
                o.valgrind = true;
                o.rounds = 1;
            }
            "--server-cpu" => o.server_cpu = val(),
            "--client-cpu" => o.client_cpu = val(),
            "--port" => o.port = val().parse().unwrap_or_else(|_| die("bad --port")),
            "--rate" => {
                let rate: f64 = val().parse().unwrap_or_else(|_| die("bad --rate"));
                if !(rate > 0.0 && rate.is_finite()) {
                    die("--rate must be a positive number of messages per second");
                }
                o.rate = Some(rate);
            }
            "--settle" => {
                let secs: f64 = val().parse().unwrap_or_else(|_| die("bad --settle"));
                o.settle = Duration::from_secs_f64(secs.max(0.0));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    match client {
        Some(client) if [C, EVCO, TOKIO].iter().all(|&s| o.bins[s].is_some()) => {
            o.client = client;
        }
        _ => die(&format!(
            "--c, --evco, --tokio and --client are required\n{USAGE}"
        )),
    }
    o.servers = (0..SERVERS.len())
        .filter(|&s| o.bins[s].is_some())
        .collect();
    if o.rounds == 0 || o.secs <= 0.0 {
        die("--rounds and --secs must be positive");
    }
    o
}

/// One measured run.
struct Run {
    round: usize,
    conns: usize,
    size: usize,
    server: &'static str,
    msgs_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// Server CPU seconds (user + system) during the client's run.
    cpu_s: f64,
    /// The part of `cpu_s` the server spent in user space (utime): the servers' own code and
    /// libraries, as against the kernel's TCP work, which is about the same for all of them.
    user_cpu_s: f64,
    /// CPU seconds the load client used.
    client_cpu_s: f64,
    /// CPU seconds that the server's and client's CPUs spent on anything but these two
    /// (other processes, interrupts, a hypervisor's steal): the machine's noise during the run.
    others_cpu_s: f64,
    /// Wall seconds of the client's run.
    wall_s: f64,
    /// Peak resident set of the server, KiB.
    hwm_kib: u64,
    /// Instructions the server executed in user space (cachegrind's `Ir`), with --cachegrind.
    instructions: Option<u64>,
    /// Its user-space L1 data-cache misses (reads and writes, simulated), with --cachegrind.
    l1_misses: Option<u64>,
}

impl Run {
    /// User-space instructions per echoed message (with --cachegrind; startup included).
    fn instructions_per_msg(&self, secs: f64) -> f64 {
        let msgs = self.msgs_per_sec * secs;
        match self.instructions {
            Some(n) if msgs > 0.0 => n as f64 / msgs,
            _ => f64::NAN,
        }
    }

    /// Simulated L1 data misses per echoed message (with --cachegrind; startup included).
    fn l1_misses_per_msg(&self, secs: f64) -> f64 {
        let msgs = self.msgs_per_sec * secs;
        match self.l1_misses {
            Some(n) if msgs > 0.0 => n as f64 / msgs,
            _ => f64::NAN,
        }
    }

    /// Server CPU nanoseconds per echoed message (messages counted as rate × load seconds).
    fn cpu_ns_per_msg(&self, secs: f64) -> f64 {
        self.ns_per_msg(self.cpu_s, secs)
    }

    /// The user-space part of [`Run::cpu_ns_per_msg`].
    fn user_ns_per_msg(&self, secs: f64) -> f64 {
        self.ns_per_msg(self.user_cpu_s, secs)
    }

    fn ns_per_msg(&self, cpu_s: f64, secs: f64) -> f64 {
        let msgs = self.msgs_per_sec * secs;
        if msgs > 0.0 {
            cpu_s * 1e9 / msgs
        } else {
            f64::NAN
        }
    }
}

/// utime + stime of `pid` and utime alone, in seconds (`/proc` reports them in clock ticks,
/// `_SC_CLK_TCK`). The split between the two is accounted by the kernel per tick on most
/// configurations, so a single run's user-space part is good to a few ticks, not exactly.
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may contain spaces: state is field 3,
    // utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(((utime + stime) as f64 / hz, utime as f64 / hz))
}

/// The CPUs of a taskset list such as `0`, `0,1` or `0-3`.
fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let mut ends = part
            .trim()
            .splitn(2, '-')
            .map(|v| v.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => cpus.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b => cpus.extend(a..=b),
            _ => die(&format!("bad CPU list {list:?}")),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

/// Busy seconds (everything but idle and iowait) of `cpus` so far, from `/proc/stat`.
fn busy_seconds(cpus: &[usize]) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut ticks = 0u64;
    for &cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&name))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal ...
        ticks += f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Waits up to `limit` for the measuring CPUs to be nearly idle (other engineers' builds on a
/// shared machine come and go), sampling a quarter of a second at a time. Returns whether they
/// were.
fn settle(cpus: &[usize], limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let (Some(a), t) = (busy_seconds(cpus), Instant::now()) else {
            return false;
        };
        std::thread::sleep(Duration::from_millis(250));
        let Some(b) = busy_seconds(cpus) else {
            return false;
        };
        if (b - a) / t.elapsed().as_secs_f64() < 0.1 * cpus.len() as f64 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

/// VmHWM of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A server process, stopped (SIGTERM, then SIGKILL after `grace`) when dropped.
struct Server {
    child: Child,
    grace: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin` pinned to `cpu` (under cachegrind, writing `profile`, when given) and
/// waits for its "listening on" line.
fn start_server(
    bin: &Path,
    cpu: &str,
    addr: &str,
    profile: Option<&Path>,
) -> Result<Server, String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu]);
    if let Some(out) = profile {
        // cachegrind counts the same instructions as callgrind and, with a simulated L1 data
        // cache of this machine's size (48 KiB, 12-way), the cache lines a server touches that
        // are not in L1 any more: what a thousand connections' scattered state costs.
        cmd.args([
            "valgrind",
            "--tool=cachegrind",
            "--quiet",
            "--cache-sim=yes",
        ])
        .args(["--D1=49152,12,64", "--LL=2097152,16,64"])
        .arg(format!("--cachegrind-out-file={}", out.display()));
    }
    let mut child = cmd
        .arg(bin)
        .args(["--addr", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let server = Server {
        child,
        // valgrind writes its profile on exit, which takes a while.
        grace: Duration::from_secs(if profile.is_some() { 60 } else { 5 }),
    };
    // Its stderr (shutdown chatter, or why it failed) is shown only when it does not start.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    // Read lines on a thread so that a server that never says "listening" cannot hang us; the
    // thread then drains the pipe for the server's lifetime.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut said = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !said && line.contains("listening on") {
                said = true;
                let _ = tx.send(());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => Ok(server),
        Err(_) => {
            drop(server);
            let said = errors.join().unwrap_or_default();
            Err(format!(
                "{} printed no 'listening on' line\n{said}",
                bin.display()
            ))
        }
    }
}

/// The fields of the client's `RESULT key=value ...` line.
fn parse_result(out: &str) -> Option<(f64, f64, f64, u64)> {
    let line = out.lines().rev().find(|l| l.starts_with("RESULT "))?;
    let get = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((
        get("msgs_per_sec")?,
        get("p50_us")?,
        get("p99_us")?,
        get("errors")? as u64,
    ))
}

fn run_one(o: &Opts, server: usize, conns: usize, size: usize, port: u16) -> Result<Run, String> {
    let addr = format!("127.0.0.1:{port}");
    let profile = o.valgrind.then(|| {
        std::env::temp_dir().join(format!(
            "echo_compare.{}.{port}.cachegrind",
            std::process::id()
        ))
    });
    let bin = o.bins[server]
        .as_deref()
        .expect("a server that runs has a binary");
    let srv = start_server(bin, &o.server_cpu, &addr, profile.as_deref())?;
    let pid = srv.child.id();
    let mut cpus = cpu_list(&o.server_cpu);
    cpus.extend(cpu_list(&o.client_cpu));
    cpus.sort_unstable();
    cpus.dedup();
    settle(&cpus, o.settle);
    let busy0 = busy_seconds(&cpus).unwrap_or(f64::NAN);
    let cpu0 = cpu_seconds(pid).ok_or("cannot read the server's /proc stat")?;
    let t0 = Instant::now();
    let mut child = Command::new("taskset")
        .args(["-c", &o.client_cpu])
        .arg(&o.client)
        .args(["--addr", &addr])
        .args(["--conns", &conns.to_string()])
        .args(["--size", &size.to_string()])
        .args(["--secs", &o.secs.to_string()])
        .args(
            o.rate
                .iter()
                .flat_map(|r| ["--rate".to_string(), r.to_string()]),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", o.client.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    // wait4 rather than Child::wait: it also says how much CPU the client used, which tells
    // whether the client or the server was the bottleneck.
    let (status, client_cpu_s) = wait_with_rusage(child.id())
        .map_err(|e| format!("waiting for {}: {e}", o.client.display()))?;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid).ok_or("server exited during the run")?;
    let busy1 = busy_seconds(&cpus).unwrap_or(f64::NAN);
    let hwm_kib = peak_rss_kib(pid).unwrap_or(0);
    drop(srv);
    let (instructions, l1_misses) = match profile.as_deref() {
        Some(p) => {
            let counts = cachegrind_totals(p);
            let _ = std::fs::remove_file(p);
            (counts.map(|c| c.0), counts.map(|c| c.1))
        }
        None => (None, None),
    };
    let stdout = reader.join().unwrap_or_default();
    let (msgs_per_sec, p50_us, p99_us, errors) = parse_result(&stdout).ok_or_else(|| {
        format!("no RESULT line from the client (wait status {status:#x}):\n{stdout}")
    })?;
    Ok(Run {
        round: 0,
        conns,
        size,
        server: SERVERS[server],
        msgs_per_sec,
        p50_us,
        p99_us,
        errors,
        cpu_s: cpu1.0 - cpu0.0,
        user_cpu_s: cpu1.1 - cpu0.1,
        client_cpu_s,
        others_cpu_s: (busy1 - busy0 - (cpu1.0 - cpu0.0) - client_cpu_s).max(0.0),
        wall_s,
        hwm_kib,
        instructions,
        l1_misses,
    })
}

/// Instructions and L1 data misses (`D1mr` + `D1mw`) of a cachegrind profile, from its
/// `events:` and `summary:` lines.
fn cachegrind_totals(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    let events = field("events:")?;
    let summary = field("summary:")?;
    let count = |name: &str| -> Option<u64> {
        let i = events.iter().position(|e| *e == name)?;
        summary.get(i)?.parse().ok()
    };
    Some((count("Ir")?, count("D1mr")? + count("D1mw")?))
}

/// Reaps child `pid` (which `Child` then must not wait for) and returns its wait status and
/// the CPU seconds (user + system) it used.
fn wait_with_rusage(pid: u32) -> std::io::Result<(i32, f64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; an all-zero value is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid for writes; `pid` is our unreaped child.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if rc == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((status, secs(ru.ru_utime) + secs(ru.ru_stime)))
}

/// The load client's file name and its pace, for titles.
fn client_name(o: &Opts) -> String {
    let name = o.client.file_name().map_or_else(
        || o.client.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match o.rate {
        Some(rate) => format!("{name} paced at {rate:.0} msgs/s"),
        None => name,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A ratio measured once per round, summed up over the rounds: the geometric mean and its
/// approximate 95% interval (mean of the logs +- 2 standard errors). A round's ratio moves by
/// +-10-30% on a shared two-core machine, so a median alone cannot say whether a target a few
/// percent away was met; the interval says how sure the run is.
#[derive(Clone, Copy)]
struct Interval {
    mean: f64,
    lo: f64,
    hi: f64,
}

impl Interval {
    fn of(ratios: &[f64]) -> Interval {
        let logs: Vec<f64> = ratios
            .iter()
            .filter(|x| x.is_finite() && **x > 0.0)
            .map(|x| x.ln())
            .collect();
        let n = logs.len() as f64;
        if logs.is_empty() {
            return Interval {
                mean: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
            };
        }
        let m = logs.iter().sum::<f64>() / n;
        // One round has no spread to go by: no interval.
        let se = if logs.len() < 2 {
            f64::NAN
        } else {
            (logs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
        };
        Interval {
            mean: m.exp(),
            lo: (m - 2.0 * se).exp(),
            hi: (m + 2.0 * se).exp(),
        }
    }

    /// `mean [lo, hi]`, and what it says of `target` (at least this much is the goal).
    fn against(&self, target: f64) -> String {
        let verdict = if self.lo >= target {
            "met"
        } else if self.hi < target {
            "MISSED"
        } else if self.lo.is_nan() {
            "no interval from one round"
        } else {
            "not resolved: the interval spans it"
        };
        format!(
            "{:.3} [{:.3}, {:.3}] (>= {target:.2}: {verdict})",
            self.mean, self.lo, self.hi
        )
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Medians of one configuration. The per-server arrays are indexed like [`SERVERS`]; a slot
/// that did not run (`evco_c` or `hooked` without its flag) holds NaN (0 for `hwm`).
struct Summary {
    conns: usize,
    size: usize,
    /// Per server: median msgs/s, median CPU ns/msg, median server CPU use (0..1), max VmHWM KiB.
    rate: [f64; SLOTS],
    cpu_ns: [f64; SLOTS],
    /// Per server: median user-space CPU ns/msg (the rest of `cpu_ns` is the kernel's).
    user_ns: [f64; SLOTS],
    util: [f64; SLOTS],
    hwm: [u64; SLOTS],
    /// Median over rounds of the same-round ratio to the C server (index 0 is 1.0).
    rate_vs_c: [f64; SLOTS],
    cpu_vs_c: [f64; SLOTS],
    /// Median over rounds of evco's messages per server-CPU-second relative to tokio's.
    evco_eff_vs_tokio: f64,
    /// evco/C msgs/s, evco's efficiency against tokio's, and per server slot its msgs/s over
    /// evco's echo's (NaN for a slot that did not run; used for those in [`VS_EVCO`]), as
    /// geometric means of the per-round ratios with their intervals (the target lines).
    rate_vs_c_ci: Interval,
    evco_eff_vs_tokio_ci: Interval,
    vs_evco_ci: [Interval; SLOTS],
    /// Median CPU use (0..1) of the load client over the configuration's runs.
    client_util: f64,
    /// Median CPU use (0..1, of one CPU) by anything else on the two CPUs during those runs.
    others_util: f64,
    /// Per server: median user-space instructions per message (with --cachegrind).
    instr: [f64; SLOTS],
    /// Per server: median simulated L1 data misses per message (with --cachegrind).
    l1: [f64; SLOTS],
    errors: u64,
}

fn summarise(o: &Opts, runs: &[Run]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &conns in &o.conns {
        for &size in &o.sizes {
            let of = |round: usize, s: usize| {
                runs.iter().find(|r| {
                    r.round == round && r.conns == conns && r.size == size && r.server == SERVERS[s]
                })
            };
            let mut sum = Summary {
                conns,
                size,
                rate: [f64::NAN; SLOTS],
                cpu_ns: [f64::NAN; SLOTS],
                user_ns: [f64::NAN; SLOTS],
                util: [f64::NAN; SLOTS],
                hwm: [0; SLOTS],
                rate_vs_c: [f64::NAN; SLOTS],
                cpu_vs_c: [f64::NAN; SLOTS],
                evco_eff_vs_tokio: f64::NAN,
                rate_vs_c_ci: Interval::of(&[]),
                evco_eff_vs_tokio_ci: Interval::of(&[]),
                vs_evco_ci: [Interval::of(&[]); SLOTS],
                client_util: median(
                    runs.iter()
                        .filter(|r| r.conns == conns && r.size == size)
                        .map(|r| r.client_cpu_s / r.wall_s)
                        .collect(),
                ),
                others_util: median(
                    runs.iter()
                        .filter(|r| r.conns == conns && r.size == size)
                        .map(|r| r.others_cpu_s / r.wall_s)
                        .collect(),
                ),
                instr: [f64::NAN; SLOTS],
                l1: [f64::NAN; SLOTS],
                errors: 0,
            };
            // Per round: a ratio of two servers' figures, where both ran.
            let per_round = |a: usize, b: usize, f: &dyn Fn(&Run, &Run) -> f64| -> Vec<f64> {
                (0..o.rounds)
                    .filter_map(|r| Some(f(of(r, a)?, of(r, b)?)))
                    .collect()
            };
            for &s in &o.servers {
                let mine: Vec<&Run> = (0..o.rounds).filter_map(|r| of(r, s)).collect();
                sum.rate[s] = median(mine.iter().map(|r| r.msgs_per_sec).collect());
                sum.cpu_ns[s] = median(mine.iter().map(|r| r.cpu_ns_per_msg(o.secs)).collect());
                sum.user_ns[s] = median(mine.iter().map(|r| r.user_ns_per_msg(o.secs)).collect());
                sum.util[s] = median(mine.iter().map(|r| r.cpu_s / r.wall_s).collect());
                sum.hwm[s] = mine.iter().map(|r| r.hwm_kib).max().unwrap_or(0);
                sum.instr[s] = median(
                    mine.iter()
                        .map(|r| r.instructions_per_msg(o.secs))
                        .collect(),
                );
                sum.l1[s] = median(mine.iter().map(|r| r.l1_misses_per_msg(o.secs)).collect());
                sum.errors += mine.iter().map(|r| r.errors).sum::<u64>();
                sum.rate_vs_c[s] = median(per_round(s, C, &|a, c| a.msgs_per_sec / c.msgs_per_sec));
                sum.cpu_vs_c[s] = median(per_round(s, C, &|a, c| {
                    a.cpu_ns_per_msg(o.secs) / c.cpu_ns_per_msg(o.secs)
                }));
            }
            let rate_vs_c = per_round(EVCO, C, &|e, c| e.msgs_per_sec / c.msgs_per_sec);
            let eff = per_round(EVCO, TOKIO, &|e, t| {
                t.cpu_ns_per_msg(o.secs) / e.cpu_ns_per_msg(o.secs)
            });
            sum.rate_vs_c_ci = Interval::of(&rate_vs_c);
            sum.evco_eff_vs_tokio = median(eff.clone());
            sum.evco_eff_vs_tokio_ci = Interval::of(&eff);
            for &s in &o.servers {
                let vs_evco = per_round(s, EVCO, &|a, e| a.msgs_per_sec / e.msgs_per_sec);
                sum.vs_evco_ci[s] = Interval::of(&vs_evco);
            }
            out.push(sum);
        }
    }
    out
}

fn write_csv(path: &Path, o: &Opts, runs: &[Run]) -> std::io::Result<()> {
    let mut s = String::from(
        "round,conns,size,server,msgs_per_sec,p50_us,p99_us,errors,server_cpu_s,wall_s,\
         server_cpu_util,server_cpu_ns_per_msg,server_vmhwm_kib,client_cpu_s,client_cpu_util,\
         others_cpu_s,others_cpu_util,user_instructions,user_instructions_per_msg,\
         user_l1_misses,user_l1_misses_per_msg,server_user_cpu_s,server_user_ns_per_msg\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.1},{:.1},{:.1},{},{:.3},{:.3},{:.3},{:.1},{},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{:.3},{:.1}",
            r.round + 1,
            r.conns,
            r.size,
            r.server,
            r.msgs_per_sec,
            r.p50_us,
            r.p99_us,
            r.errors,
            r.cpu_s,
            r.wall_s,
            r.cpu_s / r.wall_s,
            r.cpu_ns_per_msg(o.secs),
            r.hwm_kib,
            r.client_cpu_s,
            r.client_cpu_s / r.wall_s,
            r.others_cpu_s,
            r.others_cpu_s / r.wall_s,
            r.instructions.map(|n| n.to_string()).unwrap_or_default(),
            if r.instructions.is_some() {
                format!("{:.0}", r.instructions_per_msg(o.secs))
            } else {
                String::new()
            },
            r.l1_misses.map(|n| n.to_string()).unwrap_or_default(),
            if r.l1_misses.is_some() {
                format!("{:.2}", r.l1_misses_per_msg(o.secs))
            } else {
                String::new()
            },
            r.user_cpu_s,
            r.user_ns_per_msg(o.secs),
        );
    }
    std::fs::write(path, s)
}

/// `cell(slot)` for each server slot of `servers`, joined by single spaces: one group of
/// columns of the tables.
fn cells(servers: &[usize], cell: impl Fn(usize) -> String) -> String {
    servers
        .iter()
        .map(|&s| cell(s))
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(o: &Opts, sums: &[Summary]) -> String {
    let all = &o.servers[..];
    // The servers with a ratio to C: all but the reference.
    let others = &o.servers[1..];
    // The optional servers that ran, each with its ratio to evco's echo in the target lines.
    let vs_evco: Vec<_> = VS_EVCO
        .iter()
        .filter(|(slot, ..)| o.bins[*slot].is_some())
        .collect();
    // Widths of the column groups (k columns of 9, 6 or 4 characters and the spaces between).
    let k = all.len();
    let (w_rate, w_ratio, w_cpu, w_util) = (10 * k - 1, 7 * k - 8, 7 * k - 1, 5 * k + 9);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "echo comparison, load {}: {} rounds x {} s per run; medians; ratios are to the C \
         libevent server in the same round",
        client_name(o),
        o.rounds,
        o.secs
    );
    let _ = writeln!(
        t,
        "{:>5} {:>6} | {} | {} | {} | {} | {:>8} | {} {:>4} {:>4} | {}",
        "conns",
        "size",
        cells(all, |s| format!("{:>9}", HEADINGS[s][0])),
        cells(others, |s| format!("{:>6}", HEADINGS[s][1])),
        cells(all, |s| format!("{:>6}", HEADINGS[s][2])),
        cells(others, |s| format!("{:>6}", HEADINGS[s][1])),
        "evco eff",
        cells(all, |s| format!("{:>4}", HEADINGS[s][3])),
        "cl%",
        "oth%",
        cells(all, |s| format!("{:>6}", HEADINGS[s][4])),
    );
    let _ = writeln!(
        t,
        "{:>5} {:>6} | {:^w_rate$} | {:^w_ratio$} | {:^w_cpu$} | {:^w_ratio$} | {:>8} | \
         {:^w_util$} | {:^w_cpu$}",
        "",
        "",
        "messages/s",
        "msgs/s ratio",
        "server CPU ns / msg",
        "CPU/msg ratio",
        "vs tokio",
        "CPU use (client, others)",
        "server peak RSS"
    );
    for s in sums {
        let mib = |k: u64| k as f64 / 1024.0;
        let _ = writeln!(
            t,
            "{:>5} {:>6} | {} | {} | {} | {} | {:>8.3} | {} {:>4.0} {:>4.0} | {}{}",
            s.conns,
            size_label(s.size),
            cells(all, |i| format!("{:>9.0}", s.rate[i])),
            cells(others, |i| format!("{:>6.3}", s.rate_vs_c[i])),
            cells(all, |i| format!("{:>6.0}", s.cpu_ns[i])),
            cells(others, |i| format!("{:>6.3}", s.cpu_vs_c[i])),
            s.evco_eff_vs_tokio,
            cells(all, |i| format!("{:>4.0}", s.util[i] * 100.0)),
            s.client_util * 100.0,
            s.others_util * 100.0,
            cells(all, |i| format!("{:>6.1}", mib(s.hwm[i]))),
            if s.errors > 0 {
                format!("  ({} client errors)", s.errors)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        t,
        "{}: msgs/s relative to C (higher is better) and CPU per message relative to \
         C (lower is better).\nevco eff vs tokio: evco's messages per server-CPU-second over \
         tokio's (target >= 1.0).\nCPU use: a server near 100% was the bottleneck; a server \
         well below it with the client (cl) near 100% means the client was, and msgs/s ratios \
         then understate the servers' differences (CPU per message still compares them).\noth%: \
         CPU the two measuring CPUs spent on other work during a run (other processes, \
         interrupts, steal); above ~10% the machine was busy and msgs/s are unreliable.",
        others
            .iter()
            .map(|&s| HEADINGS[s][1])
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (_, what, label) in &vs_evco {
        let _ = writeln!(
            t,
            "{what}.\n{label} (target lines): its msgs/s over evco's echo's in the same round \
             (target >= 0.9)."
        );
    }
    let busy = sums.iter().filter(|s| s.others_util > 0.1).count();
    if busy > 0 {
        let _ = writeln!(
            t,
            "WARNING: other work used over 10% of a CPU on the measuring CPUs in {busy} of {} \
             configurations (oth%): msgs/s there are unreliable, CPU per message less so.",
            sums.len()
        );
    }
    // The targets of the performance issue, where the configuration was run: geometric means
    // of the per-round ratios with their intervals, and whether the interval clears the
    // target (a median alone cannot tell a 3% gap from this machine's noise).
    let targets: Vec<&Summary> = sums
        .iter()
        .filter(|s| s.size == 64 && (s.conns == 100 || s.conns == 1000))
        .collect();
    if !targets.is_empty() {
        let _ = writeln!(
            t,
            "targets: geometric means of the per-round ratios [approximate 95% intervals]; \
             \"met\" when the whole interval clears the target"
        );
    }
    for s in targets {
        let mut line = format!(
            "target {} conns x 64 B: evco/C msgs/s {}, evco vs tokio msgs per CPU-s {}",
            s.conns,
            s.rate_vs_c_ci.against(0.95),
            s.evco_eff_vs_tokio_ci.against(1.0),
        );
        for (slot, _, label) in &vs_evco {
            let _ = write!(
                line,
                ", {label} msgs/s {}",
                s.vs_evco_ci[*slot].against(0.9)
            );
        }
        let _ = writeln!(t, "{line}");
    }
    // Where the server CPU per message goes: user space (the server's code and libraries)
    // against the kernel (the TCP work, about the same for every server). A gap between servers
    // in CPU per message shows up here as a gap in the user-space part.
    for s in sums {
        let split = o
            .servers
            .iter()
            .map(|&i| {
                format!(
                    "{} {:.0} + {:.0}",
                    SERVERS[i],
                    s.user_ns[i],
                    s.cpu_ns[i] - s.user_ns[i]
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            t,
            "split {} conns x {}: server CPU ns per message, user space + kernel (median of \
             user, median of total minus it): {split}",
            s.conns,
            size_label(s.size)
        );
    }
    t
}

/// The table of --cachegrind runs: instructions and simulated L1 data misses per message, which
/// other work on the machine does not change (unlike msgs/s and CPU time).
fn instruction_table(o: &Opts, sums: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "user space under cachegrind, per message (load {}, {} s per run; kernel work not \
         counted; startup included): instructions, and L1 data-cache misses (simulated 48 KiB \
         12-way L1: cache lines touched that other connections' work had evicted)",
        client_name(o),
        o.secs
    );
    let all = &o.servers[..];
    // With echo.c or echo_hooked, one more ratio after each group for each: its counts over
    // evco's echo's.
    let extra = |cell: &dyn Fn(usize, &str) -> String| -> String {
        VS_EVCO
            .iter()
            .filter(|(slot, ..)| o.bins[*slot].is_some())
            .map(|(slot, _, label)| format!(" {}", cell(*slot, label)))
            .collect()
    };
    let _ = writeln!(
        t,
        "{:>5} {:>6} | {} | {:>6} {:>10}{} | {} | {:>10}{}",
        "conns",
        "size",
        cells(all, |s| format!(
            "{:>8}",
            ["C", "evco", "evco_c", "hooked", "tokio"][s]
        )),
        "evco/C",
        "evco/tokio",
        extra(&|_, label| format!("{label:>11}")),
        cells(all, |s| format!(
            "{:>6}",
            ["C L1", "evco", "evco_c", "hooked", "tokio"][s]
        )),
        "evco/tokio",
        extra(&|_, label| format!("{label:>11}")),
    );
    let mut starved = false;
    for s in sums {
        // A server that echoed under a tenth of the best one's messages spent the run on
        // something else under valgrind (tokio at 1,000 connections does: seconds of latency);
        // its per-message counts are mostly startup and idling, so they are left out.
        let best = all.iter().map(|&i| s.rate[i]).fold(0.0, f64::max);
        let keep = |i: usize, v: f64| {
            if s.rate[i] < 0.1 * best { f64::NAN } else { v }
        };
        starved |= all.iter().any(|&i| s.rate[i] < 0.1 * best);
        let instr: [f64; SLOTS] = std::array::from_fn(|i| keep(i, s.instr[i]));
        let l1: [f64; SLOTS] = std::array::from_fn(|i| keep(i, s.l1[i]));
        let _ = writeln!(
            t,
            "{:>5} {:>6} | {} | {:>6.2} {:>10.2}{} | {} | {:>10.2}{}",
            s.conns,
            size_label(s.size),
            cells(all, |i| format!("{:>8.0}", instr[i])),
            instr[EVCO] / instr[C],
            instr[EVCO] / instr[TOKIO],
            extra(&|i, _| format!("{:>11.2}", instr[i] / instr[EVCO])),
            cells(all, |i| format!("{:>6.1}", l1[i])),
            l1[EVCO] / l1[TOKIO],
            extra(&|i, _| format!("{:>11.2}", l1[i] / l1[EVCO])),
        );
    }
    if starved {
        let _ = writeln!(
            t,
            "NaN: that server echoed under a tenth of the best server's messages under valgrind; \
             its counts per message would be mostly startup and idling (see the CSV)."
        );
    }
    t
}

fn chart(path: &Path, o: &Opts, sums: &[Summary]) -> Result<(), Box<dyn std::error::Error>> {
    let n = sums.len() as i32;
    let root = SVGBackend::new(path, (200 + 130 * n as u32, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let optional: String = [(EVCO_C, ", evco echo.c"), (HOOKED, ", evco echo_hooked")]
        .iter()
        .filter(|(slot, _)| o.bins[*slot].is_some())
        .map(|(_, name)| *name)
        .collect();
    let root = root.titled(
        &format!(
            "echo: evco{optional} and tokio relative to C libevent in the same round (median of {} \
             rounds x {} s, load: {})",
            o.rounds,
            o.secs,
            client_name(o)
        ),
        ("sans-serif", 18),
    )?;
    let panels = root.split_evenly((2, 1));
    // Per server slot, as in SERVERS.
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(148, 103, 189),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    let labels: Vec<String> = sums
        .iter()
        .map(|s| format!("{} x {}", s.conns, size_label(s.size)))
        .collect();
    type Value = fn(&Summary) -> [f64; SLOTS];
    let plots: [(&str, Value); 2] = [
        ("messages/s relative to C (higher is better)", |s| {
            s.rate_vs_c
        }),
        (
            "server CPU per message relative to C (lower is better)",
            |s| s.cpu_vs_c,
        ),
    ];
    for (panel, &(caption, value)) in panels.iter().zip(plots.iter()) {
        let top = sums
            .iter()
            .flat_map(value)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max);
        // Headroom for the legend above the bars.
        let top = (top * 1.4).max(1.4);
        // Each configuration is a group of bars centred on a multiple of `group`: three bars 2
        // wide and 1 apart in 10 units, four (echo.c or echo_hooked) 3 wide and 2 apart in 20
        // (whose x axis also gets a tick between the groups), or five 3 wide and 1 apart in 20.
        let (group, width, gap) = match o.servers.len() {
            0..=3 => (10, 2, 1),
            4 => (20, 3, 2),
            _ => (20, 3, 1),
        };
        let first = -(width * o.servers.len() as i32 + gap * (o.servers.len() as i32 - 1)) / 2;
        let mut c = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-group / 2..(n * group - group / 2), 0.0..top)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels((n * group / 10) as usize)
            .x_label_formatter(&|x| {
                if x % group == 0 && *x >= 0 && *x < n * group {
                    labels[(x / group) as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("ratio to C")
            .y_max_light_lines(1)
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()?;
        for (j, &s) in o.servers.iter().enumerate() {
            let color = colors[s];
            let bars = sums.iter().enumerate().filter_map(move |(i, sum)| {
                let v = value(sum)[s];
                let x = i as i32 * group + first + (width + gap) * j as i32;
                v.is_finite()
                    .then(|| Rectangle::new([(x, 0.0), (x + width, v)], color.filled()))
            });
            c.draw_series(bars)?
                .label(match s {
                    C => "C libevent (1.0)",
                    EVCO => "evco",
                    EVCO_C => "evco examples/c/echo.c (C API, libc hooks)",
                    HOOKED => "evco echo_hooked (std::net, libc hooks)",
                    _ => "tokio current_thread",
                })
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        c.draw_series(std::iter::once(PathElement::new(
            vec![(-group / 2, 1.0), (n * group - group / 2, 1.0)],
            BLACK.stroke_width(1),
        )))?;
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    let o = parse();
    std::fs::create_dir_all(&o.out)
        .unwrap_or_else(|e| die(&format!("cannot create {}: {e}", o.out.display())));
    let total = o.rounds * o.conns.len() * o.sizes.len() * o.servers.len();
    // The progress lines' server column fits the longest name that runs.
    let name_width = o
        .servers
        .iter()
        .map(|&s| SERVERS[s].len())
        .max()
        .unwrap_or(0);
    eprintln!(
        "echo_compare: {total} runs of {} s (servers on CPU {}, client on CPU {})",
        o.secs, o.server_cpu, o.client_cpu
    );
    let mut runs = Vec::new();
    let mut port = o.port;
    let started = Instant::now();
    for round in 0..o.rounds {
        for &conns in &o.conns {
            for &size in &o.sizes {
                for &s in &o.servers {
                    let server = SERVERS[s];
                    // A fresh port per run: no TIME_WAIT or lingering listener between runs.
                    port = port.checked_add(1).unwrap_or(o.port);
                    match run_one(&o, s, conns, size, port) {
                        Ok(mut r) => {
                            r.round = round;
                            eprintln!(
                                "[{:>3}/{total} {:>4.0}s] round {} {:>4} x {:>6} {:<name_width$} {:>9.0} msg/s \
                                 cpu {:>5.0} ns/msg ({:>3.0}%, client {:>3.0}%, others {:>3.0}%) \
                                 hwm {:>6} KiB{}",
                                runs.len() + 1,
                                started.elapsed().as_secs_f64(),
                                round + 1,
                                conns,
                                size_label(size),
                                server,
                                r.msgs_per_sec,
                                r.cpu_ns_per_msg(o.secs),
                                100.0 * r.cpu_s / r.wall_s,
                                100.0 * r.client_cpu_s / r.wall_s,
                                100.0 * r.others_cpu_s / r.wall_s,
                                r.hwm_kib,
                                if r.errors > 0 {
                                    format!(" ({} errors)", r.errors)
                                } else {
                                    String::new()
                                }
                            );
                            if o.rate.is_some_and(|rate| r.msgs_per_sec < 0.95 * rate) {
                                eprintln!(
                                    "echo_compare: {server} did not keep up with --rate at {conns} x {}: its CPU per \
                                     message is not at the offered load",
                                    size_label(size)
                                );
                            }
                            runs.push(r);
                        }
                        Err(e) => eprintln!(
                            "echo_compare: round {} {conns} x {size} {}: {e}",
                            round + 1,
                            server
                        ),
                    }
                }
            }
        }
    }
    let csv = o.out.join(format!("{}.csv", o.stem));
    write_csv(&csv, &o, &runs).unwrap_or_else(|e| die(&format!("{}: {e}", csv.display())));
    let sums = summarise(&o, &runs);
    if o.valgrind {
        // Throughput under valgrind means nothing; the instruction counts are the result.
        print!("{}", instruction_table(&o, &sums));
        println!("wrote {}", csv.display());
        return;
    }
    let svg = o.out.join(format!("{}.svg", o.stem));
    if let Err(e) = chart(&svg, &o, &sums) {
        die(&format!("{}: {e}", svg.display()));
    }
    print!("{}", table(&o, &sums));
    println!("wrote {} and {}", csv.display(), svg.display());
}
