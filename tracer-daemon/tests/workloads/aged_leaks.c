/* Two batches of leaks separated in time, for the minimum-age filter: after the first "go",
 * leak_early 10 x 1000 bytes; after the second "go", leak_late 5 x 1000 bytes. */
#include "harness.h"

__attribute__((noinline)) void leak_early(void) {
    for (int i = 0; i < 10; i++) sink = malloc(1000);
}

__attribute__((noinline)) void leak_late(void) {
    for (int i = 0; i < 5; i++) sink = malloc(1000);
}

int main(void) {
    say("ready");
    wait_for("go");
    leak_early();
    say("done");
    wait_for("go");
    leak_late();
    say("done");
    wait_for("exit");
    return 0;
}
