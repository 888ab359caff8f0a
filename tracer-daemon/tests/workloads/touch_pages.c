/* The page-fault profile's cost: touches MIB mebibytes of fresh anonymous memory, one write
 * per 4 KiB page, and prints how long the touching took ("touched <ns> <cpu_ns>": wall time,
 * and the thread's CPU time, which other load on the machine disturbs less). No THP (the test
 * machines run THP in madvise mode, and this never asks for it).
 *
 * Usage: touch_pages <mib>. Protocol: "ready", "go", "touched <ns> <cpu_ns>", "done", "exit". */
#include <sys/mman.h>
#include <time.h>
#include "harness.h"

static unsigned long now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (unsigned long)ts.tv_sec * 1000000000UL + (unsigned long)ts.tv_nsec;
}

int main(int argc, char **argv) {
    unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 2048;
    size_t bytes = mib << 20;
    say("ready");
    wait_for("go");
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 1;
    unsigned long start = now_ns(CLOCK_MONOTONIC);
    unsigned long start_cpu = now_ns(CLOCK_THREAD_CPUTIME_ID);
    for (size_t at = 0; at < bytes; at += 4096)
        ((volatile char *)p)[at] = 1;
    unsigned long took = now_ns(CLOCK_MONOTONIC) - start;
    unsigned long took_cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - start_cpu;
    munmap(p, bytes);
    printf("touched %lu %lu\n", took, took_cpu);
    say("done");
    wait_for("exit");
    return 0;
}
