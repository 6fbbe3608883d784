//! The access log: one line per HTTP request (and per refused request), in the spirit of
//! Istio's default text format, with Envoy's response flags and code details:
//!
//! ```text
//! [2026-01-01T10:00:00.000Z] "GET /path HTTP/1.1" 503 UF connection_refused 2ms "req-id" "host" "10.0.0.5:8080" inbound
//! ```
//!
//! Off by default, as in Istio's default profile (`MESHPASS_PROXY_ACCESS_LOG=stdout` turns it
//! on). Lines are written whole under a lock, so concurrent requests never interleave.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::Request;

use crate::config::AccessLog;
use crate::orig_dst::Direction;
use crate::outcome::Outcome;

/// The access log of one proxy.
#[derive(Debug)]
pub struct AccessLogger {
    target: AccessLog,
}

/// What a log line needs from a request, taken before the request moves upstream.
#[derive(Debug)]
pub struct RequestLine {
    method: String,
    path: String,
    version: http::Version,
    request_id: String,
    authority: String,
}

impl RequestLine {
    /// Copy what the log line shows.
    pub fn of<B>(req: &Request<B>) -> Self {
        let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        Self {
            method: req.method().to_string(),
            path: req.uri().path_and_query().map_or_else(|| req.uri().to_string(), |p| p.to_string()),
            version: req.version(),
            request_id: h("x-request-id"),
            authority: req.uri().authority().map_or_else(|| h("host"), |a| a.to_string()),
        }
    }
}

impl AccessLogger {
    /// A logger writing to `target`.
    pub fn new(target: AccessLog) -> Self {
        Self { target }
    }

    /// Whether lines are written at all (callers skip collecting fields otherwise).
    pub fn enabled(&self) -> bool {
        self.target != AccessLog::Off
    }

    fn write(&self, line: &str) {
        // A closed or full log stream must not take the proxy down: errors are dropped.
        let _ = match self.target {
            AccessLog::Off => Ok(()),
            AccessLog::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            AccessLog::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    /// A forwarded (or locally answered) request.
    pub fn request(
        &self,
        direction: Direction,
        req: &RequestLine,
        status: u16,
        outcome: Option<&Outcome>,
        elapsed: Duration,
        upstream: Option<SocketAddr>,
    ) {
        if !self.enabled() {
            return;
        }
        let (flags, details) = outcome.map_or(("-", "via_upstream"), |o| (o.flag.as_str(), &*o.detail));
        let details = details.split(':').next().unwrap_or(details);
        let line = format!(
            "[{}] \"{} {} {:?}\" {status} {flags} {details} {}ms \"{}\" \"{}\" \"{}\" {direction}\n",
            timestamp(),
            req.method,
            req.path,
            req.version,
            elapsed.as_millis(),
            req.request_id,
            req.authority,
            upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        );
        self.write(&line);
    }

    /// A request refused before it was parsed far enough to have a method and path.
    pub fn local(&self, direction: Direction, status: u16, outcome: &Outcome) {
        if !self.enabled() {
            return;
        }
        let line = format!(
            "[{}] \"- - -\" {status} {} {} 0ms \"-\" \"-\" \"-\" {direction}\n",
            timestamp(),
            outcome.flag.as_str(),
            outcome.detail
        );
        self.write(&line);
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
fn timestamp() -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, (rem / 60) % 60, rem % 60, now.subsec_millis())
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
