//! Build script: find libevent (2.1 or newer) and, with the `bindgen` feature, regenerate the FFI.
//!
//! Order: the directory in `EVCO_LIBEVENT_DIR` if set, then pkg-config (unless
//! `EVCO_NO_PKG_CONFIG` is set), then the runtime libraries by soname in the usual library
//! directories, then an error naming the package to install. A machine with only libevent's
//! runtime package (no headers, no `.pc` files, no unversioned `.so` links) builds through the
//! soname path. No network, no git, no cmake; libclang only with the opt-in `bindgen` feature.
//! With the `libevent-sys` feature that crate links libevent and this script does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    knobs::declare();
    if cfg!(feature = "libevent-sys") {
        return;
    }
    let include_dirs = probe::link_libevent();
    #[cfg(feature = "bindgen")]
    bindings::generate(&include_dirs);
    #[cfg(not(feature = "bindgen"))]
    let _ = include_dirs;
}

/// The environment variables this script reads; cargo sets the rest (`CARGO_*`, `OUT_DIR`).
mod knobs {
    use std::env;
    use std::path::PathBuf;

    /// Skip pkg-config, as on a machine whose pkg-config knows another libevent.
    const NO_PKG_CONFIG: &str = "EVCO_NO_PKG_CONFIG";
    /// A libevent install prefix or library directory to use before anything else.
    const LIBEVENT_DIR: &str = "EVCO_LIBEVENT_DIR";
    /// Read by libclang's loader (clang-sys) when the `bindgen` feature runs.
    const LIBCLANG_PATH: &str = "LIBCLANG_PATH";

    pub fn declare() {
        for var in [NO_PKG_CONFIG, LIBEVENT_DIR, LIBCLANG_PATH] {
            println!("cargo:rerun-if-env-changed={var}");
        }
    }

    /// Set to anything but empty or `0`.
    pub fn no_pkg_config() -> bool {
        env::var_os(NO_PKG_CONFIG).is_some_and(|v| !v.is_empty() && v != "0")
    }

    pub fn libevent_dir() -> Option<PathBuf> {
        env::var_os(LIBEVENT_DIR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// A `CARGO_CFG_*` value cargo sets for the target.
    pub fn target(key: &str) -> String {
        env::var(format!("CARGO_CFG_TARGET_{key}")).unwrap_or_default()
    }
}

/// Finding libevent and emitting the link directives.
mod probe {
    use super::knobs;
    use std::path::{Path, PathBuf};

    /// The runtime libraries of libevent 2.1, by soname: `libevent` is core + extra (evdns).
    /// Core comes first so its symbols bind there; `--as-needed` drops `libevent` when unused.
    const SONAMES: &[&str] = &["libevent_core-2.1.so.7", "libevent-2.1.so.7"];

    /// Emits the link directives and returns the include directories that go with the library.
    pub fn link_libevent() -> Vec<PathBuf> {
        if let Some(dir) = knobs::libevent_dir() {
            return from_dir(&dir);
        }
        let pkg_config_result = if knobs::no_pkg_config() {
            "not asked (EVCO_NO_PKG_CONFIG is set)".to_string()
        } else {
            match pkg_config() {
                Ok(include_dirs) => return include_dirs,
                Err(e) => {
                    let e = e.to_string();
                    let first = e.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
                    format!("no libevent_core >= 2.1 ({first})")
                }
            }
        };
        for dir in system_dirs() {
            if link_sonames(&dir) {
                return Vec::new();
            }
        }
        panic!("{}", missing_message(&pkg_config_result));
    }

    fn pkg_config() -> Result<Vec<PathBuf>, pkg_config::Error> {
        let probe = |name| pkg_config::Config::new().atleast_version("2.1").probe(name);
        let mut include_dirs = probe("libevent_core")?.include_paths;
        // evdns lives in libevent_extra; older packagings ship only the combined `libevent`.
        if let Ok(extra) = probe("libevent_extra").or_else(|_| probe("libevent")) {
            include_dirs.extend(extra.include_paths);
        }
        Ok(include_dirs)
    }

    /// `EVCO_LIBEVENT_DIR`: a prefix (`lib/` and `include/` below it) or the library directory.
    fn from_dir(dir: &Path) -> Vec<PathBuf> {
        for lib in [dir.join("lib"), dir.to_path_buf()] {
            if link_sonames(&lib) || link_plain(&lib) {
                if knobs::target("OS") != "windows" {
                    // Lets evco's own tests and examples load the libraries from there too.
                    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
                }
                return vec![dir.join("include")];
            }
        }
        panic!(
            "EVCO_LIBEVENT_DIR={} holds neither {} nor libevent_core.so + libevent.so, \
             in itself or in lib/ below it",
            dir.display(),
            SONAMES.join(" + ")
        );
    }

    /// Multiarch, lib64 and the Homebrew/MacPorts prefixes, in the order the loader looks.
    fn system_dirs() -> Vec<PathBuf> {
        let arch = knobs::target("ARCH");
        let multiarch = match (arch.as_str(), knobs::target("ENV").as_str()) {
            ("x86", _) => "i386-linux-gnu".to_string(),
            ("arm", _) => "arm-linux-gnueabihf".to_string(),
            (a, "musl") => format!("{a}-linux-musl"),
            (a, _) => format!("{a}-linux-gnu"),
        };
        [
            format!("/usr/lib/{multiarch}"),
            format!("/lib/{multiarch}"),
            "/usr/lib64".into(),
            "/lib64".into(),
            "/usr/lib".into(),
            "/usr/local/lib".into(),
            "/opt/homebrew/lib".into(),
            "/opt/local/lib".into(),
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect()
    }

    /// Links the runtime libraries by file name if `dir` has them all.
    fn link_sonames(dir: &Path) -> bool {
        if knobs::target("OS") == "macos" {
            return link_plain(dir);
        }
        if !SONAMES.iter().all(|n| dir.join(n).exists()) {
            return false;
        }
        println!("cargo:rustc-link-search=native={}", dir.display());
        for name in SONAMES {
            // `+verbatim` passes the file name through unchanged (`-l:libevent_core-2.1.so.7`),
            // and unlike `rustc-link-arg` it reaches every crate that depends on evco.
            println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
        }
        true
    }

    /// Links `-levent_core -levent` if `dir` has the unversioned libraries (a source install,
    /// or macOS, where packages ship them and ld64 has no `-l:file` form).
    fn link_plain(dir: &Path) -> bool {
        let ext = if knobs::target("OS") == "macos" {
            "dylib"
        } else {
            "so"
        };
        let names = ["event_core", "event"];
        if !names
            .iter()
            .all(|n| dir.join(format!("lib{n}.{ext}")).exists())
        {
            return false;
        }
        println!("cargo:rustc-link-search=native={}", dir.display());
        for name in names {
            println!("cargo:rustc-link-lib=dylib={name}");
        }
        true
    }

    fn missing_message(pkg_config_result: &str) -> String {
        format!(
            "evco needs libevent 2.1 or newer and could not find it.\n\
             pkg-config: {pkg_config_result}\n\
             soname: no directory among {dirs} holds {sonames}.\n\
             Install libevent's runtime library with one of:\n  \
             Debian/Ubuntu: apt install libevent-2.1-7 libevent-core-2.1-7   (or libevent-dev)\n  \
             Fedora:        dnf install libevent   (or libevent-devel)\n  \
             Arch:          pacman -S libevent\n  \
             macOS:         brew install libevent\n\
             or set EVCO_LIBEVENT_DIR to the prefix or directory that holds the libraries.",
            dirs = system_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            sonames = SONAMES.join(" + "),
        )
    }
}

/// Regenerating the FFI from the system headers (the `bindgen` feature).
#[cfg(feature = "bindgen")]
mod bindings {
    use std::env;
    use std::path::PathBuf;

    /// Writes `$OUT_DIR/bindings.rs`, which `src/sys/mod.rs` includes instead of the committed
    /// `src/sys/bindings.rs` when the feature is on; `scripts/check-bindings` compares the two.
    pub fn generate(include_dirs: &[PathBuf]) {
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("bindings.rs");
        // The crate's MSRV: output that does not change when bindgen learns newer Rust.
        let rust_target = bindgen::RustTarget::stable(85, 0).unwrap_or_else(|e| panic!("{e}"));
        let mut builder = bindgen::Builder::default()
            .header("wrapper.h")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .rust_target(rust_target)
            .allowlist_function("event_.*")
            .allowlist_function("evutil_.*")
            .allowlist_function("evdns_.*")
            .allowlist_function("evthread_.*")
            // In libevent_pthreads, which a machine with only the runtime package lacks; evco
            // would install its own callbacks through evthread_set_lock_callbacks (in core).
            .blocklist_item("evthread_use_pthreads|EVTHREAD_USE_PTHREADS_IMPLEMENTED")
            .allowlist_var("EV_.*")
            .allowlist_var("EVLOOP_.*")
            .allowlist_var("EVDNS_.*")
            .allowlist_var("EVENT_BASE_COUNT_.*")
            .allowlist_var("EVENT_LOG_.*")
            .allowlist_var("EVENT_DBG_.*")
            .allowlist_var("EVTHREAD_.*")
            .allowlist_type("event_base_config_flag")
            .allowlist_type("event_method_feature")
            .default_enum_style(bindgen::EnumVariation::Consts)
            .layout_tests(false)
            .generate_comments(false)
            .formatter(bindgen::Formatter::Prettyplease);
        for dir in include_dirs {
            builder = builder.clang_arg(format!("-I{}", dir.display()));
        }
        let bindings = builder
            .generate()
            .expect("bindgen could not parse wrapper.h (are libevent's headers installed?)");
        bindings.write_to_file(&out).expect("write bindings.rs");
    }
}
