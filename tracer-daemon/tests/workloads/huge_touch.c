/* Transparent huge pages first touched: maps HUGE_PAGES 2 MiB-aligned huge pages' worth of
 * anonymous memory, asks for THP (MADV_HUGEPAGE: the test machines run THP in madvise mode)
 * and writes one byte in the middle of each 2 MiB, so each write can fault in a whole huge page.
 * Whether the kernel gave huge pages (it falls back to small ones when it has no free 2 MiB
 * block) is the test's to read from /proc/PID/smaps_rollup while this waits for "exit".
 *
 * Usage: huge_touch <huge pages>. Protocol: "ready", "go", "touched", "exit". */
#include <stdint.h>
#include <sys/mman.h>
#include "harness.h"

#define HUGE (2UL << 20)

__attribute__((noinline)) void touch_huge(char *p, unsigned long count) {
    for (unsigned long i = 0; i < count; i++)
        ((volatile char *)p)[i * HUGE + HUGE / 2 + 123] = 1;
}

int main(int argc, char **argv) {
    unsigned long count = argc > 1 ? strtoul(argv[1], NULL, 10) : 8;
    size_t bytes = count * HUGE;
    char *raw = mmap(NULL, bytes + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return 1;
    char *p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    if (madvise(p, bytes, MADV_HUGEPAGE) != 0)
        return 2;
    say("ready");
    wait_for("go");
    touch_huge(p, count);
    say("touched");
    wait_for("exit");
    return 0;
}
