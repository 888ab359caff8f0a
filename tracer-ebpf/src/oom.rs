//! The OOM-kill hook: `tp_btf/mark_victim`, where the kernel has chosen its victim.
//!
//! The victim is the hook's task argument; the current task is whoever allocated and triggered
//! the OOM, often another process of the same container. Both are recorded, and mixing them up
//! is the bug this module exists not to have. Fields of the victim's task_struct are read at
//! offsets the daemon found in the kernel's BTF ([`KernelLayout`]).

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{COMM_LEN, KernelLayout, OomKillEvent, Stat, event_kind};

use crate::{
    config::{kernel_layout, read_kernel as read},
    maps::EVENTS,
    stats::bump,
};

/// The kernfs id of a `struct cgroup *`.
fn cgroup_id(layout: &KernelLayout, cgroup: u64) -> u64 {
    let kn: u64 = read(cgroup, layout.cgroup_kn);
    read(kn, layout.kernfs_node_id)
}

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim(ctx: BtfTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let layout = kernel_layout();
    let (trigger_tgid, trigger_tid) = {
        let pid_tgid = bpf_get_current_pid_tgid();
        ((pid_tgid >> 32) as u32, pid_tgid as u32)
    };
    let mut event = OomKillEvent {
        kind: event_kind::OOM_KILL,
        trigger_tgid,
        trigger_tid,
        // SAFETY: the helpers have no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        trigger_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        // SAFETY: as above.
        trigger_cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        ..OomKillEvent::default()
    };
    if layout.valid == 1 {
        event.victim_read = 1;
        event.victim_tgid = read::<i32>(task, layout.task_tgid) as u32;
        event.victim_tid = read::<i32>(task, layout.task_pid) as u32;
        event.victim_comm = read(task, layout.task_comm);
        let mm: u64 = read(task, layout.task_mm);
        let counter = |index: u32| -> i64 {
            read(
                mm,
                layout.mm_rss_stat + index * layout.rss_counter_stride + layout.rss_counter_value,
            )
        };
        // MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES.
        event.rss_file_pages = counter(0);
        event.rss_anon_pages = counter(1);
        event.swap_entries = counter(2);
        event.rss_shmem_pages = counter(3);
        let css_set: u64 = read(task, layout.task_cgroups);
        event.victim_cgroup_id = cgroup_id(&layout, read(css_set, layout.css_set_dfl_cgrp));
        let memory_css: u64 = read(css_set, layout.css_set_subsys + layout.memory_cgrp_id * 8);
        event.victim_memcg_id = cgroup_id(&layout, read(memory_css, layout.css_cgroup));
    }
    if EVENTS.output::<OomKillEvent>(&event, 0).is_err() {
        bump(Stat::EVENTS_DROPPED);
    }
    0
}
