//! The parsers of everything the node agent reads from outside itself: files under /proc
//! (`/proc/PID/cgroup`, `/proc/PID/maps`, `/proc/self/mountinfo`) and /sys/fs/cgroup (memory
//! figures), the kubelet's pod and container log directory names, selectors (from the API and
//! tracerctl's command line), pod selection globs, the config file and `--listen` addresses.
//!
//! Pure functions of text and bytes: no I/O, no kernel, gRPC or storage dependencies. The
//! daemon reads the files and calls these; `fuzz/` fuzzes them without building the daemon.
//! Real-format inputs live in `src/fixtures/`.

pub mod cgroup;
pub mod cgroup_namespace;
pub mod config;
pub mod kubelet_logs;
pub mod listen;
pub mod memory;
pub mod proc_maps;
pub mod select;
pub mod selector;
