/* header.c: include/evco.h as C99 (-std=c99 -Wall -Wextra -Werror -pedantic): a translation
 * unit that includes it and uses its types, EVCO_ATTR_INIT and a few of its functions, with
 * no other header before it (evco.h brings what it needs). Compiled, not run. */
#include "evco.h"

static void body(void *arg) {
    (void)arg;
}

int header_c99(evco_sched_t *s);

int header_c99(evco_sched_t *s) {
    evco_attr_t a = EVCO_ATTR_INIT;
    evco_key_t k;
    evco_t *c;
    struct event_base *base = evco_sched_base(s);
    a.name = "c99";
    c = evco_spawn(s, &a, body, NULL);
    if (c == NULL || base == NULL || evco_key_create(&k, NULL) != 0) {
        return -1;
    }
    return evco_join(c, -1) + (evco_hook_table[0] != NULL ? 0 : 1) + evco_hooks_active();
}
