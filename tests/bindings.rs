//! The committed FFI (`src/sys/bindings.rs`) against the libevent this build links.
//!
//! `scripts/check-bindings` proves the committed file is what bindgen makes of the headers; these
//! tests prove that it agrees with the runtime library the build actually found (through
//! pkg-config or by soname) on the things evco relies on: the version, the size libevent reports
//! for `struct event`, the config flags, and that a callback registered through `event_assign`
//! comes back with the right `EV_*` bits. They include the committed file directly, so they test
//! it in every configuration, whatever `evco::sys` re-exports.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::ffi::CStr;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::raw::{c_int, c_short, c_void};
use std::os::unix::net::UnixStream;
use std::ptr::{self, NonNull};

// Linking evco is what links libevent (its build script emits the link directives).
use evco as _;

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    clippy::all
)]
mod sys {
    include!("../src/sys/bindings.rs");
}

/// An `event_base` made the way evco makes its own: no locking, epoll's changelist.
struct Base(NonNull<sys::event_base>);

impl Base {
    fn new() -> Base {
        // SAFETY: plain constructor calls; every pointer is checked before use and the config
        // is freed once the base has been made from it.
        unsafe {
            let cfg = sys::event_config_new();
            assert!(!cfg.is_null(), "event_config_new");
            for flag in [
                sys::event_base_config_flag_EVENT_BASE_FLAG_NOLOCK,
                sys::event_base_config_flag_EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST,
            ] {
                assert_eq!(
                    sys::event_config_set_flag(cfg, flag as c_int),
                    0,
                    "flag {flag}"
                );
            }
            let base = sys::event_base_new_with_config(cfg);
            sys::event_config_free(cfg);
            Base(NonNull::new(base).expect("event_base_new_with_config"))
        }
    }

    fn raw(&self) -> *mut sys::event_base {
        self.0.as_ptr()
    }

    fn count(&self, which: u32) -> c_int {
        // SAFETY: the base is live for as long as `self`.
        unsafe { sys::event_base_get_num_events(self.raw(), which) }
    }

    fn method(&self) -> String {
        // SAFETY: the base is live; libevent returns a static NUL-terminated name.
        unsafe { CStr::from_ptr(sys::event_base_get_method(self.raw())) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        // SAFETY: every test deletes its events before the base goes.
        unsafe { sys::event_base_free(self.raw()) }
    }
}

/// A `struct event` in memory sized by `event_get_struct_event_size`, as evco allocates them.
struct EventMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl EventMem {
    fn new() -> EventMem {
        // SAFETY: a plain query with no preconditions.
        let size = unsafe { sys::event_get_struct_event_size() };
        let layout = Layout::from_size_align(size, 16).expect("layout");
        // SAFETY: the layout has a non-zero size (asserted by the caller's expectations below:
        // libevent's struct event holds at least a callback, an fd and a timeval).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("alloc");
        EventMem { ptr, layout }
    }

    fn raw(&self) -> *mut sys::event {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for EventMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; tests delete the event first.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Records the `what` bits it was called with into the `Cell<c_short>` behind `arg`.
unsafe extern "C" fn record_what(_fd: c_int, what: c_short, arg: *mut c_void) {
    // SAFETY: every test passes a pointer to a `Cell<c_short>` that outlives the event.
    let seen = unsafe { &*arg.cast::<Cell<c_short>>() };
    seen.set(seen.get() | what);
}

#[test]
fn linked_libevent_is_2_1_or_newer() {
    // SAFETY: plain queries; the version string is static and NUL-terminated.
    let (number, text) = unsafe {
        (
            sys::event_get_version_number(),
            CStr::from_ptr(sys::event_get_version()),
        )
    };
    assert!(
        number >= 0x0201_0000,
        "libevent {number:#x} is older than 2.1"
    );
    assert!(text.to_string_lossy().starts_with("2."), "{text:?}");
}

#[test]
fn struct_event_size_is_what_the_runtime_library_reports() {
    // SAFETY: a plain query.
    let size = unsafe { sys::event_get_struct_event_size() };
    // A callback, an fd, flags and a timeval at least; far less than a page.
    assert!((32..1024).contains(&size), "sizeof(struct event) = {size}");
}

#[test]
fn a_timer_assigned_through_the_bindings_fires_once_as_ev_timeout() {
    let base = Base::new();
    let ev = EventMem::new();
    let seen = Cell::new(0 as c_short);
    let tv = sys::timeval {
        tv_sec: 0,
        tv_usec: 1000,
    };
    // SAFETY: `ev` is sized by libevent and outlives the event, which is deleted below; `seen`
    // outlives it too; the base is live.
    unsafe {
        let arg = ptr::from_ref(&seen).cast_mut().cast();
        let rc = sys::event_assign(ev.raw(), base.raw(), -1, 0, Some(record_what), arg);
        assert_eq!(rc, 0, "event_assign");
        assert_eq!(sys::event_add(ev.raw(), &tv), 0, "event_add");
    }
    assert_eq!(base.count(sys::EVENT_BASE_COUNT_ADDED), 1);
    // SAFETY: the base is live.
    let rc = unsafe { sys::event_base_loop(base.raw(), sys::EVLOOP_ONCE as c_int) };
    assert_eq!(rc, 0, "event_base_loop");
    assert_eq!(seen.get(), sys::EV_TIMEOUT as c_short);
    assert_eq!(base.count(sys::EVENT_BASE_COUNT_ADDED), 0, "one-shot");
    // SAFETY: assigned above; deleting a non-pending event is a no-op.
    unsafe { sys::event_del(ev.raw()) };
}

#[test]
fn readiness_of_a_socket_arrives_as_ev_read() {
    let base = Base::new();
    let (mut tx, rx) = UnixStream::pair().expect("socketpair");
    rx.set_nonblocking(true).expect("nonblocking");
    let ev = EventMem::new();
    let seen = Cell::new(0 as c_short);
    // SAFETY: as in the timer test; `rx` outlives the event, deleted before both drop.
    unsafe {
        let arg = ptr::from_ref(&seen).cast_mut().cast();
        let what = sys::EV_READ as c_short;
        let rc = sys::event_assign(
            ev.raw(),
            base.raw(),
            rx.as_raw_fd(),
            what,
            Some(record_what),
            arg,
        );
        assert_eq!(rc, 0, "event_assign");
        assert_eq!(sys::event_add(ev.raw(), ptr::null()), 0, "event_add");
    }
    tx.write_all(b"x").expect("write");
    // SAFETY: the base is live.
    let rc = unsafe { sys::event_base_loop(base.raw(), sys::EVLOOP_ONCE as c_int) };
    assert_eq!(rc, 0, "event_base_loop");
    assert_eq!(seen.get(), sys::EV_READ as c_short);
    // SAFETY: assigned above.
    unsafe { sys::event_del(ev.raw()) };
}

#[test]
fn the_backend_is_epoll_unless_event_noepoll_is_set() {
    let method = Base::new().method();
    if std::env::var_os("EVENT_NOEPOLL").is_some() {
        assert_eq!(
            method, "poll",
            "EVENT_NOEPOLL should leave libevent's poll backend"
        );
    } else if cfg!(target_os = "linux") {
        // "epoll (with changelist)": the changelist flag took.
        assert!(method.starts_with("epoll"), "{method}");
    }
}

/// `evco::sys` has the committed bindings' names and types whether they come from
/// `src/sys/bindings.rs` or from libevent-sys plus the shim in `src/sys/mod.rs` (CI runs this
/// file with `--features libevent-sys` too). It proves itself by compiling.
#[test]
fn evco_sys_has_the_committed_signatures_in_every_configuration() {
    use evco::sys as s;
    use std::os::raw::{c_char, c_long, c_uint};

    // The functions whose C signature has `size_t`: `usize` here, `size_t` in libevent-sys.
    let _: unsafe extern "C" fn() -> usize = s::event_get_struct_event_size;
    let _: unsafe extern "C" fn(*mut c_void, usize) = s::evutil_secure_rng_get_bytes;
    let _: unsafe extern "C" fn(*const c_char, usize) = s::evutil_secure_rng_add_bytes;
    let _: unsafe extern "C" fn(*mut c_char, usize, *const s::tm) -> c_int = s::evutil_date_rfc1123;
    let _: unsafe extern "C" fn(*mut c_char, usize, *const c_char, ...) -> c_int =
        s::evutil_snprintf;
    let _: unsafe extern "C" fn(*mut c_char, usize, *const c_char, *mut s::__va_list_tag) -> c_int =
        s::evutil_vsnprintf;
    let _: unsafe extern "C" fn(c_int, *const c_void, *mut c_char, usize) -> *const c_char =
        s::evutil_inet_ntop;
    let _: unsafe extern "C" fn(*const c_char, *const c_char, usize) -> c_int =
        s::evutil_ascii_strncasecmp;
    let _: unsafe extern "C" fn(Option<unsafe extern "C" fn(*mut c_char, usize)>) =
        s::evdns_set_random_bytes_fn;
    let _: unsafe extern "C" fn(
        Option<unsafe extern "C" fn(usize) -> *mut c_void>,
        Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
        Option<unsafe extern "C" fn(*mut c_void)>,
    ) = s::event_set_mem_functions;

    // What `bindings.rs` cannot have: libevent `#define`s it.
    let _: s::evutil_socket_t = 0 as c_int;

    // What evco's event layer uses, in the types it uses them with.
    let _: unsafe extern "C" fn(
        *mut s::event,
        *mut s::event_base,
        s::evutil_socket_t,
        c_short,
        s::event_callback_fn,
        *mut c_void,
    ) -> c_int = s::event_assign;
    let _: unsafe extern "C" fn(*mut s::event, *const s::timeval) -> c_int = s::event_add;
    let _: unsafe extern "C" fn(*mut s::event_base, c_uint) -> c_int = s::event_base_get_num_events;
    let _: unsafe extern "C" fn(*mut s::event_config, c_int) -> c_int = s::event_config_set_flag;
    let _: unsafe extern "C" fn(*const s::event_config) -> *mut s::event_base =
        s::event_base_new_with_config;
    let _: s::timeval = s::timeval {
        tv_sec: 0 as c_long,
        tv_usec: 0 as c_long,
    };
    let _: [u32; 6] = [
        s::EV_TIMEOUT,
        s::EV_READ,
        s::EV_WRITE,
        s::EVLOOP_ONCE,
        s::EVENT_BASE_COUNT_ADDED,
        s::EVENT_BASE_COUNT_ACTIVE,
    ];
    let _: s::event_base_config_flag =
        s::event_base_config_flag_EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST;
    let _: c_uint = s::event_base_config_flag_EVENT_BASE_FLAG_NOLOCK;
}
