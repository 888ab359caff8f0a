//! Offsets into kernel structures, read from the running kernel's BTF, for the OOM-kill hook
//! and for the stack walkers' repair of return addresses a pending uretprobe hijacked.
//!
//! Rust BPF programs get no CO-RE relocations, so the daemon does what libbpf would: it looks
//! the fields up by name in /sys/kernel/btf/vmlinux (with btf-rs) and hands the offsets to the
//! program as a load-time global. Fields inside anonymous structs and unions (randomized layouts
//! group them so) are found by descending into them.

use std::path::Path;

use btf_rs::{Btf, Type};
use tracer_common::KernelLayout;

/// Why the layout could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The BTF file could not be parsed.
    #[error("cannot parse the kernel's BTF at {path}: {message}")]
    Btf {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A structure or field is not in this kernel's BTF.
    #[error("the kernel's BTF has no {what}")]
    Missing {
        /// `struct.field` or type name.
        what: String,
    },
}

fn missing(what: impl Into<String>) -> LayoutError {
    LayoutError::Missing { what: what.into() }
}

/// Resolves every offset the OOM-kill program reads.
pub fn resolve(btf_path: &Path) -> Result<KernelLayout, LayoutError> {
    let btf = Btf::from_file(btf_path).map_err(|e| LayoutError::Btf {
        path: btf_path.display().to_string(),
        message: e.to_string(),
    })?;
    let offset = |structure: &str, field: &str| member_offset(&btf, structure, field);
    let (rss_counter_stride, rss_counter_value) = rss_counter(&btf)?;
    Ok(KernelLayout {
        task_pid: offset("task_struct", "pid")?,
        task_tgid: offset("task_struct", "tgid")?,
        task_comm: offset("task_struct", "comm")?,
        task_mm: offset("task_struct", "mm")?,
        task_cgroups: offset("task_struct", "cgroups")?,
        mm_rss_stat: offset("mm_struct", "rss_stat")?,
        rss_counter_stride,
        rss_counter_value,
        css_set_dfl_cgrp: offset("css_set", "dfl_cgrp")?,
        css_set_subsys: offset("css_set", "subsys")?,
        css_cgroup: offset("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: offset("cgroup", "kn")?,
        kernfs_node_id: offset("kernfs_node", "id")?,
        memory_cgrp_id: enum_value(&btf, "cgroup_subsys_id", "memory_cgrp_id")?,
        valid: 1,
        ..uretprobe_offsets(&btf).unwrap_or_default()
    })
}

/// The offsets of a task's pending uretprobe returns (see [`KernelLayout::uretprobes_valid`]);
/// `None` on a kernel without them (built without uprobes), whose stacks need no repair.
fn uretprobe_offsets(btf: &Btf) -> Option<KernelLayout> {
    let offset = |structure: &str, field: &str| member_offset(btf, structure, field).ok();
    Some(KernelLayout {
        uretprobes_valid: 1,
        task_utask: offset("task_struct", "utask")?,
        utask_return_instances: offset("uprobe_task", "return_instances")?,
        return_instance_stack: offset("return_instance", "stack")?,
        return_instance_orig_ret_vaddr: offset("return_instance", "orig_ret_vaddr")?,
        return_instance_next: offset("return_instance", "next")?,
        ..KernelLayout::default()
    })
}

fn structure(btf: &Btf, name: &str) -> Result<btf_rs::Struct, LayoutError> {
    btf.resolve_types_by_name(name)
        .map_err(|_| missing(format!("struct {name}")))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if s.size() > 0 => Some(s),
            _ => None,
        })
        .ok_or_else(|| missing(format!("struct {name}")))
}

/// Byte offset of `field` in `struct name`, looking inside anonymous members.
fn member_offset(btf: &Btf, name: &str, field: &str) -> Result<u32, LayoutError> {
    let s = structure(btf, name)?;
    find_member(btf, &s, field, 0, 0)
        .map(|(bytes, _)| bytes)
        .ok_or_else(|| missing(format!("{name}.{field}")))
}

/// (byte offset, type) of a member, looking inside anonymous structs and unions.
fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    field: &str,
    base_bits: u32,
    depth: u32,
) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    for member in &s.members {
        let bits = base_bits + member.bit_offset();
        let name = btf.resolve_name(member).unwrap_or_default();
        let Ok(member_type) = btf.resolve_chained_type(member) else {
            continue;
        };
        if name == field {
            return Some((bits / 8, member_type));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = member_type
            && let Some(found) = find_member(btf, &inner, field, bits, depth + 1)
        {
            // An anonymous struct or union: its fields belong to the outer struct.
            return Some(found);
        }
    }
    None
}

/// (stride, value offset) of the rss counters: `struct percpu_counter rss_stat[]` since Linux
/// 6.2 (the value is its `count`), `struct mm_rss_stat { atomic_long_t count[]; }` before.
fn rss_counter(btf: &Btf) -> Result<(u32, u32), LayoutError> {
    let mm = structure(btf, "mm_struct")?;
    let (_, rss_type) =
        find_member(btf, &mm, "rss_stat", 0, 0).ok_or_else(|| missing("mm_struct.rss_stat"))?;
    if let Type::Array(_) = rss_type {
        let counter = structure(btf, "percpu_counter")?;
        let (value, _) = find_member(btf, &counter, "count", 0, 0)
            .ok_or_else(|| missing("percpu_counter.count"))?;
        return Ok((counter.size() as u32, value));
    }
    let old = structure(btf, "mm_rss_stat")?;
    let (value, _) =
        find_member(btf, &old, "count", 0, 0).ok_or_else(|| missing("mm_rss_stat.count"))?;
    Ok((8, value))
}

/// The value of an enumerator.
fn enum_value(btf: &Btf, enum_name: &str, enumerator: &str) -> Result<u32, LayoutError> {
    let types = btf
        .resolve_types_by_name(enum_name)
        .map_err(|_| missing(format!("enum {enum_name}")))?;
    for t in types {
        if let Type::Enum(e) = t {
            for member in &e.members {
                if btf.resolve_name(member).is_ok_and(|n| n == enumerator) {
                    return Ok(member.val());
                }
            }
        }
    }
    Err(missing(format!("{enum_name}::{enumerator}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kernel: every offset resolves and a few are where every x86-64 kernel of
    /// this era has them.
    #[test]
    fn the_running_kernels_layout_resolves() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        assert!(path.exists(), "this test needs a kernel with BTF");
        let layout = resolve(path).expect("layout");
        assert_eq!(layout.valid, 1);
        assert!(
            layout.task_tgid == layout.task_pid + 4,
            "pid and tgid are adjacent: {layout:?}"
        );
        assert!(layout.rss_counter_stride >= 8);
        assert!(layout.memory_cgrp_id < 16);
        assert_eq!(
            layout.uretprobes_valid, 1,
            "this kernel has uprobes: {layout:?}"
        );
        assert_ne!(layout.task_utask, 0, "{layout:?}");
        assert_ne!(
            layout.return_instance_stack, layout.return_instance_orig_ret_vaddr,
            "{layout:?}"
        );
    }

    #[test]
    fn a_missing_btf_file_is_an_error_naming_it() {
        let error = resolve(Path::new("/nonexistent/vmlinux")).expect_err("no file");
        assert!(
            error.to_string().contains("/nonexistent/vmlinux"),
            "{error}"
        );
    }
}
