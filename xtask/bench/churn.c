/* Benchmark workload: PAIRS malloc/free pairs of pseudo-random sizes (16..1039 bytes) on
 * THREADS threads, each thread doing PAIRS/THREADS. Prints "ready", waits for a line on stdin,
 * runs, prints the elapsed wall time in ns, and exits.
 * usage: churn PAIRS THREADS */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long pairs_per_thread;
static void *volatile sink;

static void *worker(void *arg) {
    uint32_t state = (uint32_t)(uintptr_t)arg * 2654435761u + 1;
    for (long i = 0; i < pairs_per_thread; i++) {
        state = state * 1664525u + 1013904223u;
        void *p = malloc(16 + (state >> 22));
        sink = p;
        free(p);
    }
    return NULL;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    pthread_t tids[64];
    char line[16];
    if (threads < 1 || threads > 64) return 2;
    pairs_per_thread = pairs / threads;
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    uint64_t start = now_ns();
    if (threads == 1) {
        worker(NULL);
    } else {
        for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, worker, (void *)(uintptr_t)(i + 1));
        for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    }
    printf("%llu\n", (unsigned long long)(now_ns() - start));
    fflush(stdout);
    return 0;
}
