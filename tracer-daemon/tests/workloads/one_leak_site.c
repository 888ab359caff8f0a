/* One function leaks 100 x 4096 bytes; three others allocate and free. */
#include "harness.h"

__attribute__((noinline)) void *leak_here(size_t n) {
    void *p = malloc(n);
    memset(p, 1, n);
    return p;
}

__attribute__((noinline)) void churn_and_free(void) {
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(64 + i);
        sink = p;
        free(p);
    }
}

__attribute__((noinline)) void calloc_and_free(void) {
    for (int i = 0; i < 100; i++) {
        void *p = calloc(16, 32);
        sink = p;
        free(p);
    }
}

__attribute__((noinline)) void realloc_then_free(void) {
    void *p = NULL;
    for (int i = 1; i <= 50; i++)
        p = realloc(p, 100 * i);
    free(p);
}

int main(void) {
    say("ready");
    wait_for("go");
    for (int i = 0; i < 100; i++)
        sink = leak_here(4096);
    churn_and_free();
    calloc_and_free();
    realloc_then_free();
    say("done");
    wait_for("exit");
    return 0;
}
