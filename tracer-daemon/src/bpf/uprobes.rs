//! The allocator probes' programs and links, made the one way the kernel and the agent's
//! capabilities allow: uprobe_multi links ([`uprobe_multi`], Linux 6.6+), which need CAP_BPF
//! and CAP_PERFMON only, or else aya's classic uprobes, made through `perf_event_open` of the
//! kernel's uprobe PMU, which the kernel refuses without CAP_SYS_ADMIN (the DaemonSet's
//! `deploy/overlays/kernel-before-6.6` adds it back on such kernels). The same programs run
//! either way; only how they are loaded and attached differs.

use std::{collections::HashMap, os::fd::RawFd, path::Path};

use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
};

use super::{
    LoadError, Probes,
    uprobe_multi::{LinkKind, MultiLink, MultiProgram, Placement, RelocatedObject},
};

/// How allocator probes are attached (`--uprobe-links`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UprobeLinks {
    /// uprobe_multi links where the kernel has them (no CAP_SYS_ADMIN needed), else classic
    /// perf_event uprobes (CAP_SYS_ADMIN needed).
    #[default]
    Auto,
    /// Classic perf_event uprobes only, as on kernels before 6.6 (CAP_SYS_ADMIN needed).
    PerfEvent,
}

/// The uprobe programs and how their links are made.
pub(crate) enum UprobePrograms {
    /// Loaded for uprobe_multi links, by name.
    Multi(HashMap<&'static str, MultiProgram>),
    /// Loaded by aya (in `Probes::ebpf`) for perf_event uprobes.
    PerfEvent,
}

/// A live probe link; dropping it detaches the probe.
#[derive(Debug)]
pub enum ProbeLink {
    /// A uprobe_multi or session link.
    Multi(MultiLink),
    /// A classic uprobe (a perf event with the program attached).
    PerfEvent(UProbeLink),
}

/// Why a probe could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    /// The program is not loaded (a name the object lacks, or the floor programs not loaded).
    #[error("program {0} is not loaded")]
    NotLoaded(&'static str),
    /// Pid 0 names no process.
    #[error("pid 0 names no process")]
    NoProcess,
    /// The kernel refused the uprobe_multi link.
    #[error("the kernel refused the uprobe_multi link")]
    Multi(#[source] std::io::Error),
    /// The kernel refused the perf_event uprobe.
    #[error(transparent)]
    PerfEvent(#[from] aya::programs::ProgramError),
}

impl UprobePrograms {
    /// Loads `names` for uprobe_multi links when `links` allows and the kernel accepts the
    /// first of them; otherwise says why (the caller then loads them through aya).
    pub(super) fn load_multi(
        object: &RelocatedObject,
        names: &[&'static str],
        links: UprobeLinks,
    ) -> Result<HashMap<&'static str, MultiProgram>, String> {
        if links == UprobeLinks::PerfEvent {
            return Err("--uprobe-links perf-event".to_owned());
        }
        let mut programs = HashMap::new();
        for &name in names {
            let program = object.load(name, LinkKind::Probe)?;
            let _ = programs.insert(name, program);
        }
        Ok(programs)
    }
}

impl Probes {
    /// Loads the uprobe programs `names` the way [`Self::uprobe_programs`] attaches them; a
    /// loaded one stays as it is.
    pub(super) fn load_uprobes(&mut self, names: &[&'static str]) -> Result<(), LoadError> {
        match &mut self.uprobe_programs {
            UprobePrograms::Multi(programs) => {
                let missing: Vec<&'static str> = names
                    .iter()
                    .copied()
                    .filter(|name| !programs.contains_key(name))
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                let object = self.relocated.as_ref().ok_or(LoadError::NoObject)?;
                for name in missing {
                    let program = object
                        .load(name, LinkKind::Probe)
                        .map_err(|reason| LoadError::Refused { name, reason })?;
                    let _ = programs.insert(name, program);
                }
                Ok(())
            }
            UprobePrograms::PerfEvent => {
                for &name in names {
                    super::load_uprobe(&mut self.ebpf, name)?;
                }
                Ok(())
            }
        }
    }

    /// Unloads the uprobe programs `names` (their links must be gone).
    pub(super) fn unload_uprobes(&mut self, names: &[&'static str]) {
        for &name in names {
            match &mut self.uprobe_programs {
                UprobePrograms::Multi(programs) => drop(programs.remove(name)),
                UprobePrograms::PerfEvent => {
                    if let Some(program) = self
                        .ebpf
                        .program_mut(name)
                        .and_then(|p| <&mut UProbe>::try_from(p).ok())
                    {
                        let _ = program.unload();
                    }
                }
            }
        }
    }

    /// Attaches program `name` at `offset` of `path` for process `pid` (at the offset, or at
    /// the return of the function there for a return program: `placement` says which).
    pub(crate) fn attach_uprobe(
        &mut self,
        name: &'static str,
        path: &Path,
        offset: u64,
        pid: u32,
        placement: Placement,
    ) -> Result<ProbeLink, UprobeError> {
        match &self.uprobe_programs {
            UprobePrograms::Multi(programs) => {
                let program = programs.get(name).ok_or(UprobeError::NotLoaded(name))?;
                program
                    .attach(path, offset, pid, placement)
                    .map(ProbeLink::Multi)
                    .map_err(UprobeError::Multi)
            }
            UprobePrograms::PerfEvent => {
                let pid = std::num::NonZeroU32::new(pid).ok_or(UprobeError::NoProcess)?;
                let program: &mut UProbe = self
                    .ebpf
                    .program_mut(name)
                    .and_then(|p| p.try_into().ok())
                    .ok_or(UprobeError::NotLoaded(name))?;
                let id = program.attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    path,
                    UProbeScope::OneProcess(pid),
                )?;
                Ok(ProbeLink::PerfEvent(program.take_link(id)?))
            }
        }
    }

    /// The descriptor of a loaded uprobe program (for its run counters in fdinfo).
    pub(crate) fn uprobe_fd(&self, name: &str) -> Option<RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        match &self.uprobe_programs {
            UprobePrograms::Multi(programs) => programs.get(name).map(MultiProgram::raw_fd),
            UprobePrograms::PerfEvent => self
                .ebpf
                .program(name)
                .and_then(|p| p.fd().ok())
                .map(|fd| fd.as_fd().as_raw_fd()),
        }
    }
}
