/* Four threads each leak 50 x 1000 bytes from thread_leak. Each new thread makes glibc create
 * an arena, reserving 128 MiB with mmap inside malloc: that reservation is the allocator's,
 * not a leak, and must not be reported. Expected: thread_leak 200000 / 200, and no stack
 * anywhere near 128 MiB. */
#include "harness.h"
#include <pthread.h>

#define THREADS 4

static pthread_barrier_t all_started;

__attribute__((noinline)) void thread_leak(void) {
    for (int i = 0; i < 50; i++) sink = malloc(1000);
}

static void *worker(void *arg) {
    (void)arg;
    pthread_barrier_wait(&all_started); /* all threads alive at once: one arena each */
    thread_leak();
    return NULL;
}

int main(void) {
    pthread_t threads[THREADS];
    say("ready");
    wait_for("go");
    pthread_barrier_init(&all_started, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    say("done");
    wait_for("exit");
    return 0;
}
