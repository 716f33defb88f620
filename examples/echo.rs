//! The echo server evco started from, done right: one coroutine per connection, EOF and errors
//! end that connection only, and SIGINT/SIGTERM stop it cleanly.
//!
//! ```text
//! cargo run --release --example echo -- [--addr 127.0.0.1:7878]
//! nc 127.0.0.1 7878
//! ```

mod common;

use std::cell::Cell;
use std::io::{self, Write};
use std::rc::Rc;

use evco::coroutine::Builder;
use evco::net::{TcpListener, TcpStream};

/// Connection coroutines need little stack: a 4 KiB buffer and the I/O path.
const CONN_STACK: usize = 32 * 1024;

fn main() {
    let addr = common::addr_from_args("echo");

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
