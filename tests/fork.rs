//! `fork` in a process whose thread has a scheduler: the child gets state of its own (a new
//! epoll instance, timerfd and doorbell), so parent and children each serve their own events.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{child_passes, is_child, watchdog};

/// One worker of the pre-fork server: accepts through `evco::net` and echoes each line,
/// prefixed with its pid, through std's blocking socket under the hooks (when built with
/// them; through evco's stream otherwise).
fn worker(listener: std::net::TcpListener) -> ! {
    let pid = std::process::id();
    evco::run(move || {
        let listener = evco::net::TcpListener::from_std(listener).unwrap();
        loop {
            let (conn, _) = listener.accept().unwrap();
            evco::spawn(move || {
                let std_conn = conn.into_std();
                std_conn.set_nonblocking(false).unwrap();
                let mut line = String::new();
                if BufReader::new(&std_conn).read_line(&mut line).is_ok() {
                    let _ = (&std_conn).write_all(format!("{pid} {line}").as_bytes());
                }
            });
        }
    })
}

/// A pre-fork server: the parent binds a listener and has run a scheduler (a timed wait: its
/// alarm's timerfd exists), forks two workers that accept and echo, then serves 20 clients of
/// its own from coroutines on its inherited scheduler. Every client gets its line back.
/// Before, parent and workers shared one epoll instance and one timerfd, and stalled: each
/// took the others' events (the clients' 5 s read timeouts ended it).
#[test]
fn a_pre_fork_server_serves_from_every_worker_and_the_parent_keeps_its_loop() {
    if !is_child() {
        let _w = watchdog(60);
        let out = child_passes(
            "a_pre_fork_server_serves_from_every_worker_and_the_parent_keeps_its_loop",
            &[],
        );
        common::report_lines(&out, "fork:");
        return;
    }
    let _w = watchdog(30);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The parent's scheduler, installed and used before the fork.
    evco::run(|| evco::time::sleep(Duration::from_millis(1)));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let copy = listener.try_clone().unwrap();
        // SAFETY: fork in a process whose other threads (the watchdog's) the child does not
        // need; the child only runs `worker` and never returns.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => worker(copy),
            pid => workers.push(pid),
        }
    }
    drop(listener);
    let replies = evco::run(move || {
        let clients: Vec<_> = (0..20)
            .map(|i| {
                evco::spawn(move || {
                    let mut s = evco::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(format!("hello {i}\n").as_bytes()).unwrap();
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line).map(|_| (i, line))
                })
            })
            .collect();
        // The parent's own timer still works alongside.
        evco::time::sleep(Duration::from_millis(5));
        clients
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut by_worker = std::collections::HashMap::new();
    for r in replies {
        let (i, line) = r.expect("every client is answered");
        let (pid, rest) = line.split_once(' ').expect("pid and line");
        assert_eq!(rest, format!("hello {i}\n"));
        *by_worker.entry(pid.to_string()).or_insert(0) += 1;
    }
    for pid in &workers {
        // SAFETY: our own children.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
    }
    println!("fork: 20 clients answered, by worker pid: {by_worker:?}");
    println!("child-finished");
}
