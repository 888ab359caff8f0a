/* Leaks through the C library: remember_name keeps 100 strdup'd names of 8 characters
 * ("name-000" to "name-099"), 9 bytes each with the terminating zero: 900 B in 100 blocks,
 * allocated by strdup's malloc call inside libc. */
#include "harness.h"

static char *names[100];

__attribute__((noinline)) void remember_name(int i) {
    char name[16];
    snprintf(name, sizeof name, "name-%03d", i);
    names[i] = strdup(name);
}

int main(void) {
    say("ready");
    wait_for("go");
    for (int i = 0; i < 100; i++) remember_name(i);
    sink = names;
    say("done");
    wait_for("exit");
    return 0;
}
