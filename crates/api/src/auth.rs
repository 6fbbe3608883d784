//! Credentials: the API token in `<state-dir>/api-token` (bearer, and the login URL) and the
//! browser sessions the login URL opens (cookie + CSRF token, server-side, 12 h).

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
}

/// The API token and the open sessions.
#[derive(Debug)]
pub struct Auth {
    token: String,
    sessions: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Auth {
    /// Credentials with this token and session lifetime.
    pub fn new(token: String, ttl: Duration) -> Self {
        Auth { token, sessions: Mutex::new(HashMap::new()), ttl }
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `candidate` is the token (constant time).
    pub fn token_matches(&self, candidate: &str) -> bool {
        ct_eq(candidate.as_bytes(), self.token.as_bytes())
    }

    /// Opens a session: `(session id, csrf token)`.
    pub fn open_session(&self) -> Result<(String, String), ApiError> {
        let id = random_hex(32).map_err(|e| ApiError::io("/dev/urandom", e))?;
        let csrf = random_hex(32).map_err(|e| ApiError::io("/dev/urandom", e))?;
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        s.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + self.ttl });
        Ok((id, csrf))
    }

    /// The live session with this id.
    pub fn session(&self, id: &str) -> Option<Session> {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Look up by constant-time comparison of every key would be overkill: the ids are
        // 256-bit random values and the map lookup hashes them first.
        s.get(id).filter(|v| v.expires > Instant::now()).cloned()
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
    }
}
