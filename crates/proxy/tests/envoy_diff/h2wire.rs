//! A raw HTTP/2 client for the differential test: it writes exactly the frames a case names
//! (header blocks HPACK-encoded as literals, so names and values go out byte for byte, even
//! the ones a real client library refuses to send) and reads back every frame the proxy
//! sends, as normalised lines that can be compared between Envoy and meshpass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

/// The largest frame payload a peer must accept before SETTINGS say otherwise.
const MAX_FRAME: usize = 16_384;

/// One thing the client sends.
#[derive(Clone, Debug)]
pub(crate) enum Act {
    /// A header block on `stream` (split into CONTINUATION frames when it is large).
    Headers { stream: u32, fields: Vec<(Vec<u8>, Vec<u8>)>, end_stream: bool },
    /// A DATA frame.
    Data { stream: u32, data: Vec<u8>, end_stream: bool },
    /// Any frame bytes, sent as they are.
    Raw(Vec<u8>),
    /// Wait until every stream opened so far is answered before sending the rest (so a
    /// hostile frame meets a connection already in use, with its SETTINGS exchanged).
    Await,
}

/// A header block as `(name, value)` pairs from string literals.
pub(crate) fn fields(f: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    f.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub(crate) fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// HPACK "literal header field without indexing — new name", no Huffman: the bytes go out
/// unchanged and the server's table is never touched.
pub(crate) fn hpack_literal(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, k.len());
        out.extend_from_slice(k);
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v);
    }
    out
}

/// The client preface, an empty SETTINGS frame and `acts`, as bytes: one segment per
/// [`Act::Await`]-separated part, each with the client streams it opens.
pub(crate) fn encode(acts: &[Act]) -> Vec<(Vec<u8>, BTreeSet<u32>)> {
    let mut segments = Vec::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let mut streams = BTreeSet::new();
    for a in acts {
        if let Act::Headers { stream, .. } = a {
            if stream % 2 == 1 {
                streams.insert(*stream);
            }
        }
        match a {
            Act::Await => segments.push((std::mem::take(&mut out), std::mem::take(&mut streams))),
            Act::Headers { stream, fields, end_stream } => {
                let block = hpack_literal(fields);
                let mut chunks = block.chunks(MAX_FRAME).peekable();
                let first = chunks.next().unwrap_or(&[]);
                let es = if *end_stream { END_STREAM } else { 0 };
                let eh = if chunks.peek().is_none() { END_HEADERS } else { 0 };
                out.extend(frame(HEADERS, es | eh, *stream, first));
                while let Some(c) = chunks.next() {
                    let eh = if chunks.peek().is_none() { END_HEADERS } else { 0 };
                    out.extend(frame(CONTINUATION, eh, *stream, c));
                }
            }
            Act::Data { stream, data, end_stream } => {
                let mut chunks = data.chunks(MAX_FRAME).peekable();
                if chunks.peek().is_none() {
                    out.extend(frame(DATA, if *end_stream { END_STREAM } else { 0 }, *stream, &[]));
                }
                while let Some(c) = chunks.next() {
                    let es = if *end_stream && chunks.peek().is_none() { END_STREAM } else { 0 };
                    out.extend(frame(DATA, es, *stream, c));
                }
            }
            Act::Raw(b) => out.extend_from_slice(b),
        }
    }
    segments.push((out, streams));
    segments
}

pub(crate) fn error_name(code: u32) -> String {
    let name = match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        other => return format!("0x{other:x}"),
    };
    name.to_owned()
}

/// What came back on one stream.
#[derive(Default, Debug)]
struct StreamState {
    /// Header blocks in order (informational heads, the final head, then trailers).
    blocks: Vec<Vec<(String, String)>>,
    data: Vec<u8>,
    reset: Option<u32>,
    ended: bool,
}

impl StreamState {
    fn done(&self) -> bool {
        self.ended || self.reset.is_some()
    }
}

/// What one exchange produced, as comparable lines (stream by stream in id order, then the
/// connection), and whether the proxy closed the connection.
pub(crate) struct Exchange {
    pub lines: Vec<String>,
    pub closed: bool,
}

/// Response header values that differ between any two runs.
fn normalise(name: &str, value: String) -> Option<String> {
    match name {
        "date" => None,
        "x-envoy-upstream-service-time" => Some("<ms>".into()),
        _ => Some(value),
    }
}

/// Send each segment of `input` once the streams of the ones before it are done, and read
/// frames until every client stream is done (then a short grace period for a GOAWAY or
/// close), the proxy closes, or nothing arrives for a while.
pub(crate) async fn exchange(addr: SocketAddr, input: &[(Vec<u8>, BTreeSet<u32>)]) -> Exchange {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut segments = input.iter();
    let mut streams = BTreeSet::new();
    if let Some((bytes, opened)) = segments.next() {
        // A proxy may close before reading everything (a connection error early in the input).
        let _ = s.write_all(bytes).await;
        streams.extend(opened);
    }
    let mut heard = false;
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 65_536];
    let mut decoder = loona_hpack::Decoder::new();
    let mut state: BTreeMap<u32, StreamState> = BTreeMap::new();
    let mut goaway: Option<(u32, u32)> = None;
    let mut pending_block: Option<(u32, u8, Vec<u8>)> = None;
    let mut other: Vec<String> = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let mut all_done = streams.iter().all(|id| state.get(id).is_some_and(StreamState::done));
        // After input that opens no stream, wait for what the proxy makes of it (Envoy
        // closes a connection it refuses after 1 s).
        let mut bare = false;
        if all_done && goaway.is_none() {
            if let Some((bytes, opened)) = segments.next() {
                let _ = s.write_all(bytes).await;
                streams.extend(opened);
                all_done = opened.is_empty();
                bare = opened.is_empty();
            }
        }
        let wait = if goaway.is_some() || !heard || bare {
            // Envoy closes after a connection error once its delayed-close timer (1 s) fires,
            // without a GOAWAY and, early in a connection, without a byte.
            Duration::from_millis(2500)
        } else if all_done {
            Duration::from_millis(150)
        } else {
            Duration::from_millis(2500)
        };
        let n = match tokio::time::timeout(wait, s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => n,
            Err(_) => break,
        };
        buf.extend_from_slice(&tmp[..n]);
        heard = true;
        let mut replies: Vec<u8> = Vec::new();
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match ty {
                SETTINGS if flags & ACK == 0 => replies.extend(frame(SETTINGS, ACK, 0, &[])),
                PING if flags & ACK == 0 => replies.extend(frame(PING, ACK, 0, &payload)),
                SETTINGS | PING | WINDOW_UPDATE | 2 => {}
                DATA => {
                    let st = state.entry(id).or_default();
                    st.data.extend_from_slice(&payload);
                    st.ended |= flags & END_STREAM != 0;
                    // Keep the windows open so a large body flows.
                    if !payload.is_empty() {
                        let inc = u32::try_from(payload.len()).unwrap().to_be_bytes();
                        replies.extend(frame(WINDOW_UPDATE, 0, 0, &inc));
                        replies.extend(frame(WINDOW_UPDATE, 0, id, &inc));
                    }
                }
                HEADERS | CONTINUATION => {
                    let mut p = payload.as_slice();
                    if ty == HEADERS {
                        if flags & 0x8 != 0 && !p.is_empty() {
                            let pad = usize::from(p[0]);
                            p = &p[1..p.len().saturating_sub(pad)];
                        }
                        if flags & 0x20 != 0 && p.len() >= 5 {
                            p = &p[5..];
                        }
                        pending_block = Some((id, flags, p.to_vec()));
                    } else if let Some((_, _, b)) = pending_block.as_mut() {
                        b.extend_from_slice(p);
                    }
                    if flags & END_HEADERS != 0 {
                        if let Some((sid, first_flags, block)) = pending_block.take() {
                            let st = state.entry(sid).or_default();
                            match decoder.decode(&block) {
                                Ok(h) => st.blocks.push(
                                    h.into_iter()
                                        .filter_map(|(k, v)| {
                                            let k = String::from_utf8_lossy(&k).into_owned();
                                            let v = normalise(&k, String::from_utf8_lossy(&v).into_owned())?;
                                            Some((k, v))
                                        })
                                        .collect(),
                                ),
                                Err(e) => other.push(format!("undecodable header block on stream {sid}: {e}")),
                            }
                            st.ended |= first_flags & END_STREAM != 0;
                        }
                    }
                }
                RST_STREAM => {
                    let code = payload.get(..4).map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    state.entry(id).or_default().reset = Some(code);
                }
                GOAWAY => {
                    let w =
                        |i: usize| payload.get(i..i + 4).map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    goaway = Some((w(0) & 0x7fff_ffff, w(4)));
                }
                PUSH_PROMISE => other.push(format!("push promise on stream {id}")),
                t => other.push(format!("frame type {t} on stream {id}")),
            }
        }
        if !replies.is_empty() {
            let _ = s.write_all(&replies).await;
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
    }
    if !buf.is_empty() {
        other.push(format!("{} unparsed bytes: {:?}", buf.len(), String::from_utf8_lossy(&buf[..buf.len().min(80)])));
    }
    let mut lines = Vec::new();
    for (id, st) in &state {
        for (i, block) in st.blocks.iter().enumerate() {
            // Field order within a block: by name, repeated names in their order.
            let mut b = block.clone();
            b.sort_by(|x, y| x.0.cmp(&y.0));
            for (k, v) in b {
                lines.push(format!("stream {id} block {i} {k}: {v}"));
            }
        }
        if !st.data.is_empty() {
            let shown = String::from_utf8_lossy(&st.data[..st.data.len().min(120)]).into_owned();
            lines.push(format!("stream {id} data {} bytes {shown:?}", st.data.len()));
        }
        if let Some(code) = st.reset {
            lines.push(format!("stream {id} reset {}", error_name(code)));
        } else if st.ended {
            lines.push(format!("stream {id} end"));
        } else {
            lines.push(format!("stream {id} open"));
        }
    }
    if let Some((last, code)) = goaway {
        lines.push(format!("goaway {} last-stream {last}", error_name(code)));
    }
    lines.extend(other);
    Exchange { lines, closed }
}
