/* Benchmark workload for the overhead budget: a hot malloc/free loop of pseudo-random sizes
 * (16..1039 bytes) on one thread. Prints "ready", waits for a line on stdin, then prints every
 * second "SECONDS NS_PER_PAIR" (the mean over that second) until killed.
 * usage: hot_churn */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void *volatile sink;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(void) {
    char line[16];
    uint32_t state = 1;
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    uint64_t start = now_ns(), mark = start;
    uint64_t pairs = 0;
    for (;;) {
        for (int i = 0; i < 1000; i++) {
            state = state * 1664525u + 1013904223u;
            void *p = malloc(16 + (state >> 22));
            sink = p;
            free(p);
        }
        pairs += 1000;
        uint64_t now = now_ns();
        if (now - mark >= 1000000000u) {
            printf("%.1f %.1f\n", (now - start) / 1e9, (double)(now - mark) / (double)pairs);
            fflush(stdout);
            mark = now;
            pairs = 0;
        }
    }
}
