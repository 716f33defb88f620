//! Raw libevent FFI.
//!
//! By default this is the bindgen output for `wrapper.h`, pregenerated and committed as
//! `bindings.rs`, so building evco needs neither libevent's headers nor libclang. The `bindgen`
//! feature regenerates it from the system headers at build time; the `libevent-sys` feature takes
//! it from that crate instead. Nothing outside `sys` and `event` calls these functions directly.
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, missing_docs, dead_code)]
#![allow(clippy::all, unsafe_op_in_unsafe_fn)]

#[cfg(all(not(feature = "bindgen"), not(feature = "libevent-sys")))]
include!("bindings.rs");

#[cfg(all(feature = "bindgen", not(feature = "libevent-sys")))]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

#[cfg(feature = "libevent-sys")]
pub use libevent_sys::*;
