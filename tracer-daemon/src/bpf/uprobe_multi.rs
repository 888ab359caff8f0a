//! Uprobe_multi links (`BPF_TRACE_UPROBE_MULTI`, Linux 6.6+) and uprobe sessions
//! (`BPF_TRACE_UPROBE_SESSION`, Linux 6.10+), made with raw `bpf()` calls: aya 0.14 can neither
//! load a program with those attach types nor create the links.
//!
//! A uprobe_multi link is a BPF link made by `BPF_LINK_CREATE` alone, with CAP_BPF and
//! CAP_PERFMON. The classic way (aya's `UProbe::attach`) goes through `perf_event_open` of the
//! kernel's uprobe PMU, which the kernel refuses without CAP_SYS_ADMIN; so where the kernel
//! has uprobe_multi, every allocator probe goes through it and the agent needs no
//! CAP_SYS_ADMIN (see `bpf::uprobes`).
//!
//! Loading relocates the programs' map references with aya-obj against the maps aya already
//! created (the same kernel maps the other programs use), once for the whole object, then loads
//! each program with the attach type its links need.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};

use super::syscall::sys_bpf;

/// `BPF_TRACE_UPROBE_MULTI` (not in aya-obj's bindings yet).
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_TRACE_UPROBE_SESSION` (not in aya-obj's bindings yet).
const BPF_TRACE_UPROBE_SESSION: u32 = 57;
/// `BPF_F_UPROBE_MULTI_RETURN`: the link's program runs at the function's return.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// What a program's links do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A uprobe at the offset, or a uretprobe at the function's return ([`Placement::Return`]).
    Probe,
    /// A session: one program at entry that can decline its own return run.
    Session,
}

impl LinkKind {
    fn attach_type(self) -> u32 {
        match self {
            Self::Probe => BPF_TRACE_UPROBE_MULTI,
            Self::Session => BPF_TRACE_UPROBE_SESSION,
        }
    }
}

/// Where in the function a [`LinkKind::Probe`] link's program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// At the offset.
    Entry,
    /// When the function called there returns.
    Return,
}

/// The BPF object with its map references pointing at the kernel maps aya created.
pub struct RelocatedObject {
    object: aya_obj::Object,
}

/// A program loaded in the kernel for uprobe_multi or session links.
#[derive(Debug)]
pub struct MultiProgram {
    fd: OwnedFd,
    kind: LinkKind,
}

/// One link: a program attached at offsets of one file for one process; dropping it detaches.
#[derive(Debug)]
pub struct MultiLink {
    _fd: OwnedFd,
}

/// The descriptor of a map aya created, for the map kinds this object uses.
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::LpmTrie(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::Queue(data)
        | Map::RingBuf(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

impl RelocatedObject {
    /// Parses `object` and points its map references at the maps of `ebpf`; `extra` gives
    /// descriptors of maps already taken out of it (by name).
    pub fn new(
        object: &[u8],
        ebpf: &Ebpf,
        extra: &[(&str, BorrowedFd<'_>)],
    ) -> Result<Self, String> {
        let mut obj = aya_obj::Object::parse(object)
            .map_err(|e| format!("cannot parse the BPF object: {e}"))?;
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        let mut maps: Vec<(String, RawFd, aya_obj::Map)> = Vec::new();
        for (map_name, map) in &obj.maps {
            let fd = extra
                .iter()
                .find(|(n, _)| n == map_name)
                .map(|(_, fd)| fd.as_raw_fd())
                .or_else(|| ebpf.map(map_name).and_then(map_fd).map(|fd| fd.as_raw_fd()))
                .ok_or_else(|| format!("no descriptor for map {map_name}"))?;
            maps.push((map_name.clone(), fd, map.clone()));
        }
        obj.relocate_maps(
            maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| format!("cannot relocate maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| format!("cannot relocate calls: {e}"))?;
        Ok(Self { object: obj })
    }

    /// Loads program `name` for links of `kind` (the verifier runs here).
    pub fn load(&self, name: &str, kind: LinkKind) -> Result<MultiProgram, String> {
        let program = self
            .object
            .programs
            .get(name)
            .ok_or_else(|| format!("the object has no program {name}"))?;
        let function = self
            .object
            .functions
            .get(&program.function_key())
            .ok_or_else(|| format!("the object has no code for {name}"))?;
        let license = CString::new("GPL").map_err(|e| e.to_string())?;
        // First without a log (a verbose log of a large program overflows any small buffer,
        // which the kernel reports as ENOSPC); on failure again with one, for the reason.
        let mut log = vec![0u8; 1 << 20];
        let mut last_error = None;
        for log_level in [0, 1] {
            // SAFETY: bpf_attr is plain data; all-zero is its initial state.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            // SAFETY: writing the prog-load member of the union, which BPF_PROG_LOAD reads.
            unsafe {
                let load = &mut attr.__bindgen_anon_3;
                load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
                load.expected_attach_type = kind.attach_type();
                load.insn_cnt = function.instructions.len() as u32;
                load.insns = function.instructions.as_ptr() as u64;
                load.license = license.as_ptr() as u64;
                if log_level > 0 {
                    load.log_level = log_level;
                    load.log_size = log.len() as u32;
                    load.log_buf = log.as_mut_ptr() as u64;
                }
                for (slot, byte) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
                    *slot = byte as libc::c_char;
                }
            }
            // SAFETY: the instructions, the license and the log buffer outlive the call, and
            // insn_cnt and log_size are their lengths.
            match unsafe { sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) } {
                // SAFETY: the kernel returned a new descriptor we own.
                Ok(fd) => {
                    return Ok(MultiProgram {
                        fd: unsafe { OwnedFd::from_raw_fd(fd) },
                        kind,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let tail = String::from_utf8_lossy(&log[end.saturating_sub(400)..end]).into_owned();
        let error = last_error.map_or_else(|| "unknown error".to_owned(), |e| e.to_string());
        let what = match kind {
            LinkKind::Probe => "a uprobe_multi program",
            LinkKind::Session => "a session program",
        };
        Err(format!(
            "the kernel refused {name} as {what}: {error}; {tail}"
        ))
    }
}

impl MultiProgram {
    /// The program's descriptor number (for its fdinfo).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Attaches the program at `offset` of `path` for process `pid`, at the offset or at the
    /// return of the function called there (`placement`; a session runs at both).
    pub fn attach(
        &self,
        path: &Path,
        offset: u64,
        pid: u32,
        placement: Placement,
    ) -> io::Result<MultiLink> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
        let offsets = [offset];
        let flags = match (self.kind, placement) {
            (LinkKind::Probe, Placement::Return) => BPF_F_UPROBE_MULTI_RETURN,
            _ => 0,
        };
        // SAFETY: as above.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the link-create member, which BPF_LINK_CREATE reads.
        unsafe {
            let link = &mut attr.link_create;
            link.__bindgen_anon_1.prog_fd = self.fd.as_raw_fd() as u32;
            link.attach_type = self.kind.attach_type();
            let multi = &mut link.__bindgen_anon_3.uprobe_multi;
            multi.path = path.as_ptr() as u64;
            multi.offsets = offsets.as_ptr() as u64;
            multi.cnt = 1;
            multi.flags = flags;
            multi.pid = pid;
        }
        // SAFETY: the path and the one offset outlive the call, and cnt is 1.
        let fd = unsafe { sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) }?;
        // SAFETY: the kernel returned a new descriptor we own.
        Ok(MultiLink {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}
