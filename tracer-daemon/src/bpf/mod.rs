//! The BPF object embedded in this binary: kernel checks, and loading its maps and programs.
//!
//! One table ([`KERNEL_FEATURES`]) says what each part needs from the kernel and what happens
//! without it; [`Probes::load`] checks privileges and features first so a missing one is a
//! clear error, not an EPERM from deep inside a syscall.

pub mod kernel;
pub mod kernel_layout;
pub mod probe_cost;
pub mod program_runs;
pub mod sampling;
pub(crate) mod syscall;
pub mod uprobe_multi;
pub mod uprobes;

#[cfg(test)]
pub mod fake;

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, UProbe},
};
use tracer_common::{KernelLayout, names};
use tracing::{info, warn};
use uprobe_multi::{LinkKind, MultiProgram, RelocatedObject};
use uprobes::{UprobeLinks, UprobePrograms};

use crate::attach::ALLOCATOR_FUNCTIONS;

/// The object built from `tracer-ebpf` by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Environment variable that points the kernel-feature checks at another sysfs root. Only for
/// tests that show the errors a kernel without a feature gives.
pub const SYSFS_ROOT_ENV: &str = "TRACER_SYSFS_ROOT";

/// Something the daemon needs from the kernel.
#[derive(Debug)]
pub struct KernelFeature {
    /// Short name used in messages.
    pub name: &'static str,
    /// File whose presence proves the feature, relative to the sysfs root.
    pub sysfs_path: &'static str,
    /// Which programs need it.
    pub needed_by: &'static str,
    /// What the daemon does without it.
    pub without: &'static str,
    /// Whether the daemon refuses to start without it.
    pub required: bool,
}

/// What each part of the tracer needs from the kernel.
pub const KERNEL_FEATURES: &[KernelFeature] = &[
    KernelFeature {
        name: "uprobes",
        sysfs_path: "bus/event_source/devices/uprobe/type",
        needed_by: "every allocator probe (uprobe/uretprobe on malloc, free, mmap, ...)",
        without: "refuses to start: nothing could be traced (needs CONFIG_UPROBE_EVENTS)",
        required: true,
    },
    KernelFeature {
        name: "BTF",
        sysfs_path: "kernel/btf/vmlinux",
        needed_by: "the OOM-kill hook (tp_btf/mark_victim) and the kernel structure offsets it reads",
        without: "refuses to start (needs CONFIG_DEBUG_INFO_BTF)",
        required: true,
    },
    KernelFeature {
        name: "uprobe_multi links",
        sysfs_path: "kernel/btf/vmlinux",
        needed_by: "attaching the allocator probes with CAP_BPF and CAP_PERFMON alone \
                    (BPF_TRACE_UPROBE_MULTI, Linux 6.6+)",
        without: "runs without them (checked by loading) if it holds CAP_SYS_ADMIN: classic \
                  perf_event uprobes, identical reports (deploy/overlays/kernel-before-6.6 adds \
                  the capability); without CAP_SYS_ADMIN it refuses to start, naming it",
        required: false,
    },
    KernelFeature {
        name: "uprobe sessions",
        sysfs_path: "kernel/btf/vmlinux",
        needed_by: "malloc as one session program (BPF_TRACE_UPROBE_SESSION, Linux 6.10+), so an \
                    unsampled allocation skips its return probe",
        without: "runs without them (checked by loading): classic entry and return probes, \
                  identical reports, sampled mode a little dearer",
        required: false,
    },
    KernelFeature {
        name: "tp_btf/sched_process_exec",
        sysfs_path: "kernel/btf/vmlinux",
        needed_by: "following a traced process into the program it execs: recording stops at \
                    the exec in the kernel, and the daemon re-attaches within milliseconds",
        without: "runs without it (checked by attaching): an exec is noticed at the next poll \
                  (200 ms), and allocations between the exec and the re-attach are not seen",
        required: false,
    },
    KernelFeature {
        name: "tp_btf/mark_victim",
        sysfs_path: "kernel/btf/vmlinux",
        needed_by: "the OOM-kill hook: the victim's pid, rss and cgroups at the moment of the kill",
        without: "runs without it (checked by attaching): OOM kills are still noticed from each \
                  container's memory.events / memory.oom_control counter, without the victim's \
                  pid or rss; fentry on oom_kill_process and kprobes are not used (EPERM and \
                  absent on the kernels this was built on)",
        required: false,
    },
    KernelFeature {
        name: "tp_btf/page_fault_user, page_fault_kernel, rss_stat, mm_page_alloc",
        sysfs_path: "kernel/btf/vmlinux",
        needed_by: "the page-fault growth profile: where processes of watched cgroups make new \
                    anonymous memory resident, by stack, without uprobes (x86 exception \
                    tracepoints; Linux 6.2+ for rss_stat's mm argument layout used here)",
        without: "runs without it (checked by attaching; `FaultHook::Unavailable` says why): \
                  no growth profile, uprobe tracing is unchanged",
        required: false,
    },
];

/// Whether the OOM-kill hook is attached, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OomHook {
    /// tp_btf/mark_victim is attached.
    Attached,
    /// Not attached: OOM kills are only seen through cgroup counters.
    Unavailable(String),
}

/// Whether the page-fault growth profile's programs are attached, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultHook {
    /// `page_fault_user`, `page_fault_kernel`, `rss_stat` and `mm_page_alloc` are attached.
    Attached,
    /// Not attached (none of them is: a partial set would count wrong): no growth profile.
    Unavailable(String),
}

/// Map sizes, set at load (all preallocated, except the unwind-mapping trie).
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Outstanding allocations across all traced processes.
    pub allocations: u32,
    /// Distinct (process, stack) totals.
    pub stack_totals: u32,
    /// Distinct stacks.
    pub stack_traces: u32,
    /// Threads with allocator-call state.
    pub threads: u32,
    /// Ring buffer for mmap/munmap records, bytes (a power of two).
    pub events_bytes: u32,
    /// Unwind-table rows of all binaries without frame pointers that traced processes map.
    pub unwind_rows: u32,
    /// Nodes of the unwind-mapping trie (traced and profiled processes' code mappings, split
    /// into aligned power-of-two blocks: a few hundred per process). Allocated on demand.
    pub unwind_mappings: u32,
    /// cgroups whose page faults are profiled.
    pub watched_cgroups: u32,
    /// Distinct (cgroup, process, stack) entries of the page-fault growth profile.
    pub fault_stacks: u32,
    /// Pages (of all processes) the growth profile remembers, to tell a retouch from new
    /// growth: slots of a direct-mapped table (rounded down to a power of two), where a page
    /// counted later may take an earlier one's slot.
    pub fault_pages: u32,
}

/// Default unwind-mapping trie capacity. A process maps a few dozen code files, each split
/// into up to ~20 trie blocks: a few hundred nodes. The old 65,536 held a couple of hundred
/// processes, enough for traced ones, but every process of a watched cgroup that is profiled
/// gets its mappings too, so the default holds about a thousand. The trie allocates a node
/// (about 100 bytes) per entry on insert, so the capacity costs nothing until used.
pub const DEFAULT_UNWIND_MAPPINGS: u32 = 1 << 18;

/// Default number of watched cgroups: a node runs at most a few hundred pods of a few
/// containers each.
pub const DEFAULT_WATCHED_CGROUPS: u32 = 4096;

/// Default growth-profile capacity: distinct (cgroup, process, stack) entries; 24-byte keys and
/// 48-byte values, preallocated (about 2 MiB).
pub const DEFAULT_FAULT_STACKS: u32 = 1 << 14;

/// Default retouch memory: 131,072 slots (about 512 MiB of small pages, or 256 GiB of huge
/// ones); direct-mapped, one 8-byte word a slot (1 MiB).
pub const DEFAULT_FAULT_PAGES: u32 = 1 << 17;

/// Default capacity for outstanding allocations: a real service holds hundreds of thousands (a
/// 200,000-key Redis about 800,000), so the default holds one such; 112 B of kernel memory each
/// (bpftool's memlock for the preallocated map: 112 MiB, charged to the agent's memory cgroup).
pub const DEFAULT_ALLOCATIONS: u32 = 1 << 20;

/// Default unwind-table capacity: glibc has about 28,000 rows, libstdc++ about 40,000; 16 bytes
/// of kernel memory each (8 MiB).
pub const DEFAULT_UNWIND_ROWS: u32 = 1 << 19;

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            allocations: DEFAULT_ALLOCATIONS,
            stack_totals: 1 << 16,
            stack_traces: 1 << 15,
            threads: 1 << 14,
            events_bytes: 1 << 20,
            unwind_rows: DEFAULT_UNWIND_ROWS,
            unwind_mappings: DEFAULT_UNWIND_MAPPINGS,
            watched_cgroups: DEFAULT_WATCHED_CGROUPS,
            fault_stacks: DEFAULT_FAULT_STACKS,
            fault_pages: DEFAULT_FAULT_PAGES,
        }
    }
}

/// Why the BPF side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary was built without the BPF object (AYA_BUILD_SKIP=1).
    #[error(
        "this binary was built without its BPF object (AYA_BUILD_SKIP=1); rebuild it with the \
         BPF toolchain (`cargo xtask setup`, then `cargo build`)"
    )]
    NoObject,
    /// The process lacks the capabilities to load and attach BPF programs.
    #[error(
        "missing capabilities: {missing}; run as root or grant them all (CAP_BPF, CAP_PERFMON, \
         CAP_SYS_PTRACE, and CAP_SYS_ADMIN on kernels before 6.6; e.g. the DaemonSet's \
         securityContext.capabilities.add)"
    )]
    MissingCapabilities {
        /// Each missing capability with what it is needed for, `;`-separated.
        missing: String,
    },
    /// The kernel lacks a feature the tracer needs.
    #[error("the kernel has no {}: {path} is missing; {} {}", feature.name, feature.needed_by, feature.without)]
    MissingKernelFeature {
        /// Which feature.
        feature: &'static KernelFeature,
        /// The file that proves it.
        path: PathBuf,
    },
    /// The kernel refused the object or one of its maps.
    #[error("failed to load the BPF object")]
    Object(#[source] Box<aya::EbpfError>),
    /// A map is missing from the object.
    #[error("the BPF object has no map {name}")]
    MissingMap {
        /// Map name.
        name: &'static str,
    },
    /// A map could not be written.
    #[error("cannot fill BPF map {name}")]
    Map {
        /// Map name.
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The kernel refused a program loaded with raw `bpf()` calls (the reason ends with the
    /// verifier log's tail).
    #[error("failed to load BPF program {name}: {reason}")]
    Refused {
        /// Program name.
        name: &'static str,
        /// The kernel's answer.
        reason: String,
    },
    /// The kernel refused a program (the verifier log is in the source).
    #[error("failed to load BPF program {name}")]
    Program {
        /// Program name.
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// The capabilities the daemon needs, each with what needs it. Found by test on Linux 6.18 as
/// a non-root user (tests/least_privilege.rs runs the daemon with exactly the DaemonSet's list
/// and with each one dropped): CAP_DAC_READ_SEARCH, CAP_SYS_RESOURCE and the rest are not
/// needed, nor is CAP_SYS_ADMIN where the kernel has uprobe_multi links
/// ([`SYS_ADMIN_FOR_PERF_EVENT_UPROBES`]).
pub const REQUIRED_CAPABILITIES: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "loading BPF programs and creating maps"),
    (
        38,
        "CAP_PERFMON",
        "tracing programs and the OOM-kill tracepoint",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "reading other users' /proc/PID/maps and files under /proc/PID/root",
    ),
];

/// CAP_SYS_ADMIN, needed only where allocator probes are classic perf_event uprobes: the kernel
/// refuses `perf_event_open` of its uprobe PMU with CAP_PERFMON alone.
pub const SYS_ADMIN_FOR_PERF_EVENT_UPROBES: (u32, &str, &str) = (
    21,
    "CAP_SYS_ADMIN",
    "perf_event_open of the kernel's uprobe PMU, which attaches the allocator probes where \
     uprobe_multi links are unavailable (kernels before 6.6: deploy/overlays/kernel-before-6.6 \
     adds it)",
);

/// The uprobe programs tracing loads: each entry and return program that
/// [`ALLOCATOR_FUNCTIONS`] names, once, in the order it first names them. Program names are
/// spelled there and in tracer-ebpf, nowhere else.
pub fn tracing_programs() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for function in ALLOCATOR_FUNCTIONS {
        for name in std::iter::once(function.entry).chain(function.exit) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Empty programs at a function's entry and return (tracer-ebpf's `floor`): what a probe hit
/// costs the kernel alone, for benchmarks. Loaded only when a benchmark asks for them
/// ([`Probes::load_floor_programs`]): an agent never has them verified or in the kernel.
pub const FLOOR_ENTRY_PROGRAM: &str = "floor_enter";
/// See [`FLOOR_ENTRY_PROGRAM`].
pub const FLOOR_EXIT_PROGRAM: &str = "floor_exit";

/// What [`Probes::load`] loads besides the maps, and how.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// The sampling mean a process is armed with (0: exact).
    pub sample_bytes: u64,
    /// Use uprobe sessions where the kernel has them.
    pub sessions: bool,
    /// How allocator probes are attached.
    pub uprobe_links: UprobeLinks,
    /// Load and attach the page-fault growth profile's programs.
    pub fault_profile: bool,
    /// The growth profile records one new page in this many.
    pub fault_sample_pages: u32,
}

/// The loaded object. Maps are taken out of it by `collect`; programs stay here.
pub struct Probes {
    pub(crate) ebpf: Ebpf,
    /// Whether OOM kills are seen at the kernel hook.
    pub oom_hook: OomHook,
    /// Whether the page-fault growth profile is recorded.
    pub fault_hook: FaultHook,
    /// Whether execs of traced processes are seen at the kernel hook (else at the next poll).
    pub exec_hook: bool,
    /// The allocator probes' programs, and whether their links are uprobe_multi or perf_event
    /// ones (see [`uprobes`]).
    pub(crate) uprobe_programs: UprobePrograms,
    /// The object relocated against this object's maps, for programs loaded with raw `bpf()`
    /// calls later (the benchmarks' floor programs).
    relocated: Option<RelocatedObject>,
    /// malloc as a uprobe session, where the kernel has them (see [`uprobe_multi`]).
    pub(crate) malloc_session: Option<MultiProgram>,
    /// Why sessions are not used, when they are not.
    pub sessions_unavailable: Option<String>,
    /// Forwards the programs' rare log lines (aya-log) to this process's log.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The sampling mean a process is armed with (`--sample-bytes`; 0: exact).
    pub(crate) sample_bytes: u64,
    /// Processes the overhead budget switched to sampling, with their mean: kept when one is
    /// armed again after an exec.
    pub(crate) sampled_processes: std::collections::HashMap<u32, u64>,
}

impl Probes {
    /// Checks privileges and kernel features, then loads the object and every program tracing
    /// uses (not the benchmarks' empty ones: see [`Self::load_floor_programs`]).
    pub fn load(sizes: &MapSizes, options: &LoadOptions) -> Result<Self, LoadError> {
        let &LoadOptions {
            sample_bytes,
            sessions,
            uprobe_links,
            fault_profile,
            fault_sample_pages,
        } = options;
        check_capabilities()?;
        check_kernel_features()?;
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let daemon_tgid = std::process::id();
        let page_size = page_size();
        let btf_path = sysfs_root().join("kernel/btf/vmlinux");
        let layout = kernel_layout::resolve(&btf_path).unwrap_or_else(|error| {
            warn!(
                %error,
                "kernel layout unknown: OOM kills will name no victim, and a stack walked while \
                 a return probe is pending shows its trampoline for the caller"
            );
            KernelLayout::default()
        });
        let fault_page_slots = fault_page_slots(sizes.fault_pages);
        let fault_page_slots_mask = fault_page_slots - 1;
        let fault_sample_shift = fault_sample_shift(fault_sample_pages);
        let fault_sample_key = fault_sample_key();
        let mut loader = EbpfLoader::new();
        let _ = loader
            .override_global(names::GLOBAL_DAEMON_TGID, &daemon_tgid, true)
            .override_global(names::GLOBAL_PAGE_SIZE, &page_size, true)
            .override_global(names::GLOBAL_KERNEL_LAYOUT, &layout, true)
            .override_global(
                names::GLOBAL_FAULT_PAGE_SLOTS_MASK,
                &fault_page_slots_mask,
                true,
            )
            .override_global(names::GLOBAL_FAULT_SAMPLE_SHIFT, &fault_sample_shift, true)
            .override_global(names::GLOBAL_FAULT_SAMPLE_KEY, &fault_sample_key, true)
            .map_max_entries(names::ALLOCS, sizes.allocations)
            .map_max_entries(names::STACK_TOTALS, sizes.stack_totals)
            .map_max_entries(names::STACK_SLOTS, sizes.stack_totals)
            .map_max_entries(names::FREE_STACK_SLOTS, sizes.stack_totals)
            .map_max_entries(names::STACK_TRACES, sizes.stack_traces)
            .map_max_entries(names::THREAD_STATE, sizes.threads)
            .map_max_entries(names::UNWIND_ENTRIES, sizes.unwind_rows.max(1))
            .map_max_entries(names::UNWIND_MAPPINGS, sizes.unwind_mappings.max(1))
            .map_max_entries(names::WATCHED_CGROUPS, sizes.watched_cgroups.max(1))
            .map_max_entries(names::FAULT_PROFILE, sizes.fault_stacks.max(1))
            .map_max_entries(names::FAULT_PAGES, fault_page_slots)
            .map_max_entries(names::EVENTS, sizes.events_bytes.next_power_of_two());
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::warn!(%error, "BPF log lines will not be shown");
                None
            }
        };
        let relocated = {
            let logs: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = logger
                .as_ref()
                .map(|l| vec![("AYA_LOGS", std::os::fd::AsFd::as_fd(l))])
                .unwrap_or_default();
            RelocatedObject::new(OBJECT, &ebpf, &logs)
        };
        let multi = relocated
            .as_ref()
            .map_err(String::clone)
            .and_then(|object| {
                UprobePrograms::load_multi(object, &tracing_programs(), uprobe_links)
            });
        let uprobe_programs = match multi {
            Ok(programs) => {
                info!(
                    "allocator probes attach through uprobe_multi links (Linux 6.6+): \
                     CAP_SYS_ADMIN is not needed"
                );
                UprobePrograms::Multi(programs)
            }
            Err(reason) => {
                warn!(
                    %reason,
                    "uprobe_multi links unavailable; allocator probes attach through perf_event \
                     uprobes, which need CAP_SYS_ADMIN"
                );
                check_sys_admin_for_perf_event_uprobes(&reason)?;
                for name in tracing_programs() {
                    load_uprobe(&mut ebpf, name)?;
                }
                UprobePrograms::PerfEvent
            }
        };
        sampling::fill_tables(&mut ebpf)?;
        let btf = Btf::from_sys_fs();
        let exec_hook = match attach_btf_hook(
            &mut ebpf,
            btf.as_ref(),
            EXEC_PROGRAM,
            "sched_process_exec",
        ) {
            Ok(()) => true,
            Err(reason) => {
                warn!(%reason, "exec hook unavailable; a traced process that execs is re-attached at the next poll");
                false
            }
        };
        let oom_hook = match attach_btf_hook(&mut ebpf, btf.as_ref(), OOM_PROGRAM, "mark_victim") {
            Ok(()) => OomHook::Attached,
            Err(reason) => {
                warn!(%reason, "OOM-kill hook unavailable; OOM kills are seen from cgroup counters only");
                OomHook::Unavailable(reason)
            }
        };
        // Verifying the fault programs takes seconds on a busy node (they carry the stack
        // walker); only the agent, which watches pods, loads them.
        let fault_hook = if !fault_profile {
            FaultHook::Unavailable("not loaded: only the node agent profiles page faults".into())
        } else {
            match attach_fault_hooks(&mut ebpf, btf.as_ref()) {
                Ok(()) => FaultHook::Attached,
                Err(reason) => {
                    warn!(%reason, "page-fault growth profile unavailable; uprobe tracing is unaffected");
                    FaultHook::Unavailable(reason)
                }
            }
        };
        let (malloc_session, sessions_unavailable) = if sessions {
            let session = relocated
                .as_ref()
                .map_err(String::clone)
                .and_then(|object| object.load("malloc_session", LinkKind::Session));
            match session {
                Ok(program) => {
                    info!("uprobe sessions available: an unsampled malloc skips its return probe");
                    (Some(program), None)
                }
                Err(reason) => {
                    warn!(%reason, "uprobe sessions unavailable; using classic return probes");
                    (None, Some(reason))
                }
            }
        } else {
            (None, Some("disabled (--uprobe-sessions off)".to_owned()))
        };
        Ok(Self {
            ebpf,
            oom_hook,
            fault_hook,
            exec_hook,
            uprobe_programs,
            relocated: relocated.ok(),
            malloc_session,
            sessions_unavailable,
            logger,
            sample_bytes,
            sampled_processes: std::collections::HashMap::new(),
        })
    }

    /// Loads the empty benchmark programs ([`FLOOR_ENTRY_PROGRAM`], [`FLOOR_EXIT_PROGRAM`]),
    /// unless they already are.
    pub fn load_floor_programs(&mut self) -> Result<(), LoadError> {
        self.load_uprobes(&[FLOOR_ENTRY_PROGRAM, FLOOR_EXIT_PROGRAM])
    }

    /// Unloads the empty benchmark programs (once their links are gone).
    pub fn unload_floor_programs(&mut self) {
        self.unload_uprobes(&[FLOOR_ENTRY_PROGRAM, FLOOR_EXIT_PROGRAM]);
    }

    /// Moves any pending BPF log lines to the log.
    pub(crate) fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// Loads one uprobe program of the object (the verifier runs here); a loaded one stays as it is.
fn load_uprobe(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    let error = |source: aya::programs::ProgramError| LoadError::Program {
        name,
        source: Box::new(source),
    };
    let program: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or_else(|| error(aya::programs::ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(error)?;
    match program.load() {
        Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        Err(source) => Err(error(source)),
    }
}

/// The program on the kernel's OOM path (see [`KERNEL_FEATURES`] for the fallback).
const OOM_PROGRAM: &str = "oom_mark_victim";

/// The program that follows traced processes into the programs they exec.
const EXEC_PROGRAM: &str = "process_exec";

fn attach_btf_hook(
    ebpf: &mut Ebpf,
    btf: Result<&Btf, &aya::BtfError>,
    program: &str,
    function: &str,
) -> Result<(), String> {
    let btf = btf.map_err(|e| format!("cannot read the kernel's BTF: {e}"))?;
    let loaded: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("the object has no program {program}"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    loaded
        .load(function, btf)
        .map_err(|e| format!("cannot load tp_btf/{function}: {e}"))?;
    let _link = loaded
        .attach()
        .map_err(|e| format!("cannot attach tp_btf/{function}: {e}"))?;
    info!("attached tp_btf/{function}");
    Ok(())
}

/// The growth profile's sampling period, in pages, unless configured: one new page in 16 is
/// recorded (weighted 16). Measured with `cargo xtask bench --suite always-on` (BENCHMARKS.md,
/// "Always-on watching"): recording a page (stack, profile, retouch table) costs several
/// hundred ns on a fault of about 2 us, so recording every one cost a watched process that
/// touches new memory 1.5-1.7x; at one in 16 that cost is spread over 16 faults.
pub const DEFAULT_FAULT_SAMPLE_PAGES: u32 = 16;

/// Largest sampling period accepted.
pub const MAX_FAULT_SAMPLE_PAGES: u32 = 1 << 16;

/// log2 of the sampling period used for a configured one (see [`fault_sample_period`]).
fn fault_sample_shift(pages: u32) -> u32 {
    pages.clamp(1, MAX_FAULT_SAMPLE_PAGES).ilog2()
}

/// The sampling period used for a configured one: a power of two from 1 to
/// [`MAX_FAULT_SAMPLE_PAGES`] (others are rounded down to one; 0 is taken as 1).
pub fn fault_sample_period(pages: u32) -> u32 {
    1 << fault_sample_shift(pages)
}

/// A random key for the page sampling: which pages are kept changes with every load, so no
/// address pattern is kept or skipped systematically.
fn fault_sample_key() -> u64 {
    use std::hash::BuildHasher as _;
    std::hash::RandomState::new().hash_one(std::process::id())
}

/// `FAULT_PAGES`'s slots for a configured page count: the largest power of two not above it
/// (the programs mask a hash with the count minus one).
fn fault_page_slots(pages: u32) -> u32 {
    1 << pages.max(1).ilog2()
}

/// The growth profile's programs and their tracepoints, in attach order: the rss and page
/// allocation hooks first, so no fault is left pending for lack of them.
const FAULT_PROGRAMS: [(&str, &str); 4] = [
    ("fault_rss_stat", "rss_stat"),
    ("fault_page_alloc", "mm_page_alloc"),
    ("fault_user", "page_fault_user"),
    ("fault_kernel", "page_fault_kernel"),
];

/// Attaches all of the growth profile's programs, or none (a partial set would count wrong:
/// without `mm_page_alloc` a huge page would count as one page).
fn attach_fault_hooks(ebpf: &mut Ebpf, btf: Result<&Btf, &aya::BtfError>) -> Result<(), String> {
    let btf = btf.map_err(|e| format!("cannot read the kernel's BTF: {e}"))?;
    let mut attached_btf = Vec::new();
    let mut result = Ok(());
    for (program, function) in FAULT_PROGRAMS {
        let step = (|| {
            let loaded: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("the object has no program {program}"))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            loaded
                .load(function, btf)
                .map_err(|e| format!("cannot load tp_btf/{function}: {e}"))?;
            loaded
                .attach()
                .map_err(|e| format!("cannot attach tp_btf/{function}: {e}"))
        })();
        match step {
            Ok(link) => attached_btf.push((program, link)),
            Err(reason) => {
                result = Err(reason);
                break;
            }
        }
    }
    if result.is_err() {
        for (program, link) in attached_btf {
            if let Some(Ok(loaded)) = ebpf
                .program_mut(program)
                .map(<&mut BtfTracePoint>::try_from)
            {
                let _ = loaded.detach(link);
            }
        }
    } else {
        info!(
            "attached the page-fault growth profile (tp_btf/page_fault_user, page_fault_kernel, rss_stat, mm_page_alloc)"
        );
    }
    result
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

fn sysfs_root() -> PathBuf {
    std::env::var_os(SYSFS_ROOT_ENV).map_or_else(|| PathBuf::from("/sys"), PathBuf::from)
}

/// Fails with the first feature the kernel lacks.
pub fn check_kernel_features() -> Result<(), LoadError> {
    let root = sysfs_root();
    for feature in KERNEL_FEATURES.iter().filter(|f| f.required) {
        let path = root.join(feature.sysfs_path);
        if !path.exists() {
            return Err(LoadError::MissingKernelFeature { feature, path });
        }
    }
    Ok(())
}

/// Fails when the effective capability set lacks one of [`REQUIRED_CAPABILITIES`], naming each
/// missing one and what needs it.
pub fn check_capabilities() -> Result<(), LoadError> {
    let effective = effective_capabilities(Path::new("/proc/self/status")).unwrap_or(u64::MAX);
    let missing: Vec<String> = REQUIRED_CAPABILITIES
        .iter()
        .filter(|&&(bit, _, _)| effective & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} (for {why})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::MissingCapabilities {
            missing: missing.join("; "),
        })
    }
}

/// Refuses to go on with perf_event uprobes (`why`: why not uprobe_multi links) without
/// CAP_SYS_ADMIN, naming it: every attach would fail with EACCES.
fn check_sys_admin_for_perf_event_uprobes(why: &str) -> Result<(), LoadError> {
    let effective = effective_capabilities(Path::new("/proc/self/status")).unwrap_or(u64::MAX);
    let (bit, name, needed_for) = SYS_ADMIN_FOR_PERF_EVENT_UPROBES;
    if effective & (1 << bit) != 0 {
        return Ok(());
    }
    Err(LoadError::MissingCapabilities {
        missing: format!("{name} (for {needed_for}; uprobe_multi is unavailable here: {why})"),
    })
}

/// The `CapEff` mask of a /proc status file; `None` when it cannot be read.
fn effective_capabilities(status: &Path) -> Option<u64> {
    let text = fs::read_to_string(status).ok()?;
    let line = text.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod fault_page_tests {
    use tracer_common::fault_page_tag;

    use super::fault_page_slots;

    #[test]
    fn fault_page_slots_are_the_largest_power_of_two_that_fits() {
        assert_eq!(fault_page_slots(1 << 17), 1 << 17);
        assert_eq!(fault_page_slots((1 << 17) + 5), 1 << 17);
        assert_eq!(fault_page_slots(100_000), 1 << 16);
        assert_eq!(fault_page_slots(0), 1);
    }

    #[test]
    fn a_fault_page_tag_names_its_process_and_page_whole() {
        let (tag, _) = fault_page_tag(42, 0x7f00_0000_1000).expect("user page");
        assert_ne!(tag, 0, "0 is an empty slot");
        assert_ne!(Some(tag), fault_page_tag(43, 0x7f00_0000_1000).map(|t| t.0));
        assert_ne!(Some(tag), fault_page_tag(42, 0x7f00_0000_2000).map(|t| t.0));
        // The largest pid (pid_max is at most 2^22) and the last 4-level user page.
        let (last, _) = fault_page_tag((1 << 22) - 1, (1 << 48) - 4096).expect("user page");
        assert_ne!(last, 0);
        assert_eq!(fault_page_tag(1, 1 << 48), None, "above 4-level user space");
        // Consecutive pages spread over the slots.
        let slots: std::collections::HashSet<u32> = (0..1024u64)
            .filter_map(|i| fault_page_tag(7, 0x5555_0000_0000 + i * 4096))
            .map(|(_, slot)| slot & ((1 << 17) - 1))
            .collect();
        assert!(slots.len() > 1000, "{} distinct slots", slots.len());
    }
}
