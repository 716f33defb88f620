// header.cpp: include/evco.h as C++20 (g++ -std=c++20 -Wall -Werror): a program that includes
// it, uses EVCO_ATTR_INIT and runs a coroutine from C++ (a captureless lambda as its function),
// linked with libevco.a. Exits 0 when the coroutine ran and its join returned 0.
#include "evco.h"

#include <cstdio>
#include <cstring>

int main() {
    evco_sched_t *s = evco_sched_new();
    if (s == nullptr) {
        std::puts("FAIL evco_sched_new");
        return 1;
    }
    evco_attr_t a = EVCO_ATTR_INIT;
    a.name = "c++20";
    int ran = 0;
    evco_t *c = evco_spawn(
        s, &a,
        [](void *arg) {
            const char *name = evco_name(evco_self());
            *static_cast<int *>(arg) = name != nullptr && std::strcmp(name, "c++20") == 0;
        },
        &ran);
    if (c == nullptr || evco_join(c, -1) != 0 || !ran || evco_sched_free(s, 1000) != 0) {
        std::puts("FAIL a coroutine spawned from C++");
        return 1;
    }
    std::printf("ok   a coroutine spawned from C++20 ran, named \"%s\" (evco %s)\n", a.name,
                evco_version());
    return 0;
}
