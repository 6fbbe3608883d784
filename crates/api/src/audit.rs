//! The audit log: `<state-dir>/audit.log`, one JSON [`AuditEntry`] per line, appended, mode
//! 0600. Every change attempt that reached the backend and every restart is recorded.

use crate::error::ApiError;
use crate::model::AuditEntry;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The log file's name inside the state directory.
pub const AUDIT_FILE: &str = "audit.log";

/// The audit log of one state directory.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    // One writer at a time, so lines never interleave.
    lock: Mutex<()>,
}

impl AuditLog {
    /// The log at `path`.
    pub fn new(path: PathBuf) -> Self {
        AuditLog { path, lock: Mutex::new(()) }
    }

    /// Appends `entry`.
    pub fn append(&self, entry: &AuditEntry) -> Result<(), ApiError> {
        let mut line = serde_json::to_string(entry).map_err(|e| ApiError::Internal(e.to_string()))?;
        line.push('\n');
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| ApiError::io(&self.path, e))?;
        f.write_all(line.as_bytes()).map_err(|e| ApiError::io(&self.path, e))
    }

    /// The last `limit` entries, newest first (lines that do not parse are skipped).
    pub fn read(&self, limit: usize) -> Result<Vec<AuditEntry>, ApiError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ApiError::io(&self.path, e)),
        };
        Ok(text.lines().rev().filter_map(|l| serde_json::from_str(l).ok()).take(limit).collect())
    }
}
