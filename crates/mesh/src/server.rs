//! The control server: the supervisor's end of the control socket ([`crate::control`] has
//! the protocol and the client). One thread accepts; each connection is served on a thread
//! of its own, so a rollout streaming its progress for a minute never blocks a `get`.

use crate::control::{Reply, Request};
use crate::supervisor::Supervisor;
use crate::MeshError;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

/// Accepts connections until the supervisor is asked to stop.
pub(crate) fn serve(sup: &Arc<Supervisor>, listener: UnixListener) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !sup.stop().requested() {
        match listener.accept() {
            Ok((stream, _)) => {
                let sup = Arc::clone(sup);
                std::thread::spawn(move || sup.serving(|| handle(&sup, stream)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The reply for a request's outcome: input errors and missing objects stay structured, so
/// clients can exit 2 or answer 404/409; anything else goes as its message with its causes.
fn reply(r: Result<serde_json::Value, MeshError>) -> Reply {
    match r {
        Ok(v) => Reply::Ok(v),
        Err(MeshError::Invalid(v)) => Reply::Invalid(v),
        Err(MeshError::WorkloadNotFound { namespace, name }) => Reply::WorkloadNotFound { namespace, name },
        Err(MeshError::NotFound(what)) => Reply::NotFound(what),
        Err(MeshError::Conflict { workload, expected, actual }) => Reply::Conflict { workload, expected, actual },
        Err(e) => Reply::Error(e.report()),
    }
}

fn json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, MeshError> {
    serde_json::to_value(v).map_err(|e| MeshError::protocol("encoding the answer")(e.into()))
}

/// Serves one connection: one request line, progress lines, one answer line.
fn handle(sup: &Arc<Supervisor>, stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    // A client that went away is no reason to stop anything.
    let mut send = |r: &Reply| {
        let mut text = serde_json::to_string(r).unwrap_or_else(|_| "{\"error\":\"unserializable reply\"}".into());
        text.push('\n');
        let _ = writer.write_all(text.as_bytes());
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&Reply::Error(format!("bad request: {e}"))),
    };
    let answer = match req {
        Request::Workloads { namespace } => reply(json(sup.workloads(namespace.as_deref()))),
        Request::Pods { namespace } => reply(json(sup.pods(namespace.as_deref()))),
        Request::Services { namespace } => reply(json(sup.services(namespace.as_deref()))),
        Request::Policies { kind, namespace } => reply(json(sup.policies(kind.as_deref(), namespace.as_deref()))),
        Request::MeshView => reply(json(sup.mesh_view())),
        Request::NodeNetns => Reply::Ok(serde_json::Value::String(sup.config().node_netns())),
        Request::Apply { yaml, live } => reply(sup.apply(&yaml, live).and_then(json)),
        Request::Delete { yaml } => reply(sup.delete(&yaml).and_then(json)),
        Request::RolloutRestart { namespace, name } => {
            let mut progress = |p: &str| send(&Reply::Progress(p.to_string()));
            let r = crate::rollout::restart(sup, &namespace, &name, &mut progress);
            reply(r.map(|()| serde_json::Value::Null))
        }
        Request::Annotate { namespace, name, set, remove, live, expect_version } => {
            reply(sup.annotate(&namespace, &name, set, remove, live, expect_version.as_deref()).and_then(json))
        }
        Request::AnnotateMany { items, live } => match sup.annotate_many(&items, live) {
            Ok(results) => {
                let replies: Vec<Reply> = results.into_iter().map(|r| reply(r.and_then(json))).collect();
                reply(json(replies))
            }
            Err(e) => reply(Err(e)),
        },
        Request::Defaults => reply(json(sup.defaults())),
        Request::SetDefaults { values, live, expect_version } => {
            reply(sup.set_defaults(&values, live, expect_version.as_deref()).and_then(json))
        }
        Request::Shutdown => {
            sup.stop().request();
            while !sup.stopped() {
                std::thread::sleep(Duration::from_millis(50));
            }
            Reply::Ok(serde_json::Value::Null)
        }
    };
    send(&answer);
}
