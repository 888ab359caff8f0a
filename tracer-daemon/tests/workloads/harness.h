/* Shared by the test workloads: a fixed protocol with the test over stdin/stdout.
 * The workload prints "ready <pid>", waits for "go", does its allocations, prints "done",
 * then waits for "exit" (or EOF) before returning. Everything between "go" and "done" is the
 * ground truth the test asserts exactly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void wait_for(const char *word) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, word, strlen(word)) == 0)
            return;
    }
    exit(0); /* EOF: the test went away */
}

static void say(const char *word) {
    printf("%s %d\n", word, (int)getpid());
    fflush(stdout);
}

/* Keeps pointers reachable so nothing here is a leak by accident of the optimizer. */
static void *volatile sink;
