/* A leak four calls deep, built with -fomit-frame-pointer -O2 by the test:
 * main -> request_handler -> parse_payload -> build_index -> alloc_node -> malloc.
 * alloc_node leaks 50 x 1000 bytes; every caller in between keeps no frame pointer, so only an
 * unwinder that reads .eh_frame names them. Frees of 300 blocks from a sibling path are exact. */
#include "harness.h"

__attribute__((noipa)) void *alloc_node(size_t n) {
    void *p = malloc(n);
    memset(p, 7, n);
    return p;
}

/* Each level spills a few values to its own stack frame, so the CFA moves off %rsp + 8 and
 * the unwinder has to get every frame's size right. */
__attribute__((noipa)) void *build_index(size_t n) {
    volatile char scratch[40];
    scratch[0] = (char)n;
    void *p = alloc_node(n + scratch[0] - (char)n);
    sink = p;
    return p;
}

__attribute__((noipa)) void *parse_payload(size_t n) {
    volatile long scratch[9];
    scratch[3] = (long)n;
    void *p = build_index((size_t)scratch[3]);
    return p;
}

__attribute__((noipa)) void *request_handler(size_t n) {
    volatile int scratch[3];
    scratch[1] = 1;
    void *p = parse_payload(n * (size_t)scratch[1]);
    return p;
}

__attribute__((noipa)) void churn(void) {
    for (int i = 0; i < 300; i++) {
        void *p = malloc(128);
        sink = p;
        free(p);
    }
}

int main(void) {
    say("ready");
    wait_for("go");
    for (int i = 0; i < 50; i++)
        sink = request_handler(1000);
    churn();
    say("done");
    wait_for("exit");
    return 0;
}
