/* Leaks 1 MiB blocks from leak_until_oom, touching every page, until the memory cgroup's
 * limit gets it OOM-killed. Before touching block N it prints "allocated N": when the kernel
 * kills it, the outstanding bytes at leak_until_oom are exactly the last N printed x 1 MiB.
 *
 * usage: oom_leaker leak STEP_MS        leak forever, one block every STEP_MS after "go"
 *        oom_leaker hold MIB            leak MIB blocks after "go", print "done", then wait
 *        oom_leaker nibble STEP_MS      like leak, from nibble_memory (to trigger an OOM whose
 *                                       victim is another, bigger process) */
#include "harness.h"

#define BLOCK (1 << 20)

static int allocated;

__attribute__((noinline)) char *leak_until_oom(void) { return malloc(BLOCK); }

__attribute__((noinline)) char *nibble_memory(void) { return malloc(BLOCK); }

static void touch(char *block) {
    for (int offset = 0; offset < BLOCK; offset += 4096) block[offset] = 1;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int value = atoi(argv[2]);
    say("ready");
    wait_for("go");
    if (strcmp(argv[1], "hold") == 0) {
        for (int i = 0; i < value; i++) {
            char *block = leak_until_oom();
            printf("allocated %d\n", ++allocated);
            fflush(stdout);
            touch(block);
        }
        say("done");
        wait_for("exit");
        return 0;
    }
    int nibble = strcmp(argv[1], "nibble") == 0;
    for (;;) {
        char *block = nibble ? nibble_memory() : leak_until_oom();
        printf("allocated %d\n", ++allocated);
        fflush(stdout);
        touch(block);
        usleep(value * 1000);
    }
}
