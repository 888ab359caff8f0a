//! The kernel's own list of BPF links, whoever holds them: what tests check "never got a
//! uprobe" against, instead of the agent's word.

use std::os::fd::{FromRawFd as _, OwnedFd};

/// `BPF_LINK_GET_FD_BY_ID`.
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
/// `BPF_LINK_GET_NEXT_ID`.
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// `bpf(cmd, attr)` with the first words of a zeroed `union bpf_attr` (the kernel checks that
/// every byte past what the command reads is zero).
fn bpf(cmd: libc::c_long, words: [u32; 3]) -> std::io::Result<i64> {
    let mut attr = [0_u32; 32];
    attr[..3].copy_from_slice(&words);
    // SAFETY: a valid, writable attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else if cmd == BPF_LINK_GET_NEXT_ID {
        Ok(i64::from(attr[1]))
    } else {
        Ok(ret)
    }
}

/// The fdinfo of every BPF link in the kernel now (links that go away while listed are
/// skipped).
pub(crate) fn kernel_links() -> Vec<String> {
    let mut links = Vec::new();
    let mut id = 0_u32;
    while let Ok(next) = bpf(BPF_LINK_GET_NEXT_ID, [id, 0, 0]) {
        id = next as u32;
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, [id, 0, 0]) else {
            continue;
        };
        // SAFETY: a new descriptor the kernel just returned, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let path = format!("/proc/self/fdinfo/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        if let Ok(info) = std::fs::read_to_string(path) {
            links.push(info);
        }
    }
    links
}

/// The kernel's uprobe links on process `pid`: a session link names its pid, a classic uprobe
/// link the file through `/proc/PID/root`, as the daemon opens it.
pub(crate) fn uprobe_links_on(pid: u32) -> Vec<String> {
    let field = |info: &str, name: &str| -> Option<String> {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    kernel_links()
        .into_iter()
        .filter(|info| match field(info, "link_type:").as_deref() {
            Some("uprobe_multi") => field(info, "pid:") == Some(pid.to_string()),
            Some("perf") => {
                field(info, "name:").is_some_and(|name| name.starts_with(&format!("/proc/{pid}/")))
            }
            _ => false,
        })
        .collect()
}
