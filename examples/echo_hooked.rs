//! `examples/echo` written against std::net, as code that knows nothing of evco would be: the
//! blocking `accept`, `read` and `write` below suspend their coroutine instead of the thread
//! because evco's hooks (the `hook` feature, on by default) interpose libc's socket calls.
//!
//! ```text
//! cargo run --release --example echo_hooked -- [--addr 127.0.0.1:7878]
//! nc 127.0.0.1 7878
//! ```

mod common;

use std::cell::Cell;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;

use evco::coroutine::Builder;

/// Connection coroutines need little stack: a 4 KiB buffer and the I/O path.
const CONN_STACK: usize = 32 * 1024;

fn main() {
    let addr = common::addr_from_args("echo_hooked");
    let served = evco::run(move || -> io::Result<u64> {
        let listener = listen(&addr)?;
        println!(
            "evco echo (hooked std::net): listening on {}",
            listener.local_addr()?
        );
        io::stdout().flush()?;
        let served = Rc::new(Cell::new(0u64));
        let counter = served.clone();
        common::serve_until_signalled(Some("evco echo_hooked: shutting down"), move || {
            loop {
                let (stream, _peer) = listener.accept()?;
                counter.set(counter.get() + 1);
                if let Err(e) = Builder::new()
                    .stack_size(CONN_STACK)
                    .spawn(move || serve(stream))
                {
                    eprintln!("evco echo_hooked: cannot serve a connection: {e}");
                }
            }
        })?;
        Ok(served.get())
    });
    match served {
        Ok(n) => eprintln!("evco echo_hooked: stopped after {n} connections"),
        Err(e) => {
            eprintln!("evco echo_hooked: {e}");
            std::process::exit(1);
        }
    }
}

/// A std listener with a queue for a thousand simultaneous connects: `TcpListener::bind`
/// listens with a backlog of 128, and a burst beyond that waits out SYN retransmissions (a
/// second or more), whatever serves the connections. So the listener is made with socket2, as
/// a std program expecting such bursts would; everything after is std's.
fn listen(addr: &str) -> io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Plain blocking std code (`common::echo` is a `Read + Write` loop): nothing here knows it
/// runs in a coroutine.
fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    common::echo(stream);
}
