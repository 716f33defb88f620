//! The echo server evco started from, done right: one coroutine per connection, EOF and errors
//! end that connection only, and SIGINT/SIGTERM stop it cleanly.
//!
//! ```text
//! cargo run --release --example echo -- [--addr 127.0.0.1:7878]
//! nc 127.0.0.1 7878
//! ```

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use evco::coroutine::Builder;
use evco::event::Event;
use evco::net::{TcpListener, TcpStream};

/// Connection coroutines need little stack: a 4 KiB buffer and the I/O path.
const CONN_STACK: usize = 32 * 1024;

fn main() {
    let mut addr = "127.0.0.1:7878".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().expect("--addr needs a value"),
            "-h" | "--help" => {
                println!("usage: echo [--addr HOST:PORT]   (default 127.0.0.1:7878)");
                return;
            }
            other => {
                eprintln!("echo: unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }

    let served = evco::run(move || -> io::Result<u64> {
        let listener = TcpListener::bind(&addr)?;
        println!("evco echo: listening on {}", listener.local_addr()?);
        io::stdout().flush()?;

        let served = Rc::new(Cell::new(0u64));
        let acceptor = {
            let served = served.clone();
            evco::spawn(move || accept_loop(listener, served))
        };

        // Stop on SIGINT/SIGTERM: libevent signal events whose callbacks (on the loop, outside
        // any coroutine) cancel every coroutine; `run` then returns.
        let base = evco::scheduler::base()?;
        let stop = |_| {
            eprintln!("evco echo: shutting down");
            let _ = evco::scheduler::shutdown();
        };
        let sigint = Event::signal(&base, libc::SIGINT, stop)?;
        let sigterm = Event::signal(&base, libc::SIGTERM, stop)?;
        sigint.add(None)?;
        sigterm.add(None)?;
        // Parks until the acceptor ends: cancelled by `shutdown` (which spares this root
        // coroutine and cancels every connection), or a listener error.
        let result = acceptor.join();
        drop((sigint, sigterm));
        match result {
            Ok(Err(e)) => Err(e),
            _ => Ok(served.get()),
        }
    });
    match served {
        Ok(n) => eprintln!("evco echo: stopped after {n} connections"),
        Err(e) => {
            eprintln!("evco echo: {e}");
            std::process::exit(1);
        }
    }
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

fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
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
