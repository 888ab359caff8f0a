//! The leak tracer's node agent: discovers processes, attaches allocator probes, collects what
//! the kernel recorded, symbolizes and ranks leak sites.
//!
//! Data flows through the modules in this order: `discover` → `attach` → `collect` →
//! `symbolize` → `report`; `tracer` ties them together and `cli` drives it.

pub mod attach;
pub mod bpf;
pub mod cli;
pub mod collect;
pub mod discover;
pub mod report;
pub mod symbolize;
pub mod tracer;
