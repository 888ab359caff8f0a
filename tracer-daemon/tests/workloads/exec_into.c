/* Execs another program on "go": argv[1] with the rest of argv. The traced pid then runs a
 * different program; the tracer must follow it. */
#include "harness.h"

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    say("ready");
    wait_for("go");
    execv(argv[1], argv + 1);
    return 1;
}
