/* The demo's "service": handles fake requests forever. Every 10th request leaks its parsed
 * headers (parse_headers, 2 KiB each); a response cache fills up to 256 entries and then
 * evicts (it plateaus, which is not a leak); everything else is freed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CACHE_SLOTS 256

static void *cache[CACHE_SLOTS];
static void *volatile sink;

__attribute__((noinline)) char *parse_headers(int request) {
    char *headers = malloc(2048);
    snprintf(headers, 2048, "GET /item/%d HTTP/1.1", request);
    return headers;
}

__attribute__((noinline)) void cache_response(int request) {
    int slot = request % CACHE_SLOTS;
    free(cache[slot]);
    cache[slot] = malloc(512);
}

__attribute__((noinline)) void handle_request(int request) {
    char *headers = parse_headers(request);
    char *body = malloc(4096);
    memset(body, 0, 4096);
    cache_response(request);
    free(body);
    if (request % 10 != 0)
        free(headers); /* the bug: the 10th request's headers are never freed */
    else
        sink = headers;
}

int main(void) {
    printf("leaky_service: pid %d\n", (int)getpid());
    fflush(stdout);
    for (int request = 1;; request++) {
        handle_request(request);
        usleep(1000);
    }
}
