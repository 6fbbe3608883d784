//! A small eBPF toolkit for meshpass's socket-level capture.
//!
//! meshpass's eBPF programs are short and generated from a workload's settings, so they are
//! written with an assembler ([`asm`]) rather than compiled from C: no clang, no BTF, no ELF
//! loader, and the same settings always give the same bytes (golden-tested as listings).
//! The typed handles here ([`Map`], [`Prog`], [`Link`]) wrap the few bpf(2) commands needed,
//! and every failure says which object and what the kernel answered (the verifier's log
//! included).

pub mod asm;
mod sys;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use asm::{AsmError, Program};

/// Map types used by meshpass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_SOCKMAP`: sockets by index, for `bpf_sk_assign`.
    SockMap,
}

impl MapKind {
    fn id(self) -> u32 {
        match self {
            MapKind::Array => 2,
            MapKind::SockMap => 15,
        }
    }
}

/// Program types and where they attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgKind {
    /// `BPF_PROG_TYPE_SK_LOOKUP`, attached to a network namespace: picks the socket that
    /// receives a new connection.
    SkLookup,
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` at `BPF_CGROUP_INET4_CONNECT`.
    Connect4,
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` at `BPF_CGROUP_INET6_CONNECT`.
    Connect6,
}

impl ProgKind {
    fn ids(self) -> (u32, u32) {
        match self {
            ProgKind::SkLookup => (30, 36),
            ProgKind::Connect4 => (18, 10),
            ProgKind::Connect6 => (18, 11),
        }
    }
}

/// What went wrong, with the object and the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The generator produced an invalid program (a meshpass bug).
    #[error("assembling BPF program {name}: {source}")]
    Assemble {
        /// Program name.
        name: String,
        /// Why.
        #[source]
        source: AsmError,
    },
    /// A program refers to a map slot the loader was not given.
    #[error("BPF program {name} refers to map slot that was not supplied")]
    MissingMap {
        /// Program name.
        name: String,
    },
    /// `BPF_MAP_CREATE` failed.
    #[error("creating BPF map {name}: {source}")]
    MapCreate {
        /// Map name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A map read or write failed.
    #[error("{op} on BPF map {name}: {source}")]
    MapAccess {
        /// `update`, `lookup` or `delete`.
        op: &'static str,
        /// Map name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The verifier refused a program.
    #[error("loading BPF program {name}: {source}\n{log}")]
    ProgLoad {
        /// Program name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
        /// The tail of the verifier's log.
        log: String,
    },
    /// Pinning or opening a pinned object failed.
    #[error("{op} {path}: {source}")]
    Pin {
        /// `pinning` or `opening pinned`.
        op: &'static str,
        /// The bpffs path.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Attaching or updating a link failed.
    #[error("{op} BPF link for {name}: {source}")]
    Link {
        /// `creating` or `updating`.
        op: &'static str,
        /// Program name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    name: String,
}

impl Map {
    /// Creates a map.
    pub fn create(
        kind: MapKind,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> Result<Self, BpfError> {
        let fd = sys::map_create(kind.id(), key_size, value_size, max_entries, name)
            .map_err(|source| BpfError::MapCreate { name: name.to_owned(), source })?;
        Ok(Self { fd, name: name.to_owned() })
    }

    /// Opens a map pinned at `path`.
    pub fn open_pinned(path: &Path) -> Result<Self, BpfError> {
        Ok(Self { fd: get_pinned(path)?, name: path.display().to_string() })
    }

    /// Pins the map at `path`.
    pub fn pin(&self, path: &Path) -> Result<(), BpfError> {
        pin(self.fd.as_fd(), path)
    }

    /// Writes `value` at `key` (creating or replacing).
    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        sys::map_update(self.fd.as_fd(), key, value, 0).map_err(|source| self.access("update", source))
    }

    /// Reads the value at `key` into `value`; `false` when there is none.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        sys::map_lookup(self.fd.as_fd(), key, value).map_err(|source| self.access("lookup", source))
    }

    /// Removes `key`; `false` when it had no value.
    pub fn delete(&self, key: &[u8]) -> Result<bool, BpfError> {
        sys::map_delete(self.fd.as_fd(), key).map_err(|source| self.access("delete", source))
    }

    fn access(&self, op: &'static str, source: io::Error) -> BpfError {
        BpfError::MapAccess { op, name: self.name.clone(), source }
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A loaded (verified) program.
#[derive(Debug)]
pub struct Prog {
    fd: OwnedFd,
    kind: ProgKind,
    name: String,
}

impl Prog {
    /// Loads `program`, resolving its map slots to `maps`.
    pub fn load(kind: ProgKind, program: &Program, maps: &[&Map], name: &str) -> Result<Self, BpfError> {
        use std::os::fd::AsRawFd;
        let fds: Vec<i32> = maps.iter().map(|m| m.fd.as_raw_fd()).collect();
        let bytes = program.bytes(&fds).ok_or_else(|| BpfError::MissingMap { name: name.to_owned() })?;
        let (prog_type, attach) = kind.ids();
        let fd = sys::prog_load(prog_type, attach, &bytes, name).map_err(|(source, log)| BpfError::ProgLoad {
            name: name.to_owned(),
            source,
            log: tail(&log, 40),
        })?;
        Ok(Self { fd, kind, name: name.to_owned() })
    }

    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a link is attached to, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// A network namespace, by inode; 0 once the namespace is gone (the link is defunct).
    Netns {
        /// `netns_ino`.
        ino: u32,
    },
    /// A cgroup v2 directory, by id (its inode number); 0 once the cgroup is gone.
    Cgroup {
        /// `cgroup_id`.
        id: u64,
    },
    /// Another kind of link (`enum bpf_link_type`).
    Other(u32),
}

/// An attachment of a program to a network namespace or a cgroup. It lasts while a
/// descriptor or a pin refers to it.
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
    name: String,
}

impl Link {
    /// Attaches `prog` to `target`: a network namespace file for [`ProgKind::SkLookup`], a
    /// cgroup v2 directory for the connect hooks.
    pub fn attach(prog: &Prog, target: BorrowedFd<'_>) -> Result<Self, BpfError> {
        let (_, attach) = prog.kind.ids();
        let fd = sys::link_create(prog.fd.as_fd(), target, attach).map_err(|source| BpfError::Link {
            op: "creating",
            name: prog.name.clone(),
            source,
        })?;
        Ok(Self { fd, name: prog.name.clone() })
    }

    /// Opens a link pinned at `path`.
    pub fn open_pinned(path: &Path) -> Result<Self, BpfError> {
        Ok(Self { fd: get_pinned(path)?, name: path.display().to_string() })
    }

    /// Pins the link at `path`, so it outlives this process.
    pub fn pin(&self, path: &Path) -> Result<(), BpfError> {
        pin(self.fd.as_fd(), path)
    }

    /// What the link is attached to.
    pub fn target(&self) -> Result<LinkTarget, BpfError> {
        let info = sys::link_info(self.fd.as_fd()).map_err(|source| BpfError::Link {
            op: "reading",
            name: self.name.clone(),
            source,
        })?;
        let u32_at = |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
        Ok(match u32_at(0) {
            3 => LinkTarget::Cgroup { id: u64::from(u32_at(16)) | (u64::from(u32_at(20)) << 32) },
            5 => LinkTarget::Netns { ino: u32_at(16) },
            other => LinkTarget::Other(other),
        })
    }

    /// Replaces the link's program in one step: no moment without a program.
    pub fn update(&self, prog: &Prog) -> Result<(), BpfError> {
        sys::link_update(self.fd.as_fd(), prog.fd.as_fd()).map_err(|source| BpfError::Link {
            op: "updating",
            name: self.name.clone(),
            source,
        })
    }
}

fn get_pinned(path: &Path) -> Result<OwnedFd, BpfError> {
    sys::obj_get(path).map_err(|source| BpfError::Pin { op: "opening pinned", path: path.to_owned(), source })
}

fn pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), BpfError> {
    sys::obj_pin(fd, path).map_err(|source| BpfError::Pin { op: "pinning", path: path.to_owned(), source })
}

/// The network-namespace cookie of a socket (what `bpf_get_netns_cookie` returns for
/// sockets of that namespace).
pub fn netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    sys::netns_cookie(sock)
}
