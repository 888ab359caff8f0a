/* Leaks on command, for tests that restart the tracer while this process keeps running.
 * After "ready", one command per line:
 *   leak N SIZE   leak N blocks of SIZE bytes from leak_batch; prints "leaked TOTAL_BLOCKS"
 *   churn_start   a thread mallocs and frees 64-byte blocks from churn_loop without pause
 *   churn_stop    stops and joins it; prints "churned CALLS"
 *   free_all      frees every block leak_batch returned so far; prints "freed N"
 *   ping          prints "pong" (proves the process is alive and answering)
 *   exit          returns
 * Everything between a command and its answer is exact ground truth for the test. */
#include "harness.h"
#include <pthread.h>
#include <stdatomic.h>

#define MAX_BLOCKS 100000

static void *blocks[MAX_BLOCKS];
static int leaked;
static atomic_int churning;
static long churn_calls;
static pthread_t churner;

__attribute__((noinline)) void *leak_batch(size_t size) {
    void *p = malloc(size);
    memset(p, 1, size);
    return p;
}

__attribute__((noinline)) void free_leaked(void) {
    for (int i = 0; i < leaked; i++) free(blocks[i]);
}

__attribute__((noinline)) void *churn_loop(void *arg) {
    (void)arg;
    while (atomic_load(&churning)) {
        void *p = malloc(64);
        sink = p;
        free(p);
        churn_calls++;
    }
    return NULL;
}

int main(void) {
    char line[128];
    say("ready");
    while (fgets(line, sizeof line, stdin)) {
        int n;
        size_t size;
        if (sscanf(line, "leak %d %zu", &n, &size) == 2) {
            for (int i = 0; i < n && leaked < MAX_BLOCKS; i++) blocks[leaked++] = leak_batch(size);
            printf("leaked %d\n", leaked);
        } else if (strncmp(line, "churn_start", 11) == 0) {
            atomic_store(&churning, 1);
            pthread_create(&churner, NULL, churn_loop, NULL);
            printf("churning\n");
        } else if (strncmp(line, "churn_stop", 10) == 0) {
            atomic_store(&churning, 0);
            pthread_join(churner, NULL);
            printf("churned %ld\n", churn_calls);
        } else if (strncmp(line, "free_all", 8) == 0) {
            free_leaked();
            printf("freed %d\n", leaked);
            leaked = 0;
        } else if (strncmp(line, "ping", 4) == 0) {
            printf("pong\n");
        } else if (strncmp(line, "exit", 4) == 0) {
            return 0;
        }
        fflush(stdout);
    }
    return 0;
}
