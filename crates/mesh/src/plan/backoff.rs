//! Restarting crashed containers with exponential back-off, as the kubelet does: 1 s, 2 s,
//! 4 s … up to 30 s, back to 1 s once a container had run for 30 s (it was healthy, and
//! crashed for a new reason). Pure.

use std::time::Duration;

/// The back-off of a container that never failed.
pub const INITIAL: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting starts over at [`INITIAL`].
pub const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// After a container with back-off `backoff` exited having run for `ran`: how long to wait
/// before starting it again, and its back-off after that.
pub fn after_exit(backoff: Duration, ran: Duration) -> (Duration, Duration) {
    let wait = if ran > HEALTHY_RUN { INITIAL } else { backoff };
    (wait, (wait * 2).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loops_double_up_to_thirty_seconds() {
        let mut backoff = INITIAL;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let (wait, next) = after_exit(backoff, Duration::from_millis(100));
            waits.push(wait.as_secs());
            backoff = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_container_that_ran_for_a_while_starts_over() {
        assert_eq!(after_exit(MAX, Duration::from_secs(31)), (INITIAL, INITIAL * 2));
        assert_eq!(after_exit(MAX, Duration::from_secs(29)), (MAX, MAX), "still crash-looping");
    }
}
