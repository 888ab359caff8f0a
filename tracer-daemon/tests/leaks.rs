//! Real-kernel leak tests: real C workloads with known leaks, traced by the real daemon, with
//! exact ground truth.

mod support;

use support::*;

#[test]
fn a_leaking_function_is_the_top_stack_with_exact_bytes_and_count() {
    require_root();
    let mut workload = Workload::start(&workload("one_leak_site"), &[]);
    let mut trace = Trace::start(&[workload.pid], &[]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    let process = process(&report, workload.pid);
    let top = &process["stacks"][0];
    assert_eq!(functions(top)[..2], ["leak_here", "main"], "{report:#}");
    assert_eq!(bytes_count(top), (100 * 4096, 100), "{report:#}");
    // Nothing else is outstanding from the workload's own functions.
    for function in ["churn_and_free", "calloc_and_free", "realloc_then_free"] {
        assert!(stacks_from(&report, workload.pid, function).is_empty(), "{function} leaked: {report:#}");
    }
    workload.finish();
}
