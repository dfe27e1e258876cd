//! The last line before a client: no secret this process holds — an
//! account's key or token, the proxy's access keys — leaves in a response.
//!
//! An upstream may echo the credential it received: in its status line's
//! reason text, a header (`x-error: <key>`), an error body the proxy passes
//! through, an error event in the middle of a stream. Everything the proxy
//! answers goes through [`response`] (the server calls it on every answer,
//! marathon's own included), which masks every known secret
//! ([`marathon_core::secret::scrubber`]) with `*` of the same length, so a
//! `content-length` stays true and no framing changes.
//!
//! Streams are masked chunk by chunk. A secret split between two chunks is
//! caught by holding back the end of a chunk that could start one: at most
//! the longest secret's length less one, and only the bytes after the last
//! line break (a credential never holds one), so an event stream, whose
//! chunks end with a blank line, is passed on without delay or copy.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{HeaderMap, Response};
use http_body::Frame;
use marathon_core::secret::{Scrubber, scrubber};

use crate::body::ProxyBody;

/// Masks known secrets in a response to a client: the status line's reason
/// text (dropped: the standard one is written), header names (such a header
/// is dropped) and values, and the body.
pub(crate) fn response(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    // An upstream's own reason text rides along in the extensions (hyper
    // writes it back); the standard text says the same without the risk.
    if !resp.extensions().is_empty() {
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    }
    let secrets = scrubber();
    if secrets.is_empty() {
        return resp;
    }
    mask_headers(resp.headers_mut(), &secrets);
    resp.map(|body| body.masked(secrets))
}

fn mask_headers(headers: &mut HeaderMap, secrets: &Scrubber) {
    let mut named: Vec<http::HeaderName> = Vec::new();
    for (name, value) in headers.iter_mut() {
        if secrets.finds(name.as_str().as_bytes()) {
            named.push(name.clone());
            continue;
        }
        if secrets.finds(value.as_bytes()) {
            let mut masked = value.as_bytes().to_vec();
            secrets.mask(&mut masked);
            // `*` replaces bytes of a valid value: still valid.
            *value = HeaderValue::from_bytes(&masked)
                .unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// A body held in memory, masked.
pub(crate) fn mask_bytes(data: Bytes, secrets: &Scrubber) -> Bytes {
    if !secrets.finds(&data) {
        return data;
    }
    let mut masked = BytesMut::from(&data[..]);
    secrets.mask(&mut masked);
    masked.freeze()
}

/// Masks a streamed body's data frames, holding back what may be the start
/// of a secret the next frame ends.
pub(crate) struct Masker {
    secrets: Arc<Scrubber>,
    /// What is held back, boxed: rarely needed (an event stream's chunks end
    /// with a line break, a body's last frame is never held), and every
    /// response body carries a masker, so it must stay small.
    held: Option<Box<Held>>,
}

#[derive(Default)]
struct Held {
    /// The held-back end of the data so far (already masked as far as it goes).
    carry: Bytes,
    /// Trailers that arrived while bytes were held back; sent after them.
    trailers: Option<HeaderMap>,
}

impl Masker {
    pub(crate) fn new(secrets: Arc<Scrubber>) -> Self {
        Masker {
            secrets,
            held: None,
        }
    }

    /// Bytes held back.
    pub(crate) fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.carry.len())
    }

    /// Whether nothing is held back (no data, no trailers).
    pub(crate) fn is_drained(&self) -> bool {
        self.held
            .as_ref()
            .is_none_or(|h| h.carry.is_empty() && h.trailers.is_none())
    }

    fn take_carry(&mut self) -> Bytes {
        self.held
            .as_mut()
            .map(|h| std::mem::take(&mut h.carry))
            .unwrap_or_default()
    }

    /// Masks a frame from the peer; returns what may go to the client now
    /// (`None`: everything was held back, read on). `last`: the peer's body
    /// ends with this frame, so nothing needs holding back.
    pub(crate) fn frame(&mut self, frame: Frame<Bytes>, last: bool) -> Option<Frame<Bytes>> {
        match frame.into_data() {
            Ok(data) => {
                let out = self.data(data, last);
                (!out.is_empty()).then(|| Frame::data(out))
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) if self.held() == 0 => Some(Frame::trailers(trailers)),
                Ok(trailers) => {
                    let carry = self.take_carry();
                    self.held.get_or_insert_default().trailers = Some(trailers);
                    Some(Frame::data(carry))
                }
                // Neither data nor trailers: nothing to mask.
                Err(_) => None,
            },
        }
    }

    /// What was held back, once the peer's body has ended.
    pub(crate) fn finish(&mut self) -> Option<Frame<Bytes>> {
        let carry = self.take_carry();
        if !carry.is_empty() {
            return Some(Frame::data(carry));
        }
        let trailers = self.held.as_mut().and_then(|h| h.trailers.take());
        trailers.map(Frame::trailers)
    }

    fn data(&mut self, chunk: Bytes, last: bool) -> Bytes {
        let carry = self.take_carry();
        let joined = if carry.is_empty() {
            chunk
        } else {
            let mut b = BytesMut::with_capacity(carry.len() + chunk.len());
            b.extend_from_slice(&carry);
            b.extend_from_slice(&chunk);
            b.freeze()
        };
        let mut out = mask_bytes(joined, &self.secrets);
        let hold = if last { 0 } else { self.hold(&out) };
        if hold > 0 {
            self.held.get_or_insert_default().carry = out.split_off(out.len() - hold);
        }
        out
    }

    /// How much of the end of `data` may be the start of a secret: the bytes
    /// after the last line break, at most the longest secret less one.
    fn hold(&self, data: &[u8]) -> usize {
        let window = self.secrets.longest().saturating_sub(1).min(data.len());
        let tail = &data[data.len() - window..];
        match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => tail.len() - i - 1,
            None => window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        Masker::new(Arc::new(Scrubber::of(secrets)))
    }

    fn run(m: &mut Masker, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            if let Some(f) = m.frame(Frame::data(Bytes::copy_from_slice(c.as_bytes())), false) {
                out.extend_from_slice(f.data_ref().unwrap());
            }
        }
        while let Some(f) = m.finish() {
            if let Some(d) = f.data_ref() {
                out.extend_from_slice(d);
            }
        }
        String::from_utf8(out).unwrap()
    }

    // Guards: a key split across chunks of a passed-through stream (any
    // split point) is still masked, and nothing is lost or reordered.
    #[test]
    fn masks_a_secret_split_anywhere() {
        let key = "sk-ant-api03-SPLIT-key-Zq81";
        let text = format!("data: {{\"error\":\"{key}\"}}\n\nmore {key} end");
        let want = text.replace(key, &"*".repeat(key.len()));
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut m = masker(&[key]);
                let got = run(&mut m, &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(got, want, "cut at {cut}/{cut2}");
                assert!(m.is_drained());
            }
        }
    }

    // Guards: event streams are not delayed: a chunk that ends a line is
    // passed on whole.
    #[test]
    fn whole_lines_pass_at_once() {
        let mut m = masker(&["sk-ant-api03-some-key"]);
        let f = m
            .frame(
                Frame::data(Bytes::from_static(b"event: x\ndata: {}\n\n")),
                false,
            )
            .unwrap();
        assert_eq!(f.data_ref().unwrap().len(), 19);
        assert_eq!(m.held(), 0);
        // A line cut short holds back at most the longest secret less one.
        let f = m
            .frame(Frame::data(Bytes::from(vec![b'a'; 100])), false)
            .unwrap();
        assert_eq!(f.data_ref().unwrap().len(), 100 - 20);
        assert_eq!(m.held(), 20);
        // The peer's last frame is passed on whole, with what was held.
        let f = m
            .frame(Frame::data(Bytes::from(vec![b'b'; 50])), true)
            .unwrap();
        assert_eq!(f.data_ref().unwrap().len(), 70);
        assert!(m.is_drained());
    }

    #[test]
    fn headers_and_full_bodies() {
        let key = "sk-ant-api03-HEADER-key";
        let sc = Scrubber::of(&[key]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-error",
            HeaderValue::from_str(&format!("bad {key}")).unwrap(),
        );
        h.insert("retry-after", HeaderValue::from_static("5"));
        h.insert(
            http::HeaderName::from_bytes(format!("x-{}", key.to_ascii_lowercase()).as_bytes())
                .unwrap(),
            HeaderValue::from_static("1"),
        );
        mask_headers(&mut h, &sc);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(
            h["x-error"],
            format!("bad {}", "*".repeat(key.len())).as_str()
        );
        assert_eq!(h["retry-after"], "5");
        let body = Bytes::from(format!("{{\"k\":\"{key}\"}}"));
        let masked = mask_bytes(body.clone(), &sc);
        assert_eq!(masked.len(), body.len());
        assert!(!String::from_utf8_lossy(&masked).contains(key));
        let clean = Bytes::from_static(b"clean");
        assert_eq!(
            mask_bytes(clean.clone(), &sc).as_ptr(),
            clean.as_ptr(),
            "no copy"
        );
    }
}
