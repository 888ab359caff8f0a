/* Loads the plugin named by argv[1] with dlopen after "go", says "loaded", and on "leak" calls
 * its plugin_entry (40 x 2000 bytes leaked three calls deep inside the plugin; see
 * plugin_leak.c), then says "done". */
#include <dlfcn.h>
#include "harness.h"

int main(int argc, char **argv) {
    say("ready");
    wait_for("go");
    void *plugin = dlopen(argc > 1 ? argv[1] : "", RTLD_NOW);
    void (*entry)(void) = plugin ? (void (*)(void))dlsym(plugin, "plugin_entry") : NULL;
    if (!entry) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    say("loaded");
    wait_for("leak");
    entry();
    say("done");
    wait_for("exit");
    return 0;
}
