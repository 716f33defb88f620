//! Build script: find libevent (2.1 or newer) and, with the `bindgen` feature, regenerate the FFI.
//!
//! Order: pkg-config (unless `EVCO_NO_PKG_CONFIG` is set), then the runtime libraries by soname
//! in `EVCO_LIBEVENT_DIR` and the usual library directories, then an error naming the package to
//! install. No network, no git, no cmake; libclang only with the opt-in `bindgen` feature.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    for var in ["EVCO_NO_PKG_CONFIG", "EVCO_LIBEVENT_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_LIBEVENT_SYS").is_some() {
        // libevent-sys links libevent itself; linking it a second time here would be redundant.
        return;
    }
    let include_dirs = probe::link_libevent();
    #[cfg(feature = "bindgen")]
    bindings::generate(&include_dirs);
    #[cfg(not(feature = "bindgen"))]
    let _ = include_dirs;
}

mod probe {
    use super::*;

    /// The runtime libraries a machine without libevent's dev files still has, by soname.
    const SONAMES: &[&str] = &["libevent_core-2.1.so.7", "libevent-2.1.so.7"];
    const MACOS_NAMES: &[&str] = &["libevent_core-2.1.7.dylib", "libevent-2.1.7.dylib"];

    /// Emits the link directives and returns the include directories pkg-config reported.
    pub fn link_libevent() -> Vec<PathBuf> {
        if env::var_os("EVCO_NO_PKG_CONFIG").is_none() {
            if let Some(dirs) = pkg_config() {
                return dirs;
            }
        }
        if let Some(dir) = by_soname() {
            return dir.parent().map(|p| vec![p.join("include")]).unwrap_or_default();
        }
        panic!("{}", missing_message());
    }

    fn pkg_config() -> Option<Vec<PathBuf>> {
        let core = pkg_config::Config::new()
            .atleast_version("2.1")
            .probe("libevent_core")
            .ok()?;
        let mut dirs = core.include_paths;
        // evdns lives in libevent_extra; older packagings only ship the combined `libevent`.
        match pkg_config::Config::new().atleast_version("2.1").probe("libevent_extra") {
            Ok(extra) => dirs.extend(extra.include_paths),
            Err(_) => {
                if let Ok(all) = pkg_config::Config::new().atleast_version("2.1").probe("libevent") {
                    dirs.extend(all.include_paths);
                }
            }
        }
        Some(dirs)
    }

    fn candidate_dirs() -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(dir) = env::var_os("EVCO_LIBEVENT_DIR") {
            let dir = PathBuf::from(dir);
            dirs.push(dir.join("lib"));
            dirs.push(dir);
        }
        let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        let abi = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
        let multiarch = match (arch.as_str(), abi.as_str()) {
            ("x86", _) => "i386-linux-gnu".to_string(),
            ("arm", _) => "arm-linux-gnueabihf".to_string(),
            (a, "musl") => format!("{a}-linux-musl"),
            (a, _) => format!("{a}-linux-gnu"),
        };
        for d in [
            format!("/usr/lib/{multiarch}"),
            format!("/lib/{multiarch}"),
            "/usr/lib64".into(),
            "/usr/lib".into(),
            "/usr/local/lib".into(),
            "/opt/homebrew/lib".into(),
            "/opt/local/lib".into(),
        ] {
            dirs.push(PathBuf::from(d));
        }
        dirs
    }

    /// Links the runtime libraries by file name; returns the directory they were found in.
    fn by_soname() -> Option<PathBuf> {
        let names = if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
            MACOS_NAMES
        } else {
            SONAMES
        };
        for dir in candidate_dirs() {
            if names.iter().all(|n| dir.join(n).exists()) {
                link_verbatim(&dir, names);
                return Some(dir);
            }
        }
        None
    }

    fn link_verbatim(dir: &Path, names: &[&str]) {
        println!("cargo:rustc-link-search=native={}", dir.display());
        for name in names {
            // `+verbatim` passes the file name through unchanged (`-l:libevent_core-2.1.so.7`),
            // and unlike `rustc-link-arg` it reaches every crate that depends on evco.
            println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
        }
    }

    fn missing_message() -> String {
        "evco needs libevent 2.1 or newer and could not find it.\n\
         Looked for pkg-config's libevent_core (set EVCO_NO_PKG_CONFIG to skip) and for \
         libevent_core-2.1.so.7 + libevent-2.1.so.7 in EVCO_LIBEVENT_DIR and the usual library \
         directories.\nInstall it with one of:\n  \
         Debian/Ubuntu: apt install libevent-2.1-7   (or libevent-dev)\n  \
         Fedora:        dnf install libevent          (or libevent-devel)\n  \
         Arch:          pacman -S libevent\n  \
         macOS:         brew install libevent\n\
         or point EVCO_LIBEVENT_DIR at the directory that holds the libraries."
            .to_string()
    }
}

#[cfg(feature = "bindgen")]
mod bindings {
    use super::*;

    /// Regenerates the FFI from the system headers into `$OUT_DIR/bindings.rs`.
    ///
    /// `src/sys/mod.rs` includes that file instead of the committed `src/sys/bindings.rs` when the
    /// feature is on; `scripts/check-bindings` compares the two.
    pub fn generate(include_dirs: &[PathBuf]) {
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("bindings.rs");
        let mut builder = bindgen::Builder::default()
            .header("wrapper.h")
            .allowlist_function("event_.*")
            .allowlist_function("evutil_.*")
            .allowlist_function("evdns_.*")
            .allowlist_var("EV_.*")
            .allowlist_var("EVLOOP_.*")
            .allowlist_var("EVDNS_.*")
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
