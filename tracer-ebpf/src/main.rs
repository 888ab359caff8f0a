//! BPF programs of the leak tracer: uprobes on the allocator a traced process really uses.
//!
//! Every program is a thin entry point over a function in the module that owns its hook; maps
//! live in `maps`, loss counters in `stats`. Nothing here may panic: the panic handler is an
//! endless loop, so a reachable panic fails verification instead of hiding.
#![no_std]
#![no_main]
// Atomic adds on map values (core's atomics lack read-modify-write on this target).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on bpfel"
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference: a by-value key is one more copy on the 512-byte BPF stack"
)]
#![expect(
    unreachable_pub,
    reason = "program entry points are `pub fn` as aya's macros expect; nothing else is pub"
)]

mod armed;
mod config;
mod fault;
mod floor;
mod heap;
mod maps;
mod mmap;
mod oom;
mod probes;
mod sampling;
mod session;
mod stack;
mod stats;
mod thread_state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
