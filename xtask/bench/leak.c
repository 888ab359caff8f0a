/* Benchmark workload for the always-on suite: after a line on stdin, leak_records leaks BYTES
 * (malloc, then every byte written, so it is resident) every STEP_MS milliseconds until killed.
 * Prints "ready" before and "started" after the line.
 * usage: leak BYTES STEP_MS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_KEPT (1 << 20)

static void *volatile kept[MAX_KEPT];

__attribute__((noinline)) void *leak_records(size_t bytes) {
    void *p = malloc(bytes);
    if (p) memset(p, 1, bytes);
    return p;
}

int main(int argc, char **argv) {
    size_t bytes = argc > 1 ? strtoul(argv[1], NULL, 10) : 10240;
    int step_ms = argc > 2 ? atoi(argv[2]) : 100;
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    printf("started\n");
    fflush(stdout);
    for (unsigned long i = 0;; i++) {
        kept[i % MAX_KEPT] = leak_records(bytes);
        usleep(step_ms * 1000);
    }
}
