//! Strict HTTP/1 request framing, as Envoy's HTTP/1 codec applies it under Istio's defaults.
//!
//! A pure core (no I/O): [`parse_head`] checks one request head and says how its body is
//! framed; [`ChunkScanner`] checks a chunked body as it streams past. [`crate::gate`] runs both
//! over the bytes of a downstream connection *before* hyper sees them, so a request Envoy
//! would refuse never reaches hyper, let alone the app, and the refusal looks like Envoy's
//! (status, `server`, `content-type`, a short reason body, `connection: close`).
//!
//! What is refused, and with which status (Envoy 1.39's codec and connection manager):
//! - a request line that is not `METHOD SP target SP HTTP/x.y` → 400; a method outside
//!   Envoy's list (lower-case `get`, unknown tokens) → 400;
//! - any version but HTTP/1.1 (HTTP/0.9, 1.0, 1.2+, 2.0 on an HTTP/1 connection) → 426
//!   (HTTP/1.0 is accepted with Istio's `HTTP10` switch);
//! - a target that is not origin-form, absolute-form (`http(s)://`), `*` or (for `CONNECT`)
//!   authority-form, or that holds bytes outside visible ASCII → 400; a fragment → 400;
//! - header lines without a colon, with an empty or non-token name or whitespace before the
//!   colon, with control characters in the value, or folded (obs-fold) → 400;
//! - `Content-Length` that is not one decimal number, repeated, or next to
//!   `Transfer-Encoding` → 400; `Transfer-Encoding` other than one `chunked` → 501;
//! - a head over the size limit or with too many fields → 431;
//! - HTTP/1.1 without `Host`, more than one `Host`, or a `Host` with characters an authority
//!   cannot hold → 400;
//! - `CONNECT` → 404 (Istio's routes do not match it); an `Upgrade` other than `websocket`
//!   (and `h2c`, which is simply ignored) → 403;
//! - in a chunked body: a size that is not hex or too large, a missing CRLF → 400.

/// Limits and switches for [`parse_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line + headers), bytes. Envoy's default 60 KiB.
    pub max_head_bytes: usize,
    /// Most header fields. Envoy's default 100.
    pub max_headers: usize,
    /// Accept HTTP/1.0 requests (Istio's `ISTIO_META_HTTP10` / `PILOT_HTTP10`).
    pub accept_http_10: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_head_bytes: 60 * 1024, max_headers: 100, accept_http_10: false }
    }
}

/// How a refusal is written: Envoy answers codec errors with the reason phrase as a
/// `text/plain` body, and refusals of the connection manager's later stages with an empty body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyStyle {
    /// `content-type: text/plain`, body = reason phrase.
    ReasonBody,
    /// `content-length: 0`.
    Empty,
}

/// A refused request: the status, Envoy's `%RESPONSE_CODE_DETAILS%` and the reply's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status.
    pub status: u16,
    /// Envoy's response code details, e.g. `http1.codec_error`.
    pub details: &'static str,
    /// Body style.
    pub style: ReplyStyle,
}

impl Reject {
    const fn codec(status: u16, details: &'static str) -> Self {
        Self { status, details, style: ReplyStyle::ReasonBody }
    }
    const fn empty(status: u16, details: &'static str) -> Self {
        Self { status, details, style: ReplyStyle::Empty }
    }

    /// Whether the client is to blame (`DPE`) rather than routing (`NR`).
    pub fn is_protocol_error(&self) -> bool {
        self.status != 404
    }
}

const BAD_REQUEST: Reject = Reject::codec(400, "http1.codec_error");
const INVALID_CHARACTERS: Reject = Reject::codec(400, "http1.invalid_characters");
const LOW_VERSION: Reject = Reject::codec(426, "low_version");
const TOO_LARGE: Reject = Reject::codec(431, "http1.headers_too_large");
const TOO_MANY: Reject = Reject::codec(431, "http1.too_many_headers");
const CL_AND_TE: Reject = Reject::codec(400, "http1.content_length_and_chunked_not_allowed");
const BAD_TE: Reject = Reject::codec(501, "http1.invalid_transfer_encoding");
const INVALID_AUTHORITY: Reject = Reject::codec(400, "http.invalid_authority");
const MISSING_HOST: Reject = Reject::empty(400, "missing_host_header");
const FRAGMENT: Reject = Reject::empty(400, "path_normalization_failed");
const CONNECT: Reject = Reject::empty(404, "route_not_found");
const UPGRADE_REFUSED: Reject = Reject::empty(403, "upgrade_failed");

/// How the body after a head is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A head that passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadInfo {
    /// Bytes of the head, including leading empty lines and the final empty line.
    pub len: usize,
    /// Where the request line is (`start..end`, without its line ending) when it separates
    /// its parts with runs of spaces: Envoy accepts that, hyper does not, so the gate rewrites
    /// the line with single spaces ([`normalise_request_line`]).
    pub respace: Option<(usize, usize)>,
    /// Body framing.
    pub body: BodyFraming,
    /// A WebSocket upgrade: after this head the connection may become a tunnel.
    pub websocket: bool,
}

/// What [`parse_head`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Not a complete head yet (and nothing wrong so far).
    Incomplete,
    /// A valid head.
    Complete(HeadInfo),
    /// A head Envoy would refuse.
    Reject(Reject),
}

/// Envoy's method list (its HTTP/1 parser accepts these and nothing else; case-sensitive).
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"ACL",
    b"BIND",
    b"CHECKOUT",
    b"COPY",
    b"LINK",
    b"LOCK",
    b"MERGE",
    b"MKACTIVITY",
    b"MKCALENDAR",
    b"MKCOL",
    b"MOVE",
    b"MSEARCH",
    b"M-SEARCH",
    b"NOTIFY",
    b"PROPFIND",
    b"PROPPATCH",
    b"PURGE",
    b"REBIND",
    b"REPORT",
    b"SEARCH",
    b"SOURCE",
    b"SUBSCRIBE",
    b"UNBIND",
    b"UNLINK",
    b"UNLOCK",
    b"UNSUBSCRIBE",
];

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a header value: HTAB, SP, visible ASCII and obs-text.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Bytes an authority (`Host`) may hold: unreserved, sub-delims, `%`, `:`, `@`, `[`, `]`.
fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:@[]".contains(&b)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Next line of `buf` from `at`: (line without CR LF, index after LF), or `None` if no LF yet.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let nl = buf[at..].iter().position(|&b| b == b'\n')? + at;
    let l = &buf[at..nl];
    Some((l.strip_suffix(b"\r").unwrap_or(l), nl + 1))
}

/// Check the request line. `Ok(is_http10, is_connect, absolute)`.
fn request_line(l: &[u8], limits: &Limits) -> Result<(bool, bool, bool), Reject> {
    // Envoy's parser takes runs of spaces as one separator.
    let mut parts = l.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let method = parts.next().unwrap_or_default();
    let target = parts.next();
    let version = parts.next();
    if parts.next().is_some() {
        return Err(BAD_REQUEST);
    }
    if !METHODS.contains(&method) {
        return Err(BAD_REQUEST);
    }
    let Some(target) = target.filter(|t| !t.is_empty()) else { return Err(BAD_REQUEST) };
    let Some(version) = version else {
        // `GET /`: HTTP/0.9.
        return Err(LOW_VERSION);
    };
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" if limits.accept_http_10 => true,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return Err(LOW_VERSION)
        }
        _ => return Err(BAD_REQUEST),
    };
    if let Some(&b) = target.iter().find(|&&b| !(0x21..=0x7e).contains(&b)) {
        return Err(if b >= 0x80 { BAD_REQUEST } else { INVALID_CHARACTERS });
    }
    let connect = method == b"CONNECT";
    let lower = |n: usize| target.get(..n).map(<[u8]>::to_ascii_lowercase);
    let absolute = lower(7).as_deref() == Some(b"http://") || lower(8).as_deref() == Some(b"https://");
    if connect {
        // Authority-form only; Istio's routes then do not match it.
        if target.starts_with(b"/") || absolute || !target.iter().all(|&b| is_authority_byte(b)) {
            return Err(BAD_REQUEST);
        }
    } else if !(target.starts_with(b"/") || absolute || (target == b"*" && method == b"OPTIONS")) {
        return Err(BAD_REQUEST);
    }
    if target.contains(&b'#') {
        return Err(FRAGMENT);
    }
    Ok((http10, connect, absolute))
}

/// Check one request head at the start of `buf`.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Head {
    // Empty lines before a request line are skipped (RFC 9112 §2.2).
    let mut at = 0;
    while let Some((l, next)) = line(buf, at) {
        if !l.is_empty() {
            break;
        }
        at = next;
    }
    let start = at;
    let Some((first, mut at)) = line(buf, start) else {
        return if buf.len() - start > limits.max_head_bytes { Head::Reject(TOO_LARGE) } else { Head::Incomplete };
    };
    let (http10, connect, absolute) = match request_line(first, limits) {
        Ok(v) => v,
        Err(r) => return Head::Reject(r),
    };
    let mut fields = 0usize;
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0;
    let mut te_count = 0;
    let mut chunked = false;
    let mut hosts = 0;
    let mut conn_upgrade = false;
    let mut upgrade: Option<&[u8]> = None;
    loop {
        let Some((l, next)) = line(buf, at) else {
            return if buf.len() - start > limits.max_head_bytes { Head::Reject(TOO_LARGE) } else { Head::Incomplete };
        };
        if next - start > limits.max_head_bytes {
            return Head::Reject(TOO_LARGE);
        }
        at = next;
        if l.is_empty() {
            break;
        }
        fields += 1;
        if fields > limits.max_headers {
            return Head::Reject(TOO_MANY);
        }
        if matches!(l[0], b' ' | b'\t') {
            // obs-fold (RFC 9112 §5.2 lets a server reject it).
            return Head::Reject(BAD_REQUEST);
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else { return Head::Reject(BAD_REQUEST) };
        let (name, value) = (&l[..colon], trim(&l[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Head::Reject(BAD_REQUEST);
        }
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Head::Reject(INVALID_CHARACTERS);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            cl_count += 1;
            if cl_count > 1 || value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Head::Reject(BAD_REQUEST);
            }
            content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            if content_length.is_none() {
                return Head::Reject(BAD_REQUEST);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_count += 1;
            if te_count > 1 || !value.eq_ignore_ascii_case(b"chunked") {
                return Head::Reject(BAD_TE);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Head::Reject(BAD_REQUEST);
            }
            if !value.iter().all(|&b| is_authority_byte(b)) {
                return Head::Reject(INVALID_AUTHORITY);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn_upgrade |= value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = Some(value);
        }
    }
    if chunked && cl_count > 0 {
        return Head::Reject(CL_AND_TE);
    }
    if connect {
        return Head::Reject(CONNECT);
    }
    if hosts == 0 && !http10 && !absolute {
        return Head::Reject(MISSING_HOST);
    }
    let websocket = match (conn_upgrade, upgrade) {
        (true, Some(u)) if u.eq_ignore_ascii_case(b"websocket") => true,
        // Envoy drops an h2c upgrade offer and serves the request as HTTP/1.1.
        (true, Some(u)) if u.eq_ignore_ascii_case(b"h2c") => false,
        (true, Some(_)) => return Head::Reject(UPGRADE_REFUSED),
        _ => false,
    };
    let body = match (chunked, content_length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::Empty,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    // The line is accepted with any runs of spaces, also before the method or after the
    // version, but hyper takes single spaces only: such a line is forwarded normalised.
    let spaced = first.starts_with(b" ") || first.ends_with(b" ") || first.windows(2).any(|w| w == b"  ");
    let respace = spaced.then_some((start, start + first.len()));
    Head::Complete(HeadInfo { len: at, respace, body, websocket })
}

/// `line` with each run of spaces made one space.
pub fn normalise_request_line(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    for part in line.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(part);
    }
    out
}

/// State of a chunked body being checked as it streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ChunkScanner {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading hex digits of a chunk size.
    #[default]
    Size,
    /// After `;`: a chunk extension, up to the end of the line.
    Ext,
    /// Saw CR after the size line; LF must follow.
    SizeLf,
    /// Inside chunk data (`size` bytes left).
    Data,
    /// After the data: CR (or a bare LF).
    DataCr,
    /// After CR following data: LF.
    DataLf,
    /// After the last chunk: at the start of a trailer line (an empty one ends the body).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The final empty line's LF.
    EndLf,
    /// Inside a trailer line, after CR.
    TrailerLf,
    /// The body is complete.
    Done,
}

/// What [`ChunkScanner::scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// All of the input belongs to the body, which goes on.
    More,
    /// The body ends after this many bytes of the input.
    Done(usize),
    /// The body is malformed at this offset of the input.
    Invalid(usize),
}

impl ChunkScanner {
    /// A scanner at the start of a chunked body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Check `input`, the next bytes of the body.
    pub fn scan(&mut self, input: &[u8]) -> Chunks {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // 16 hex digits overflow nothing, more would: Envoy refuses them.
                        if self.digits == 16 {
                            return Chunks::Invalid(i);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    b'\n' if self.digits > 0 => self.end_size_line(),
                    _ => return Chunks::Invalid(i),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    b if is_value_byte(b) => {}
                    _ => return Chunks::Invalid(i),
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Chunks::Invalid(i);
                    }
                    self.end_size_line();
                }
                ChunkState::Data => {
                    let n = usize::try_from(self.size).unwrap_or(usize::MAX).min(input.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.next_chunk(),
                    _ => return Chunks::Invalid(i),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Chunks::Invalid(i);
                    }
                    self.next_chunk();
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Chunks::Done(i + 1);
                    }
                    b if is_tchar(b) => self.state = ChunkState::Trailer,
                    _ => return Chunks::Invalid(i),
                },
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => self.state = ChunkState::TrailerStart,
                    b if is_value_byte(b) || b == b':' => {}
                    _ => return Chunks::Invalid(i),
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Chunks::Invalid(i);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Chunks::Invalid(i);
                    }
                    self.state = ChunkState::Done;
                    return Chunks::Done(i + 1);
                }
                ChunkState::Done => return Chunks::Done(i),
            }
            i += 1;
        }
        if self.state == ChunkState::Done {
            Chunks::Done(0)
        } else {
            Chunks::More
        }
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
    }

    fn next_chunk(&mut self) {
        *self = Self::default();
    }
}

/// Reason phrase for the statuses this module and the local replies use.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(b: &[u8]) -> Head {
        parse_head(b, &Limits::default())
    }

    fn status(b: &[u8]) -> u16 {
        match head(b) {
            Head::Reject(r) => r.status,
            Head::Complete(_) => 200,
            Head::Incomplete => 0,
        }
    }

    #[test]
    fn accepts_well_formed_heads() {
        let Head::Complete(h) = head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest") else { panic!() };
        assert_eq!(h.len, 27);
        assert_eq!(h.body, BodyFraming::Empty);
        assert_eq!(
            head(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Head::Complete(HeadInfo { len: 48, respace: None, body: BodyFraming::Length(5), websocket: false })
        );
        let Head::Complete(h) = head(b"\r\nPOST / HTTP/1.1\nHost: a\nTransfer-Encoding: Chunked\n\n") else { panic!() };
        assert_eq!(h.body, BodyFraming::Chunked);
        assert_eq!(status(b"GET http://x/p HTTP/1.1\r\n\r\n"), 200, "absolute-form needs no Host");
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        let Head::Complete(h) = head(b"\r\nGET  /  HTTP/1.1\r\nHost: a\r\n\r\n") else { panic!() };
        assert_eq!(h.respace, Some((2, 18)));
        assert_eq!(normalise_request_line(b"GET  /  HTTP/1.1"), b"GET / HTTP/1.1");
        // A single space after the version (or before the method) is normalised too.
        let Head::Complete(h) = head(b"GET /a HTTP/1.1 \r\nHost: a\r\n\r\n") else { panic!() };
        assert_eq!(h.respace, Some((0, 16)));
        assert_eq!(normalise_request_line(b" GET /a HTTP/1.1 "), b"GET /a HTTP/1.1");
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost:\r\nX: a\tb\xff\r\n\r\n"), 200);
        let Head::Complete(h) =
            head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n")
        else {
            panic!()
        };
        assert!(h.websocket);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"), 200);
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Head::Incomplete);
        assert_eq!(head(b"GE"), Head::Incomplete);
    }

    #[test]
    fn refuses_what_envoy_refuses() {
        for (req, want) in [
            (&b"get / HTTP/1.1\r\nHost: a\r\n\r\n"[..], 400),
            (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"\x01\x02garbage\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 426),
            (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", 426),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 426),
            (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET abc HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /p#f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
            (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 404),
            (b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", 403),
        ] {
            assert_eq!(status(req), want, "{:?}", String::from_utf8_lossy(req));
        }
        let http10 = Limits { accept_http_10: true, ..Limits::default() };
        assert!(matches!(parse_head(b"GET / HTTP/1.0\r\n\r\n", &http10), Head::Complete(_)));
    }

    #[test]
    fn limits_give_431() {
        let mut big = b"GET /".to_vec();
        big.extend(std::iter::repeat_n(b'a', 70_000));
        assert_eq!(status(&big), 431, "an over-long incomplete line is refused early");
        big.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(status(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..120 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        // Whole, and one byte at a time.
        assert_eq!(ChunkScanner::new().scan(body), Chunks::Done(body.len() - 4));
        let mut s = ChunkScanner::new();
        let mut done = None;
        for (i, b) in body.iter().enumerate() {
            match s.scan(std::slice::from_ref(b)) {
                Chunks::More => {}
                Chunks::Done(n) => {
                    done = Some(i + n);
                    break;
                }
                Chunks::Invalid(_) => panic!("invalid at {i}"),
            }
        }
        assert_eq!(done, Some(body.len() - 4));
        assert_eq!(ChunkScanner::new().scan(b"0\n\n"), Chunks::Done(3));
        assert_eq!(ChunkScanner::new().scan(b"zz\r\n"), Chunks::Invalid(0));
        assert_eq!(ChunkScanner::new().scan(b"2\r\nhiXX0\r\n\r\n"), Chunks::Invalid(5));
        assert_eq!(ChunkScanner::new().scan(b"ffffffffffffffffff\r\n"), Chunks::Invalid(16));
        assert_eq!(ChunkScanner::new().scan(b"\r\n"), Chunks::Invalid(0));
    }
}
