/* Input to bindgen only: the libevent API evco uses. The generated, committed output is
 * src/sys/bindings.rs; `scripts/check-bindings` checks it against these headers and
 * `scripts/check-bindings --update` regenerates it (see build.rs for the allowlist). */
#include <event2/event.h>
#include <event2/util.h>
#include <event2/dns.h>
#include <event2/thread.h>
