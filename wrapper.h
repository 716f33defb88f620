/* Input to bindgen only: the libevent API evco uses. The generated, committed output is
 * src/sys/bindings.rs; regenerate it with `cargo build --features bindgen` (see build.rs). */
#include <event2/event.h>
#include <event2/util.h>
#include <event2/dns.h>
