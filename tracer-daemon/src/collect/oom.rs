//! OOM kills as the kernel hook saw them, in the daemon's terms.

use serde::{Deserialize, Serialize};
use tracer_common::{COMM_LEN, OomKillEvent};

/// One OOM kill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKill {
    /// The victim's pid (from the hook's task argument), when the kernel layout was known.
    pub victim_pid: Option<u32>,
    /// The victim's thread id.
    pub victim_tid: Option<u32>,
    /// The victim's command name.
    pub victim_comm: String,
    /// The process whose allocation triggered the OOM (the current task at the hook).
    pub trigger_pid: u32,
    /// Its command name.
    pub trigger_comm: String,
    /// When the kernel chose the victim (CLOCK_MONOTONIC ns).
    pub timestamp_ns: u64,
    /// Victim's resident anonymous memory, bytes.
    pub rss_anon_bytes: u64,
    /// Victim's resident file-backed memory, bytes.
    pub rss_file_bytes: u64,
    /// Victim's resident shared memory, bytes.
    pub rss_shmem_bytes: u64,
    /// Victim's swapped-out memory, bytes.
    pub swap_bytes: u64,
    /// Victim's cgroup v2 id (the directory's inode number).
    pub victim_cgroup_id: u64,
    /// Victim's memory cgroup id (the v1 memcg directory's inode on hybrid hosts).
    pub victim_memcg_id: u64,
    /// The triggering task's cgroup v2 id.
    pub trigger_cgroup_id: u64,
}

fn comm(bytes: &[u8; COMM_LEN]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn pages_to_bytes(pages: i64, page_size: u64) -> u64 {
    u64::try_from(pages).unwrap_or(0).saturating_mul(page_size)
}

impl OomKill {
    /// From the BPF record.
    pub fn from_event(event: &OomKillEvent, page_size: u64) -> Self {
        let read = event.victim_read == 1;
        Self {
            victim_pid: read.then_some(event.victim_tgid),
            victim_tid: read.then_some(event.victim_tid),
            victim_comm: comm(&event.victim_comm),
            trigger_pid: event.trigger_tgid,
            trigger_comm: comm(&event.trigger_comm),
            timestamp_ns: event.timestamp_ns,
            rss_anon_bytes: pages_to_bytes(event.rss_anon_pages, page_size),
            rss_file_bytes: pages_to_bytes(event.rss_file_pages, page_size),
            rss_shmem_bytes: pages_to_bytes(event.rss_shmem_pages, page_size),
            swap_bytes: pages_to_bytes(event.swap_entries, page_size),
            victim_cgroup_id: event.victim_cgroup_id,
            victim_memcg_id: event.victim_memcg_id,
            trigger_cgroup_id: event.trigger_cgroup_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_becomes_bytes_and_names_and_keeps_victim_apart_from_trigger() {
        let mut event = OomKillEvent {
            victim_tgid: 10,
            victim_tid: 11,
            trigger_tgid: 20,
            victim_read: 1,
            rss_anon_pages: 3,
            rss_file_pages: -1,
            ..OomKillEvent::default()
        };
        event.victim_comm[..4].copy_from_slice(b"leak");
        let kill = OomKill::from_event(&event, 4096);
        assert_eq!((kill.victim_pid, kill.trigger_pid), (Some(10), 20));
        assert_eq!(kill.victim_comm, "leak");
        assert_eq!(kill.rss_anon_bytes, 3 * 4096);
        assert_eq!(
            kill.rss_file_bytes, 0,
            "a negative per-cpu approximation is clamped"
        );
        event.victim_read = 0;
        assert_eq!(OomKill::from_event(&event, 4096).victim_pid, None);
    }
}
