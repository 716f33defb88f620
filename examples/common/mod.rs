//! What the example servers share: their `--addr` argument, the echo loop, and running the
//! accept loop until SIGINT or SIGTERM.

use std::io::{self, Read, Write};

use evco::event::Event;

/// Runs `acceptor` as a coroutine until it returns, or until SIGINT/SIGTERM arrives: libevent
/// signal events whose callbacks (on the loop, outside any coroutine) cancel every coroutine
/// but the caller, the root coroutine of `evco::run`. Returns the acceptor's error, if any.
/// `say` is printed to stderr on a signal (when given).
pub fn serve_until_signalled(
    say: Option<&'static str>,
    acceptor: impl FnOnce() -> io::Result<()> + 'static,
) -> io::Result<()> {
    let acceptor = evco::spawn(acceptor);
    let base = evco::scheduler::base()?;
    let stop = move |_| {
        if let Some(s) = say {
            eprintln!("{s}");
        }
        let _ = evco::scheduler::shutdown();
    };
    let sigint = Event::signal(&base, libc::SIGINT, stop)?;
    let sigterm = Event::signal(&base, libc::SIGTERM, stop)?;
    sigint.add(None)?;
    sigterm.add(None)?;
    // Parks until the acceptor ends: cancelled by `shutdown` (which spares this root coroutine
    // and cancels every connection), or a listener error.
    let result = acceptor.join();
    drop((sigint, sigterm));
    match result {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// The `--addr HOST:PORT` argument (default 127.0.0.1:7878); `--help` prints the usage and
/// exits, anything else is an error (exit status 2).
#[allow(dead_code)] // soak takes no arguments of this kind
pub fn addr_from_args(prog: &str) -> String {
    server_args(prog, false).0
}

/// `--addr HOST:PORT` (default 127.0.0.1:7878) and, when `threads_ok`, `--threads N` (at least
/// one); `--help` prints the usage and exits, anything else is an error (exit status 2).
#[allow(dead_code)] // soak takes no arguments of this kind
pub fn server_args(prog: &str, threads_ok: bool) -> (String, Option<usize>) {
    let mut addr = "127.0.0.1:7878".to_string();
    let mut threads = None;
    let usage = if threads_ok {
        format!(
            "usage: {prog} [--addr HOST:PORT] [--threads N]   (default 127.0.0.1:7878, one \
             thread without a runtime)"
        )
    } else {
        format!("usage: {prog} [--addr HOST:PORT]   (default 127.0.0.1:7878)")
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{prog}: {arg} needs {what}");
                std::process::exit(2);
            })
        };
        match arg.as_str() {
            "--addr" => addr = value("a value"),
            "--threads" if threads_ok => match value("a number").parse::<usize>() {
                Ok(n) if n > 0 => threads = Some(n),
                _ => {
                    eprintln!("{prog}: --threads needs a number of threads, at least 1");
                    std::process::exit(2);
                }
            },
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            other => {
                eprintln!("{prog}: unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    (addr, threads)
}

/// Echoes what `stream` sends until EOF or an error, through a 4 KiB buffer. Plain blocking
/// `Read`/`Write` code: evco's `TcpStream` (examples/echo) and std's, made cooperative by the
/// hooks (examples/echo_hooked), run it unchanged.
#[allow(dead_code)] // soak counts its bytes in its own loop
pub fn echo(mut stream: impl Read + Write) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}
