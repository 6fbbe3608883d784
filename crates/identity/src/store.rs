//! The mesh CA on disk: `ca-cert.pem` (0644) and `ca-key.pem` (0600) in the mesh's state
//! directory. The only file effects of this crate.

use crate::ca::MeshCa;
use crate::error::IdentityError;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the CA key.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Loads the CA from `dir`, or creates it (valid from `now` for `validity`) when neither file
/// exists. A key readable by group or others is refused rather than silently tightened.
pub fn load_or_create(dir: &Path, now: SystemTime, validity: Duration) -> Result<(MeshCa, bool), IdentityError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let mode = fs::metadata(&key_path).map_err(io("cannot read", &key_path))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::KeyPermissions { path: key_path, mode });
            }
            let cert = fs::read_to_string(&cert_path).map_err(io("cannot read", &cert_path))?;
            let key = fs::read_to_string(&key_path).map_err(io("cannot read", &key_path))?;
            Ok((MeshCa::from_pem(&cert, &key)?, false))
        }
        (false, false) => {
            let ca = MeshCa::generate(now, validity)?;
            fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
            // Key first: a crash between the two writes leaves a key without a certificate,
            // which the next start reports instead of silently issuing from a new CA.
            write_atomic(&key_path, ca.key_pem().as_bytes(), 0o600, None)?;
            write_atomic(&cert_path, ca.cert_pem().as_bytes(), 0o644, None)?;
            Ok((ca, true))
        }
        (cert, _) => Err(IdentityError::Invalid {
            what: format!("the mesh CA in {}", dir.display()),
            reason: format!(
                "{} exists but {} does not; restore it or remove both to create a new CA (every workload certificate is then reissued)",
                if cert { CA_CERT_FILE } else { CA_KEY_FILE },
                if cert { CA_KEY_FILE } else { CA_CERT_FILE }
            ),
        }),
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io { action, path: path.to_path_buf(), source }
}

/// Writes `data` to `path` with `mode` from the first byte on (never briefly world-readable),
/// through a temporary file renamed into place, owned by `owner` (uid, gid) when given.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), IdentityError> {
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io("cannot write", &tmp))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io("cannot write", &tmp))?;
    // The umask may have narrowed `mode`; make it exact.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("cannot write", &tmp))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io("cannot change the owner of", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io("cannot write", path))
}
