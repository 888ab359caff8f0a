/* Resident growth by first touch, with ground truth: the main thread leaks LEAK_BYTES every
 * 100 ms in leak_records (malloc + memset: every page of it is touched for the first time),
 * while a churn thread frees everything it allocates: small malloc/free pairs, and a 1 MiB
 * block below the mmap threshold that glibc trims back after each free and the next round
 * touches again (the same addresses: a retouch, not growth).
 *
 * Usage: growth_leak [leaks] (default 30). Prints "leaked <bytes>" before "done". */
#include <malloc.h>
#include <pthread.h>
#include "harness.h"

#define LEAK_BYTES (256 * 1024)
#define CHURN_BYTES (1024 * 1024)
#define MAX_LEAKS 1024

static void *volatile kept[MAX_LEAKS];
static volatile int stop;
static volatile unsigned long churn_rounds;

__attribute__((noinline)) void *leak_records(void) {
    void *p = malloc(LEAK_BYTES);
    memset(p, 1, LEAK_BYTES);
    return p;
}

__attribute__((noinline)) void trim_and_retouch(void) {
    void *p = malloc(CHURN_BYTES);
    memset(p, 2, CHURN_BYTES);
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

__attribute__((noinline)) void malloc_free_churn(void) {
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(64 + i);
        p[0] = (char)i;
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
}

static void *churn(void *arg) {
    (void)arg;
    while (!stop) {
        trim_and_retouch();
        malloc_free_churn();
        churn_rounds++;
        usleep(10000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int leaks = argc > 1 ? atoi(argv[1]) : 30;
    if (leaks > MAX_LEAKS)
        leaks = MAX_LEAKS;
    /* The churn's 1 MiB block comes from its arena's heap, which free() trims. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    say("ready");
    wait_for("go");
    pthread_t thread;
    pthread_create(&thread, NULL, churn, NULL);
    unsigned long leaked = 0;
    for (int i = 0; i < leaks; i++) {
        kept[i] = leak_records();
        leaked += LEAK_BYTES;
        usleep(100000);
    }
    stop = 1;
    pthread_join(thread, NULL);
    printf("churned %lu\n", churn_rounds);
    printf("leaked %lu\n", leaked);
    say("done");
    wait_for("exit");
    return 0;
}
