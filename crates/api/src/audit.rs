//! The audit log: `<state-dir>/audit.log`, one JSON [`AuditEntry`] per line, appended, mode
//! 0600. Every write attempt is recorded, accepted or refused, with the caller and the
//! reason: the write routes ([`write_action`]) run behind a layer that records every refusal
//! (401, 403 CSRF, 400, 413, 409, 422, 428, …) with what the handler had learnt by then
//! ([`AuditSlot`]); the handler records what reached the backend, and each restart's end.
//!
//! The log is rotated by size, as logrotate would with `rotate 3`: when a line would take
//! `audit.log` past its limit, `audit.log.2` becomes `audit.log.3`, `.1` becomes `.2`, the log
//! becomes `audit.log.1` and a new log starts. A long-running server's log therefore stays
//! bounded (four files at most) while the recent history stays readable, also through
//! `GET /api/v1/audit`, which reads across the rotated files.

use crate::error::ApiError;
use crate::model::{AuditEntry, Passthrough};
use axum::http::Method;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

/// The log file's name inside the state directory.
pub const AUDIT_FILE: &str = "audit.log";

/// Size past which the log is rotated (10 MiB: tens of thousands of changes).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Rotated files kept (`audit.log.1` … `audit.log.3`); older entries are dropped.
pub const KEEP_ROTATED: usize = 3;

/// The audit action of a write route (`method`, route template), `None` for a route that
/// writes nothing. Every route listed here is audited on every attempt.
pub fn write_action(method: &Method, route: &str) -> Option<&'static str> {
    const W: &str = "/api/v1/namespaces/{ns}/workloads/{name}";
    match (method.as_str(), route) {
        ("PUT", "/api/v1/defaults") => return Some("defaults.set"),
        ("POST", "/api/v1/passthrough/batch") => return Some("passthrough.batch"),
        _ => {}
    }
    match (method.as_str(), route.strip_prefix(W)?) {
        ("PUT", "/passthrough") => Some("passthrough.set"),
        ("DELETE", "/passthrough") => Some("passthrough.clear"),
        ("POST", "/restart") => Some("restart"),
        _ => None,
    }
}

/// What a write's handler learnt, for the entry of an attempt it did not record itself.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    /// Who (`bearer`, `session:…`), once known.
    pub actor: Option<String>,
    /// The settings before, once read.
    pub before: Option<Passthrough>,
    /// The settings asked for, once parsed.
    pub after: Option<Passthrough>,
    /// Whether a restart was asked for.
    pub restart: bool,
    /// True once the handler wrote the entry itself.
    pub recorded: bool,
}

/// The [`AuditNote`] of one write request, shared by the audit layer (which puts it in the
/// request's extensions) and the authentication layer and handler (which fill it in).
#[derive(Clone, Debug, Default)]
pub struct AuditSlot(Arc<Mutex<AuditNote>>);

impl AuditSlot {
    /// Changes the note.
    pub fn note(&self, f: impl FnOnce(&mut AuditNote)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The note as it stands.
    pub fn get(&self) -> AuditNote {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The audit log of one state directory.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    // One writer at a time, so lines never interleave and rotation never races an append.
    lock: Mutex<()>,
}

impl AuditLog {
    /// The log at `path`, rotated at [`DEFAULT_MAX_BYTES`].
    pub fn new(path: PathBuf) -> Self {
        Self::with_max_bytes(path, DEFAULT_MAX_BYTES)
    }

    /// The log at `path`, rotated when a line would take it past `max_bytes`.
    pub fn with_max_bytes(path: PathBuf, max_bytes: u64) -> Self {
        AuditLog { path, max_bytes, lock: Mutex::new(()) }
    }

    /// `audit.log.N`.
    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Shifts `.1`…`.{KEEP-1}` up by one (the oldest falls off) and moves the log to `.1`.
    fn rotate(&self) -> Result<(), ApiError> {
        for n in (1..KEEP_ROTATED).rev() {
            rename_if_exists(&self.rotated(n), &self.rotated(n + 1))?;
        }
        rename_if_exists(&self.path, &self.rotated(1))
    }

    /// Appends `entry`, rotating first when the line would take the log past its limit.
    pub fn append(&self, entry: &AuditEntry) -> Result<(), ApiError> {
        let mut line = serde_json::to_string(entry).map_err(|e| ApiError::Internal(e.to_string()))?;
        line.push('\n');
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let size = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(ApiError::io(&self.path, e)),
        };
        // A line longer than the limit still goes into a log of its own: never lose an entry.
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| ApiError::io(&self.path, e))?;
        f.write_all(line.as_bytes()).map_err(|e| ApiError::io(&self.path, e))
    }

    /// The last `limit` entries, newest first, across the log and its rotated files (lines
    /// that do not parse are skipped).
    pub fn read(&self, limit: usize) -> Result<Vec<AuditEntry>, ApiError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let files = std::iter::once(self.path.clone()).chain((1..=KEEP_ROTATED).map(|n| self.rotated(n)));
        for path in files {
            if out.len() >= limit {
                break;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ApiError::io(&path, e)),
            };
            let room = limit - out.len();
            out.extend(text.lines().rev().filter_map(|l| serde_json::from_str(l).ok()).take(room));
        }
        Ok(out)
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), ApiError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::io(from, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            time: format!("2026-11-26T12:00:{:02}Z", i % 60),
            actor: "bearer".into(),
            remote: "127.0.0.1:40000".into(),
            action: "passthrough.set".into(),
            cluster: "local".into(),
            namespace: "default".into(),
            name: format!("app-{i}"),
            before: None,
            after: None,
            restart: false,
            result: "ok".into(),
            status: Some(200),
            error: None,
        }
    }

    fn names(v: &[AuditEntry]) -> Vec<String> {
        v.iter().map(|e| e.name.clone()).collect()
    }

    #[test]
    fn rotates_by_size_keeps_three_files_and_reads_across_them_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AUDIT_FILE);
        let one_line = serde_json::to_string(&entry(10)).expect("json").len() as u64 + 1;
        // Room for three lines per file.
        let log = AuditLog::with_max_bytes(path.clone(), one_line * 3 + 1);
        for i in 10..40 {
            log.append(&entry(i)).expect("append");
        }
        // 30 lines, 3 per file: the log and three rotated files hold the newest 12.
        let all = log.read(1000).expect("read");
        assert_eq!(names(&all), (28..40).rev().map(|i| format!("app-{i}")).collect::<Vec<_>>());
        assert!(!dir.path().join("audit.log.4").exists(), "only three rotated files are kept");
        for p in [path, log.rotated(1), log.rotated(2), log.rotated(3)] {
            let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(m.len() <= one_line * 3 + 1, "{} is {} bytes", p.display(), m.len());
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        // A limit stops inside the rotated files.
        assert_eq!(names(&log.read(5).expect("read")), ["app-39", "app-38", "app-37", "app-36", "app-35"]);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_still_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::with_max_bytes(dir.path().join(AUDIT_FILE), 10);
        log.append(&entry(1)).expect("first");
        log.append(&entry(2)).expect("second");
        assert_eq!(names(&log.read(10).expect("read")), ["app-2", "app-1"]);
    }

    #[test]
    fn write_routes() {
        let w = "/api/v1/namespaces/{ns}/workloads/{name}";
        assert_eq!(write_action(&Method::PUT, &format!("{w}/passthrough")), Some("passthrough.set"));
        assert_eq!(write_action(&Method::DELETE, &format!("{w}/passthrough")), Some("passthrough.clear"));
        assert_eq!(write_action(&Method::POST, &format!("{w}/restart")), Some("restart"));
        assert_eq!(write_action(&Method::POST, &format!("{w}/passthrough/preview")), None);
        assert_eq!(write_action(&Method::GET, &format!("{w}/passthrough")), None);
        assert_eq!(write_action(&Method::PUT, "/api/v1/workloads"), None);
    }

    #[test]
    fn entries_written_before_status_and_error_existed_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AUDIT_FILE);
        std::fs::write(&path, r#"{"time":"2026-11-26T12:00:00Z","actor":"bearer","remote":"127.0.0.1:1","action":"restart","namespace":"default","name":"a","before":null,"after":null,"restart":true,"result":"ok"}
"#).expect("write");
        let read = AuditLog::new(path).read(10).expect("read");
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].status, read[0].error.as_deref()), (None, None));
    }

    #[test]
    fn no_log_yet_reads_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::new(dir.path().join(AUDIT_FILE));
        assert!(log.read(10).expect("read").is_empty());
    }
}
