//! Empty programs, attached at exactly the points the tracer uses, to measure the kernel's
//! own cost of a probe hit (the floor no tracer can go below). Used by `cargo xtask bench`
//! (`trace --empty-programs`, `probe-cost`), the only paths on which the daemon loads them.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

#[uprobe]
pub fn floor_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn floor_exit(_ctx: RetProbeContext) -> u32 {
    0
}
