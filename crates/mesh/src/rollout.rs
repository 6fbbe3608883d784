//! `meshpass rollout restart` on the supervisor's side: the request joins the Deployment's
//! rollout queue, and its progress lines stream back as the supervisor's passes carry the
//! rollout's steps out. What the steps are, and when a request joins, waits, gives up or is
//! answered, is decided in [`crate::plan::rollout`].

use crate::plan::rollout::{Asked, Failure};
use crate::plan::WorkloadKey;
use crate::supervisor::{RolloutEvent, Supervisor};
use crate::MeshError;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// Rolls `namespace/name` and reports each step to `progress`; returns when the rollout (or
/// the one it joined) is complete, or why it failed.
pub(crate) fn restart(
    sup: &Arc<Supervisor>,
    namespace: &str,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), MeshError> {
    let workload = WorkloadKey::new(namespace, name);
    let (tx, rx) = channel();
    if sup.ask_rollout(&workload, tx)? == Asked::Joins {
        progress(&format!("a rollout of deployment {workload} is already in progress; waiting for it"));
    }
    // Begin at once rather than at the loop's next pass.
    sup.pass();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(RolloutEvent::Say(line)) => progress(&line),
            Ok(RolloutEvent::Done(result)) => {
                return result.map_err(|f| match f {
                    Failure::NotFound => {
                        MeshError::WorkloadNotFound { namespace: namespace.to_string(), name: name.to_string() }
                    }
                    Failure::Invalid(v) => MeshError::Invalid(v),
                    Failure::Failed(why) => MeshError::Remote(why),
                    Failure::Timeout(why) => MeshError::Timeout(why),
                    Failure::ShuttingDown => MeshError::ShuttingDown,
                })
            }
            // The loop's passes carry the rollout on.
            Err(RecvTimeoutError::Timeout) => {}
            // The supervisor is gone without an answer: it was torn down.
            Err(RecvTimeoutError::Disconnected) => return Err(MeshError::ShuttingDown),
        }
    }
}
