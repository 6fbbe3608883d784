//! When to renew a workload certificate: pure arithmetic on its validity and the clock.
//!
//! Istio's agent renews once half of the lifetime has passed (`SECRET_GRACE_PERIOD_RATIO`
//! 0.5) with up to ±1% jitter (`SECRET_GRACE_PERIOD_RATIO_JITTER`), so that certificates
//! issued together are not all renewed in the same instant.

use std::time::{Duration, SystemTime};

/// The renewal schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotation {
    /// Renew when this fraction of the lifetime is left (0 < ratio < 1).
    pub grace_ratio: f64,
    /// Up to this fraction of the lifetime earlier or later.
    pub jitter_ratio: f64,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { grace_ratio: 0.5, jitter_ratio: 0.01 }
    }
}

/// What to do about a certificate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep it; look again at `at`.
    Keep {
        /// When to renew.
        at: SystemTime,
    },
    /// Renew it now.
    Renew,
}

impl Rotation {
    /// When a certificate valid from `not_before` to `not_after` is to be renewed. `jitter`
    /// in `-1.0..=1.0` (the caller's random draw) moves it by up to `jitter_ratio` of the
    /// lifetime; values outside are clamped.
    pub fn renew_at(&self, not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
        let lifetime = not_after.duration_since(not_before).unwrap_or(Duration::ZERO);
        let ratio =
            (1.0 - self.grace_ratio.clamp(0.0, 1.0) + self.jitter_ratio * jitter.clamp(-1.0, 1.0)).clamp(0.0, 1.0);
        not_before + lifetime.mul_f64(ratio)
    }

    /// Keep or renew, at `now`.
    pub fn action(&self, now: SystemTime, not_before: SystemTime, not_after: SystemTime, jitter: f64) -> Action {
        let at = self.renew_at(not_before, not_after, jitter);
        if now >= at || now >= not_after || not_after <= not_before {
            Action::Renew
        } else {
            Action::Keep { at }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life_with_bounded_jitter() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = t0 + Duration::from_secs(24 * 3600);
        let r = Rotation::default();
        assert_eq!(r.renew_at(t0, end, 0.0), t0 + Duration::from_secs(12 * 3600));
        assert_eq!(r.renew_at(t0, end, 1.0), t0 + Duration::from_secs(12 * 3600) + Duration::from_secs(864));
        assert_eq!(r.renew_at(t0, end, -7.0), t0 + Duration::from_secs(12 * 3600) - Duration::from_secs(864));
        assert_eq!(r.action(t0, t0, end, 0.0), Action::Keep { at: t0 + Duration::from_secs(12 * 3600) });
        assert_eq!(r.action(t0 + Duration::from_secs(13 * 3600), t0, end, 0.0), Action::Renew);
        // An expired or inverted window renews at once.
        assert_eq!(r.action(t0, end, t0, 0.0), Action::Renew);
    }
}
