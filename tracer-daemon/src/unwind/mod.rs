//! Stacks without frame pointers: each binary's `.eh_frame` compiled into a compact unwind
//! table (`table`), loaded into the BPF maps the return probes walk (`maps`).

pub mod loader;
pub mod table;
