/* Built static and stripped: no mapped file names malloc, so the tracer must refuse with a
 * clear message. */
#include "harness.h"

int main(void) {
    say("ready");
    wait_for("exit");
    return 0;
}
