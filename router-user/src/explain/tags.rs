//! Whether the programs attached to a port are the build `explain` runs:
//! the kernel's tag of a program is a hash of its instructions with map
//! references left out, so the daemon's and the private copy's agree
//! exactly when they come from the same object. aya 0.14 exposes neither a
//! program's tag nor a link's program, hence the raw `bpf(2)` calls.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: attr is a zeroed, bpf_attr-sized buffer set up by the caller
    // for `cmd`; any pointer in it outlives the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) }
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`; false on failure.
fn info(fd: i32, info: &mut [u32; 64]) -> bool {
    let mut attr = [0u64; 16];
    attr[0] = (fd as u32 as u64) | ((std::mem::size_of_val(info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) == 0
}

fn close(fd: i64) {
    // SAFETY: a descriptor the kernel handed us, closed once.
    unsafe { libc::close(fd as i32) };
}

/// A program's tag (bpf_prog_info: type, id, then the tag).
fn tag_of(fd: i32) -> Option<[u8; 8]> {
    let mut i = [0u32; 64];
    if !info(fd, &mut i) {
        return None;
    }
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&i[2].to_ne_bytes());
    t[4..].copy_from_slice(&i[3].to_ne_bytes());
    Some(t)
}

/// The tag of the program a pinned link runs (bpf_link_info: type, id,
/// prog_id).
pub fn of_link(pin: &Path) -> Option<[u8; 8]> {
    let path = CString::new(pin.as_os_str().as_bytes()).ok()?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let link = bpf(BPF_OBJ_GET, &mut attr);
    if link < 0 {
        return None;
    }
    let mut i = [0u32; 64];
    let ok = info(link as i32, &mut i);
    close(link);
    if !ok {
        return None;
    }
    let mut attr = [0u64; 16];
    attr[0] = i[2] as u64;
    let prog = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
    if prog < 0 {
        return None;
    }
    let t = tag_of(prog as i32);
    close(prog);
    t
}

/// The tag of a loaded program.
pub fn of_program(fd: BorrowedFd<'_>) -> Option<[u8; 8]> {
    tag_of(fd.as_raw_fd())
}

pub fn hex(t: &[u8; 8]) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}
