//! How the supervisor is told to stop: once (SIGINT, SIGTERM, SIGHUP, or `meshpass down`)
//! to tear the mesh down, draining pods; a second time to tear it down *now*, every wait of
//! the teardown (a pod's drain, the grace before SIGKILL) cut short. The teardown itself
//! always runs to the end: only its waits get shorter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stop request shared by the signal handler, the control socket and the supervisor.
/// Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    requested: AtomicBool,
    hurried: AtomicBool,
}

/// How often a cut-short wait looks at the flag.
const POLL: Duration = Duration::from_millis(25);

impl Stop {
    /// A stop nobody has asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a teardown with the usual drain.
    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
    }

    /// Asks for a teardown without waiting for anything (implies [`Stop::request`]).
    pub fn hurry(&self) {
        self.inner.hurried.store(true, Ordering::SeqCst);
        self.request();
    }

    /// True once a teardown was asked for.
    pub fn requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// True once the waits of the teardown are to be cut short.
    pub fn hurried(&self) -> bool {
        self.inner.hurried.load(Ordering::SeqCst)
    }

    /// Waits until `done` is true or `limit` has passed, giving up early once hurried.
    /// Returns whether `done` became true.
    pub fn wait_until(&self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done() {
                return true;
            }
            if self.hurried() || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Sleeps for `d`, or less once hurried.
    pub fn sleep(&self, d: Duration) {
        self.wait_until(d, || false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_request_hurries_and_clones_share_the_state() {
        let stop = Stop::new();
        let seen = stop.clone();
        assert!(!seen.requested() && !seen.hurried());
        stop.request();
        assert!(seen.requested() && !seen.hurried());
        stop.hurry();
        assert!(seen.requested() && seen.hurried());
    }

    #[test]
    fn waits_end_when_done_and_give_up_once_hurried() {
        let stop = Stop::new();
        let mut n = 0;
        assert!(stop.wait_until(Duration::from_secs(60), || {
            n += 1;
            n == 3
        }));
        assert!(!stop.wait_until(Duration::ZERO, || false), "a zero limit gives up at once");
        let hurried = Stop::new();
        hurried.hurry();
        let mut polls = 0;
        // An hour-long wait returns after one look at `done`: the test finishing is the check.
        assert!(!hurried.wait_until(Duration::from_secs(3600), || {
            polls += 1;
            false
        }));
        assert_eq!(polls, 1);
    }

    #[test]
    fn hurrying_from_another_thread_ends_a_wait_in_progress() {
        let stop = Stop::new();
        let other = stop.clone();
        let t = std::thread::spawn(move || other.wait_until(Duration::from_secs(3600), || false));
        stop.hurry();
        assert_eq!(t.join().ok(), Some(false));
    }
}
