//! What token accounting costs an answer passing through the proxy: the
//! usage scanner over a 64 KiB Anthropic stream (text deltas, then the
//! usage events), a 64 KiB OpenAI chat stream, and a 64 KiB JSON answer,
//! fed in 4 KiB chunks as they would arrive, and over the 700-byte chat
//! completion `bench/proxy.sh`'s origin answers. Reported as throughput.
//!
//! `cargo bench -p marathon-core --bench accounting -- --warm-up-time 1 --measurement-time 3`

// criterion_group! generates an undocumented pub fn; a bench has no API to document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use marathon_core::accounting::{Framing, UsageScanner};

const SIZE: usize = 64 * 1024;

fn anthropic_stream() -> Vec<u8> {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":2}}}\n\n",
    );
    while s.len() < SIZE - 300 {
        s.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" the quick brown fox\"}}\n\n");
    }
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":900}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn chat_stream() -> Vec<u8> {
    let mut s = String::new();
    while s.len() < SIZE - 400 {
        s.push_str("data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" fox\"},\"finish_reason\":null}],\"usage\":null}\n\n");
    }
    s.push_str("data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn json_answer() -> Vec<u8> {
    let text = "the quick brown fox \\\"jumps\\\" ".repeat(SIZE / 30);
    format!("{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}}],\"stop_reason\":\"end_turn\",\"usage\":{{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":25}}}}").into_bytes()
}

/// The answer of `bench/proxy.sh`'s origin (`bench/origin.conf.in`).
const CHAT_COMPLETION: &str = r#"{"id":"chatcmpl-bench0000000000000001","object":"chat.completion","created":1735689600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hi! How can I help you today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":9,"total_tokens":20,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench"}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_scanner");
    for (name, framing, body) in [
        (
            "anthropic_stream_64k",
            Framing::EventStream,
            anthropic_stream(),
        ),
        ("chat_stream_64k", Framing::EventStream, chat_stream()),
        ("json_answer_64k", Framing::Json, json_answer()),
        (
            "chat_completion_700b",
            Framing::Json,
            CHAT_COMPLETION.as_bytes().to_vec(),
        ),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = UsageScanner::new(framing);
                for chunk in body.chunks(4096) {
                    s.feed(black_box(chunk));
                }
                assert!(s.usage().is_some());
                black_box(s.usage())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
