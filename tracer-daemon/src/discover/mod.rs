//! Finding what to trace: processes (and, for the node agent, their cgroups and pods).

pub mod process;
