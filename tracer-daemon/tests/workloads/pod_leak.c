/* What runs in the always-on tests' pods, which nobody selects.
 *
 * usage: pod_leak leak STEP_MS   after "go": leak_records leaks 256 KiB (malloc + memset)
 *                                every STEP_MS, until killed, beside a churn thread (about
 *                                3,000 malloc/free pairs a second and a 1 MiB block glibc trims
 *                                back and touches again, a hundred times a second);
 *                                "count" prints "leaked N", the bytes leaked so far;
 *                                "step MS" sets the step from then on
 *        pod_leak cache MIB [S]  after "go": fill_cache keeps MIB 1 MiB blocks (touched), over
 *                                S seconds (default 1), then holds them: a cache that levels off
 *        pod_leak churn          after "go": a busy malloc/free loop whose memory stays flat
 *        pod_leak hot STEP_MS    leak as above, beside the busy malloc/free loop */
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include "harness.h"

#define LEAK_BYTES (256 * 1024)
#define CHURN_BYTES (1024 * 1024)
#define MAX_KEPT 65536

static void *volatile kept[MAX_KEPT];
static atomic_ulong leaked;
static atomic_int step_ms;

__attribute__((noinline)) void *leak_records(void) {
    void *p = malloc(LEAK_BYTES);
    memset(p, 1, LEAK_BYTES);
    return p;
}

__attribute__((noinline)) void *fill_cache(void) {
    void *p = malloc(CHURN_BYTES);
    memset(p, 3, CHURN_BYTES);
    return p;
}

__attribute__((noinline)) void trim_and_retouch(void) {
    void *p = malloc(CHURN_BYTES);
    memset(p, 2, CHURN_BYTES);
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

__attribute__((noinline)) void malloc_free_churn(int rounds) {
    for (int i = 0; i < rounds; i++) {
        char *p = malloc(64 + (i & 1023));
        p[0] = (char)i;
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
}

static void *leaker(void *arg) {
    (void)arg;
    for (unsigned long i = 0;; i++) {
        kept[i % MAX_KEPT] = leak_records();
        atomic_fetch_add(&leaked, LEAK_BYTES);
        usleep(atomic_load(&step_ms) * 1000);
    }
    return NULL;
}

static void *churn(void *arg) {
    (void)arg;
    for (;;) {
        trim_and_retouch();
        /* About 3,000 pairs a second: busy, yet well within the default overhead budget when
         * traced, however the node's measured cost per probe hit comes out (the hot mode is
         * the one that is over it). */
        malloc_free_churn(30);
        usleep(10000);
    }
    return NULL;
}

static void *busy(void *arg) {
    (void)arg;
    for (;;) malloc_free_churn(100000);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    /* The churn's 1 MiB block comes from the heap, which free() trims. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    say("ready");
    wait_for("go");
    pthread_t thread;
    if (strcmp(argv[1], "hot") == 0) {
        step_ms = argc > 2 ? atoi(argv[2]) : 50;
        pthread_create(&thread, NULL, busy, NULL);
        pthread_create(&thread, NULL, leaker, NULL);
    } else if (strcmp(argv[1], "leak") == 0) {
        step_ms = argc > 2 ? atoi(argv[2]) : 50;
        pthread_create(&thread, NULL, churn, NULL);
        pthread_create(&thread, NULL, leaker, NULL);
    } else if (strcmp(argv[1], "cache") == 0) {
        int mib = argc > 2 ? atoi(argv[2]) : 16;
        int seconds = argc > 3 ? atoi(argv[3]) : 1;
        for (int i = 0; i < mib && i < MAX_KEPT; i++) {
            kept[i] = fill_cache();
            usleep(1000000 / mib * seconds);
        }
    } else {
        pthread_create(&thread, NULL, busy, NULL);
    }
    say("started");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "count", 5) == 0) {
            printf("leaked %lu\n", atomic_load(&leaked));
            fflush(stdout);
        } else if (strncmp(line, "step ", 5) == 0) {
            atomic_store(&step_ms, atoi(line + 5));
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
    }
    return 0;
}
