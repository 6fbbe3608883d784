//! The bpf(2) system call and the one socket option the toolkit reads.
//!
//! This is the only module of meshpass allowed to use `unsafe`: each call hands the kernel a
//! 144-byte `union bpf_attr` built here field by field (offsets from `<linux/bpf.h>`), and
//! pointers into buffers that outlive the call. Descriptors the kernel returns are wrapped in
//! [`OwnedFd`] at once, so they are closed exactly once.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const ATTR_SIZE: usize = 144;

const CMD_MAP_CREATE: libc::c_long = 0;
const CMD_MAP_LOOKUP_ELEM: libc::c_long = 1;
const CMD_MAP_UPDATE_ELEM: libc::c_long = 2;
const CMD_MAP_DELETE_ELEM: libc::c_long = 3;
const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_OBJ_PIN: libc::c_long = 6;
const CMD_OBJ_GET: libc::c_long = 7;
const CMD_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const CMD_LINK_CREATE: libc::c_long = 28;
const CMD_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr`, as bytes.
struct Attr([u8; ATTR_SIZE]);

impl Attr {
    fn new() -> Self {
        Self([0; ATTR_SIZE])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn ptr<T>(&mut self, off: usize, p: *const T) -> &mut Self {
        self.u64(off, p as usize as u64)
    }
    fn name(&mut self, off: usize, name: &str) -> &mut Self {
        // BPF_OBJ_NAME_LEN is 16 with the terminating zero; the kernel accepts [A-Za-z0-9_.].
        let clean: Vec<u8> =
            name.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.').take(15).collect();
        self.0[off..off + clean.len()].copy_from_slice(&clean);
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable `union bpf_attr` of the size passed; every pointer
    // stored in it (by the callers below) points into a buffer that lives until this returns.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), ATTR_SIZE as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_MAP_CREATE`.
pub(crate) fn map_create(
    kind: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, kind).u32(4, key_size).u32(8, value_size).u32(12, max_entries).name(28, name);
    bpf_fd(CMD_MAP_CREATE, &mut a)
}

/// `BPF_MAP_UPDATE_ELEM` with `flags` (`BPF_ANY` = 0).
pub(crate) fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).ptr(8, key.as_ptr()).ptr(16, value.as_ptr()).u64(24, flags);
    bpf(CMD_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM`: `Ok(false)` when the key has no value. `value` must be the map's
/// value size.
pub(crate) fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).ptr(8, key.as_ptr()).ptr(16, value.as_mut_ptr());
    match bpf(CMD_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`: `Ok(false)` when the key had no value.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).ptr(8, key.as_ptr());
    match bpf(CMD_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_PROG_LOAD`. On failure the verifier's log comes back with the error.
pub(crate) fn prog_load(
    kind: u32,
    expected_attach_type: u32,
    insns: &[u8],
    name: &str,
) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"Apache-2.0";
    let load = |log: &mut [u8], level: u32| {
        let mut a = Attr::new();
        a.u32(0, kind)
            .u32(4, (insns.len() / 8) as u32)
            .ptr(8, insns.as_ptr())
            .ptr(16, license.as_ptr())
            .name(48, name)
            .u32(68, expected_attach_type);
        if level > 0 {
            a.u32(24, level).u32(28, log.len() as u32).ptr(32, log.as_mut_ptr());
        }
        bpf_fd(CMD_PROG_LOAD, &mut a)
    };
    match load(&mut [], 0) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Load again with the log on, only to explain the refusal.
            let mut log = vec![0u8; 1 << 20];
            let _ = load(&mut log, 1);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err((first, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `BPF_OBJ_PIN`: keeps `fd`'s object alive under `path` in a bpf filesystem.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    let mut a = Attr::new();
    a.ptr(0, p.as_ptr()).u32(8, fd.as_raw_fd() as u32);
    bpf(CMD_OBJ_PIN, &mut a).map(drop)
}

/// `BPF_OBJ_GET`: opens a pinned object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    let mut a = Attr::new();
    a.ptr(0, p.as_ptr());
    bpf_fd(CMD_OBJ_GET, &mut a)
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (a network namespace or a cgroup).
pub(crate) fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32).u32(4, target.as_raw_fd() as u32).u32(8, attach_type);
    bpf_fd(CMD_LINK_CREATE, &mut a)
}

/// `BPF_LINK_UPDATE`: swaps the program behind a link in one step.
pub(crate) fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, link.as_raw_fd() as u32).u32(4, new_prog.as_raw_fd() as u32);
    bpf(CMD_LINK_UPDATE, &mut a).map(drop)
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a link: the 48 bytes of `struct bpf_link_info`.
pub(crate) fn link_info(link: BorrowedFd<'_>) -> io::Result<[u8; 48]> {
    let mut info = [0u8; 48];
    let mut a = Attr::new();
    a.u32(0, link.as_raw_fd() as u32).u32(4, info.len() as u32).ptr(8, info.as_mut_ptr());
    bpf(CMD_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info)
}

/// `SO_NETNS_COOKIE` of a socket: the cookie of the network namespace it was created in.
pub(crate) fn netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given for the whole call.
    let r = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut v as *mut u64).cast(), &mut len)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}
