/* Benchmark workload for the always-on suite: touches MIB mebibytes of fresh anonymous memory,
 * one write per 4 KiB page (every write a page fault; no THP, which this never asks for).
 * Prints "ready", waits for a line on stdin, touches, prints the touching's wall time and the
 * thread's CPU time in ns (the faults are handled on the thread's CPU time, which other load on
 * a busy machine disturbs far less than the wall time), then waits for another line before
 * exiting (so its pid stays watched until then).
 * usage: touch_pages MIB */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)(argc > 1 ? strtoul(argv[1], NULL, 10) : 2048) << 20;
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    uint64_t start = now_ns(CLOCK_MONOTONIC);
    uint64_t start_cpu = now_ns(CLOCK_THREAD_CPUTIME_ID);
    for (size_t at = 0; at < bytes; at += 4096) ((volatile char *)p)[at] = 1;
    uint64_t took = now_ns(CLOCK_MONOTONIC) - start;
    uint64_t took_cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - start_cpu;
    munmap(p, bytes);
    printf("%llu %llu\n", (unsigned long long)took, (unsigned long long)took_cpu);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 0;
    return 0;
}
