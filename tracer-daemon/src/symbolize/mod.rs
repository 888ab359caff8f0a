//! Turning stack addresses into function, file and line, with blazesym (`.symtab`, then
//! `.dynsym`, DWARF), and a separate debug file for binaries stripped of `.symtab`
//! (`debug_file`).
//!
//! Each traced process's executable mappings are snapshotted while it lives, with an open
//! handle on every mapped file, so its stacks can still be symbolized after it has exited (an
//! OOM kill does not wait for us). Files are shared by (device, inode) across processes, so a
//! libc used by a hundred processes is parsed once. Results are cached per (process, stack).

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
    sync::Arc,
};

use blazesym::symbolize::{self, Input, Symbolized, source::Elf, source::Source};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::discover::{process, snapshot::ProcessSnapshot};

mod debug_file;

use debug_file::DebugLookup;

/// A binary's separate debug file, and how to address it.
#[derive(Debug)]
struct DebugSource {
    file: File,
    lookup: DebugLookup,
}

/// Symbolized stacks kept (a bound on the daemon's memory, whatever the node's stack count).
const MAX_CACHED_STACKS: usize = 16384;

/// One symbolized frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The return address as recorded.
    pub addr: u64,
    /// Function name (demangled), when known.
    pub function: Option<String>,
    /// Source file, when debug info has it.
    pub file: Option<String>,
    /// Source line, when debug info has it.
    pub line: Option<u32>,
    /// The module (executable or library) path, when known.
    pub module: Option<String>,
    /// Offset of the address in `module`'s file, when known (for `module+0x...` display).
    pub module_offset: Option<u64>,
    /// True for a function inlined into the next frame.
    pub inlined: bool,
}

impl Frame {
    fn unknown(addr: u64) -> Self {
        Self {
            addr,
            function: None,
            file: None,
            line: None,
            module: None,
            module_offset: None,
            inlined: false,
        }
    }

    /// `function (file:line)`, or `module+0xoffset`, or the bare address.
    pub fn display_name(&self) -> String {
        match (&self.function, &self.file, self.line) {
            (Some(function), Some(file), Some(line)) => {
                let file = file.rsplit('/').next().unwrap_or(file);
                format!("{function} ({file}:{line})")
            }
            (Some(function), _, _) => function.clone(),
            (None, _, _) => match (&self.module, self.module_offset) {
                (Some(module), Some(offset)) => format!("{module}+{offset:#x}"),
                _ => format!("{:#x}", self.addr),
            },
        }
    }
}

#[derive(Debug)]
struct ModuleMapping {
    start: u64,
    end: u64,
    file_offset: u64,
    path: String,
    file: Option<Arc<File>>,
    /// The binary's separate debug file, when it lacks `.symtab` and one is installed.
    debug: Option<Arc<DebugSource>>,
}

/// A name as people read it. blazesym demangles with cpp_demangle, which rejects some names
/// libstdc++ really has (e.g. `std::make_shared<Node>()`, whose parameter pack is empty); for
/// those, the longest prefix of the mangled name that demangles to a plain name (its scope and
/// template arguments, without the signature) is used.
fn demangled(name: &str) -> String {
    // glibc's debug info names its internal aliases `__GI_<name>` (`__GI___strdup`): the name
    // after the prefix is the one its symbol tables and people use.
    let name = name.strip_prefix("__GI_").unwrap_or(name);
    if !name.starts_with("_Z") {
        return name.to_owned();
    }
    if let Some(text) = cpp_demangle::Symbol::new(name)
        .ok()
        .and_then(|symbol| symbol.demangle().ok())
    {
        return text;
    }
    (4..name.len())
        .rev()
        .filter(|&end| name.is_char_boundary(end))
        .find_map(|end| {
            let symbol = cpp_demangle::Symbol::new(&name[..end]).ok()?;
            let text = symbol.demangle().ok()?;
            // An empty parameter pack prints as a dangling ", ".
            (!text.contains('(')).then(|| text.replace(", >", ">"))
        })
        .unwrap_or_else(|| name.to_owned())
}

/// Symbolizes stacks of traced processes.
pub struct Symbolizer {
    blaze: symbolize::Symbolizer,
    modules: HashMap<u32, Vec<ModuleMapping>>,
    files: HashMap<(u64, u64), Arc<File>>,
    /// Debug files looked up per binary (device, inode); `None` when there is none.
    debug_files: HashMap<(u64, u64), Option<Arc<DebugSource>>>,
    stacks: foldhash::HashMap<(u32, u64), Arc<[Frame]>>,
    /// Stacks answered from the cache, and symbolized afresh.
    hits: u64,
    misses: u64,
}

/// The symbol cache's figures (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Stacks held.
    pub entries: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that symbolized.
    pub misses: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer with code info, inlined functions and demangling on.
    pub fn new() -> Self {
        let blaze = symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self {
            blaze,
            modules: HashMap::new(),
            files: HashMap::new(),
            debug_files: HashMap::new(),
            stacks: foldhash::HashMap::default(),
            hits: 0,
            misses: 0,
        }
    }

    /// Takes a process's executable mappings from its snapshot (again after it mapped new code);
    /// the files stay open, so its stacks can still be symbolized after it has exited.
    pub fn update(&mut self, snapshot: &ProcessSnapshot) {
        let pid = snapshot.pid();
        let modules = snapshot
            .mappings
            .iter()
            .map(|m| {
                let file = self.open_mapped(pid, m.start, m.end, &m.path);
                let debug = file
                    .as_ref()
                    .and_then(|file| self.debug_file(pid, &m.path, file));
                ModuleMapping {
                    start: m.start,
                    end: m.end,
                    file_offset: m.file_offset,
                    path: m.path.clone(),
                    file,
                    debug,
                }
            })
            .collect();
        let _ = self.modules.insert(pid, modules);
        // Stacks through code mapped since (dlopen) were cached with unknown frames.
        self.stacks.retain(|&(p, _), _| p != pid);
    }

    /// Opens the file behind a mapping: the exact mapped inode via map_files when allowed, else
    /// by path through the process's root.
    fn open_mapped(&mut self, pid: u32, start: u64, end: u64, path: &str) -> Option<Arc<File>> {
        let candidates = [
            PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}")),
            process::host_path(pid, path),
        ];
        let file = candidates.iter().find_map(|p| File::open(p).ok())?;
        let meta = file.metadata().ok()?;
        let file = self
            .files
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| Arc::new(file));
        Some(Arc::clone(file))
    }

    /// The separate debug file of a mapped binary (looked up once per binary).
    fn debug_file(&mut self, pid: u32, path: &str, file: &File) -> Option<Arc<DebugSource>> {
        let meta = file.metadata().ok()?;
        self.debug_files
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| {
                let data = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
                let lookup = DebugLookup::of(&data)?;
                let file = lookup.open(pid, path)?;
                debug!(pid, path, "using a separate debug file");
                Some(Arc::new(DebugSource { file, lookup }))
            })
            .clone()
    }

    /// The cache's size and hit counts.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            entries: self.stacks.len(),
            hits: self.hits,
            misses: self.misses,
        }
    }

    /// The frames of a stack (cached per process and stack).
    pub fn symbolize(&mut self, pid: u32, stack_id: u64, addrs: &[u64]) -> Arc<[Frame]> {
        if let Some(frames) = self.stacks.get(&(pid, stack_id)) {
            self.hits += 1;
            return Arc::clone(frames);
        }
        self.misses += 1;
        let mut frames = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            self.symbolize_address(pid, addr, &mut frames);
        }
        let frames: Arc<[Frame]> = frames.into();
        if self.stacks.len() >= MAX_CACHED_STACKS {
            // Reports symbolize only the stacks they show: an evicted one is simply redone.
            let evict: Vec<(u32, u64)> = self
                .stacks
                .keys()
                .take(MAX_CACHED_STACKS / 8)
                .copied()
                .collect();
            for key in evict {
                let _ = self.stacks.remove(&key);
            }
        }
        let _ = self.stacks.insert((pid, stack_id), Arc::clone(&frames));
        frames
    }

    fn mapping_of(&self, pid: u32, addr: u64) -> Option<&ModuleMapping> {
        self.modules
            .get(&pid)?
            .iter()
            .find(|m| m.start <= addr && addr < m.end)
    }

    /// Appends the frames of one return address: inlined callees first, innermost first.
    fn symbolize_address(&self, pid: u32, addr: u64, out: &mut Vec<Frame>) {
        let Some(mapping) = self.mapping_of(pid, addr) else {
            out.push(Frame::unknown(addr));
            return;
        };
        // A return address points after the call; the call itself is one byte before.
        let file_offset = addr.saturating_sub(1) - mapping.start + mapping.file_offset;
        let mut frame = Frame {
            module: Some(mapping.path.clone()),
            module_offset: Some(file_offset),
            ..Frame::unknown(addr)
        };
        let Some(file) = &mapping.file else {
            out.push(frame);
            return;
        };
        let from_debug_file = mapping.debug.as_ref().and_then(|debug| {
            let address = debug.lookup.virtual_address(file_offset)?;
            let source = Source::Elf(Elf::new(format!(
                "/proc/self/fd/{}",
                debug.file.as_raw_fd()
            )));
            match self
                .blaze
                .symbolize_single(&source, Input::VirtOffset(address))
            {
                Ok(symbolized @ Symbolized::Sym(_)) => Some(Ok(symbolized)),
                _ => None,
            }
        });
        let symbolized = from_debug_file.unwrap_or_else(|| {
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            let with_debug = self.blaze.symbolize_single(
                &Source::Elf(Elf::new(&path)),
                Input::FileOffset(file_offset),
            );
            match with_debug {
                Ok(symbolized @ Symbolized::Sym(_)) => Ok(symbolized),
                // A debug file blazesym found on its own may be unreadable (a compression it
                // does not know) or lack this address: the binary's own .symtab and .dynsym
                // still name it. Installing a debug package must never make names worse.
                _ => {
                    let mut own = Elf::new(&path);
                    own.debug_syms = false;
                    self.blaze
                        .symbolize_single(&Source::Elf(own), Input::FileOffset(file_offset))
                }
            }
        });
        match symbolized {
            Ok(Symbolized::Sym(sym)) => {
                for inlined in sym.inlined.iter().rev() {
                    let code = inlined.code_info.as_ref();
                    out.push(Frame {
                        function: Some(demangled(&inlined.name)),
                        file: code.map(|c| c.to_path().display().to_string()),
                        line: code.and_then(|c| c.line),
                        inlined: true,
                        ..frame.clone()
                    });
                }
                let code = sym.code_info.as_deref();
                frame.function = Some(demangled(&sym.name));
                frame.file = code.map(|c| c.to_path().display().to_string());
                frame.line = code.and_then(|c| c.line);
                out.push(frame);
            }
            Ok(Symbolized::Unknown(reason)) => {
                debug!(pid, addr, %reason, "no symbol");
                out.push(frame);
            }
            Err(error) => {
                debug!(pid, addr, %error, "symbolization failed");
                out.push(frame);
            }
        }
    }

    /// Forgets a process (after its last report).
    pub fn forget(&mut self, pid: u32) {
        let _ = self.modules.remove(&pid);
        self.stacks.retain(|&(p, _), _| p != pid);
        // Close files no process maps any more.
        self.files.retain(|_, file| Arc::strong_count(file) > 1);
        self.debug_files
            .retain(|key, _| self.files.contains_key(key));
    }
}

#[cfg(test)]
mod tests {
    use super::demangled;

    #[test]
    fn names_cpp_demangle_rejects_still_read_as_cxx() {
        assert_eq!(
            demangled(
                "_ZSt11make_sharedI4NodeJEESt10shared_ptrINSt9enable_ifIXntsrSt8is_arrayIT_E5valueES4_E4typeEEDpOT0_"
            ),
            "std::make_shared<Node>"
        );
        assert_eq!(demangled("malloc"), "malloc");
        assert_eq!(demangled("__GI___strdup"), "__strdup");
        assert_eq!(demangled("_Z"), "_Z");
        assert_eq!(demangled("_ZN5Cache8rememberEi"), "Cache::remember(int)");
    }
}
