/* Many short-lived processes: after "go", forks TOTAL children, at most CONCURRENT alive at
 * once. Child i lives 50 + (i % 7) * 50 ms; every 10 ms it mallocs and frees 20 blocks from
 * child_churn and keeps one 1000-byte block from child_keep, then exits (its memory goes with
 * it). The parent prints "child PID" for each fork, reaps every child, prints "done FAILED"
 * (children that did not exit 0), then waits for "exit". The parent itself allocates nothing
 * between "go" and "done".
 *
 * usage: process_churn TOTAL CONCURRENT */
#include "harness.h"
#include <sys/wait.h>
#include <time.h>

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((noinline)) void child_churn(void) {
    for (int i = 0; i < 20; i++) {
        void *p = malloc(32 + i * 16);
        sink = p;
        free(p);
    }
}

__attribute__((noinline)) void *child_keep(void) { return malloc(1000); }

static void child(int index) {
    long until = now_ms() + 50 + (index % 7) * 50;
    while (now_ms() < until) {
        child_churn();
        sink = child_keep();
        usleep(10 * 1000);
    }
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int total = atoi(argv[1]), concurrent = atoi(argv[2]);
    int alive = 0, failed = 0, status;
    say("ready");
    wait_for("go");
    for (int i = 0; i < total; i++) {
        if (alive == concurrent) {
            if (wait(&status) > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) failed++;
            alive--;
        }
        fflush(stdout); /* nothing buffered is copied into the child */
        pid_t pid = fork();
        if (pid == 0) child(i);
        if (pid < 0) {
            failed++;
            continue;
        }
        alive++;
        printf("child %d\n", (int)pid);
    }
    while (alive > 0) {
        if (wait(&status) > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) failed++;
        alive--;
    }
    printf("done %d\n", failed);
    fflush(stdout);
    wait_for("exit");
    return 0;
}
