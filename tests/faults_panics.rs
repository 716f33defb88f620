//! Fault injection inside the coroutines themselves: a panic and a stack overflow in two of 1,000
//! connection coroutines on 32 KiB stacks.
//!
//! What it proves: each ends only its own coroutine, and its join handle reports it (the panic's
//! payload, `StackOverflow`), while the other connections echo byte-exact and the accept loop
//! keeps serving.
//!
//! The test is bounded by the watchdog and talks to 127.0.0.1 only. Like every `faults_*` file,
//! this one also runs under `EVENT_NOEPOLL=1` (libevent's poll backend) in `scripts/ci-faults`.

mod common;

use std::io::{self, Read, Write};
use std::rc::Rc;

use common::{End, Handles, echo, pattern, payload_kind, watchdog};
use evco::coroutine::{Builder, StackOverflow};
use evco::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// A panic and a stack overflow among 1,000 connections

const TAG_PANIC: u8 = 0xEE;
const TAG_OVERFLOW: u8 = 0xEF;

fn recurse(n: u64) -> u64 {
    let frame = [n as u8; 512];
    std::hint::black_box(&frame);
    if n == 0 {
        0
    } else {
        recurse(n - 1).wrapping_add(frame[3] as u64)
    }
}

#[test]
fn a_panic_and_a_stack_overflow_among_1000_connection_coroutines_end_only_those_two() {
    let _w = watchdog(120);
    const CONNS: usize = 1000;
    const PANICKER: usize = 333;
    const OVERFLOWER: usize = 666;
    evco::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handlers: Handles<End> = Rc::default();
        let acceptor = {
            let handlers = handlers.clone();
            evco::spawn(move || -> io::Result<()> {
                loop {
                    let (s, _) = listener.accept()?;
                    let h = Builder::new().stack_size(32 * 1024).spawn(move || {
                        let mut tag = [0u8; 1];
                        (&s).read_exact(&mut tag).unwrap();
                        match tag[0] {
                            TAG_PANIC => panic!("deliberate panic in one connection"),
                            TAG_OVERFLOW => {
                                std::hint::black_box(recurse(u64::MAX));
                                unreachable!()
                            }
                            _ => echo(&s),
                        }
                    })?;
                    handlers.borrow_mut().push(h);
                }
            })
        };
        let clients: Vec<_> = (0..CONNS)
            .map(|i| {
                evco::spawn(move || -> Option<TcpStream> {
                    let s = TcpStream::connect(addr).unwrap();
                    match i {
                        PANICKER => {
                            (&s).write_all(&[TAG_PANIC]).unwrap();
                            // The panic unwinds the server coroutine: its stream is dropped.
                            let n = (&s).read(&mut [0u8; 16]).unwrap();
                            assert_eq!(n, 0, "EOF after the server side panicked");
                            None
                        }
                        OVERFLOWER => {
                            // An overflowed stack is not unwound (see the report): the server's
                            // stream is never dropped, so no EOF comes. Keep the socket.
                            (&s).write_all(&[TAG_OVERFLOW]).unwrap();
                            Some(s)
                        }
                        _ => {
                            (&s).write_all(&[1]).unwrap();
                            for round in 0..4 {
                                let data = pattern(i * 4 + round, 4096);
                                (&s).write_all(&data).unwrap();
                                let mut back = vec![0u8; data.len()];
                                (&s).read_exact(&mut back).unwrap();
                                assert!(back == data, "connection {i} round {round}");
                            }
                            None
                        }
                    }
                })
            })
            .collect();
        let mut kept = Vec::new();
        for (i, c) in clients.into_iter().enumerate() {
            match c.join() {
                Ok(s) => kept.extend(s),
                Err(p) => panic!("client {i}: {}", payload_kind(&p)),
            }
        }
        // Still serving afterwards.
        let s = TcpStream::connect(addr).unwrap();
        (&s).write_all(&[1, 42]).unwrap();
        let mut b = [0u8; 1];
        (&s).read_exact(&mut b).unwrap();
        assert_eq!(b[0], 42);
        drop(s);
        drop(kept);
        assert!(!acceptor.is_finished());
        acceptor.cancel().unwrap();

        let (mut ok, mut panicked, mut overflowed) = (0, 0, 0);
        for h in handlers.take() {
            match h.join() {
                Ok(End::Eof(_)) => ok += 1,
                Ok(other) => panic!("a healthy connection ended with {other:?}"),
                Err(p) if p.downcast_ref::<StackOverflow>().is_some() => overflowed += 1,
                Err(p) => {
                    assert_eq!(
                        p.downcast_ref::<&str>(),
                        Some(&"deliberate panic in one connection")
                    );
                    panicked += 1;
                }
            }
        }
        assert_eq!((ok, panicked, overflowed), (CONNS - 2 + 1, 1, 1));
    });
}
