//! The echo server evco started from, done right: one coroutine per connection, EOF and errors
//! end that connection only, and SIGINT/SIGTERM stop it cleanly.
//!
//! ```text
//! cargo run --release --example echo -- [--addr 127.0.0.1:7878] [--threads N]
//! nc 127.0.0.1 7878
//! ```
//!
//! Without `--threads` it is one scheduler on the main thread (`evco::run`). With `--threads N`
//! it is an `evco::runtime::Runtime` of N threads serving the address from every thread (one
//! `SO_REUSEPORT` listener each, `Runtime::serve`); SIGINT/SIGTERM then shut the runtime down
//! (`Runtime::shutdown_on_signal`): the listeners close, open connections get a short grace
//! and are then reset.

mod common;

use std::cell::Cell;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use evco::coroutine::Builder;
use evco::net::{TcpListener, TcpStream};

/// Connection coroutines need little stack: a 4 KiB buffer and the I/O path.
const CONN_STACK: usize = 32 * 1024;

/// How long open connections may go on after SIGINT/SIGTERM with `--threads`.
const GRACE: Duration = Duration::from_secs(1);

fn main() {
    let (addr, threads) = common::server_args("echo", true);
    if let Some(n) = threads {
        if let Err(e) = on_runtime(&addr, n) {
            eprintln!("evco echo: {e}");
            std::process::exit(1);
        }
        return;
    }

    let served = evco::run(move || -> io::Result<u64> {
        let listener = TcpListener::bind(&addr)?;
        println!("evco echo: listening on {}", listener.local_addr()?);
        io::stdout().flush()?;

        let served = Rc::new(Cell::new(0u64));
        let counter = served.clone();
        common::serve_until_signalled(Some("evco echo: shutting down"), move || {
            accept_loop(listener, counter)
        })?;
        Ok(served.get())
    });
    match served {
        Ok(n) => eprintln!("evco echo: stopped after {n} connections"),
        Err(e) => {
            eprintln!("evco echo: {e}");
            std::process::exit(1);
        }
    }
}

/// `--threads N`: the same echo, served from every thread of a runtime.
fn on_runtime(addr: &str, threads: usize) -> io::Result<()> {
    let rt = evco::runtime::Builder::new()
        .threads(threads)
        .stack_size(CONN_STACK)
        .name_prefix("echo")
        .build()?;
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let bound = rt.serve(addr, move |stream| {
        counter.fetch_add(1, Ordering::Relaxed);
        serve(stream);
    })?;
    println!("evco echo: listening on {bound} ({threads} threads)");
    io::stdout().flush()?;
    let cancelled = rt.shutdown_on_signal(GRACE)?;
    eprintln!(
        "evco echo: stopped after {} connections ({cancelled} coroutines cancelled at the deadline)",
        served.load(Ordering::Relaxed)
    );
    Ok(())
}

fn accept_loop(listener: TcpListener, served: Rc<Cell<u64>>) -> io::Result<()> {
    loop {
        let (stream, _peer) = listener.accept()?;
        served.set(served.get() + 1);
        let spawned = Builder::new()
            .stack_size(CONN_STACK)
            .spawn(move || serve(stream));
        if let Err(e) = spawned {
            // Out of stacks: refuse this connection, keep the others.
            eprintln!("evco echo: cannot serve a connection: {e}");
        }
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    common::echo(stream);
}
