//! Finding what to trace: processes, their cgroups, and the pods and containers those belong
//! to, from the node's own records (no API server needed).

pub mod cgroup_namespace;
pub mod memory;
pub mod node;
pub mod pods;
pub mod process;
pub mod snapshot;
#[cfg(test)]
mod test_log;

pub use tracer_parse::cgroup;
