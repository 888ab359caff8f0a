/* A million outstanding allocations across 100000 distinct stacks: a binary tree of calls 17
 * levels deep (left or right at each level); the first 100000 leaves leak 10 x 16 bytes each.
 * `many_stacks N` leaks from the first N leaves only (N stacks, 10 N allocations). */
#include "harness.h"

#define DEPTH 17
#define PER_LEAF 10
static unsigned leaves = 100000;

__attribute__((noinline)) void node(int depth, unsigned path);

__attribute__((noinline)) void left(int depth, unsigned path) { node(depth + 1, path << 1); }

__attribute__((noinline)) void right(int depth, unsigned path) { node(depth + 1, (path << 1) | 1); }

__attribute__((noinline)) void node(int depth, unsigned path) {
    if (depth == DEPTH) {
        if (path < leaves)
            for (int i = 0; i < PER_LEAF; i++) sink = malloc(16);
        return;
    }
    left(depth, path);
    right(depth, path);
}

int main(int argc, char **argv) {
    if (argc > 1)
        leaves = (unsigned)atoi(argv[1]);
    say("ready");
    wait_for("go");
    node(0, 0);
    say("done");
    wait_for("exit");
    return 0;
}
