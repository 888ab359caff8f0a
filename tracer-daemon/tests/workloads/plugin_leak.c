/* A plugin loaded with dlopen after tracing began (see dlopen_leak.c), built by the test with
 * -fomit-frame-pointer: plugin_entry -> plugin_mid -> plugin_leaf -> malloc, leaking
 * 40 x 2000 bytes. Only an unwinder that learned the plugin's mapping names all three. */
#include <stdlib.h>
#include <string.h>

void *volatile plugin_sink;

__attribute__((noipa)) void *plugin_leaf(size_t n) {
    void *p = malloc(n);
    memset(p, 3, n);
    return p;
}

__attribute__((noipa)) void *plugin_mid(size_t n) {
    volatile long scratch[5];
    scratch[2] = (long)n;
    return plugin_leaf((size_t)scratch[2]);
}

__attribute__((noipa)) void plugin_entry(void) {
    for (int i = 0; i < 40; i++)
        plugin_sink = plugin_mid(2000);
}
