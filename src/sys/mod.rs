//! Raw libevent FFI.
//!
//! By default this is the bindgen output for `wrapper.h`, pregenerated and committed as
//! `bindings.rs`, so building evco needs neither libevent's headers nor libclang. The `bindgen`
//! feature regenerates it from the system headers at build time (`scripts/check-bindings`
//! compares the two); the `libevent-sys` feature takes it from that crate instead, so that a
//! program which already links libevent through libevent-sys hands evco the very same
//! `event_base` type and links libevent once. Nothing outside `sys` and `event` calls these
//! functions directly.
//!
//! # The same names and types in every configuration
//!
//! The rest of evco is written against the names and types of `bindings.rs`. libevent-sys's
//! bindings (a different bindgen version, all of `<event.h>`) agree on every one of them except
//! where C has `size_t`: libevent-sys spells it `size_t` (`c_ulong`), `bindings.rs` spells it
//! `usize`. The block at the end of this file redeclares those few functions with `usize`; being
//! local items, they shadow the glob re-export. Both configurations also get
//! [`evutil_socket_t`], which libevent `#define`s and bindgen therefore never emits. The one
//! remaining difference is deliberate: libevent-sys's [`event`] is the full struct, ours is
//! opaque; evco only ever sizes events with [`event_get_struct_event_size`].
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    missing_docs,
    dead_code
)]
#![allow(clippy::all, unsafe_op_in_unsafe_fn)]

#[cfg(not(any(feature = "bindgen", feature = "libevent-sys")))]
include!("bindings.rs");

#[cfg(all(feature = "bindgen", not(feature = "libevent-sys")))]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

#[cfg(feature = "libevent-sys")]
pub use libevent_sys::*;

/// A socket as libevent's API takes it; `<event2/util.h>` `#define`s it to `int` on POSIX.
pub type evutil_socket_t = ::std::os::raw::c_int;

// The functions whose C signature has `size_t`, as `bindings.rs` declares them (see above).
// libevent-sys links the library that defines them.
#[cfg(feature = "libevent-sys")]
unsafe extern "C" {
    pub fn evutil_date_rfc1123(
        date: *mut ::std::os::raw::c_char,
        datelen: usize,
        tm: *const tm,
    ) -> ::std::os::raw::c_int;
    pub fn evutil_snprintf(
        buf: *mut ::std::os::raw::c_char,
        buflen: usize,
        format: *const ::std::os::raw::c_char,
        ...
    ) -> ::std::os::raw::c_int;
    pub fn evutil_vsnprintf(
        buf: *mut ::std::os::raw::c_char,
        buflen: usize,
        format: *const ::std::os::raw::c_char,
        ap: *mut __va_list_tag,
    ) -> ::std::os::raw::c_int;
    pub fn evutil_inet_ntop(
        af: ::std::os::raw::c_int,
        src: *const ::std::os::raw::c_void,
        dst: *mut ::std::os::raw::c_char,
        len: usize,
    ) -> *const ::std::os::raw::c_char;
    pub fn evutil_ascii_strncasecmp(
        str1: *const ::std::os::raw::c_char,
        str2: *const ::std::os::raw::c_char,
        n: usize,
    ) -> ::std::os::raw::c_int;
    pub fn evutil_secure_rng_get_bytes(buf: *mut ::std::os::raw::c_void, n: usize);
    pub fn evutil_secure_rng_add_bytes(dat: *const ::std::os::raw::c_char, datlen: usize);
    pub fn event_get_struct_event_size() -> usize;
    pub fn event_set_mem_functions(
        malloc_fn: ::std::option::Option<
            unsafe extern "C" fn(sz: usize) -> *mut ::std::os::raw::c_void,
        >,
        realloc_fn: ::std::option::Option<
            unsafe extern "C" fn(
                ptr: *mut ::std::os::raw::c_void,
                sz: usize,
            ) -> *mut ::std::os::raw::c_void,
        >,
        free_fn: ::std::option::Option<unsafe extern "C" fn(ptr: *mut ::std::os::raw::c_void)>,
    );
    pub fn evdns_set_random_bytes_fn(
        fn_: ::std::option::Option<
            unsafe extern "C" fn(arg1: *mut ::std::os::raw::c_char, arg2: usize),
        >,
    );
}
