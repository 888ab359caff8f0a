//! Attaching the allocator probes to one process, on the library file it really maps.
//! `placement` decides where in each function a probe lands.
//!
//! The allocator is the first mapped ELF file (executable first, then libraries in load order,
//! as the dynamic linker resolves symbols) that defines `malloc`. Each function's probe goes at
//! its file offset in that file, opened through /proc/PID/root so a container's own libc is
//! hooked. Probes are per process: only the traced process pays for them.

pub mod closer;
pub mod functions;
mod lookup_order;
pub mod placement;

pub use functions::{ALLOCATOR_FUNCTIONS, AllocatorFunction, ProbeRule};

use std::{collections::HashMap, fmt::Write as _, path::PathBuf, sync::Arc};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use tracing::{debug, warn};

use tracer_common::{AllocatorText, ArmedProcess, names};

use crate::{
    attach::closer::DetachedLinks,
    attach::placement::{Placement, PlacementMode},
    bpf::{
        FLOOR_ENTRY_PROGRAM, FLOOR_EXIT_PROGRAM, LoadError, Probes,
        uprobe_multi::Placement as LinkPlacement,
        uprobes::{ProbeLink, UprobeError},
    },
    discover::{
        process::{self, ProcessError},
        snapshot::{MappedFile, ProcessSnapshot},
    },
};

/// Why a process could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The process could not be inspected.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// No mapped file defines malloc.
    #[error("process {pid} maps no ELF file that defines malloc (checked: {checked}): {why}")]
    NoAllocator {
        /// The pid.
        pid: u32,
        /// Files that were searched.
        checked: String,
        /// What the program is instead, and what that means.
        why: String,
    },
    /// The process is one the tracer cannot or must not trace.
    #[error("process {pid} cannot be traced: {reason}")]
    Unsupported {
        /// The pid.
        pid: u32,
        /// Why, and what to do.
        reason: String,
    },
    /// The allocator library lacks a function the tracer cannot do without.
    #[error("library {library} of process {pid} has no symbol {symbol}")]
    MissingSymbol {
        /// The pid.
        pid: u32,
        /// The library path.
        library: String,
        /// The missing function.
        symbol: &'static str,
    },
    /// The process could not be armed for recording (its probes were detached again).
    #[error("cannot arm process {pid} for recording")]
    Arm {
        /// The pid.
        pid: u32,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The benchmarks' empty programs could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The kernel refused a uprobe.
    #[error("failed to attach {program} to {} in process {pid}", path.display())]
    Uprobe {
        /// The pid.
        pid: u32,
        /// The program.
        program: &'static str,
        /// The file probed.
        path: PathBuf,
        #[source]
        source: Box<UprobeError>,
    },
}

/// Where each allocator function of a process lives.
#[derive(Clone, Debug)]
pub struct AllocatorLibrary {
    /// The file serving `malloc` (library or executable), as the process sees it.
    pub path: String,
    /// The same file as the daemon opens it.
    pub host_path: PathBuf,
    /// Functions found, with the file serving each and its offset there.
    pub functions: Vec<PlannedProbe>,
    /// The code of the file serving `malloc` in the process (start, end), when its mapping
    /// was found and it is a library (not the executable itself).
    pub text_range: Option<(u64, u64)>,
}

/// One function to probe.
#[derive(Clone, Debug)]
pub struct PlannedProbe {
    /// Which function.
    pub function: &'static AllocatorFunction,
    /// The file that serves it, as the process sees it.
    pub path: String,
    /// The same file as the daemon opens it.
    pub host_path: PathBuf,
    /// File offset of the function.
    pub offset: u64,
    /// Where in the function its probes go, and why.
    pub placement: Placement,
    /// (device, inode) of the file: the same file under another path is the same probe.
    pub file_id: Option<(u64, u64)>,
}

impl PlannedProbe {
    /// File offset of the probes (entry, and return when there is one).
    pub fn probe_offset(&self) -> u64 {
        self.offset + self.placement.offset
    }
}

/// The probes attached to one process.
#[derive(Debug)]
pub struct Attachment {
    /// The process.
    pub pid: u32,
    /// What was probed.
    pub library: AllocatorLibrary,
    /// The links, in the order attached (malloc's session, then return probes, then entries);
    /// dropping one detaches it.
    links: Vec<ProbeLink>,
}

impl Attachment {
    /// An attachment without links, for the tests' in-memory kernel side.
    #[cfg(test)]
    pub(crate) fn unlinked(pid: u32, library: AllocatorLibrary) -> Self {
        Self {
            pid,
            library,
            links: Vec::new(),
        }
    }
}

/// What the tracer needs to know of one ELF file, read once per file (device and inode) for
/// every process that maps it: the allocator entry points it defines, with the first bytes of
/// each (for placement), its dynamic linkage, and why it defines no malloc if it does not.
#[derive(Debug)]
pub struct FileFacts {
    /// Allocator entry points it defines: symbol -> (file offset, first bytes of the code).
    functions: HashMap<&'static str, (u64, Vec<u8>)>,
    linkage: lookup_order::Linkage,
    /// Said when this file is a program that maps no malloc.
    why_no_malloc: String,
}

impl FileFacts {
    fn read(data: &[u8]) -> Option<Self> {
        let symbols = defined_functions(data).ok()?;
        let functions = ALLOCATOR_FUNCTIONS
            .iter()
            .filter_map(|function| {
                let &offset = symbols.get(function.symbol)?;
                let start = usize::try_from(offset).ok()?.min(data.len());
                let code = data[start..(start + PROLOGUE_BYTES).min(data.len())].to_vec();
                Some((function.symbol, (offset, code)))
            })
            .collect();
        Some(Self {
            functions,
            linkage: lookup_order::Linkage::of(data),
            why_no_malloc: why_no_malloc(data),
        })
    }
}

/// Files read so far, by (device, inode): a node's hundred processes sharing one libc read it
/// once, not once per attach.
#[derive(Debug, Default)]
pub struct ElfCatalog {
    files: HashMap<(u64, u64), Arc<FileFacts>>,
}

/// Files kept in the catalog at most (each is a few kilobytes).
const CATALOG_FILES: usize = 4096;

impl ElfCatalog {
    /// The facts of a mapped file (`None` when it cannot be read or is not ELF).
    fn facts(&mut self, file: &MappedFile) -> Option<Arc<FileFacts>> {
        if let Some(facts) = file.id.and_then(|id| self.files.get(&id)) {
            return Some(Arc::clone(facts));
        }
        let data = std::fs::read(&file.host_path).ok()?;
        let facts = Arc::new(FileFacts::read(&data)?);
        if let Some(id) = file.id {
            if self.files.len() >= CATALOG_FILES {
                self.files.clear();
            }
            let _ = self.files.insert(id, Arc::clone(&facts));
        }
        Some(facts)
    }
}

/// The mapped ELF files of a process in the dynamic linker's symbol lookup order (see
/// [`lookup_order`]), with their facts, and every path that was looked at.
fn files_in_lookup_order<'s>(
    snapshot: &'s ProcessSnapshot,
    catalog: &mut ElfCatalog,
) -> (Vec<(&'s MappedFile, Arc<FileFacts>)>, Vec<String>) {
    let mut files = Vec::new();
    let mut candidates = Vec::new();
    let checked = snapshot.files.iter().map(|f| f.path.clone()).collect();
    for file in &snapshot.files {
        let Some(facts) = catalog.facts(file) else {
            debug!(pid = snapshot.pid(), path = %file.path, "cannot read mapped file");
            continue;
        };
        candidates.push(lookup_order::Candidate {
            path: file.path.clone(),
            start: file.start,
            linkage: facts.linkage.clone(),
        });
        files.push(Some((file, facts)));
    }
    let ordered = lookup_order::order(
        &candidates,
        snapshot.executable.as_deref(),
        snapshot.preload.as_deref(),
    )
    .into_iter()
    .filter_map(|index| files.get_mut(index).and_then(Option::take))
    .collect();
    (ordered, checked)
}

/// Finds which mapped file serves each allocator function of a process (the first in symbol
/// lookup order that defines it: jemalloc linked in front of the C library serves malloc and
/// operator new, while mmap stays the C library's), the offsets of the functions and where to
/// probe them.
pub fn find_allocator(
    snapshot: &ProcessSnapshot,
    catalog: &mut ElfCatalog,
    mode: PlacementMode,
) -> Result<AllocatorLibrary, AttachError> {
    let pid = snapshot.pid();
    let (files, checked) = files_in_lookup_order(snapshot, catalog);
    let Some((malloc_file, _)) = files
        .iter()
        .find(|(_, facts)| facts.functions.contains_key("malloc"))
    else {
        let why = files
            .iter()
            .find(|(file, _)| Some(&file.path) == snapshot.executable.as_ref())
            .map_or_else(
                || "its executable could not be read".to_owned(),
                |(_, facts)| facts.why_no_malloc.clone(),
            );
        return Err(AttachError::NoAllocator {
            pid,
            checked: checked.join(", "),
            why,
        });
    };
    let mut functions = Vec::new();
    let mut taken: HashMap<(&str, u64), &'static str> = HashMap::new();
    for function in ALLOCATOR_FUNCTIONS {
        let served = files.iter().find_map(|(file, facts)| {
            facts
                .functions
                .get(function.symbol)
                .map(|(offset, code)| (*file, *offset, code))
        });
        let Some((file, offset, code)) = served else {
            if function.required {
                return Err(AttachError::MissingSymbol {
                    pid,
                    library: malloc_file.path.clone(),
                    symbol: function.symbol,
                });
            }
            continue;
        };
        if function.rule == ProbeRule::WithMalloc && file.path != malloc_file.path {
            debug!(pid, symbol = function.symbol, file = %file.path, "calls the traced free; not probed");
            continue;
        }
        if let Some(first) = taken.get(&(file.path.as_str(), offset)) {
            debug!(
                pid,
                symbol = function.symbol,
                alias_of = first,
                "alias; probed once"
            );
            continue;
        }
        let _ = taken.insert((file.path.as_str(), offset), function.symbol);
        let placement = placement::place(code, &function.needs(), mode);
        debug!(
            pid,
            symbol = function.symbol,
            file = %file.path,
            offset = placement.offset,
            instruction = %placement.instruction,
            reason = %placement.reason,
            "probe placement"
        );
        functions.push(PlannedProbe {
            function,
            path: file.path.clone(),
            host_path: file.host_path.clone(),
            offset,
            placement,
            file_id: file.id,
        });
    }
    // mmap and munmap called from the allocator library's code are its own (arenas, large
    // chunks). Not so when the allocator is linked into the executable: there that range is
    // the whole program, whose own mmaps would vanish; the allocator's mmaps then happen
    // inside traced calls, which the thread's depth already tells apart.
    let static_allocator = snapshot.executable.as_deref() == Some(&malloc_file.path);
    let text_range = snapshot
        .mappings
        .iter()
        .filter(|m| m.path == malloc_file.path && !static_allocator)
        .fold(None, |range: Option<(u64, u64)>, m| match range {
            None => Some((m.start, m.end)),
            Some((start, end)) => Some((start.min(m.start), end.max(m.end))),
        });
    Ok(AllocatorLibrary {
        path: malloc_file.path.clone(),
        host_path: malloc_file.host_path.clone(),
        functions,
        text_range,
    })
}

/// Refuses, with the reason, a process the tracer cannot trace: a kernel thread, a program of
/// another architecture (the probes' placement and the unwinder decode x86-64 only), or the
/// tracer itself (its own allocations are never recorded, so it would always show 0 B).
pub fn check_traceable(pid: u32) -> Result<(), AttachError> {
    let unsupported = |reason: String| Err(AttachError::Unsupported { pid, reason });
    if pid == std::process::id() {
        return unsupported(
            "it is the tracer itself (its own allocations are never recorded)".to_owned(),
        );
    }
    match process::program_kind(pid) {
        process::ProgramKind::KernelThread => {
            unsupported("it is a kernel thread: it has no user-space allocator".to_owned())
        }
        process::ProgramKind::Bits32 => unsupported(
            "it runs a 32-bit program; the tracer decodes and unwinds x86-64 code only".to_owned(),
        ),
        process::ProgramKind::OtherMachine(machine) => unsupported(format!(
            "it runs a program for another architecture (ELF machine {machine}); the tracer \
             decodes and unwinds x86-64 code only"
        )),
        process::ProgramKind::X86_64 | process::ProgramKind::Unknown => Ok(()),
    }
}

/// Why an executable that maps no malloc has none, in words a person can act on.
fn why_no_malloc(data: &[u8]) -> String {
    use object::ObjectSection as _;
    let Ok(file) = object::File::parse(data) else {
        return "its executable is not an ELF file the tracer can read".to_owned();
    };
    let is_go = file.section_by_name(".go.buildinfo").is_some()
        || file.section_by_name(".gopclntab").is_some();
    if is_go {
        return "it is a Go program: the Go runtime allocates from its own heap, not through \
                malloc, so there is no allocator call to probe"
            .to_owned();
    }
    let has_symtab = file
        .section_by_name(".symtab")
        .is_some_and(|section| section.size() > 0);
    let dynamic = file.section_by_name(".interp").is_some();
    match (dynamic, has_symtab) {
        (false, false) => "it is statically linked and stripped of .symtab, so its malloc has no \
                           symbol to probe (install its debug file, or build it unstripped)"
            .to_owned(),
        (false, true) => "it is statically linked and its symbol table has no malloc: it \
                          allocates some other way"
            .to_owned(),
        (true, _) => "none of its libraries defines malloc: it allocates some other way".to_owned(),
    }
}

/// Records (or forgets) where a process's allocator code is, for the BPF side.
fn allocator_text(probes: &mut Probes, pid: u32, text: Option<AllocatorText>) {
    let Some(map) = probes.ebpf.map_mut(names::ALLOCATOR_TEXT) else {
        return;
    };
    let Ok(mut map) = aya::maps::HashMap::<_, u32, AllocatorText>::try_from(map) else {
        return;
    };
    let result = match text {
        Some(text) => map.insert(pid, text, 0),
        None => map.remove(&pid),
    };
    if let (Err(error), Some(_)) = (result, text) {
        warn!(pid, %error, "cannot record the allocator's code range; its own mmaps may show");
    }
}

fn armed_map(
    probes: &mut Probes,
) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, ArmedProcess>, aya::maps::MapError> {
    let Some(map) = probes.ebpf.map_mut(names::ARMED) else {
        return Err(aya::maps::MapError::InvalidName {
            name: names::ARMED.to_owned(),
        });
    };
    aya::maps::HashMap::try_from(map)
}

/// Arms (or disarms) a process for recording: see tracer-ebpf's `armed`. A process is armed
/// only once every probe that would see its allocations end is attached, with the sampling
/// mean it has (the budget's, if it switched it to sampling, else `--sample-bytes`).
fn arm(probes: &mut Probes, pid: u32, armed: bool) -> Result<(), aya::maps::MapError> {
    let sample_bytes = probes
        .sampled_processes
        .get(&pid)
        .copied()
        .unwrap_or(probes.sample_bytes);
    let mut map = armed_map(probes)?;
    if armed {
        let process = ArmedProcess {
            sample_bytes,
            ..ArmedProcess::default()
        };
        map.insert(pid, process, 0)
    } else {
        match map.remove(&pid) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}

/// Switches an armed process to sampling with mean `sample_bytes` from its next allocator
/// call on (its records so far keep their own weights: see `AllocInfo::sample_bytes`). The
/// probe-hit counts are carried over; hits between the read and the write (microseconds) are
/// lost.
pub fn sample(probes: &mut Probes, pid: u32, sample_bytes: u64) -> Result<(), aya::maps::MapError> {
    let _ = probes.sampled_processes.insert(pid, sample_bytes);
    let mut map = armed_map(probes)?;
    let mut process = map.get(&pid, 0)?;
    process.sample_bytes = sample_bytes;
    /// `BPF_EXIST`: only replaces the entry (never arms a process that was disarmed meanwhile).
    const ONLY_REPLACE: u64 = 2;
    map.insert(pid, process, ONLY_REPLACE)
}

/// An armed process's sampling mean and probe hits (`None` when it is not armed).
pub fn armed_process(probes: &Probes, pid: u32) -> Option<ArmedProcess> {
    let map = probes.ebpf.map(names::ARMED)?;
    aya::maps::HashMap::<_, u32, ArmedProcess>::try_from(map)
        .ok()?
        .get(&pid, 0)
        .ok()
}

impl AllocatorLibrary {
    /// True when `other` puts the same programs at the same places of the same files: after an
    /// exec into a program that maps the same allocator, the existing probes serve it as they
    /// are (uprobes follow the file, and a per-process probe follows the process into its new
    /// address space).
    pub fn same_probes(&self, other: &Self) -> bool {
        let key =
            |probe: &PlannedProbe| (probe.function.symbol, probe.file_id, probe.probe_offset());
        self.functions.len() == other.functions.len()
            && self.functions.iter().all(|p| p.file_id.is_some())
            && self
                .functions
                .iter()
                .map(key)
                .eq(other.functions.iter().map(key))
    }
}

/// Takes over an attachment for the same process after it exec'd a program served by the same
/// probes ([`AllocatorLibrary::same_probes`]): records the new allocator code range and arms
/// the process again (its old records must already be gone).
pub fn rearm(
    probes: &mut Probes,
    attachment: &mut Attachment,
    library: AllocatorLibrary,
) -> Result<(), aya::maps::MapError> {
    let pid = attachment.pid;
    allocator_text(
        probes,
        pid,
        library
            .text_range
            .map(|(start, end)| AllocatorText { start, end }),
    );
    attachment.library = library;
    // A new program starts exact (or at `--sample-bytes`): the budget prices it afresh.
    let _ = probes.sampled_processes.remove(&pid);
    arm(probes, pid, true)
}

/// Disarms a process (its exec was seen some other way than the kernel hook, which disarms by
/// itself).
pub fn disarm(probes: &mut Probes, pid: u32) {
    if let Err(error) = arm(probes, pid, false) {
        warn!(pid, %error, "cannot disarm the process");
    }
}

/// Bytes of each function decoded for placement.
const PROLOGUE_BYTES: usize = 64;

/// A table of where each probe goes and why (`trace --explain-probes`).
pub fn explain(library: &AllocatorLibrary) -> String {
    let mut text = format!("allocator: {}\n", library.path);
    let _ = writeln!(
        text,
        "{:<24} {:<28} {:>10} {:>7} {:<28} {:<9} WHY",
        "FUNCTION", "FILE", "FILE OFF", "+OFF", "INSTRUCTION", "KERNEL"
    );
    for probe in &library.functions {
        let file = probe.path.rsplit('/').next().unwrap_or(&probe.path);
        let _ = writeln!(
            text,
            "{:<24} {:<28} {:>#10x} {:>7} {:<28} {:<9} {}",
            probe.function.symbol,
            file,
            probe.offset,
            format!("+{}", probe.placement.offset),
            probe.placement.instruction,
            if probe.placement.emulated {
                "emulated"
            } else {
                "stepped"
            },
            probe.placement.reason
        );
    }
    text
}

/// Defined function symbols of an ELF file, by name, as file offsets.
pub(crate) fn defined_functions(data: &[u8]) -> Result<HashMap<String, u64>, object::Error> {
    let file = object::File::parse(data)?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|segment| {
            let (file_offset, file_size) = segment.file_range();
            (segment.address(), file_size, file_offset)
        })
        .collect();
    let mut functions = HashMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.is_undefined() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let address = symbol.address();
        let Some(offset) = segments.iter().find_map(|&(start, size, file_offset)| {
            (address >= start && address < start + size).then(|| address - start + file_offset)
        }) else {
            continue;
        };
        let _ = functions.entry(name.to_owned()).or_insert(offset);
    }
    Ok(functions)
}

/// Which programs go on the allocator functions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgramSet {
    /// The tracing programs.
    #[default]
    Tracing,
    /// Empty programs at the same points: the kernel's floor cost, for benchmarks. Loaded on
    /// the first attach that asks for them.
    Empty,
}

impl ProgramSet {
    fn entry(self, function: &AllocatorFunction) -> &'static str {
        match self {
            Self::Tracing => function.entry,
            Self::Empty => FLOOR_ENTRY_PROGRAM,
        }
    }

    fn exit(self, function: &AllocatorFunction) -> Option<&'static str> {
        match self {
            Self::Tracing => function.exit,
            Self::Empty => function.exit.map(|_| FLOOR_EXIT_PROGRAM),
        }
    }
}

/// Attaches every planned probe for one process. Return probes go first: an entry whose return
/// probe is not yet armed would leave the thread looking "inside the allocator".
pub fn attach(
    probes: &mut Probes,
    pid: u32,
    library: AllocatorLibrary,
    programs: ProgramSet,
) -> Result<Attachment, AttachFailure> {
    let mut attachment = Attachment {
        pid,
        library,
        links: Vec::new(),
    };
    if pid == 0 {
        return Err(AttachError::from(ProcessError::NotFound { pid }).into());
    }
    if programs == ProgramSet::Empty {
        probes
            .load_floor_programs()
            .map_err(|e| AttachFailure::from(AttachError::from(e)))?;
    }
    if let Some((start, end)) = attachment.library.text_range {
        allocator_text(probes, pid, Some(AllocatorText { start, end }));
    }
    // malloc as one session program where the kernel has sessions (see bpf::session).
    let mut session_functions: Vec<&'static str> = Vec::new();
    if programs == ProgramSet::Tracing
        && let Some(session) = &probes.malloc_session
        && let Some(malloc) = attachment
            .library
            .functions
            .iter()
            .find(|p| p.function.symbol == "malloc")
    {
        match session.attach(
            &malloc.host_path,
            malloc.probe_offset(),
            pid,
            LinkPlacement::Entry,
        ) {
            Ok(link) => {
                attachment.links.push(ProbeLink::Multi(link));
                session_functions.push("malloc");
            }
            Err(error) => warn!(pid, %error, "malloc session link refused; using classic probes"),
        }
    }
    let planned: Vec<(&'static str, LinkPlacement, PathBuf, u64)> = {
        let functions: Vec<&PlannedProbe> = attachment
            .library
            .functions
            .iter()
            .filter(|p| !session_functions.contains(&p.function.symbol))
            .collect();
        let exits = functions.iter().filter_map(|p| {
            programs.exit(p.function).map(|e| {
                (
                    e,
                    LinkPlacement::Return,
                    p.host_path.clone(),
                    p.probe_offset(),
                )
            })
        });
        let entries = functions.iter().map(|p| {
            (
                programs.entry(p.function),
                LinkPlacement::Entry,
                p.host_path.clone(),
                p.probe_offset(),
            )
        });
        exits.chain(entries).collect()
    };
    for (program_name, placement, path, offset) in planned {
        match probes.attach_uprobe(program_name, &path, offset, pid, placement) {
            Ok(link) => attachment.links.push(link),
            Err(source) => {
                return Err(AttachFailure {
                    error: AttachError::Uprobe {
                        pid,
                        program: program_name,
                        path,
                        source: Box::new(source),
                    },
                    links: detach(probes, attachment),
                });
            }
        }
    }
    // Every probe is live: from now on each recorded allocation's end is seen.
    if programs == ProgramSet::Tracing
        && let Err(error) = arm(probes, pid, true)
    {
        return Err(AttachFailure {
            error: AttachError::Arm {
                pid,
                source: Box::new(error),
            },
            links: detach(probes, attachment),
        });
    }
    debug!(pid, library = %attachment.library.path, probes = attachment.links.len(), "attached");
    Ok(attachment)
}

/// An attach that failed, with the links it had made: the process was never armed, so its
/// probes recorded nothing and the links can be closed off the caller's thread
/// ([`closer::LinkCloser`]); closing each takes the kernel tens of milliseconds, more while
/// other processes come and go.
pub struct AttachFailure {
    /// Why it failed.
    pub error: AttachError,
    /// The links made before it failed (empty when none was).
    pub links: DetachedLinks,
}

impl From<AttachError> for AttachFailure {
    fn from(error: AttachError) -> Self {
        Self {
            error,
            links: DetachedLinks::default(),
        }
    }
}

/// Disarms a process and hands over its links in the order they are to be closed: entries
/// first, then returns, then malloc's session (the reverse of attaching); dropping the result
/// detaches them (see [`closer::LinkCloser`] to do that off the agent's thread).
pub fn detach(probes: &mut Probes, attachment: Attachment) -> DetachedLinks {
    let Attachment { pid, mut links, .. } = attachment;
    // Before any probe goes: nothing is recorded whose free could then be missed.
    disarm(probes, pid);
    let _ = probes.sampled_processes.remove(&pid);
    allocator_text(probes, pid, None);
    links.reverse();
    DetachedLinks { links }
}
