/* C++ leaks through operator new (built with -O2, no frame pointers in libstdc++):
 *   Cache::remember      leaks 30 Entry objects (new Entry, 160 bytes each) and 30 arrays
 *                        (new char[500])
 *   Cache::remember_aligned  leaks 10 over-aligned Blocks (aligned new, 256 bytes each) and
 *                        10 nothrow arrays (new (std::nothrow) char[300])
 *   make_cycle           leaks 25 pairs of make_shared<Node> that point at each other: 50
 *                        blocks of libstdc++'s control block (16 bytes) + Node (216 bytes)
 *   fill_vector          leaks one std::vector<int> buffer of 2048 ints (8192 bytes) and the
 *                        vector object itself (24 bytes)
 *   churn                leaks nothing (unique_ptr and vector churn)
 */
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>
#include <unistd.h>

static void *volatile sink;

static void wait_for(const char *word) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, word, strlen(word)) == 0)
            return;
    }
    _exit(0);
}

struct Entry {
    char key[96];
    char value[64];
};

struct alignas(64) Block {
    char bytes[256];
};

class Cache {
  public:
    __attribute__((noipa)) void remember(int i) {
        Entry *entry = new Entry;
        entry->key[0] = (char)i;
        char *blob = new char[500];
        blob[0] = (char)i;
        sink = entry;
        sink = blob;
    }

    __attribute__((noipa)) void remember_aligned(int i) {
        Block *block = new Block;
        block->bytes[0] = (char)i;
        char *spare = new (std::nothrow) char[300];
        sink = block;
        sink = spare;
    }
};

struct Node {
    std::shared_ptr<Node> next;
    char payload[200];
};

__attribute__((noipa)) void make_cycle() {
    auto a = std::make_shared<Node>();
    auto b = std::make_shared<Node>();
    a->next = b;
    b->next = a;
}

__attribute__((noipa)) void fill_vector() {
    auto *numbers = new std::vector<int>;
    numbers->reserve(2048);
    for (int i = 0; i < 2048; i++)
        numbers->push_back(i);
    sink = numbers;
}

__attribute__((noipa)) void churn() {
    for (int i = 0; i < 500; i++) {
        auto owned = std::make_unique<Entry>();
        sink = owned.get();
        std::vector<long> temporary(64 + i);
        sink = temporary.data();
    }
}

int main() {
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    wait_for("go");
    Cache cache;
    for (int i = 0; i < 30; i++)
        cache.remember(i);
    for (int i = 0; i < 10; i++)
        cache.remember_aligned(i);
    for (int i = 0; i < 25; i++)
        make_cycle();
    fill_vector();
    churn();
    printf("done %d\n", (int)getpid());
    fflush(stdout);
    wait_for("exit");
    return 0;
}
