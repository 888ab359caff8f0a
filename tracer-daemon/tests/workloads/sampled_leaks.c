/* Large leaks for sampled mode, whose estimates must land within 10% of the truth:
 *   leak_small   400000 x 100 bytes           = 40000000 / 400000
 *   leak_mixed    10000 x (1000..9000 bytes)  = 49996000 /  10000   (sizes 1000 + 800*(i%11))
 * plus 500000 malloc/free pairs of 32..287 bytes that must estimate to nothing. */
#include "harness.h"

__attribute__((noinline)) void leak_small(void) {
    for (int i = 0; i < 400000; i++) sink = malloc(100);
}

__attribute__((noinline)) void leak_mixed(void) {
    for (int i = 0; i < 10000; i++) sink = malloc(1000 + 800 * (i % 11));
}

__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < 500000; i++) {
        void *p = malloc(32 + (i & 255));
        sink = p;
        free(p);
    }
}

int main(void) {
    say("ready");
    wait_for("go");
    leak_small();
    churn();
    leak_mixed();
    say("done");
    wait_for("exit");
    return 0;
}
