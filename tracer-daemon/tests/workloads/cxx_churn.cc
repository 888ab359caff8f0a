/* Churns C++ allocations without pause from two threads. Each thread keeps a ring of the last
 * 64 arrays it allocated (16 to 4111 bytes, sizes varying so addresses do not simply repeat)
 * and deletes the oldest before each new one: at any moment at most 2 x 64 blocks are live,
 * all allocated by churn_forever through operator new[]. A tracer attached while this runs
 * must never report more, nor any other call site.
 * Prints "ready <pid>" once both threads run; exits on "exit" or EOF. */
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <unistd.h>

static std::atomic<bool> churning{true};
static void *volatile sink;
constexpr int kLivePerThread = 64;

__attribute__((noinline)) void churn_forever(unsigned seed) {
    char *live[kLivePerThread] = {};
    unsigned random = seed;
    for (unsigned i = 0; churning.load(std::memory_order_relaxed); i++) {
        unsigned slot = i % kLivePerThread;
        delete[] live[slot];
        random = random * 1103515245u + 12345u;
        live[slot] = new char[16 + (random >> 8) % 4096];
        sink = live[slot];
    }
    for (char *block : live) delete[] block;
}

int main() {
    std::thread first(churn_forever, 1), second(churn_forever, 7);
    std::printf("ready %d\n", (int)getpid());
    std::fflush(stdout);
    char line[64];
    while (std::fgets(line, sizeof line, stdin)) {
        if (std::strncmp(line, "exit", 4) == 0) break;
    }
    churning = false;
    first.join();
    second.join();
    return 0;
}
