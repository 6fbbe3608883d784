//! The mesh's identity files: the CA in the state directory (its key readable by root only),
//! and per meshed pod, in [`crate::plan::mtls::pod_dir`], the workload certificate files
//! (owned by the sidecar's UID, the key readable by it only) and the sidecar's mesh config.
//! Every file is replaced atomically, so a sidecar never reads half of one.

use crate::config::{MeshConfig, PROXY_UID};
use crate::plan::mtls::pod_dir;
use crate::MeshError;
use meshpass_identity::rotation::Rotation;
use meshpass_identity::{files, store, MeshCa, SpiffeId, CA_VALIDITY};
use meshpass_proxy::mesh_config::MeshConfigFile;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

/// Loads the mesh CA from the state directory, creating it on first start.
pub fn load_ca(cfg: &MeshConfig) -> Result<(MeshCa, bool), MeshError> {
    store::load_or_create(&cfg.state_dir, SystemTime::now(), CA_VALIDITY)
        .map_err(|source| MeshError::Identity { what: "loading the mesh CA".into(), source })
}

/// A random draw in -1..=1 for the renewal jitter.
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() % 2001) as f64 / 1000.0 - 1.0
}

/// Issues `identity` a certificate valid for `ttl` and writes the pod's credential files.
/// Returns how long until it is to be renewed (Istio's schedule: at half its life, ±1%).
pub fn issue(cfg: &MeshConfig, ca: &MeshCa, netns: &str, identity: &str) -> Result<Duration, MeshError> {
    let what = || format!("issuing the workload certificate of {identity}");
    let id: SpiffeId = identity.parse().map_err(|e: meshpass_identity::SpiffeIdError| MeshError::Identity {
        what: what(),
        source: meshpass_identity::IdentityError::Invalid { what: "the identity".into(), reason: e.to_string() },
    })?;
    let now = SystemTime::now();
    let cert =
        ca.issue(&id, now, cfg.workload_cert_ttl).map_err(|source| MeshError::Identity { what: what(), source })?;
    let dir = pod_dir(cfg, netns);
    make_dir(&dir)?;
    files::write_dir(&dir.join("certs"), &cert, ca.cert_pem(), Some((PROXY_UID, PROXY_UID)))
        .map_err(|source| MeshError::Identity { what: what(), source })?;
    let renew = Rotation::default().renew_at(cert.not_before, cert.not_after, jitter());
    Ok(renew.duration_since(now).unwrap_or_default())
}

/// The pods' directory and one pod's: readable by the sidecar's UID, which is not root.
fn make_dir(dir: &std::path::Path) -> Result<(), MeshError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(MeshError::io("cannot create", dir))?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(MeshError::io("cannot set the mode of", d))?;
    }
    Ok(())
}

/// Writes a sidecar's mesh config.
pub fn write_config(cfg: &MeshConfig, netns: &str, config: &MeshConfigFile) -> Result<(), MeshError> {
    let dir = pod_dir(cfg, netns);
    make_dir(&dir)?;
    let path = dir.join("mesh.json");
    let json = serde_json::to_vec_pretty(config)
        .map_err(|e| MeshError::protocol("encoding a sidecar's mesh config")(e.into()))?;
    store::write_atomic(&path, &json, 0o644, None)
        .map_err(|source| MeshError::Identity { what: format!("writing {}", path.display()), source })
}

/// Removes a pod's files.
pub fn remove(cfg: &MeshConfig, netns: &str) {
    let _ = std::fs::remove_dir_all(pod_dir(cfg, netns));
}

/// Removes every pod's files (`meshpass down`, and at start what a crash left).
pub fn remove_all(cfg_state_dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(cfg_state_dir.join("pods"));
}
