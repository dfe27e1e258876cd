//! Access keys: which named key a request presented, and what each key used.
//!
//! A request's key is checked in `server::route`; the matching key's
//! [`ClientKey`] is then put on the request's extensions, so whatever serves
//! the request can count against it:
//! `req.extensions().get::<ClientKey>()`. Keys are compared in constant time
//! against every configured key (no early exit tells a prober which one came
//! first); names, never keys, reach status and metrics.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use marathon_config::AccessKey;
use marathon_core::Secret;
use marathon_core::accounting::TokenUsage;
use marathon_core::status::AccessKeyReport;

/// The configured access keys and each one's counters.
pub(crate) struct AccessKeys {
    keys: Vec<(Secret, ClientKey)>,
}

/// The access key a request came with: its name and its counters (shared:
/// cloning is a pointer copy). Present on a request's extensions when the
/// proxy has access keys; absent when it has none.
#[derive(Clone, Debug)]
pub struct ClientKey(Arc<KeyUsage>);

#[derive(Debug)]
struct KeyUsage {
    name: String,
    requests: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    cache_read_tokens: AtomicU64,
    cache_write_tokens: AtomicU64,
}

impl ClientKey {
    fn new(name: &str) -> Self {
        ClientKey(Arc::new(KeyUsage {
            name: name.to_owned(),
            requests: AtomicU64::new(0),
            input_tokens: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            cache_read_tokens: AtomicU64::new(0),
            cache_write_tokens: AtomicU64::new(0),
        }))
    }

    /// The key's name (`server.access_keys`), safe to show and to use as a label.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Counts input and output tokens a request of this key used.
    pub fn add_tokens(&self, input: u64, output: u64) {
        self.0.input_tokens.fetch_add(input, Relaxed);
        self.0.output_tokens.fetch_add(output, Relaxed);
    }

    /// Counts an answer's usage (token accounting), cache tokens included.
    pub fn add_usage(&self, u: &TokenUsage) {
        self.add_tokens(u.input, u.output);
        self.0.cache_read_tokens.fetch_add(u.cache_read, Relaxed);
        self.0.cache_write_tokens.fetch_add(u.cache_write, Relaxed);
    }

    /// The tokens counted so far.
    pub fn tokens(&self) -> TokenUsage {
        TokenUsage {
            input: self.0.input_tokens.load(Relaxed),
            output: self.0.output_tokens.load(Relaxed),
            cache_read: self.0.cache_read_tokens.load(Relaxed),
            cache_write: self.0.cache_write_tokens.load(Relaxed),
        }
    }

    pub(crate) fn count_request(&self) {
        self.0.requests.fetch_add(1, Relaxed);
    }

    /// (requests, input tokens, output tokens) so far.
    pub fn usage(&self) -> (u64, u64, u64) {
        (
            self.0.requests.load(Relaxed),
            self.0.input_tokens.load(Relaxed),
            self.0.output_tokens.load(Relaxed),
        )
    }
}

impl AccessKeys {
    pub(crate) fn new(keys: &[AccessKey]) -> Self {
        AccessKeys {
            keys: keys
                .iter()
                .map(|k| (k.key.clone(), ClientKey::new(&k.name)))
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key among `presented` (the values of the headers a key may come
    /// in) that is configured. Every candidate is compared with every key.
    pub(crate) fn check<'a>(&self, presented: impl Iterator<Item = &'a str>) -> Option<&ClientKey> {
        let mut found = None;
        for candidate in presented {
            for (key, client) in &self.keys {
                if key.matches(candidate) && found.is_none() {
                    found = Some(client);
                }
            }
        }
        found
    }

    /// Per-key counters for the status view.
    pub(crate) fn status(&self) -> Vec<AccessKeyReport> {
        self.keys
            .iter()
            .map(|(_, c)| {
                let t = c.tokens();
                AccessKeyReport {
                    name: c.name().to_owned(),
                    requests: c.usage().0,
                    input_tokens: t.input,
                    output_tokens: t.output,
                    cache_read_tokens: t.cache_read,
                    cache_write_tokens: t.cache_write,
                }
            })
            .collect()
    }

    /// Per-key counters in the Prometheus text format, labelled by name.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        if self.keys.is_empty() {
            return;
        }
        let name = "marathon_access_key_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Provider requests per access key.\n# TYPE {name} counter"
        );
        for (_, c) in &self.keys {
            let _ = writeln!(out, "{name}{{key=\"{}\"}} {}", c.name(), c.usage().0);
        }
        let name = "marathon_access_key_tokens_total";
        let _ = writeln!(
            out,
            "# HELP {name} Tokens used per access key.\n# TYPE {name} counter"
        );
        for (_, c) in &self.keys {
            let t = c.tokens();
            for (kind, n) in [
                ("input", t.input),
                ("output", t.output),
                ("cache_read", t.cache_read),
                ("cache_write", t.cache_write),
            ] {
                let _ = writeln!(out, "{name}{{key=\"{}\",kind=\"{kind}\"}} {n}", c.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AccessKeys {
        AccessKeys::new(&[
            AccessKey::new("alice", Secret::new("k-alice-1")),
            AccessKey::new("ci", Secret::new("k-ci-2")),
        ])
    }

    #[test]
    fn the_presented_key_names_its_owner() {
        let k = keys();
        assert_eq!(k.check(["k-ci-2"].into_iter()).unwrap().name(), "ci");
        assert_eq!(
            k.check(["nope", "k-alice-1"].into_iter()).unwrap().name(),
            "alice"
        );
        assert!(
            k.check(["k-alice"].into_iter()).is_none(),
            "a prefix is not the key"
        );
        assert!(k.check(std::iter::empty()).is_none());
    }

    /// Status and metrics carry names and counts, never a key.
    #[test]
    fn status_and_metrics_show_names_not_keys() {
        let k = keys();
        let alice = k.check(["k-alice-1"].into_iter()).unwrap();
        alice.count_request();
        alice.add_tokens(10, 3);
        alice.add_usage(&TokenUsage {
            input: 0,
            output: 0,
            cache_read: 40,
            cache_write: 2,
        });
        let json = serde_json::to_value(k.status()).unwrap();
        assert_eq!(json[0]["name"], "alice");
        assert_eq!(json[0]["requests"], 1);
        assert_eq!(json[0]["input_tokens"], 10);
        assert_eq!(json[0]["output_tokens"], 3);
        assert_eq!(json[0]["cache_read_tokens"], 40);
        assert_eq!(json[0]["cache_write_tokens"], 2);
        assert_eq!(json[1]["requests"], 0);
        let status = json.to_string();
        let mut text = String::new();
        k.render_metrics(&mut text);
        assert!(
            text.contains("marathon_access_key_requests_total{key=\"alice\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("marathon_access_key_tokens_total{key=\"alice\",kind=\"input\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("marathon_access_key_tokens_total{key=\"alice\",kind=\"cache_read\"} 40"),
            "{text}"
        );
        assert!(
            text.contains("marathon_access_key_requests_total{key=\"ci\"} 0"),
            "{text}"
        );
        for t in [&status, &text] {
            assert!(!t.contains("k-alice-1") && !t.contains("k-ci-2"), "{t}");
        }
    }
}
