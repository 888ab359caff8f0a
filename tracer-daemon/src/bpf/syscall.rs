//! The raw `bpf()` system call, for what aya 0.14 has no API for: batched map reads and deletes
//! (`collect::batch`) and uprobe session programs and links ([`session`](super::session)).

use std::{io, mem::size_of};

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Issues `bpf(cmd, attr)`. Returns the kernel's result: a new descriptor, owned by the caller,
/// for the commands that create one; 0 for the others.
///
/// # Safety
///
/// Every pointer `attr` holds for `cmd` must point to memory that is valid for the kernel to
/// read or write, as large as the sizes and counts in `attr` say, for the length of the call.
pub(crate) unsafe fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed; the caller vouches for the
    // pointers in it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // bpf() returns an int.
        Ok(ret as i32)
    }
}
