//! The C ABI (include/evco.h, src/capi) as C and C++ programs see it: the header compiles as
//! C99 and C++20, its declarations are exactly the library's `evco_*` exports, every hook is
//! exported and kept by static links of every shape, and C programs in `tests/c/` exercise the
//! hooks, cancellation and every function with bad input.
//!
//! The C sources are compiled with `cc` (`$CC`; `$CXX`/`c++` for C++) into a temporary
//! directory, warnings as errors, and linked with `libevco.a`/`libevco.so` and libevent's
//! runtime libraries by soname: no libevent header is needed (the programs declare the few
//! libevent functions they call), so this runs where only libevent's runtime package is
//! installed (`/work/shared/fresh-machine`). Each C program prints a line per check (see
//! `tests/c/check.h`) and exits non-zero at the first that fails; every compiler and program
//! runs under `timeout`, so a program that hangs (a blocking call that held its only thread)
//! fails its test instead of stalling it. Loopback sockets only; no timing is asserted, the
//! figures are printed.
#![cfg(all(feature = "hook", target_os = "linux"))]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{C_LIBS, repo_root, watchdog};

/// The C compiler's flags for every C source here.
const C99: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"];

/// The hooks issue 17 lists: each must stay a hook (see [`hook_names_in_source`]).
const ISSUE_HOOKS: &[&str] = &[
    "socket",
    "socketpair",
    "accept",
    "accept4",
    "connect",
    "close",
    "dup",
    "dup2",
    "dup3",
    "setsockopt",
    "fcntl",
    "fcntl64",
    "ioctl",
    "read",
    "write",
    "recv",
    "send",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "readv",
    "writev",
    "nanosleep",
    "clock_nanosleep",
    "usleep",
    "sleep",
    "poll",
];

fn c_source(name: &str) -> PathBuf {
    repo_root().join("tests/c").join(name)
}

/// Where this test's `libevco.a` and `libevco.so` are: beside this test binary, in
/// `<target>/<profile>/deps/`. The library unit this binary links (its rlib) is built with all
/// of the crate's types at once, so these come from the same build. (`<target>/<profile>/`
/// itself gets copies only from `cargo build`: `cargo test` leaves whatever an earlier build put
/// there, which may be stale.)
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    assert!(
        deps.join("libevco.a").exists() && deps.join("libevco.so").exists(),
        "no libevco.a/libevco.so beside {} (crate-type staticlib and cdylib build them)",
        exe.display()
    );
    deps
}

fn staticlib() -> PathBuf {
    lib_dir().join("libevco.a")
}

/// A temporary directory for one test's binaries, removed when dropped (kept, and named, when
/// the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("evco-c-api-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for a look", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `program`, killed by `timeout` if it runs longer than `secs` seconds (then it exits with
/// 124, or 137 if it ignored SIGTERM).
fn bounded(secs: u64, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("timeout");
    c.arg("--kill-after=5").arg(secs.to_string()).arg(program);
    c
}

/// Runs `cmd` and returns its stdout; fails the test with its output unless it exited 0.
fn passes(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hung = matches!(out.status.code(), Some(124) | Some(137));
    assert!(
        out.status.success(),
        "{what} failed ({}{}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        if hung {
            ": killed past its deadline, it hung"
        } else {
            ""
        }
    );
    stdout
}

fn compiler(var: &str, default: &str) -> OsString {
    std::env::var_os(var).unwrap_or_else(|| default.into())
}

/// Compiles and links with the C compiler: `args` then `-o out`. Returns `out`.
fn cc<I, S>(out: PathBuf, args: I) -> PathBuf
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = bounded(120, compiler("CC", "cc"));
    cmd.args(args).arg("-o").arg(&out);
    passes(&mut cmd, &format!("cc -o {}", out.display()));
    out
}

/// Builds `tests/c/<src>` into `dir` as `out`, statically linked with libevco.a; `cflags` go
/// before the source, `extra` between libevco.a and the system libraries.
fn c_program(dir: &Scratch, src: &str, out: &str, cflags: &[&str], extra: &[OsString]) -> PathBuf {
    let mut args: Vec<OsString> = C99.iter().chain(cflags).map(OsString::from).collect();
    args.push("-I".into());
    args.push(repo_root().join("include").into());
    args.push(c_source(src).into());
    args.push(staticlib().into());
    args.extend(extra.iter().cloned());
    args.extend(C_LIBS.iter().map(OsString::from));
    cc(dir.path(out), args)
}

/// Runs a built C program (at most 60 s) and returns its stdout; it must exit 0.
fn run_c(bin: &Path, args: &[&str]) -> String {
    let mut cmd = bounded(60, bin);
    cmd.args(args);
    passes(&mut cmd, &format!("{} {}", bin.display(), args.join(" ")))
}

/// Builds tests/c/<src> (see [`c_program`]) in a scratch directory of its own, runs it with
/// `args` and returns its stdout, passing on its `note` lines (figures it measured).
fn build_and_run(src: &str, cflags: &[&str], args: &[&str]) -> String {
    let name = src.trim_end_matches(".c");
    let dir = Scratch::new(&format!("{name}-{}", args.first().unwrap_or(&"")));
    let bin = c_program(&dir, src, name, cflags, &[]);
    let out = run_c(&bin, args);
    for l in out.lines().filter(|l| l.starts_with("note")) {
        eprintln!("{src}: {l}");
    }
    out
}

/// The `key=value` field of the `RESULT` line of a C program's output.
fn result_field(out: &str, key: &str) -> String {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_string()
}

/// The global defined symbols `nm <flags> --defined-only <file>` lists, with their type letter
/// (`T` code, `D`/`R`/`B` data); archive member headers and version suffixes are dropped.
fn nm(flags: &[&str], file: &Path) -> BTreeMap<String, char> {
    let out = passes(
        bounded(60, "nm")
            .args(flags)
            .arg("--defined-only")
            .arg(file),
        &format!("nm {flags:?} {}", file.display()),
    );
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            let name = name.split('@').next().unwrap_or(name);
            Some((name.to_string(), kind.chars().next()?))
        })
        .collect()
}

/// The `evco_*` names include/evco.h declares: functions (a name followed by `(`) and data (a
/// name followed by `[`: `evco_hook_table`), outside comments. Types (`evco_sched_t`, ...) are
/// followed by neither.
fn header_declarations() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(repo_root().join("include/evco.h")).unwrap();
    let mut code = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("an unterminated comment") + start + 2;
        rest = &rest[end..];
    }
    code.push_str(rest);
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (mut functions, mut data) = (BTreeSet::new(), BTreeSet::new());
    for (i, _) in code.match_indices("evco_") {
        if code[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = code[i..].chars().take_while(|&c| is_ident(c)).collect();
        match code[i + name.len()..].trim_start().chars().next() {
            Some('(') => functions.insert(name),
            Some('[') => data.insert(name),
            _ => false,
        };
    }
    (functions, data)
}

/// Every function of `src/hook/` exported under its own name (`#[unsafe(no_mangle)]` before an
/// `fn`): the hooks, read from the source so that a new one cannot be left out of the checks.
fn hook_names_in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // src/hook and its subfolders (src/hook/resolve).
    let mut dirs = vec![repo_root().join("src/hook")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension() == Some(OsStr::new("rs")) {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() != "#[unsafe(no_mangle)]" {
                continue;
            }
            // The item it marks: the next line that is not an attribute or a comment.
            let item = lines
                .by_ref()
                .map(str::trim)
                .find(|l| !l.starts_with("#[") && !l.starts_with("//"))
                .unwrap_or("");
            if let Some((_, after)) = item.split_once("fn ") {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// The functions `evco_hook_table` lists (`hook_table![fds::socket, ...]` in
/// src/hook/mod.rs): what keeps each hook in a static link.
fn hook_table_in_source() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("src/hook/mod.rs")).unwrap();
    let (_, body) = text
        .split_once("evco_hook_table: HookTable = hook_table![")
        .expect("the evco_hook_table definition");
    let (list, _) = body.split_once("];").unwrap();
    list.split(',')
        .map(|p| p.trim().rsplit("::").next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Asserts that `bin` defines every hook itself (a static link kept them all).
fn defines_every_hook(bin: &Path) {
    let syms = nm(&["-g"], bin);
    let missing: Vec<_> = hook_names_in_source()
        .into_iter()
        .filter(|h| !matches!(syms.get(h), Some('T' | 't')))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not define the hooks {missing:?}: the static link dropped them",
        bin.display()
    );
}

/// include/evco.h compiles as C99 with `-Wall -Wextra -Werror -pedantic` (tests/c/header.c,
/// which includes nothing else and uses its types, EVCO_ATTR_INIT and some functions), and as
/// C++20 with `-Wall -Wextra -Werror -pedantic` (tests/c/header.cpp), which also links with
/// libevco.a and runs a coroutine spawned from a lambda.
#[test]
fn the_header_compiles_as_c99_and_as_cpp20_and_a_cpp_program_runs() {
    let _w = watchdog(300);
    let dir = Scratch::new("header");
    let include = repo_root().join("include");
    cc(
        dir.path("header.o"),
        C99.iter()
            .map(OsString::from)
            .chain(["-c".into(), "-I".into(), include.clone().into()])
            .chain([c_source("header.c").into()]),
    );
    let bin = dir.path("header-cpp");
    let mut cmd = bounded(120, compiler("CXX", "c++"));
    cmd.args([
        "-std=c++20",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-I",
    ])
    .arg(&include)
    .arg(c_source("header.cpp"))
    .arg(staticlib())
    .args(C_LIBS)
    .arg("-o")
    .arg(&bin);
    passes(&mut cmd, "c++ -std=c++20 tests/c/header.cpp");
    let out = run_c(&bin, &[]);
    assert!(
        out.contains("ok   a coroutine spawned from C++20 ran"),
        "{out}"
    );
}

/// The `evco_*` names include/evco.h declares are exactly the `evco_*` symbols libevco.a
/// (`nm -g`) and libevco.so (`nm -D`) define, both ways: functions as code, `evco_hook_table`
/// as data. A function added to one and not the other fails here.
#[test]
fn the_headers_declarations_are_exactly_the_evco_exports_of_both_libraries() {
    let _w = watchdog(120);
    let (functions, data) = header_declarations();
    assert!(functions.len() > 20, "header functions: {functions:?}");
    assert_eq!(
        data,
        BTreeSet::from(["evco_hook_table".to_string()]),
        "header data"
    );
    for (what, flags, file) in [
        ("libevco.a", &["-g"][..], staticlib()),
        ("libevco.so", &["-D"][..], lib_dir().join("libevco.so")),
    ] {
        let syms = nm(flags, &file);
        let exported = |code: bool| -> BTreeSet<String> {
            syms.iter()
                .filter(|(n, k)| n.starts_with("evco_") && (**k == 'T') == code)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let (code, other) = (exported(true), exported(false));
        assert_eq!(
            code,
            functions,
            "{what}: functions exported but not declared: {:?}; declared but not exported: {:?}",
            code.difference(&functions).collect::<Vec<_>>(),
            functions.difference(&code).collect::<Vec<_>>()
        );
        assert_eq!(other, data, "{what}: data symbols");
        assert!(
            matches!(syms.get("evco_hook_table"), Some('D' | 'R')),
            "{what}: evco_hook_table is {:?}",
            syms.get("evco_hook_table")
        );
        eprintln!(
            "{what}: {} functions and {:?}, as the header declares",
            code.len(),
            data
        );
    }
}

/// Every hook is exported: issue 17's list is among the hooks `src/hook/` defines, every hook
/// defined there (every `#[unsafe(no_mangle)]` fn) is listed in `evco_hook_table` (what keeps
/// it in a static link), and libevco.so (`nm -D`) and libevco.a (`nm -g`) define each as code.
#[test]
fn every_hook_is_exported_by_libevco_so_and_listed_in_the_hook_table() {
    let _w = watchdog(120);
    let hooks = hook_names_in_source();
    let missing: Vec<_> = ISSUE_HOOKS
        .iter()
        .filter(|h| !hooks.contains(**h))
        .collect();
    assert!(
        missing.is_empty(),
        "not hooks any more: {missing:?} (found {hooks:?})"
    );
    assert_eq!(
        hook_table_in_source(),
        hooks,
        "evco_hook_table must list every hook of src/hook"
    );
    for (what, flags, file) in [
        ("libevco.so", &["-D"][..], lib_dir().join("libevco.so")),
        ("libevco.a", &["-g"][..], staticlib()),
    ] {
        let syms = nm(flags, &file);
        let absent: Vec<_> = hooks
            .iter()
            .filter(|h| syms.get(*h) != Some(&'T'))
            .collect();
        assert!(
            absent.is_empty(),
            "{what} does not export the hooks {absent:?}"
        );
    }
    eprintln!("{} hooks exported: {hooks:?}", hooks.len());
}

/// How hooks.c is linked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// `cc hooks.c libevco.a <libs>`.
    Plain,
    /// Compiled with `-ffunction-sections -fdata-sections`, linked with `-Wl,--gc-sections`.
    GcSections,
    /// Linked with `-Wl,--as-needed`.
    AsNeeded,
    /// The blocking calls made by `libfoo.so` (tests/c/foo.c, built here), linked with
    /// `-L dir -lfoo -Wl,-rpath,dir`.
    SharedLibrary,
    /// With libevco.so instead of libevco.a.
    Libevco,
}

/// Builds tests/c/hooks.c in `shape` and runs it: evco_hooks_active() is 1, and read (socketpair
/// and pipe), poll, accept, connect, write, usleep and nanosleep inside coroutines suspend only
/// their coroutine, shown by the order things happen in (see hooks.c: a blocking call would
/// hang the program, and the deadline fail it). Prints how long two coroutines sleeping 200 ms
/// each at once took (the issue's figure: under 300 ms).
fn hooks_cooperate(shape: Shape) {
    let _w = watchdog(300);
    let dir = Scratch::new(&format!("hooks-{shape:?}"));
    let bin = match shape {
        Shape::Plain => c_program(&dir, "hooks.c", "hooks", &[], &[]),
        Shape::GcSections => c_program(
            &dir,
            "hooks.c",
            "hooks",
            &["-ffunction-sections", "-fdata-sections"],
            &["-Wl,--gc-sections".into()],
        ),
        Shape::AsNeeded => {
            // --as-needed applies to the libraries after it: put it first.
            let mut args: Vec<OsString> = vec!["-Wl,--as-needed".into()];
            args.extend(C99.iter().map(OsString::from));
            args.extend([
                "-I".into(),
                repo_root().join("include").into(),
                c_source("hooks.c").into(),
                staticlib().into(),
            ]);
            args.extend(C_LIBS.iter().map(OsString::from));
            cc(dir.path("hooks"), args)
        }
        Shape::SharedLibrary => {
            cc(
                dir.path("libfoo.so"),
                C99.iter().map(OsString::from).chain([
                    "-fPIC".into(),
                    "-shared".into(),
                    c_source("foo.c").into(),
                ]),
            );
            let mut rpath = OsString::from("-Wl,-rpath,");
            rpath.push(&dir.0);
            c_program(
                &dir,
                "hooks.c",
                "hooks",
                &["-DEVCO_TEST_FOO"],
                &["-L".into(), dir.0.clone().into(), "-lfoo".into(), rpath],
            )
        }
        Shape::Libevco => {
            let mut rpath = OsString::from("-Wl,-rpath,");
            rpath.push(lib_dir());
            let mut args: Vec<OsString> = C99.iter().map(OsString::from).collect();
            args.extend([
                "-I".into(),
                repo_root().join("include").into(),
                c_source("hooks.c").into(),
                "-L".into(),
                lib_dir().into(),
                "-l:libevco.so".into(),
                rpath,
            ]);
            args.extend(C_LIBS.iter().map(OsString::from));
            cc(dir.path("hooks"), args)
        }
    };
    if shape != Shape::Libevco {
        defines_every_hook(&bin);
    }
    let out = run_c(&bin, &[]);
    assert_eq!(result_field(&out, "active"), "1", "{out}");
    eprintln!(
        "hooks.c linked {shape:?}: two coroutines sleeping 200 ms each at once took {} ms \
         (the issue's figure: < 300 ms)",
        result_field(&out, "sleep_ms")
    );
}

/// hooks.c (see [`hooks_cooperate`]) linked plainly with libevco.a gets every hook, cooperative.
#[test]
fn hooks_cooperate_in_a_c_program_linked_with_libevco_a() {
    hooks_cooperate(Shape::Plain);
}

/// hooks.c linked with `--gc-sections` (from `-ffunction-sections -fdata-sections` objects)
/// still gets every hook: the table the evco_sched_* functions refer to keeps them.
#[test]
fn hooks_cooperate_in_a_c_program_linked_with_gc_sections() {
    hooks_cooperate(Shape::GcSections);
}

/// hooks.c linked with `--as-needed` gets every hook.
#[test]
fn hooks_cooperate_in_a_c_program_linked_with_as_needed() {
    hooks_cooperate(Shape::AsNeeded);
}

/// hooks.c with every blocking call (read of a socketpair and of a pipe, poll, accept, connect,
/// write, usleep, nanosleep) made inside a shared library of the test's own (libfoo.so), which
/// knows nothing of evco: the dynamic linker binds its calls to the program's hooks.
#[test]
fn hooks_cooperate_in_a_shared_library_the_c_program_links() {
    hooks_cooperate(Shape::SharedLibrary);
}

/// hooks.c linked with libevco.so instead of the archive gets every hook.
#[test]
fn hooks_cooperate_in_a_c_program_linked_with_libevco_so() {
    hooks_cooperate(Shape::Libevco);
}

/// A C program that defines its own co_create, co_resume, co_self and co_yield_ct (libco's
/// names) links with libevco.a and runs them (tests/c/libco_names.c): libevco.a defines no
/// global `co_*` symbol to clash with.
#[test]
fn a_c_program_with_its_own_co_create_co_resume_and_co_self_links_and_runs() {
    let _w = watchdog(120);
    let clashing: Vec<_> = nm(&["-g"], &staticlib())
        .into_keys()
        .filter(|n| n.starts_with("co_"))
        .collect();
    assert!(clashing.is_empty(), "libevco.a defines {clashing:?}");
    let out = build_and_run("libco_names.c", &[], &[]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
}

/// tests/c/cancel.c `cancel`: evco_cancel of a coroutine parked in a hooked read makes that read
/// return -1 with ECANCELED, and its later usleep (of 10 s), evco_sleep_ms (10 s),
/// evco_wait_fd, read and recv fail at once with ECANCELED: before a 5 s sleep that began
/// earlier ends. The same for a coroutine cancelled before it first ran and for one that
/// cancels itself; a created coroutine cancelled while suspended gets ECANCELED from its next
/// evco_suspend. Every join returns 0: the coroutines returned on their own.
#[test]
fn cancel_fails_a_parked_hooked_read_and_every_later_wait_at_once() {
    let _w = watchdog(120);
    let out = build_and_run("cancel.c", &[], &["cancel"]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
}

/// tests/c/cancel.c `free 1000`: with 1,000 coroutines parked in hooked reads (each on its own
/// socketpair where the fd limit allows), evco_sched_free(s, 1000) cancels them, each read
/// fails with ECANCELED, each coroutine returns, and the free returns 0. Prints how long the
/// free took.
#[test]
fn sched_free_ends_1000_coroutines_parked_in_hooked_reads() {
    let _w = watchdog(120);
    let out = build_and_run("cancel.c", &[], &["free", "1000"]);
    assert_eq!(result_field(&out, "coroutines"), "1000", "{out}");
    eprintln!(
        "evco_sched_free of 1000 coroutines parked in hooked reads ({} socketpairs): {} ms",
        result_field(&out, "pairs"),
        result_field(&out, "free_ms")
    );
}

/// tests/c/cancel.c `stubborn`: beside 5 coroutines that return on ECANCELED, 5 that ignore it
/// and loop on evco_yield and 5 that retry their read forever: evco_sched_free(s, 200) returns
/// 10 (the ones it left), their handles' evco_join says ECANCELED (the others' 0), and the
/// process goes on: a new scheduler on the same thread runs a hooked read, usleep and write,
/// frees with nothing left, and no given-up coroutine ever runs again. Prints how long the
/// free took. This needs every failing wait of a cancelled C coroutine to let the scheduler
/// run (`scheduler::task::current_task`): were they to fail without switching out, such a loop
/// would spin on the thread, evco_sched_free would never return, and the program's deadline
/// would fail the test.
#[test]
fn sched_free_gives_up_coroutines_that_ignore_ecanceled_and_the_process_goes_on() {
    let _w = watchdog(120);
    let out = build_and_run("cancel.c", &[], &["stubborn"]);
    assert_eq!(result_field(&out, "left"), "10", "{out}");
    eprintln!(
        "evco_sched_free(s, 200) with 10 coroutines ignoring ECANCELED: left 10 in {} ms",
        result_field(&out, "free_ms")
    );
}

/// The same 1,000-coroutine free under valgrind's Memcheck finds no error
/// (`--error-exitcode=1`; `--leak-check=no`: coroutine stacks are mmap'd, not heap). The flags
/// are scripts/ci-faults': `--max-stackframe=16384` (generator switches stacks without telling
/// valgrind) and scripts/valgrind.supp. Skipped, saying so, where valgrind is not installed.
#[test]
fn memcheck_finds_no_error_in_freeing_1000_parked_coroutines() {
    let _w = watchdog(900);
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_valgrind {
        eprintln!("SKIPPED: valgrind is not installed; the Memcheck run of cancel.c did not run");
        return;
    }
    let dir = Scratch::new("memcheck");
    let bin = c_program(&dir, "cancel.c", "cancel", &[], &[]);
    let mut cmd = bounded(600, "valgrind");
    cmd.args([
        "--error-exitcode=1",
        "--leak-check=no",
        "--max-stackframe=16384",
    ])
    .arg(format!(
        "--suppressions={}",
        repo_root().join("scripts/valgrind.supp").display()
    ))
    .arg(&bin)
    .args(["free", "1000"]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr
        .lines()
        .find_map(|l| l.split_once("ERROR SUMMARY: ").map(|(_, s)| s))
        .unwrap_or("(no summary)");
    assert!(
        out.status.success() && summary.starts_with("0 errors"),
        "cancel.c free 1000 under Memcheck ({}): {summary}\n--- stdout\n{stdout}\n--- stderr\n\
         {stderr}",
        out.status
    );
    eprintln!(
        "Memcheck, cancel.c free 1000: {summary}; the free took {} ms under valgrind",
        result_field(&stdout, "free_ms")
    );
}

/// tests/c/api.c: every function of include/evco.h from C with bad input and good (see the
/// file's opening comment for the list): NULL arguments (EINVAL), calls outside a coroutine
/// (EPERM), handles and a scheduler used from another thread (EPERM), a second scheduler on a
/// thread (EEXIST), a panic inside the library (ENOTRECOVERABLE, and the program goes on),
/// evco_wait_fd's checks (EINVAL, EBADF), a join that times out (ETIMEDOUT, the handle still
/// valid), coroutine-local values, evco_self/evco_name/evco_is_done/evco_stack_used, created
/// coroutines, evco_sched_post from another thread (run on the scheduler's thread), and
/// evco_sched_attach under a host's event_base_dispatch. None crashes.
#[test]
fn every_c_function_handles_bad_input_and_works_from_c() {
    let _w = watchdog(120);
    let out = build_and_run("api.c", &["-pthread"], &[env!("CARGO_PKG_VERSION")]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
    let checks = out.lines().filter(|l| l.starts_with("ok ")).count();
    eprintln!("api.c: {checks} checks passed");
}

/// tests/c/review.c `free-in-callback`: evco_sched_free from a callback of the scheduler's own
/// base fails with EBUSY and frees nothing; after the loop returned it works. Before (found in
/// review), it freed the base under the running loop: SIGSEGV in event_base_loop.
#[test]
fn sched_free_from_a_callback_of_its_base_is_ebusy_and_frees_nothing() {
    let _w = watchdog(120);
    let out = build_and_run("review.c", &[], &["free-in-callback"]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
}

/// tests/c/review.c `post-burst`: 40,000 posts from 8 threads while the loop runs all run.
/// Before (found in review), one turn spawned every queued post, and past vm.max_map_count's
/// ~32,000 stacks the rest were dropped while evco_sched_post had returned 0.
#[test]
fn every_post_of_a_burst_from_8_threads_runs() {
    let _w = watchdog(120);
    let out = build_and_run("review.c", &["-pthread"], &["post-burst"]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
}

/// tests/c/review.c `cancel-resumer`: a created coroutine that cancels the one that resumed
/// it cancels that one, not itself. Before (found in review), the running coroutine was
/// cancelled instead.
#[test]
fn cancelling_the_resumer_of_a_created_coroutine_cancels_the_resumer() {
    let _w = watchdog(120);
    let out = build_and_run("review.c", &[], &["cancel-resumer"]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
}

/// tests/c/review.c `fork-post`: with a forked child's loop running, 2,000 posts in the parent
/// all run in the parent. Before (found in review), the child shared the post box's eventfd
/// and its loop could take the parent's wake-ups (posts stuck until the next one).
#[test]
fn posts_after_a_fork_run_in_the_process_that_posted_them() {
    let _w = watchdog(120);
    let out = build_and_run("review.c", &[], &["fork-post"]);
    assert_eq!(result_field(&out, "ok"), "1", "{out}");
}

/// How many coroutines of tests/c/poll_overlap.c wait for an answer at once.
const OVERLAP_WAITERS: usize = 32;

/// How long the server of [`late_server`] holds each answer back, once every request is in.
const ANSWER_DELAY: Duration = Duration::from_millis(300);

/// How long [`late_server`] waits for all the requests before it gives up.
const SERVER_PATIENCE: Duration = Duration::from_secs(20);

/// tests/c/poll_overlap.c's server, on a thread of the test: accepts `n` connections on
/// `listener` and reads one request (`req NN\n`) from each, answering none (`ans NN\n`) before
/// all `n` are in; then answers each [`ANSWER_DELAY`] after its request came. A wait in the
/// C program that held its thread keeps the requests after it from being sent: then, after
/// [`SERVER_PATIENCE`], this gives up (dropping the connections) and says how many came.
fn late_server(listener: TcpListener, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + SERVER_PATIENCE;
    let gave_up = |got: usize, why: String| {
        format!(
            "the server got {got} of {n} requests within {SERVER_PATIENCE:?} ({why}): a wait \
             held the C program's thread"
        )
    };
    let mut requests: Vec<(TcpStream, [u8; 7], Instant)> = Vec::new();
    while requests.len() < n {
        let got = requests.len();
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(|| gave_up(got, "time is up".into()))?;
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. Outside coroutines the poll hook is libc's.
        let ready = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
        if ready != 1 {
            return Err(gave_up(got, format!("no connection came, poll -> {ready}")));
        }
        let (mut conn, _) = listener.accept().map_err(|e| gave_up(got, e.to_string()))?;
        conn.set_read_timeout(Some(left))
            .and_then(|()| conn.set_nodelay(true))
            .map_err(|e| gave_up(got, e.to_string()))?;
        let mut req = [0u8; 7];
        conn.read_exact(&mut req)
            .map_err(|e| gave_up(got, format!("reading a request: {e}")))?;
        if !(req.starts_with(b"req ")
            && req[4..6].iter().all(u8::is_ascii_digit)
            && req[6] == b'\n')
            || requests.iter().any(|(_, r, _)| *r == req)
        {
            return Err(format!(
                "a bad or repeated request: {:?}",
                String::from_utf8_lossy(&req)
            ));
        }
        requests.push((conn, req, Instant::now()));
    }
    for (conn, req, at) in &mut requests {
        // The behaviour under test: an answer that takes its time.
        std::thread::sleep((*at + ANSWER_DELAY).saturating_duration_since(Instant::now()));
        let mut ans = *req;
        ans[..3].copy_from_slice(b"ans");
        conn.write_all(&ans)
            .map_err(|e| format!("answering {:?}: {e}", String::from_utf8_lossy(req)))?;
    }
    Ok(())
}

/// issue 18's C test of the poll, select and epoll_wait hooks (tests/c/poll_overlap.c, see its
/// opening comment): 32 coroutines of a C program on one scheduler, a third each waiting with
/// `poll([eventfd, socket, eventfd], 3, 1000)` (curl 8's call), `select` and `epoll_wait` (an
/// epoll fd over the socket and the eventfd), each for the answer to its request on a TCP
/// connection to [`late_server`], which answers none before all 32 requests are in and then
/// each 300 ms after it came: the waits overlap, or the server gives up and the test fails.
/// Every waiter is woken once through its eventfd too (by the ticker, once all requests are
/// out), and a ticker coroutine sleeping 10 ms at a time ticked between the last request and
/// the first answer. Outside coroutines, and in one with hooks off, the three calls are
/// libc's. Run on libevent's default backend (epoll) and on its poll backend
/// (`EVENT_NOEPOLL=1`); no timing is asserted, the figures are printed.
#[test]
fn poll_select_and_epoll_wait_in_32_c_coroutines_overlap_and_a_ticker_keeps_ticking() {
    let _w = watchdog(300);
    let dir = Scratch::new("poll-overlap");
    let bin = c_program(&dir, "poll_overlap.c", "poll_overlap", &[], &[]);
    for (backend, noepoll) in [("epoll", false), ("poll", true)] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || late_server(listener, OVERLAP_WAITERS));
        let mut cmd = bounded(60, &bin);
        cmd.arg(port.to_string())
            .arg(OVERLAP_WAITERS.to_string())
            .env_remove("EVENT_NOEPOLL");
        if noepoll {
            cmd.env("EVENT_NOEPOLL", "1");
        }
        let out = cmd.output().unwrap();
        let served = server.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && served.is_ok(),
            "poll_overlap.c on libevent's {backend} backend: exited {}{}; server: {served:?}\n\
             --- stdout\n{stdout}\n--- stderr\n{}",
            out.status,
            if matches!(out.status.code(), Some(124) | Some(137)) {
                ": killed past its deadline, it hung"
            } else {
                ""
            },
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(result_field(&stdout, "backend"), backend, "{stdout}");
        assert_eq!(
            result_field(&stdout, "answered"),
            OVERLAP_WAITERS.to_string()
        );
        eprintln!(
            "poll_overlap.c, libevent's {backend} backend: {OVERLAP_WAITERS} waits answered \
             {} ms after the last request was sent ({} ms from spawn); the 10 ms ticker ticked \
             {} times ({} while all waited), longest gap {} ms; {} waits timed out",
            result_field(&stdout, "wait_ms"),
            result_field(&stdout, "elapsed_ms"),
            result_field(&stdout, "ticks"),
            result_field(&stdout, "ticks_waiting"),
            result_field(&stdout, "max_gap_ms"),
            result_field(&stdout, "timeouts"),
        );
    }
}
