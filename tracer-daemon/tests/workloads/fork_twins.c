/* A parent and its forked child leak from the same function at the same addresses (the heap
 * is copied by fork): the parent 20 x 1000 bytes, the child 10 x 1000. Each must be reported
 * for its own pid with its own totals. The child is forked before "ready" so the test can
 * trace both; the parent relays "go" and "exit" through pipes. */
#include "harness.h"
#include <sys/wait.h>

__attribute__((noinline)) void leak_same_address(int blocks) {
    for (int i = 0; i < blocks; i++) sink = malloc(1000);
}

int main(void) {
    int to_child[2], from_child[2];
    char byte;
    if (pipe(to_child) || pipe(from_child)) return 1;
    pid_t child = fork();
    if (child == 0) {
        /* Only the parent writes to_child: if it dies, the read below returns 0 and we leave. */
        close(to_child[1]);
        close(from_child[0]);
        if (read(to_child[0], &byte, 1) != 1) _exit(1); /* go */
        leak_same_address(10);
        if (write(from_child[1], "d", 1) != 1) _exit(1);
        if (read(to_child[0], &byte, 1) != 1) _exit(0); /* exit */
        _exit(0);
    }
    printf("child %d\n", (int)child);
    say("ready");
    wait_for("go");
    if (write(to_child[1], "g", 1) != 1) return 1;
    leak_same_address(20);
    if (read(from_child[0], &byte, 1) != 1) return 1;
    say("done");
    wait_for("exit");
    if (write(to_child[1], "x", 1) != 1) return 1;
    waitpid(child, NULL, 0);
    return 0;
}
