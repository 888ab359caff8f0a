/* Benchmark workload for stack unwinding: PAIRS malloc/free pairs made eight calls deep, so a
 * recorded stack has ten frames. Built twice by `cargo xtask bench --suite unwinding`: with
 * frame pointers and with -fomit-frame-pointer (then every frame is unwound from .eh_frame).
 * Prints "ready", waits for a line on stdin, runs, prints the elapsed wall time in ns, exits.
 * usage: deep_churn PAIRS THREADS (THREADS is accepted for churn's interface and ignored) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void *volatile sink;

#define LEVEL(name, next)                                                                      \
    __attribute__((noipa)) void name(long n) {                                                 \
        volatile long depth = n;                                                                \
        next(depth + 1);                                                                        \
        sink = (void *)depth;                                                                   \
    }

__attribute__((noipa)) void leaf(long n) {
    void *p = malloc(16 + (size_t)(n & 1023));
    sink = p;
    free(p);
}
LEVEL(level7, leaf)
LEVEL(level6, level7)
LEVEL(level5, level6)
LEVEL(level4, level5)
LEVEL(level3, level4)
LEVEL(level2, level3)
LEVEL(level1, level2)

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    uint64_t start = now_ns();
    for (long i = 0; i < pairs; i++)
        level1(i);
    printf("%llu\n", (unsigned long long)(now_ns() - start));
    fflush(stdout);
    return 0;
}
