//! Finding error events inside a `200 OK` server-sent-events stream.
//!
//! Some providers report overload or rate limits *inside* a successful stream
//! (Anthropic `event: error`, OpenAI-style `data: {"error": {...}}`, OpenAI
//! Responses `response.failed`). The proxy feeds every body chunk, split
//! wherever the network split it, to an [`ErrorScanner`]; the first error event's
//! data payload comes back, ready for [`crate::outcome::Outcome::StreamError`].
//!
//! Memory is bounded: a line longer than [`MAX_LINE`] and an event's data beyond
//! [`MAX_EVENT_DATA`] are cut (the rest of the line is skipped, not buffered), so
//! a hostile or enormous stream costs at most a few hundred KiB per scanner.
//! Parsing follows the WHATWG event-stream rules: `\n`, `\r\n` and `\r` end
//! lines, a blank line dispatches the event, `:` starts a comment, one space
//! after the field's colon is dropped, and a leading UTF-8 BOM is ignored.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::Value;

/// Longest line kept, in bytes; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 64 * 1024;

/// Most data kept for one event, in bytes.
pub const MAX_EVENT_DATA: usize = 64 * 1024;

/// An incremental scanner for the first error event of an SSE stream.
///
/// Feed it chunks as they arrive; any split of the same bytes gives the same
/// answer. After it has found an error it stops scanning and returns `None`.
#[derive(Debug, Default, Clone)]
pub struct ErrorScanner {
    lines: LineSplitter,
    event_is_error: bool,
    has_field: bool,
    data: Vec<u8>,
    has_data: bool,
    events: u64,
    found: bool,
}

impl ErrorScanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the next chunk. Returns the data payload of the first error event
    /// completed by this chunk, once; `None` otherwise.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        if self.found {
            return None;
        }
        let mut hit = None;
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(chunk, |line| {
            if hit.is_none() {
                hit = self.on_line(line);
            }
            hit.is_none()
        });
        self.lines = lines;
        self.settle(hit)
    }

    /// The stream ended: an event left without its closing blank line is still
    /// checked (a cut-off error event is still an error).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.found {
            return None;
        }
        let mut hit = None;
        if let Some(line) = self.lines.take_pending() {
            hit = self.on_line(&line);
        }
        if hit.is_none() && self.has_field {
            hit = self.dispatch();
        }
        self.settle(hit)
    }

    /// How many events (blocks with at least one `event:` or `data:` field)
    /// have been completed so far. `>= 1` means the first event has been seen:
    /// the proxy can stop peeking.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// Whether an error event has been found (scanning has stopped).
    pub fn found(&self) -> bool {
        self.found
    }

    fn settle(&mut self, hit: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if hit.is_some() {
            self.found = true;
        }
        hit
    }

    fn on_line(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        if line.is_empty() {
            return if self.has_field {
                self.dispatch()
            } else {
                None
            };
        }
        match split_field(line) {
            Some((b"event", value)) => {
                self.has_field = true;
                self.event_is_error = value == b"error";
            }
            Some((b"data", value)) => {
                self.has_field = true;
                if self.has_data {
                    push_capped(&mut self.data, b"\n", MAX_EVENT_DATA);
                }
                self.has_data = true;
                push_capped(&mut self.data, value, MAX_EVENT_DATA);
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Vec<u8>> {
        self.events += 1;
        let is_error = self.event_is_error || (self.has_data && is_error_json(&self.data));
        self.event_is_error = false;
        self.has_field = false;
        self.has_data = false;
        if is_error {
            Some(std::mem::take(&mut self.data))
        } else {
            // Keeps its capacity: no allocation per event on a long stream.
            self.data.clear();
            None
        }
    }
}

/// Whether `buf` (the start of a stream) holds at least one complete event —
/// a block with an `event:` or `data:` field closed by a blank line. Comment-only
/// blocks (keep-alives) do not count.
pub fn first_event_complete(buf: &[u8]) -> bool {
    first_event_end(buf).is_some()
}

/// The offset just past the blank line that closes the first complete event of
/// `buf`, if there is one (see [`first_event_complete`]). When `buf` ends in a
/// lone `\r`, a following `\n` would belong to the same line ending.
pub fn first_event_end(buf: &[u8]) -> Option<usize> {
    let mut has_field = false;
    let mut start = 0;
    let mut i = 0;
    while i < buf.len() {
        let b = buf[i];
        if b == b'\n' || b == b'\r' {
            let line = &buf[start..i];
            i += 1;
            if b == b'\r' && buf.get(i) == Some(&b'\n') {
                i += 1;
            }
            if line.is_empty() {
                if has_field {
                    return Some(i);
                }
            } else if let Some((b"event" | b"data", _)) = split_field(strip_bom(line, start)) {
                has_field = true;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    None
}

/// Whether an event's data is an error in any provider's shape: Anthropic
/// `{"type":"error",...}`, OpenAI Responses `{"type":"response.failed",...}`, or
/// a top-level `error` object (OpenAI chat completions, Gemini).
pub fn is_error_json(data: &[u8]) -> bool {
    // Cheap pre-check: almost every event is a content delta without the word.
    if !contains(data, &ERROR) && !contains(data, &FAILED) {
        return false;
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(o)) => {
            matches!(
                o.get("type").and_then(Value::as_str),
                Some("error" | "response.failed")
            ) || matches!(o.get("error"), Some(Value::Object(_)))
        }
        _ => false,
    }
}

fn strip_bom(line: &[u8], offset: usize) -> &[u8] {
    if offset == 0 {
        line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
    } else {
        line
    }
}

/// `name: value` → (`name`, `value` without one leading space). Comments
/// (`:` first) are `None`; a line without a colon is a field with an empty value.
fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first() == Some(&b':') {
        return None;
    }
    match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let value = &line[i + 1..];
            Some((&line[..i], value.strip_prefix(b" ").unwrap_or(value)))
        }
        None => Some((line, &[])),
    }
}

fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn contains(hay: &[u8], needle: &Finder<'static>) -> bool {
    needle.find(hay).is_some()
}

// Built once: building a searcher costs more than running it on one event.
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"error"));
static FAILED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"failed"));

/// Splits a byte stream into lines across chunk boundaries, keeping at most
/// [`MAX_LINE`] bytes of any line.
#[derive(Debug, Default, Clone)]
struct LineSplitter {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` completes that line ending.
    after_cr: bool,
    /// No line has been completed yet (for the BOM).
    started: bool,
    /// Bytes were seen since the last line ending.
    pending: bool,
}

impl LineSplitter {
    /// Calls `on_line` for each completed line; stops early when it returns false.
    fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(&[u8]) -> bool) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', chunk) {
            let mut next = i + 1;
            if chunk[i] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            let go_on = if self.pending {
                // The line began in an earlier chunk: join, hand over, and
                // keep the buffer's capacity for the next one.
                push_capped(&mut self.line, &chunk[..i], MAX_LINE);
                let mut line = std::mem::take(&mut self.line);
                let go_on = on_line(self.first_line(&line));
                line.clear();
                self.line = line;
                go_on
            } else {
                // The whole line is in this chunk: no copy.
                let line = &chunk[..i.min(MAX_LINE)];
                on_line(self.first_line(line))
            };
            self.pending = false;
            chunk = &chunk[next..];
            if !go_on {
                return;
            }
        }
        if !chunk.is_empty() {
            self.pending = true;
            push_capped(&mut self.line, chunk, MAX_LINE);
        }
    }

    /// `line` without the stream's byte order mark, if it is the first line.
    fn first_line<'a>(&mut self, line: &'a [u8]) -> &'a [u8] {
        if self.started {
            return line;
        }
        self.started = true;
        line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
    }

    fn complete(&mut self) -> Vec<u8> {
        let mut line = std::mem::take(&mut self.line);
        if !self.started {
            self.started = true;
            if line.starts_with(b"\xEF\xBB\xBF") {
                line.drain(..3);
            }
        }
        self.pending = false;
        line
    }

    /// The unterminated last line, if any bytes of it arrived.
    fn take_pending(&mut self) -> Option<Vec<u8>> {
        self.pending.then(|| self.complete())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANTHROPIC_OVERLOADED: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

    fn scan_all(chunks: &[&[u8]]) -> Option<Vec<u8>> {
        let mut s = ErrorScanner::new();
        for c in chunks {
            if let Some(d) = s.feed(c) {
                return Some(d);
            }
        }
        s.finish()
    }

    #[test]
    fn anthropic_error_event() {
        let got = scan_all(&[ANTHROPIC_OVERLOADED]).unwrap();
        assert_eq!(
            got,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
        );
    }

    #[test]
    fn found_once_then_quiet() {
        let mut s = ErrorScanner::new();
        assert!(s.feed(ANTHROPIC_OVERLOADED).is_some());
        assert!(s.found());
        assert_eq!(s.feed(ANTHROPIC_OVERLOADED), None);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn crlf_and_cr_split_across_chunks() {
        let body = b"event: error\r\ndata: {\"type\":\"error\"}\r\n\r\n";
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(
                scan_all(&[a, b]).as_deref(),
                Some(&b"{\"type\":\"error\"}"[..]),
                "cut at {cut}"
            );
        }
        // `\r` alone ends lines too.
        assert_eq!(
            scan_all(&[b"data: {\"error\":{\"code\":\"x\"}}\r\r"]).as_deref(),
            Some(&b"{\"error\":{\"code\":\"x\"}}"[..])
        );
    }

    #[test]
    fn openai_style_and_response_failed() {
        let chat = b"data: {\"id\":\"1\",\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"m\",\"type\":\"server_error\"}}\n\n";
        assert!(scan_all(&[chat]).unwrap().starts_with(b"{\"error\""));
        let failed = b"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"rate_limit_exceeded\"}}}\n\n";
        assert!(scan_all(&[failed]).is_some());
    }

    #[test]
    fn ordinary_stream_is_clean() {
        let body = b": ping\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"an error occurred in your code\"}}\n\ndata: [DONE]\n\n";
        let mut s = ErrorScanner::new();
        assert_eq!(s.feed(body), None);
        assert_eq!(s.finish(), None);
        assert_eq!(s.events_seen(), 2);
    }

    #[test]
    fn unterminated_error_event_found_at_finish() {
        let mut s = ErrorScanner::new();
        assert_eq!(s.feed(b"event: error\ndata: {\"type\":\"error\"}"), None);
        assert_eq!(s.finish().as_deref(), Some(&b"{\"type\":\"error\"}"[..]));
    }

    #[test]
    fn multi_line_data_joined() {
        let got = scan_all(&[b"event: error\ndata: {\"type\":\ndata: \"error\"}\n\n"]).unwrap();
        assert_eq!(got, b"{\"type\":\n\"error\"}");
    }

    #[test]
    fn bounded_memory_on_huge_lines() {
        let mut s = ErrorScanner::new();
        let big = vec![b'x'; 10 * MAX_LINE];
        s.feed(b"data: ");
        for _ in 0..10 {
            s.feed(&big);
        }
        assert!(s.lines.line.len() <= MAX_LINE);
        s.feed(b"\n\n");
        assert!(s.data.len() <= MAX_EVENT_DATA);
        // Scanning continues after the giant event.
        assert!(s.feed(b"event: error\ndata: {}\n\n").is_some());
    }

    #[test]
    fn bom_ignored() {
        assert!(scan_all(&[b"\xEF\xBB", b"\xBFevent: error\ndata: x\n\n"]).is_some());
    }

    #[test]
    fn first_event_boundaries() {
        assert_eq!(first_event_end(b"event: a\ndata: {}\n\nrest"), Some(19));
        assert_eq!(first_event_end(b"data: {}\r\n\r\nrest"), Some(12));
        assert_eq!(first_event_end(b": keepalive\n\ndata: {}\n"), None);
        assert_eq!(first_event_end(b": keepalive\n\ndata: {}\n\n"), Some(23));
        assert!(!first_event_complete(
            b"event: message_start\ndata: {\"type\""
        ));
        assert!(first_event_complete(b"data: x\r\r"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn line_end() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
        }

        /// One SSE line of a kind seen in real streams, or junk.
        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just("event: error".to_owned()),
                Just("event: message_start".to_owned()),
                Just(": ping".to_owned()),
                Just(r#"data: {"type":"error","error":{"type":"overloaded_error"}}"#.to_owned()),
                Just(r#"data: {"type":"content_block_delta","delta":{"text":"error"}}"#.to_owned()),
                Just(r#"data: {"error":{"code":"server_error"}}"#.to_owned()),
                Just("data: [DONE]".to_owned()),
                "[ -~]{0,40}",
            ]
        }

        fn stream() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec((line(), line_end()), 0..24).prop_map(|ls| {
                let mut s = String::new();
                for (l, e) in ls {
                    s.push_str(&l);
                    s.push_str(e);
                }
                s.into_bytes()
            })
        }

        fn run(chunks: &[&[u8]]) -> (Option<Vec<u8>>, u64) {
            let mut s = ErrorScanner::new();
            let mut got = None;
            for c in chunks {
                if let Some(d) = s.feed(c) {
                    got = Some(d);
                    break;
                }
            }
            if got.is_none() {
                got = s.finish();
            }
            (got, s.events_seen())
        }

        proptest! {
            #[test]
            fn any_split_same_answer(body in stream(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
                let whole = run(&[&body]);
                let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
                points.sort_unstable();
                let mut chunks = Vec::new();
                let mut last = 0;
                for p in points {
                    chunks.push(&body[last..p]);
                    last = p;
                }
                chunks.push(&body[last..]);
                prop_assert_eq!(run(&chunks), whole.clone());
                // Byte by byte is the harshest split.
                let bytes: Vec<&[u8]> = body.chunks(1).collect();
                prop_assert_eq!(run(&bytes), whole);
            }

            #[test]
            fn never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
                let mut s = ErrorScanner::new();
                for c in &chunks {
                    let _ = s.feed(c);
                    let _ = first_event_end(c);
                }
                let _ = s.finish();
            }
        }
    }
}
