/* Every allocator entry point, each leaking from its own function with known bytes, plus
 * calls that fail (and so must record nothing) and blocks that are freed. Expected outstanding
 * after "done" (function: bytes / count):
 *   leak_malloc            7 x 1000   =  7000 / 7
 *   leak_calloc            5 x 10*100 =  5000 / 5
 *   grow_with_realloc      1 block grown to 64000 = 64000 / 1
 *   leak_reallocarray      1 block, 20*30 = 600 / 1
 *   leak_posix_memalign    3 x 1000   =  3000 / 3
 *   leak_aligned_alloc     2 x 512    =  1024 / 2
 *   leak_memalign          4 x 40     =   160 / 4   (alignment 8: glibc calls malloc inside)
 *   leak_valloc            1 x 5000   =  5000 / 1
 *   leak_pvalloc           1 x 5000 -> whole pages = 8192 / 1
 *   keep_after_failed_realloc  777 / 1  (realloc to an impossible size fails; block stays)
 *   leak_mmap              3 x 5 pages anonymous = 61440 / 3
 *   mmap_with_holes        10 pages, hole of 2 in the middle, last page unmapped = 7 pages in 2 pieces
 * Nothing else from these functions: failed_calls, freed_blocks, file_mapping. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/mman.h>
#include <fcntl.h>

#define PAGE 4096

__attribute__((noinline)) void leak_malloc(void) {
    for (int i = 0; i < 7; i++) sink = malloc(1000);
}

__attribute__((noinline)) void leak_calloc(void) {
    for (int i = 0; i < 5; i++) sink = calloc(10, 100);
}

__attribute__((noinline)) void grow_with_realloc(void) {
    void *p = NULL;
    for (int size = 1000; size <= 64000; size += 1000) p = realloc(p, size);
    sink = p;
}

__attribute__((noinline)) void leak_reallocarray(void) {
    void *p = reallocarray(NULL, 10, 30);
    sink = reallocarray(p, 20, 30);
}

__attribute__((noinline)) void leak_posix_memalign(void) {
    for (int i = 0; i < 3; i++) {
        void *p;
        if (posix_memalign(&p, 64, 1000) == 0) sink = p;
    }
}

__attribute__((noinline)) void leak_aligned_alloc(void) {
    for (int i = 0; i < 2; i++) sink = aligned_alloc(256, 512);
}

__attribute__((noinline)) void leak_memalign(void) {
    for (int i = 0; i < 4; i++) sink = memalign(8, 40);
}

__attribute__((noinline)) void leak_valloc(void) { sink = valloc(5000); }

__attribute__((noinline)) void leak_pvalloc(void) { sink = pvalloc(5000); }

__attribute__((noinline)) void keep_after_failed_realloc(void) {
    void *p = malloc(777);
    void *q = realloc(p, (size_t)1 << 62);
    sink = q ? q : p;
}

__attribute__((noinline)) void leak_mmap(void) {
    for (int i = 0; i < 3; i++)
        sink = mmap(NULL, 5 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

__attribute__((noinline)) void mmap_with_holes(void) {
    char *p = mmap(NULL, 10 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p + 4 * PAGE, 2 * PAGE);
    munmap(p + 9 * PAGE, PAGE);
    sink = p;
}

__attribute__((noinline)) void failed_calls(void) {
    void *p;
    sink = malloc((size_t)1 << 62);                 /* NULL */
    volatile size_t huge = (size_t)1 << 40;
    sink = calloc(huge, huge);                      /* overflow: NULL */
    if (posix_memalign(&p, 3, 100) == 0) sink = p;  /* EINVAL */
    sink = mmap(NULL, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* EINVAL */
}

__attribute__((noinline)) void freed_blocks(void) {
    void *a = malloc(300);
    void *b = calloc(3, 100);
    void *c = realloc(NULL, 300); /* realloc(NULL, n) is malloc(n) */
    c = realloc(c, 0);            /* realloc(p, 0) frees */
    void *d;
    if (posix_memalign(&d, 32, 300) == 0) free(d);
    char *m = mmap(NULL, 4 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(m, 4 * PAGE);
    free(a);
    free(b);
    sink = c; /* NULL: realloc(c, 0) freed it */
}

__attribute__((noinline)) void file_mapping(void) {
    int fd = open("/proc/self/exe", O_RDONLY);
    sink = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0); /* not anonymous: not heap */
    close(fd);
}

int main(void) {
    say("ready");
    wait_for("go");
    leak_malloc();
    leak_calloc();
    grow_with_realloc();
    leak_reallocarray();
    leak_posix_memalign();
    leak_aligned_alloc();
    leak_memalign();
    leak_valloc();
    leak_pvalloc();
    keep_after_failed_realloc();
    leak_mmap();
    mmap_with_holes();
    failed_calls();
    freed_blocks();
    file_mapping();
    say("done");
    wait_for("exit");
    return 0;
}
