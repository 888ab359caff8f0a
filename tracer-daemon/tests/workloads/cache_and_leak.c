/* Two stacks with different shapes over time, for growth classification. On "go": fill_cache
 * allocates 64 x 1024 bytes at once, then only replaces entries (constant size: it levels off);
 * leak_slowly leaks 1000 bytes every 20 ms, forever (it grows). Prints "done" after the cache is
 * full and keeps running until "exit". */
#include "harness.h"
#include <pthread.h>

#define SLOTS 64
static void *cache[SLOTS];

__attribute__((noinline)) void fill_cache(int slot) {
    free(cache[slot]);
    cache[slot] = malloc(1024);
}

__attribute__((noinline)) void leak_slowly(void) { sink = malloc(1000); }

static void *run(void *arg) {
    (void)arg;
    for (int i = 0; i < SLOTS; i++) fill_cache(i);
    say("done");
    for (int tick = 0;; tick++) {
        leak_slowly();
        fill_cache(tick % SLOTS);
        usleep(20000);
    }
    return NULL;
}

int main(void) {
    pthread_t thread;
    say("ready");
    wait_for("go");
    pthread_create(&thread, NULL, run, NULL);
    wait_for("exit");
    return 0;
}
