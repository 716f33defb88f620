//! evco's benchmarks. Nothing here is a library: see `benches/micro.rs`, the `tokio_echo` and
//! `echo_compare` binaries, and `scripts/echo-compare`.
