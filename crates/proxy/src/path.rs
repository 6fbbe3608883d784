//! Request path normalisation as Istio configures Envoy by default (`pathNormalization:
//! DEFAULT` = `BASE`: `normalize_path: true`, `merge_slashes: false`,
//! `path_with_escaped_slashes_action: KEEP_UNCHANGED`). Pure functions.
//!
//! Envoy's `normalize_path` is RFC 3986 normalisation: percent-encoded unreserved characters
//! are decoded (`%7E` → `~`, `%2e` → `.`), backslashes become slashes, and dot segments are
//! removed (`/a/./b/../c` → `/a/c`, never above the root). Escaped slashes (`%2F`) and other
//! escapes stay as they are, and so do repeated slashes and the query. An app behind the
//! proxy thus sees the path an authorization policy was matched against.

/// Whether `path_and_query` could change under [`normalize`] (a fast check for the common
/// clean path).
pub fn needs_normalizing(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or_default();
    path.bytes().any(|b| b == b'%' || b == b'\\') || path.contains("/.") || path.starts_with('.')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Normalise the path of an origin-form `path_and_query`; the query is kept as it is.
/// `None` when the result would not be an absolute path (cannot happen for input that starts
/// with `/`; kept so callers answer 400 rather than forward something odd).
pub fn normalize(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i..])),
        None => (path_and_query, None),
    };
    // Decode escaped unreserved characters, turn `\` into `/`.
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) if is_unreserved((h << 4) | l) => {
                    decoded.push((h << 4) | l);
                    i += 3;
                    continue;
                }
                _ => decoded.push(b'%'),
            },
            b'\\' => decoded.push(b'/'),
            c => decoded.push(c),
        }
        i += 1;
    }
    let decoded = String::from_utf8(decoded).ok()?;
    if !decoded.starts_with('/') {
        return None;
    }
    let mut out = remove_dot_segments(&decoded);
    if let Some(q) = query {
        out.push_str(q);
    }
    Some(out)
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the segment before it
/// (never above the root), a trailing `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_normalisation() {
        for (input, want) in [
            ("/x/../y", "/y"),
            ("/x/%2e%2e/y", "/y"),
            ("/x/%2E%2E/y", "/y"),
            ("/x%2Fy", "/x%2Fy"),
            ("//x//y", "//x//y"),
            ("/../../etc", "/etc"),
            ("/x\\y", "/x/y"),
            ("/./a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/%7e/%7E", "/~/~"),
            ("/%zz", "/%zz"),
            ("/%4", "/%4"),
            ("/%", "/%"),
            ("/a/..%2f..%2fb", "/a/..%2f..%2fb"),
            ("/a?x=/../b", "/a?x=/../b"),
            ("/a/./b?q=%2e", "/a/b?q=%2e"),
            ("/.hidden/x", "/.hidden/x"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(input).as_deref(), Some(want), "{input}");
            if input == want {
                continue;
            }
            assert!(needs_normalizing(input), "{input}");
        }
        assert!(!needs_normalizing("/plain/path?x=/../"));
    }
}
