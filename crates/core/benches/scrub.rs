//! What the secret scrubber costs an answer passing through the proxy: the
//! header values and a small JSON body searched for every live secret, at 3
//! and 300 secrets (a big team's accounts, their tokens and access keys);
//! and one untrusted word checked for a reason. Measured with callgrind on
//! the same loop: about 900 instructions per answer at 3 or 300 key-length
//! secrets, about 3,000 when one secret is shorter than 16 bytes (sampled
//! every 5 bytes) — against about 40,000 for a whole proxied request.
//!
//! `cargo bench -p marathon-core --bench scrub -- --warm-up-time 1 --measurement-time 3`

// criterion_group! generates an undocumented pub fn; a bench has no API to document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use marathon_core::secret::{Scrubber, scrubber};
use marathon_core::{Reason, Secret};

/// The header values of a typical chat answer.
const HEADERS: [&str; 12] = [
    "application/json",
    "Tue, 02 Dec 2025 10:00:00 GMT",
    "req_011CVgYq8VZb9bq1Wm3J5Nxz",
    "4000000",
    "3999000",
    "2025-12-02T10:00:01Z",
    "allowed",
    "0.31",
    "1764669600",
    "cloudflare",
    "9a7c1e3b2d4f5a6b-SJC",
    "h3=\":443\"; ma=86400",
];

const BODY: &str = r#"{"id":"chatcmpl-sim0000000000000001","object":"chat.completion","created":1764669600,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today? This is a short, typical answer of a few sentences."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":19,"total_tokens":31}}"#;

/// `n` keys shaped like Anthropic's: a fixed prefix and 40 random base62
/// characters (xorshift, so every run searches for the same keys).
fn secrets(n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ALPHABET[(x % 62) as usize] as char
    };
    (0..n)
        .map(|_| {
            let tail: String = (0..40).map(|_| next()).collect();
            format!("sk-ant-api03-{tail}")
        })
        .collect()
}

fn answer(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrub_answer");
    for n in [3, 300] {
        let values = secrets(n);
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let sc = Scrubber::of(&refs);
        g.bench_with_input(BenchmarkId::from_parameter(n), &sc, |b, sc| {
            b.iter(|| {
                let mut hit = false;
                for v in HEADERS {
                    hit |= sc.finds(black_box(v.as_bytes()));
                }
                hit |= sc.finds(black_box(BODY.as_bytes()));
                hit
            })
        });
    }
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let _held: Vec<Secret> = secrets(3).into_iter().map(Secret::new).collect();
    c.bench_function("scrubber_snapshot", |b| b.iter(|| black_box(scrubber())));
    c.bench_function("reason_untrusted", |b| {
        b.iter(|| Reason::untrusted(black_box("rate_limit_exceeded")))
    });
}

criterion_group!(benches, answer, snapshot);
criterion_main!(benches);
