//! Every allocator entry point the probes know: the C library's malloc family, C++'s operator
//! new and delete, and the non-standard APIs of jemalloc (also its `je_` prefixed builds and
//! Rust's `_rjem_` build) and mimalloc. Each names the BPF programs that trace it; several
//! share one pair of programs because their arguments sit in the same registers. The daemon
//! loads the programs named here (`bpf::tracing_programs`), so a program's name is spelled
//! here and in tracer-ebpf only.

use iced_x86::Register;

use crate::attach::placement::ProbeNeeds;

/// When a function is probed at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeRule {
    /// Wherever the process's symbol lookup finds it.
    Always,
    /// Only in the file that also serves `malloc`. C++'s operator delete in libstdc++ just
    /// calls `free`, which is probed already (probing both would count every delete twice as
    /// an unknown free); an allocator that replaces delete (tcmalloc, jemalloc, mimalloc, or a
    /// static binary) frees without going through `free`.
    WithMalloc,
}

/// One allocator function and the programs that trace it.
#[derive(Debug)]
pub struct AllocatorFunction {
    /// Symbol name (mangled for C++).
    pub symbol: &'static str,
    /// Program at the function's entry.
    pub entry: &'static str,
    /// Program at its return, if the result is needed.
    pub exit: Option<&'static str>,
    /// Whether tracing is impossible without it.
    pub required: bool,
    /// Argument registers its entry program reads.
    pub reads: &'static [Register],
    /// Whether a call with a NULL first argument records nothing.
    pub null_first_arg_needs_no_record: bool,
    /// When it is probed.
    pub rule: ProbeRule,
}

impl AllocatorFunction {
    /// What its probes need, for placement. mmap and munmap read their return address (to
    /// tell the allocator's own calls from the program's), so like functions with a return
    /// probe they need the stack pointer untouched before the probe.
    pub fn needs(&self) -> ProbeNeeds {
        ProbeNeeds {
            reads: self.reads,
            has_return: self.exit.is_some() || matches!(self.symbol, "mmap" | "munmap"),
            null_first_arg_needs_no_record: self.null_first_arg_needs_no_record,
        }
    }
}

const RDI: &[Register] = &[Register::RDI];
const RDI_RSI: &[Register] = &[Register::RDI, Register::RSI];

/// An allocation whose size is the first argument and whose result is the block.
const fn malloc_like(symbol: &'static str) -> AllocatorFunction {
    function(symbol, "malloc_enter", Some("alloc_exit"), RDI)
}

/// A free of the block in the first argument.
const fn free_like(symbol: &'static str, rule: ProbeRule) -> AllocatorFunction {
    AllocatorFunction {
        null_first_arg_needs_no_record: true,
        rule,
        ..function(symbol, "free_enter", None, RDI)
    }
}

const fn function(
    symbol: &'static str,
    entry: &'static str,
    exit: Option<&'static str>,
    reads: &'static [Register],
) -> AllocatorFunction {
    AllocatorFunction {
        symbol,
        entry,
        exit,
        required: false,
        reads,
        null_first_arg_needs_no_record: false,
        rule: ProbeRule::Always,
    }
}

/// Every function traced, in preference order (when two symbols share an address, the first is
/// the one probed: probing both would count each call twice).
pub const ALLOCATOR_FUNCTIONS: &[AllocatorFunction] = &[
    AllocatorFunction {
        required: true,
        ..malloc_like("malloc")
    },
    AllocatorFunction {
        required: true,
        ..free_like("free", ProbeRule::Always)
    },
    function("calloc", "calloc_enter", Some("alloc_exit"), RDI_RSI),
    function("realloc", "realloc_enter", Some("alloc_exit"), RDI_RSI),
    function(
        "reallocarray",
        "reallocarray_enter",
        Some("alloc_exit"),
        &[Register::RDI, Register::RSI, Register::RDX],
    ),
    function(
        "posix_memalign",
        "posix_memalign_enter",
        Some("alloc_exit"),
        &[Register::RDI, Register::RDX],
    ),
    function(
        "memalign",
        "memalign_enter",
        Some("alloc_exit"),
        &[Register::RSI],
    ),
    function(
        "aligned_alloc",
        "aligned_alloc_enter",
        Some("alloc_exit"),
        &[Register::RSI],
    ),
    function("valloc", "valloc_enter", Some("alloc_exit"), RDI),
    function("pvalloc", "pvalloc_enter", Some("alloc_exit"), RDI),
    // mmap's flags are its fourth argument: %rcx in the C calling convention.
    function(
        "mmap",
        "mmap_enter",
        Some("mmap_exit"),
        &[Register::RSI, Register::RCX],
    ),
    function("munmap", "munmap_enter", None, RDI_RSI),
    // C++ operator new: size first in every variant (plain, nothrow, aligned). Probed for
    // attribution: its return probe sees the C++ call site, which a probe on the malloc it
    // calls cannot (libstdc++'s operator new keeps no frame pointer). The nested malloc only
    // moves the thread's depth.
    malloc_like("_Znwm"),
    malloc_like("_Znam"),
    malloc_like("_ZnwmRKSt9nothrow_t"),
    malloc_like("_ZnamRKSt9nothrow_t"),
    malloc_like("_ZnwmSt11align_val_t"),
    malloc_like("_ZnamSt11align_val_t"),
    malloc_like("_ZnwmSt11align_val_tRKSt9nothrow_t"),
    malloc_like("_ZnamSt11align_val_tRKSt9nothrow_t"),
    // C++ operator delete: the block first in every variant (plain, sized, aligned, nothrow).
    free_like("_ZdlPv", ProbeRule::WithMalloc),
    free_like("_ZdaPv", ProbeRule::WithMalloc),
    free_like("_ZdlPvm", ProbeRule::WithMalloc),
    free_like("_ZdaPvm", ProbeRule::WithMalloc),
    free_like("_ZdlPvSt11align_val_t", ProbeRule::WithMalloc),
    free_like("_ZdaPvSt11align_val_t", ProbeRule::WithMalloc),
    free_like("_ZdlPvmSt11align_val_t", ProbeRule::WithMalloc),
    free_like("_ZdaPvmSt11align_val_t", ProbeRule::WithMalloc),
    free_like("_ZdlPvRKSt9nothrow_t", ProbeRule::WithMalloc),
    free_like("_ZdaPvRKSt9nothrow_t", ProbeRule::WithMalloc),
    free_like("_ZdlPvSt11align_val_tRKSt9nothrow_t", ProbeRule::WithMalloc),
    free_like("_ZdaPvSt11align_val_tRKSt9nothrow_t", ProbeRule::WithMalloc),
    // jemalloc's own API: mallocx(size, flags), rallocx(ptr, size, flags), dallocx(ptr, flags),
    // sdallocx(ptr, size, flags).
    malloc_like("mallocx"),
    function("rallocx", "realloc_enter", Some("alloc_exit"), RDI_RSI),
    free_like("dallocx", ProbeRule::Always),
    free_like("sdallocx", ProbeRule::Always),
    // jemalloc built with a prefix (--with-jemalloc-prefix=je_): the program calls these
    // directly, next to the C library's own malloc.
    malloc_like("je_malloc"),
    free_like("je_free", ProbeRule::Always),
    function("je_calloc", "calloc_enter", Some("alloc_exit"), RDI_RSI),
    function("je_realloc", "realloc_enter", Some("alloc_exit"), RDI_RSI),
    function(
        "je_posix_memalign",
        "posix_memalign_enter",
        Some("alloc_exit"),
        &[Register::RDI, Register::RDX],
    ),
    function(
        "je_aligned_alloc",
        "aligned_alloc_enter",
        Some("alloc_exit"),
        &[Register::RSI],
    ),
    malloc_like("je_mallocx"),
    function("je_rallocx", "realloc_enter", Some("alloc_exit"), RDI_RSI),
    free_like("je_dallocx", ProbeRule::Always),
    free_like("je_sdallocx", ProbeRule::Always),
    // Rust's tikv-jemallocator builds jemalloc into the executable with the `_rjem_` prefix
    // and calls these (malloc/calloc/realloc when the alignment is the default, the *x
    // variants otherwise, sdallocx to free).
    malloc_like("_rjem_malloc"),
    function("_rjem_calloc", "calloc_enter", Some("alloc_exit"), RDI_RSI),
    function(
        "_rjem_realloc",
        "realloc_enter",
        Some("alloc_exit"),
        RDI_RSI,
    ),
    malloc_like("_rjem_mallocx"),
    function(
        "_rjem_rallocx",
        "realloc_enter",
        Some("alloc_exit"),
        RDI_RSI,
    ),
    free_like("_rjem_free", ProbeRule::Always),
    free_like("_rjem_dallocx", ProbeRule::Always),
    free_like("_rjem_sdallocx", ProbeRule::Always),
    // mimalloc's API, for programs that call it without overriding malloc (Rust's mimalloc
    // crate calls the aligned variants: size first, then alignment).
    malloc_like("mi_malloc"),
    free_like("mi_free", ProbeRule::Always),
    function("mi_calloc", "calloc_enter", Some("alloc_exit"), RDI_RSI),
    function("mi_realloc", "realloc_enter", Some("alloc_exit"), RDI_RSI),
    malloc_like("mi_zalloc"),
    malloc_like("mi_malloc_aligned"),
    malloc_like("mi_zalloc_aligned"),
    function(
        "mi_realloc_aligned",
        "realloc_enter",
        Some("alloc_exit"),
        RDI_RSI,
    ),
];
