//! The tokio baseline of the echo comparison (`scripts/echo-compare`): a current-thread runtime,
//! one task per connection, read into a 4 KiB buffer and write it all back: the same shape and
//! buffer as evco's `examples/echo.rs` and `bench/c/echo_libevent.c`.
//!
//! ```text
//! cargo run --release -p evco-bench --bin tokio_echo -- [--addr 127.0.0.1:7878]
//! ```

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:7878".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(a)) => addr = a,
            _ => {
                eprintln!("usage: tokio_echo [--addr HOST:PORT]   (default 127.0.0.1:7878)");
                std::process::exit(2);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        println!("tokio echo: listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(serve(stream));
        }
    })
}

async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
