/* The same ground truth under every allocator the test links in (glibc, jemalloc, tcmalloc,
 * mimalloc, musl; static and dynamic):
 *   leak_with_malloc   20 x 3000 bytes
 *   leak_with_calloc   10 x (8 x 100) bytes
 *   leak_with_realloc   1 block grown to 9000 bytes (the earlier sizes are not outstanding)
 *   leak_with_mmap      3 x 4 pages of anonymous memory mapped by the program itself
 *   churn_and_free      leaks nothing (2000 malloc/free pairs)
 */
#include "harness.h"
#include <sys/mman.h>

__attribute__((noipa)) void leak_with_malloc(void) {
    for (int i = 0; i < 20; i++) {
        void *p = malloc(3000);
        memset(p, 1, 3000);
        sink = p;
    }
}

__attribute__((noipa)) void leak_with_calloc(void) {
    for (int i = 0; i < 10; i++)
        sink = calloc(8, 100);
}

__attribute__((noipa)) void leak_with_realloc(void) {
    void *p = NULL;
    for (int i = 1; i <= 9; i++)
        p = realloc(p, 1000 * i);
    sink = p;
}

__attribute__((noipa)) void leak_with_mmap(void) {
    for (int i = 0; i < 3; i++)
        sink = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

__attribute__((noipa)) void churn_and_free(void) {
    for (int i = 0; i < 2000; i++) {
        void *p = malloc(32 + i % 512);
        sink = p;
        free(p);
    }
}

int main(void) {
    say("ready");
    wait_for("go");
    leak_with_malloc();
    leak_with_calloc();
    leak_with_realloc();
    leak_with_mmap();
    churn_and_free();
    say("done");
    wait_for("exit");
    return 0;
}
