//! Stacks and allocators as production has them: code without frame pointers (unwound from
//! .eh_frame), C++'s operator new and delete, and the same leaks under glibc, jemalloc,
//! tcmalloc, mimalloc and musl, static and dynamic. Every workload's header comment states its
//! ground truth, asserted exactly.

mod support;

use serde_json::Value;
use support::*;

/// Traces a workload from "go" to "done" and returns (pid, report).
fn trace_workload(executable: &std::path::Path) -> (Workload, Value) {
    trace_workload_with_env(executable, &[])
}

/// [`trace_workload`] with extra environment variables for the workload.
fn trace_workload_with_env(
    executable: &std::path::Path,
    envs: &[(&str, &str)],
) -> (Workload, Value) {
    let mut workload = Workload::start_with_env(executable, &[], envs);
    let mut trace = Trace::start(&[workload.pid], &["--top", "200"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    (workload, report)
}

/// (bytes, count) over every stack of a process with `function` anywhere in it.
fn totals_through(report: &Value, pid: u32, function: &str) -> (u64, u64) {
    process(report, pid)["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|stack| functions(stack).iter().any(|f| f == function))
        .map(bytes_count)
        .fold((0, 0), |(b, c), (sb, sc)| (b + sb, c + sc))
}

/// Traces deep_leak.c built with these flags: every caller named in order, exact bytes, and
/// the executable walked by the expected method.
fn deep_leak_names_every_caller(output: &str, flags: &[&str], method: &str) {
    require_root();
    let executable = build_workload(&Build {
        source: "deep_leak.c",
        compiler: "gcc",
        flags,
        libs: &[],
        output,
    });
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let stack = stack_from(&report, pid, "alloc_node");
    assert_eq!(
        functions(stack)[..5],
        [
            "alloc_node",
            "build_index",
            "parse_payload",
            "request_handler",
            "main"
        ],
        "{report:#}"
    );
    assert_eq!(bytes_count(stack), (50 * 1000, 50), "{report:#}");
    assert!(stacks_from(&report, pid, "churn").is_empty(), "{report:#}");
    let binaries = process(&report, pid)["unwinding"]
        .as_array()
        .unwrap_or_else(|| panic!("no unwinding methods in the report: {report:#}"));
    let own = binaries
        .iter()
        .find(|b| b["binary"].as_str() == Some(executable.to_str().expect("utf-8 path")))
        .unwrap_or_else(|| panic!("the workload is not in the unwinding list: {report:#}"));
    assert_eq!(own["method"], method, "{report:#}");
    workload.finish();
}

#[test]
fn a_leak_four_calls_deep_without_frame_pointers_names_every_caller_in_order() {
    deep_leak_names_every_caller(
        "deep_leak_omit_frame_pointer",
        &["-fomit-frame-pointer", "-fno-optimize-sibling-calls"],
        "unwind table",
    );
}

#[test]
fn the_same_code_with_frame_pointers_is_walked_by_frame_pointer() {
    deep_leak_names_every_caller(
        "deep_leak_frame_pointer",
        &[
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
        "frame pointers",
    );
}

/// The C++ leaks, built (without frame pointers) against one allocator.
fn cxx_leaks_under(output: &str, libs: &[&str]) {
    require_root();
    let executable = build_workload(&Build {
        source: "cxx_leaks.cc",
        compiler: "g++",
        flags: &["-fno-optimize-sibling-calls"],
        libs,
        output,
    });
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let expected: &[(&str, u64, u64)] = &[
        ("Cache::remember(int)", 30 * 160 + 30 * 500, 60),
        ("Cache::remember_aligned(int)", 10 * 256 + 10 * 300, 20),
        ("make_cycle()", 50 * 232, 50),
        ("fill_vector()", 2048 * 4 + 24, 2),
        ("churn()", 0, 0),
    ];
    for &(site, bytes, count) in expected {
        assert_eq!(
            totals_through(&report, pid, site),
            (bytes, count),
            "{site}: {report:#}"
        );
    }
    for stack in process(&report, pid)["stacks"].as_array().expect("stacks") {
        let frames = functions(stack);
        // The innermost frame of our own code is the leak site, never its caller.
        let own = frames
            .iter()
            .find(|f| !f.starts_with("std::") && !f.starts_with("operator new"))
            .unwrap_or_else(|| panic!("no frame of the program: {report:#}"));
        assert!(
            expected.iter().any(|&(site, ..)| site == own),
            "a leak charged to {own}: {report:#}"
        );
    }
    workload.finish();
}

#[test]
fn cxx_leaks_are_named_demangled_at_their_cxx_call_sites_with_exact_bytes() {
    cxx_leaks_under("cxx_leaks", &[]);
}

#[test]
fn cxx_leaks_are_exact_when_jemalloc_replaces_new_and_delete() {
    cxx_leaks_under("cxx_leaks_jemalloc", &["-Wl,--no-as-needed", "-ljemalloc"]);
}

#[test]
fn cxx_leaks_are_exact_when_tcmalloc_replaces_new_and_delete() {
    cxx_leaks_under("cxx_leaks_tcmalloc", &["-Wl,--no-as-needed", "-ltcmalloc"]);
}

/// The same C leaks, built against one allocator.
fn same_leaks_under(output: &str, compiler: &str, flags: &[&str], libs: &[&str]) {
    same_leaks_under_env(output, compiler, flags, libs, &[]);
}

/// [`same_leaks_under`] with extra environment variables for the workload (LD_PRELOAD).
fn same_leaks_under_env(
    output: &str,
    compiler: &str,
    flags: &[&str],
    libs: &[&str],
    envs: &[(&str, &str)],
) {
    require_root();
    let mut all_flags = vec!["-fno-omit-frame-pointer", "-fno-optimize-sibling-calls"];
    all_flags.extend_from_slice(flags);
    let executable = build_workload(&Build {
        source: "allocator_leaks.c",
        compiler,
        flags: &all_flags,
        libs,
        output,
    });
    let (workload, report) = trace_workload_with_env(&executable, envs);
    let pid = workload.pid;
    let expected: &[(&str, u64, u64)] = &[
        ("leak_with_malloc", 20 * 3000, 20),
        ("leak_with_calloc", 10 * 8 * 100, 10),
        ("leak_with_realloc", 9000, 1),
        ("leak_with_mmap", 3 * 4 * 4096, 3),
        ("churn_and_free", 0, 0),
    ];
    for &(function, bytes, count) in expected {
        assert_eq!(
            function_totals(&report, pid, function),
            (bytes, count),
            "{output}: {function}: {report:#}"
        );
    }
    workload.finish();
}

#[test]
fn leaks_are_exact_under_glibc() {
    same_leaks_under("allocator_leaks_glibc", "gcc", &[], &[]);
}

#[test]
fn leaks_are_exact_under_jemalloc_linked_dynamically() {
    same_leaks_under(
        "allocator_leaks_jemalloc",
        "gcc",
        &[],
        &["-Wl,--no-as-needed", "-ljemalloc"],
    );
}

#[test]
fn leaks_are_exact_under_jemalloc_linked_statically() {
    same_leaks_under(
        "allocator_leaks_jemalloc_static",
        "gcc",
        &[],
        &["-Wl,-Bstatic", "-ljemalloc", "-Wl,-Bdynamic", "-lm", "-ldl"],
    );
}

#[test]
fn leaks_are_exact_under_jemalloc_preloaded() {
    same_leaks_under_env(
        "allocator_leaks_for_jemalloc_preload",
        "gcc",
        &[],
        &[],
        &[("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")],
    );
}

#[test]
fn leaks_are_exact_under_tcmalloc_preloaded() {
    same_leaks_under_env(
        "allocator_leaks_for_tcmalloc_preload",
        "gcc",
        &[],
        &[],
        &[("LD_PRELOAD", "libtcmalloc.so.4")],
    );
}

#[test]
fn leaks_are_exact_under_tcmalloc() {
    same_leaks_under(
        "allocator_leaks_tcmalloc",
        "gcc",
        &[],
        &["-Wl,--no-as-needed", "-ltcmalloc"],
    );
}

#[test]
fn leaks_are_exact_under_mimalloc() {
    same_leaks_under(
        "allocator_leaks_mimalloc",
        "gcc",
        &[],
        &["-Wl,--no-as-needed", "-lmimalloc"],
    );
}

#[test]
fn leaks_are_exact_under_musl_linked_dynamically() {
    same_leaks_under("allocator_leaks_musl", "musl-gcc", &[], &[]);
}

#[test]
fn leaks_are_exact_under_musl_linked_statically() {
    same_leaks_under("allocator_leaks_musl_static", "musl-gcc", &["-static"], &[]);
}

/// A copy of `executable` stripped of .symtab and DWARF (as distributions ship binaries),
/// optionally with a .gnu_debuglink to its debug file placed next to it.
fn stripped(executable: &std::path::Path, name: &str, debuglink: bool) -> std::path::PathBuf {
    let dir = executable.parent().expect("workload dir");
    let out = dir.join(name);
    let debug = dir.join(format!("{name}.debug"));
    let run = |program: &str, args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(status.success(), "{program} {args:?} failed");
    };
    let _ = std::fs::remove_file(&debug);
    run(
        "objcopy",
        &[
            "--only-keep-debug".as_ref(),
            executable.as_os_str(),
            debug.as_os_str(),
        ],
    );
    run(
        "strip",
        &[
            "--strip-all".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            executable.as_os_str(),
        ],
    );
    if debuglink {
        let link = format!("--add-gnu-debuglink={}", debug.display());
        // objcopy records only the file name; the tracer looks for it next to the binary.
        let status = std::process::Command::new("objcopy")
            .arg(&link)
            .arg(&out)
            .current_dir(dir)
            .status()
            .expect("run objcopy");
        assert!(status.success(), "objcopy {link} failed");
    } else {
        std::fs::remove_file(&debug).expect("remove the debug file");
    }
    out
}

/// The (start, end) virtual addresses of a function, from the unstripped build's symbols.
fn function_range(executable: &std::path::Path, function: &str) -> (u64, u64) {
    let output = std::process::Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(executable)
        .output()
        .expect("run nm");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.split_whitespace().nth(3) == Some(function))
        .unwrap_or_else(|| panic!("{function} not in nm output:\n{text}"));
    let mut fields = line.split_whitespace();
    let start = u64::from_str_radix(fields.next().expect("address"), 16).expect("hex");
    let size = u64::from_str_radix(fields.next().expect("size"), 16).expect("hex");
    (start, start + size)
}

/// The innermost frame of the stack that leaked exactly `bytes` in `count` allocations.
fn leak_frame(report: &Value, pid: u32, bytes: u64, count: u64) -> Value {
    let stacks = process(report, pid)["stacks"].as_array().expect("stacks");
    let stack = stacks
        .iter()
        .find(|stack| bytes_count(stack) == (bytes, count))
        .unwrap_or_else(|| panic!("no stack with {bytes} B in {count}: {report:#}"));
    stack["frames"][0].clone()
}

#[test]
fn stripped_binaries_are_named_from_dynsym_or_their_debug_file_else_module_and_offset() {
    require_root();
    let build = |output: &str, flags: &'static [&'static str]| {
        build_workload(&Build {
            source: "allocator_leaks.c",
            compiler: "gcc",
            flags,
            libs: &[],
            output,
        })
    };
    let plain = build("allocator_leaks_symbols", &["-fno-omit-frame-pointer"]);
    let exported = build(
        "allocator_leaks_exported",
        &["-fno-omit-frame-pointer", "-rdynamic"],
    );
    let (start, end) = function_range(&plain, "leak_with_malloc");

    // Nothing left but the dynamic symbols, which do not name the program's own functions:
    // the frame is the module and its offset, inside leak_with_malloc.
    let bare = stripped(&plain, "allocator_leaks_stripped", false);
    let (workload, report) = trace_workload(&bare);
    let frame = leak_frame(&report, workload.pid, 20 * 3000, 20);
    assert!(frame["function"].is_null(), "{frame:#}");
    assert_eq!(frame["module"].as_str(), bare.to_str(), "{frame:#}");
    let offset = frame["module_offset"].as_u64().expect("module offset");
    assert!(
        (start..end).contains(&offset),
        "{offset:#x} not in {start:#x}..{end:#x}: {frame:#}"
    );
    workload.finish();

    // Exported functions are in .dynsym.
    let exported = stripped(&exported, "allocator_leaks_exported_stripped", false);
    let (workload, report) = trace_workload(&exported);
    assert_eq!(
        function_totals(&report, workload.pid, "leak_with_malloc"),
        (20 * 3000, 20),
        "{report:#}"
    );
    workload.finish();

    // A debug file inside the process's own root (a container's debug package, found by build
    // id) gives the names back, with lines. The node's /usr/lib/debug does not have it.
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("debug_root");
    let _ = std::fs::remove_dir_all(&root);
    for library in [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ] {
        let target = root.join(&library[1..]);
        std::fs::create_dir_all(target.parent().expect("library dir")).expect("create lib dir");
        std::fs::copy(library, &target).expect("copy the C library into the root");
    }
    std::fs::create_dir_all(root.join("app")).expect("create the root");
    std::fs::copy(&bare, root.join("app/leak")).expect("install the program");
    let id = build_id(&plain);
    let debug_dir = root.join(format!("usr/lib/debug/.build-id/{}", &id[..2]));
    std::fs::create_dir_all(&debug_dir).expect("create the debug dir");
    let status = std::process::Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&plain)
        .arg(debug_dir.join(format!("{}.debug", &id[2..])))
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy --only-keep-debug failed");
    let mut workload = Workload::start(
        std::path::Path::new("/usr/sbin/chroot"),
        &[root.to_str().expect("utf-8 path"), "/app/leak"],
    );
    let mut trace = Trace::start(&[workload.pid], &["--top", "200"]);
    let done = workload.run_to_done();
    let report = trace.report_after(done);
    let frame = leak_frame(&report, workload.pid, 20 * 3000, 20);
    assert_eq!(frame["function"], "leak_with_malloc", "{report:#}");
    assert!(frame["line"].as_u64().is_some(), "{frame:#}");
    workload.finish();
}

/// A binary's GNU build id, in hex.
fn build_id(executable: &std::path::Path) -> String {
    let output = std::process::Command::new("readelf")
        .arg("-n")
        .arg(executable)
        .output()
        .expect("run readelf");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in {}:\n{text}", executable.display()))
        .trim()
        .to_owned()
}

#[test]
fn a_rust_program_with_jemalloc_linked_in_leaks_exactly() {
    require_root();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads/rust_jemalloc/Cargo.toml");
    let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust_jemalloc");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the Rust workload failed");
    let executable = target_dir.join("release/rust_jemalloc");
    let (workload, report) = trace_workload(&executable);
    let pid = workload.pid;
    let expected: &[(&str, u64, u64)] = &[
        ("rust_jemalloc::leak_buffers", 20 * 3000, 20),
        ("rust_jemalloc::leak_zeroed", 10 * 800, 10),
        ("rust_jemalloc::churn", 0, 0),
    ];
    for &(function, bytes, count) in expected {
        assert_eq!(
            totals_through(&report, pid, function),
            (bytes, count),
            "{function}: {report:#}"
        );
    }
    workload.finish();
}

#[test]
fn a_library_loaded_after_attach_is_unwound_by_its_own_table() {
    require_root();
    let plugin = build_workload(&Build {
        source: "plugin_leak.c",
        compiler: "gcc",
        flags: &[
            "-shared",
            "-fPIC",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
        libs: &[],
        output: "libplugin_leak.so",
    });
    let executable = build_workload(&Build {
        source: "dlopen_leak.c",
        compiler: "gcc",
        flags: &["-fno-omit-frame-pointer"],
        libs: &["-ldl"],
        output: "dlopen_leak",
    });
    let mut workload = Workload::start(&executable, &[plugin.to_str().expect("utf-8 path")]);
    let mut trace = Trace::start(&[workload.pid], &["--top", "200"]);
    workload.send("go");
    let _ = workload.wait_for("loaded");
    // The tracer looks at each process's mappings at every poll (200 ms here).
    std::thread::sleep(std::time::Duration::from_secs(1));
    workload.send("leak");
    let _ = workload.wait_for("done");
    let report = trace.report_after(now_ms());
    let stack = stack_from(&report, workload.pid, "plugin_leaf");
    assert_eq!(
        functions(stack).iter().take(4).collect::<Vec<_>>(),
        ["plugin_leaf", "plugin_mid", "plugin_entry", "main"],
        "{report:#}"
    );
    assert_eq!(bytes_count(stack), (40 * 2000, 40), "{report:#}");
    let loaded = process(&report, workload.pid)["unwinding"]
        .as_array()
        .expect("unwinding")
        .iter()
        .any(|b| b["binary"].as_str() == plugin.to_str() && b["method"] == "unwind table");
    assert!(
        loaded,
        "the plugin is not in the unwinding list: {report:#}"
    );
    workload.finish();
}
