//! Credentials: the API token in `<state-dir>/api-token` (bearer, and the login URL) and the
//! browser sessions the login URL opens (cookie + CSRF token, server-side, 12 h, at most
//! [`MAX_SESSIONS`]; sign-out ends one).

use crate::error::ApiError;
use crate::util::{ct_eq, random_hex};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The token file's name inside the state directory.
pub const TOKEN_FILE: &str = "api-token";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "meshpass_session";
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// A token as written by [`load_or_create_token`]: 64 lowercase hex digits.
fn valid_token(t: &str) -> bool {
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The token in `<dir>/api-token`: reused when present and well-formed, else 32 fresh random
/// bytes (hex) written there with mode 0600. The directory is created when missing.
pub fn load_or_create_token(dir: &Path) -> Result<String, ApiError> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if valid_token(t.trim()) => {
            // A copy restored from a backup may have lost its mode; the token is a password.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ApiError::io(&path, e))?;
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::io(&path, e)),
    }
    let token = random_hex(32).map_err(|e| ApiError::io("/dev/urandom", e))?;
    write_token(dir, &token)?;
    Ok(token)
}

/// Writes `token` to `<dir>/api-token` (mode 0600), replacing what was there.
pub fn write_token(dir: &Path, token: &str) -> Result<(), ApiError> {
    std::fs::create_dir_all(dir).map_err(|e| ApiError::io(dir, e))?;
    let path = dir.join(TOKEN_FILE);
    // Write a private temp file and rename it, so the token is never readable by others,
    // not even for a moment, and a crash leaves either the old or the new file.
    let tmp = dir.join(format!(".{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ApiError::io(&tmp, e))?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(|e| ApiError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ApiError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| ApiError::io(&path, e))
}

/// A browser session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The CSRF token its writes must send.
    pub csrf: String,
    /// When it stops being valid.
    pub expires: Instant,
    /// When it was last used (the least recently used one goes first at the cap).
    pub last_used: Instant,
}

/// How many browser sessions are open at most. Each sign-in opens one; past the cap the
/// least recently used is closed, so signing in always works and memory stays bounded.
pub const MAX_SESSIONS: usize = 64;

/// The API token and the open sessions.
#[derive(Debug)]
pub struct Auth {
    token: String,
    sessions: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    max_sessions: usize,
}

impl Auth {
    /// Credentials with this token and session lifetime, at most [`MAX_SESSIONS`] sessions.
    pub fn new(token: String, ttl: Duration) -> Self {
        Self::with_max_sessions(token, ttl, MAX_SESSIONS)
    }

    /// Credentials with at most `max_sessions` sessions (at least one).
    pub fn with_max_sessions(token: String, ttl: Duration, max_sessions: usize) -> Self {
        Auth { token, sessions: Mutex::new(HashMap::new()), ttl, max_sessions: max_sessions.max(1) }
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `candidate` is the token (constant time).
    pub fn token_matches(&self, candidate: &str) -> bool {
        ct_eq(candidate.as_bytes(), self.token.as_bytes())
    }

    /// Opens a session: `(session id, csrf token)`. Expired sessions are dropped first; at
    /// the cap, the least recently used session is closed.
    pub fn open_session(&self) -> Result<(String, String), ApiError> {
        let id = random_hex(32).map_err(|e| ApiError::io("/dev/urandom", e))?;
        let csrf = random_hex(32).map_err(|e| ApiError::io("/dev/urandom", e))?;
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        while s.len() >= self.max_sessions {
            let Some(oldest) = s.iter().min_by_key(|(_, v)| v.last_used).map(|(k, _)| k.clone()) else { break };
            s.remove(&oldest);
        }
        s.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + self.ttl, last_used: now });
        Ok((id, csrf))
    }

    /// The live session with this id (and marks it used).
    pub fn session(&self, id: &str) -> Option<Session> {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Look up by constant-time comparison of every key would be overkill: the ids are
        // 256-bit random values and the map lookup hashes them first.
        let now = Instant::now();
        let session = s.get_mut(id).filter(|v| v.expires > now)?;
        session.last_used = now;
        Some(session.clone())
    }

    /// Ends the session `id`; true when it was open.
    pub fn close_session(&self, id: &str) -> bool {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id).is_some()
    }

    /// How many sessions are open (expired ones included until the next sign-in drops them).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert!(valid_token(&t));
        let meta = std::fs::metadata(dir.path().join(TOKEN_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t);
        std::fs::write(dir.path().join(TOKEN_FILE), "garbage").unwrap();
        let t2 = load_or_create_token(dir.path()).unwrap();
        assert!(valid_token(&t2) && t2 != t);
    }

    #[test]
    fn sessions_expire() {
        let a = Auth::new("t".into(), Duration::from_millis(0));
        let (id, _) = a.open_session().unwrap();
        assert!(a.session(&id).is_none());
        let a = Auth::new("t".into(), SESSION_TTL);
        let (id, csrf) = a.open_session().unwrap();
        assert_eq!(a.session(&id).unwrap().csrf, csrf);
        assert!(a.token_matches("t") && !a.token_matches("u"));
        assert!(a.close_session(&id) && a.session(&id).is_none() && !a.close_session(&id));
    }

    #[test]
    fn sessions_are_capped_least_recently_used_first() {
        let a = Auth::with_max_sessions("t".into(), SESSION_TTL, 3);
        let ids: Vec<String> = (0..3).map(|_| a.open_session().unwrap().0).collect();
        // The first one is used again, so the second is now the least recently used.
        std::thread::sleep(Duration::from_millis(2));
        assert!(a.session(&ids[0]).is_some());
        let (fourth, _) = a.open_session().unwrap();
        assert_eq!(a.session_count(), 3);
        assert!(a.session(&ids[1]).is_none(), "the least recently used session was closed");
        assert!(a.session(&ids[0]).is_some() && a.session(&ids[2]).is_some() && a.session(&fourth).is_some());
        for _ in 0..100 {
            a.open_session().unwrap();
        }
        assert_eq!(a.session_count(), 3);
    }
}
