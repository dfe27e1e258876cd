//! Real provider-shaped answers, split at every byte boundary.

use super::*;

fn scan(framing: Framing, chunks: &[&[u8]]) -> (Option<TokenUsage>, Option<String>) {
    let mut s = UsageScanner::new(framing);
    for c in chunks {
        s.feed(c);
    }
    (s.usage(), s.model().map(|m| m.into_owned()))
}

/// The same answer whole, cut in two at every byte, and byte by byte.
fn every_split(framing: Framing, body: &str, usage: TokenUsage, model: &str) {
    let body = body.as_bytes();
    let want = (Some(usage), Some(model.to_owned()));
    assert_eq!(scan(framing, &[body]), want, "whole");
    for cut in 0..=body.len() {
        let (a, b) = body.split_at(cut);
        assert_eq!(scan(framing, &[a, b]), want, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan(framing, &bytes), want, "byte by byte");
}

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
    TokenUsage {
        input,
        output,
        cache_read,
        cache_write,
    }
}

const ANTHROPIC_JSON: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"The text says \"usage\": {\"input_tokens\": 999} and \\\"model\\\""},{"type":"tool_use","id":"toolu_01","name":"get","input":{"usage":{"input_tokens":777,"output_tokens":777},"model":"fake"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":25,"service_tier":"standard"}}"#;

#[test]
fn anthropic_json() {
    every_split(
        Framing::Json,
        ANTHROPIC_JSON,
        usage(12, 25, 2048, 100),
        "claude-sonnet-4-5-20250929",
    );
}

const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-opus-4-1-20250805\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1024,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":2,\"service_tier\":\"standard\"}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \\\"usage\\\":{\\\"output_tokens\\\":5000}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

#[test]
fn anthropic_stream() {
    every_split(
        Framing::EventStream,
        ANTHROPIC_STREAM,
        usage(472, 89, 1024, 0),
        "claude-opus-4-1-20250805",
    );
    // The same with CRLF line ends.
    every_split(
        Framing::EventStream,
        &ANTHROPIC_STREAM.replace('\n', "\r\n"),
        usage(472, 89, 1024, 0),
        "claude-opus-4-1-20250805",
    );
}

/// Newer API versions repeat the cumulative input and cache counts in
/// `message_delta`: the last wins.
#[test]
fn anthropic_stream_with_full_final_usage() {
    let body = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":0,\"output_tokens\":41,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n";
    every_split(
        Framing::EventStream,
        body,
        usage(10, 41, 0, 300),
        "claude-haiku-4-5",
    );
}

const CHAT_JSON: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":10,"total_tokens":1127,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default"}"#;

#[test]
fn openai_chat_json() {
    // `prompt_tokens` includes the cached part.
    every_split(
        Framing::Json,
        CHAT_JSON,
        usage(93, 10, 1024, 0),
        "gpt-4.1-2025-04-14",
    );
}

const CHAT_STREAM: &str = "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n\
data: [DONE]\n\n";

#[test]
fn openai_chat_stream() {
    every_split(
        Framing::EventStream,
        CHAT_STREAM,
        usage(9, 12, 0, 0),
        "gpt-4o-mini-2024-07-18",
    );
}

/// Without `stream_options.include_usage` a chat stream carries no usage:
/// nothing is counted, the model is still known.
#[test]
fn openai_chat_stream_without_usage() {
    let body: String = CHAT_STREAM
        .split("\n\n")
        .filter(|e| !e.contains("prompt_tokens"))
        .map(|e| format!("{e}\n\n"))
        .collect();
    assert_eq!(
        scan(Framing::EventStream, &[body.as_bytes()]),
        (None, Some("gpt-4o-mini-2024-07-18".to_owned()))
    );
}

const RESPONSES_JSON: &str = r#"{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"message","id":"msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b","status":"completed","role":"assistant","content":[{"type":"output_text","text":"In a peaceful grove beneath a silver moon...","annotations":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"usage":{"type":"object"}}}}],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":16},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},"user":null,"metadata":{}}"#;

#[test]
fn openai_responses_json() {
    // `input_tokens` includes the cached part.
    every_split(
        Framing::Json,
        RESPONSES_JSON,
        usage(20, 87, 16, 0),
        "gpt-4.1-2025-04-14",
    );
}

const RESPONSES_STREAM: &str = "event: response.created\n\
data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"error\":null,\"model\":\"gpt-5-codex\",\"output\":[],\"usage\":null,\"metadata\":{}}}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\",\"logprobs\":[]}\n\n\
event: response.completed\n\
data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"completed\",\"error\":null,\"model\":\"gpt-5-codex\",\"output\":[{\"type\":\"reasoning\",\"id\":\"rs_1\",\"summary\":[]},{\"type\":\"message\",\"id\":\"msg_1\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi\",\"annotations\":[]}]}],\"usage\":{\"input_tokens\":5000,\"input_tokens_details\":{\"cached_tokens\":4096},\"output_tokens\":300,\"output_tokens_details\":{\"reasoning_tokens\":256},\"total_tokens\":5300},\"metadata\":{}}}\n\n";

#[test]
fn openai_responses_stream() {
    every_split(
        Framing::EventStream,
        RESPONSES_STREAM,
        usage(904, 300, 4096, 0),
        "gpt-5-codex",
    );
}

const GEMINI_JSON: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hi there"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1200,"candidatesTokenCount":40,"totalTokenCount":1265,"cachedContentTokenCount":1024,"promptTokensDetails":[{"modality":"TEXT","tokenCount":1200}],"cacheTokensDetails":[{"modality":"TEXT","tokenCount":1024}],"thoughtsTokenCount":25},"modelVersion":"gemini-2.5-flash","responseId":"mfPBaP7lN4qpz7IPqo-i2AQ"}"#;

#[test]
fn gemini_json() {
    // The prompt count includes the cached part; thoughts are output.
    every_split(
        Framing::Json,
        GEMINI_JSON,
        usage(176, 65, 1024, 0),
        "gemini-2.5-flash",
    );
}

const GEMINI_CHUNKS: [&str; 2] = [
    r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":1,"totalTokenCount":9},"modelVersion":"gemini-2.5-pro","responseId":"x"}"#,
    r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"totalTokenCount":41,"promptTokensDetails":[{"modality":"TEXT","tokenCount":8}],"thoughtsTokenCount":30},"modelVersion":"gemini-2.5-pro","responseId":"x"}"#,
];

#[test]
fn gemini_sse_stream_last_chunk_wins() {
    let body: String = GEMINI_CHUNKS
        .iter()
        .map(|c| format!("data: {c}\r\n\r\n"))
        .collect();
    every_split(
        Framing::EventStream,
        &body,
        usage(8, 33, 0, 0),
        "gemini-2.5-pro",
    );
}

/// `streamGenerateContent` without `alt=sse`: one JSON array of chunks.
#[test]
fn gemini_json_array_stream() {
    let body = format!("[{},\r\n{}]", GEMINI_CHUNKS[0], GEMINI_CHUNKS[1]);
    every_split(Framing::Json, &body, usage(8, 33, 0, 0), "gemini-2.5-pro");
}

/// Gemini Code Assist wraps the answer in `response`.
#[test]
fn gemini_code_assist_stream() {
    let body: String = GEMINI_CHUNKS
        .iter()
        .map(|c| format!("data: {{\"response\": {c}, \"traceId\": \"t1\"}}\r\n\r\n"))
        .collect();
    every_split(
        Framing::EventStream,
        &body,
        usage(8, 33, 0, 0),
        "gemini-2.5-pro",
    );
}

/// Keys deeper than the answer's own (a tool's input, a JSON schema) and
/// text that reads like usage are not the answer's usage, wherever they are.
#[test]
fn nested_or_quoted_usage_is_not_the_answer() {
    let body = r#"{"usage":{"input_tokens":1,"output_tokens":2},"model":"m1","content":[{"type":"tool_use","input":{"usage":{"input_tokens":999},"model":"fake"}},{"text":"\"usage\":{\"output_tokens\":5}"}],"extra":{"deep":{"usage":{"output_tokens":7}}}}"#;
    assert_eq!(
        scan(Framing::Json, &[body.as_bytes()]),
        (Some(usage(1, 2, 0, 0)), Some("m1".to_owned()))
    );
}

#[test]
fn no_usage_or_broken_bodies_count_nothing() {
    for body in [
        &b""[..],
        b"not json",
        b"{}",
        b"{\"usage\":null}",
        b"{\"usage\":\"12\"}",
        b"{\"usage\":[1,2]}",
        b"{\"usage\":{\"input_tokens\":-1,\"output_tokens\":1.5}}",
        b"{\"usage\":{\"input_tokens\":1",
        b"}}}]]]{\"usage\"::{}",
        b"[DONE]",
    ] {
        assert_eq!(scan(Framing::Json, &[body]).0, None, "{body:?}");
        assert_eq!(scan(Framing::EventStream, &[body]).0, None, "{body:?}");
    }
    // A number field that is not a count is skipped, the others kept.
    assert_eq!(
        scan(
            Framing::Json,
            &[br#"{"usage":{"input_tokens":"x","output_tokens":4}}"#]
        )
        .0,
        Some(usage(0, 4, 0, 0))
    );
}

/// A truncated stream counts what arrived complete.
#[test]
fn truncated_stream_counts_what_arrived() {
    let cut = ANTHROPIC_STREAM.find("event: message_delta").unwrap();
    let (u, m) = scan(
        Framing::EventStream,
        &[&ANTHROPIC_STREAM.as_bytes()[..cut + 40]],
    );
    assert_eq!(u, Some(usage(472, 2, 1024, 0)));
    assert_eq!(m.as_deref(), Some("claude-opus-4-1-20250805"));
}

/// A broken event does not spoil the next one: each event is its own document.
#[test]
fn a_broken_event_does_not_spoil_the_next() {
    let body = "data: {\"usage\":{\"input_tokens\":\n\ndata: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
    assert_eq!(
        scan(Framing::EventStream, &[body.as_bytes()]),
        (Some(usage(3, 4, 0, 0)), Some("m".to_owned()))
    );
    // Comments, other fields, a BOM and a data line split in two.
    let body = "\u{feff}: ping\nid: 7\nretry: 10\ndata: {\"model\":\"m\",\ndata: \"usage\":{\"prompt_tokens\":3}}\n\n";
    assert_eq!(
        scan(Framing::EventStream, &[body.as_bytes()]),
        (Some(usage(3, 0, 0, 0)), Some("m".to_owned()))
    );
}

/// Nothing of the body is held: a usage object or a line of any size is
/// read as it passes, and a model name past its cap is not read.
#[test]
fn memory_stays_bounded_on_huge_values() {
    // The scanner owns no heap: its size is all it holds.
    assert!(std::mem::size_of::<UsageScanner>() <= 1024);
    let mut s = UsageScanner::new(Framing::Json);
    s.feed(b"{\"usage\":{\"input_tokens\":1,\"pad\":\"");
    let big = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        s.feed(&big);
    }
    s.feed(b"\",\"output_tokens\":2},\"model\":\"");
    for _ in 0..8 {
        s.feed(&big);
    }
    s.feed(b"\"}");
    // The usage is read whatever its padding; the model outgrew its cap.
    assert_eq!((s.usage(), s.model()), (Some(usage(1, 2, 0, 0)), None));
    // A huge SSE line costs nothing either.
    let mut s = UsageScanner::new(Framing::EventStream);
    s.feed(b"data: {\"text\":\"");
    for _ in 0..8 {
        s.feed(&big);
    }
    s.feed(b"\",\"usage\":{\"prompt_tokens\":2}}\n\n");
    assert_eq!(s.usage(), Some(usage(2, 0, 0, 0)));
}

/// A WebSocket carries many answers, one JSON document per message: each
/// is taken on its own, and a broken message does not spoil the next.
#[test]
fn message_framed_answers_are_taken_one_by_one() {
    let mut s = UsageScanner::new(Framing::Json);
    let completed = |n: u64| {
        format!(
            r#"{{"type":"response.completed","response":{{"model":"gpt-5-codex","usage":{{"input_tokens":{n},"input_tokens_details":{{"cached_tokens":1}},"output_tokens":2}}}}}}"#
        )
    };
    let take = |s: &mut UsageScanner| {
        let got = (s.usage(), s.model().map(|m| m.into_owned()));
        s.clear_answer();
        got
    };
    s.feed(br#"{"type":"response.created","response":{"model":"gpt-5-codex","usage":null}}"#);
    s.end_document();
    assert_eq!(take(&mut s), (None, Some("gpt-5-codex".to_owned())));
    s.feed(completed(10).as_bytes());
    s.end_document();
    assert_eq!(
        take(&mut s),
        (Some(usage(9, 2, 1, 0)), Some("gpt-5-codex".to_owned()))
    );
    s.feed(br#"{"type":"response.output_text.delta","delta":"{\"usage\":"#);
    s.end_document();
    s.feed(completed(20).as_bytes());
    s.end_document();
    assert_eq!(
        take(&mut s),
        (Some(usage(19, 2, 1, 0)), Some("gpt-5-codex".to_owned()))
    );
    assert_eq!(take(&mut s), (None, None));
}

/// A model name with JSON escapes is read decoded; lenient counts.
#[test]
fn escaped_models_and_odd_fields() {
    let body = br#"{"model":"gpt-4.1","usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":7,"completion_tokens_details":{"reasoning_tokens":"x"}}}"#;
    assert_eq!(
        scan(Framing::Json, &[body]),
        (Some(usage(10, 2, 0, 0)), Some("gpt-4.1".to_owned()))
    );
    let body = br#"{"model":12,"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":5,"other":[1,{"a":2}]},"output_tokens":1}}"#;
    assert_eq!(
        scan(Framing::Json, &[body]),
        (Some(usage(0, 1, 5, 0)), None)
    );
}

/// A model name with escapes is read decoded at any split; a usage object
/// that repeats a count keeps its last value.
#[test]
fn escaped_models_and_repeated_counts() {
    every_split(
        Framing::Json,
        r#"{"model":"gpt-4o\u002dmini \"x\"","usage":{"input_tokens":1,"input_tokens":7,"output_tokens":2}}"#,
        usage(7, 2, 0, 0),
        "gpt-4o-mini \"x\"",
    );
}

#[test]
fn deep_nesting_is_counted_not_stored() {
    let mut s = UsageScanner::new(Framing::Json);
    let open = vec![b'['; 100_000];
    let close = vec![b']'; 100_000];
    s.feed(b"{\"a\":");
    s.feed(&open);
    s.feed(&close);
    s.feed(b",\"usage\":{\"prompt_tokens\":5},\"model\":\"m\"}");
    assert_eq!(s.usage(), Some(usage(5, 0, 0, 0)));
    assert_eq!(s.model().as_deref(), Some("m"));
}

#[test]
fn request_and_path_models() {
    assert_eq!(
        request_model(
            br#"{"messages":[{"model":"no"}],"model":"claude-sonnet-4-5","max_tokens":5}"#
        )
        .as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(request_model(br#"{"usage":{"model":"no"}}"#), None);
    assert_eq!(request_model(b"garbage"), None);
    assert_eq!(
        path_model("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
        Some("gemini-2.5-flash")
    );
    assert_eq!(
        path_model("/v1beta/models/gemini-2.5-pro"),
        Some("gemini-2.5-pro")
    );
    assert_eq!(path_model("/v1/messages"), None);
    assert_eq!(path_model("/v1beta/models/:x"), None);
}

#[test]
fn model_labels_are_safe_words() {
    for ok in [
        "claude-sonnet-4-5-20250929",
        "gpt-4o-mini-2024-07-18",
        "gemini-2.5-flash",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "o3",
        "gpt-5-codex",
    ] {
        assert_eq!(model_label(ok), Some(ok));
    }
    for bad in [
        "",
        "sk-ant-api03-abcdefghijklmnop",
        "a b",
        "<script>",
        "model\"}",
        "x\n",
        "Zm9vYmFyYmF6cXV4MTIzNDU2",
        &"a".repeat(65),
    ] {
        assert_eq!(model_label(bad), None, "{bad:?}");
    }
    let secret = crate::secret::Secret::new("model-secret-value-1");
    assert_eq!(model_label("model-secret-value-1"), None);
    drop(secret);
}

#[test]
fn ledger_totals_per_account_and_model_bounded() {
    let mut l = TokenLedger::new();
    let a = AccountId("a".into());
    let b = AccountId("b".into());
    l.add(&a, Some("m1"), &usage(1, 2, 3, 4));
    l.add(&a, Some("m1"), &usage(1, 1, 0, 0));
    l.add(&a, None, &usage(5, 0, 0, 0));
    l.add(&a, Some("sk-ant-oops-secret-looking"), &usage(0, 1, 0, 0));
    l.add(&b, Some("m2"), &usage(7, 7, 0, 0));
    let at = l.account(&a).unwrap();
    assert_eq!(
        at.total,
        TokenTotals {
            input: 7,
            output: 4,
            cache_read: 3,
            cache_write: 4
        }
    );
    assert_eq!(
        at.models,
        vec![
            (
                "m1".to_owned(),
                TokenTotals {
                    input: 2,
                    output: 3,
                    cache_read: 3,
                    cache_write: 4
                }
            ),
            (
                UNKNOWN_MODEL.to_owned(),
                TokenTotals {
                    input: 5,
                    ..Default::default()
                }
            ),
            (
                OTHER_MODEL.to_owned(),
                TokenTotals {
                    output: 1,
                    ..Default::default()
                }
            ),
        ]
    );
    for i in 0..100 {
        l.add(&b, Some(&format!("model-{i}")), &usage(1, 0, 0, 0));
    }
    let bt = l.account(&b).unwrap();
    assert!(bt.models.len() <= MAX_MODELS_PER_ACCOUNT + 1);
    assert_eq!(bt.total.input, 107);
    assert_eq!(bt.models.iter().map(|(_, t)| t.input).sum::<u64>(), 107);
    l.retain(|id| id == &a);
    assert!(l.account(&b).is_none());
}

/// A tally on a ledger of its own for account `a1`, and a reader of that
/// account's totals.
fn tally_on(path: &str, request: Option<Vec<u8>>) -> (Tally, impl Fn() -> AccountTokens) {
    let ledger = Arc::new(Mutex::new(TokenLedger::new()));
    let id = AccountId("a1".into());
    let t = Tally::new(ledger.clone(), id.clone(), Framing::Json, path, request);
    let read = move || {
        let l = ledger.lock().unwrap();
        l.account(&id).cloned().unwrap_or_default()
    };
    (t, read)
}

/// Guards counting twice or not at all: an answer is counted once, at its
/// end or when dropped half-way, whichever comes first.
#[test]
fn a_tally_counts_once_at_the_end_or_on_drop() {
    let body = br#"{"model":"m","usage":{"input_tokens":3,"output_tokens":4}}"#;
    let (mut t, read) = tally_on("/v1/messages", None);
    t.feed(body);
    assert_eq!(read().total.input, 0, "not before the end");
    t.finish();
    t.finish();
    drop(t);
    assert_eq!((read().total.input, read().total.output), (3, 4));
    let (mut t, read) = tally_on("/v1/messages", None);
    t.feed(body);
    drop(t);
    assert_eq!(
        read().total.output,
        4,
        "a body dropped half-way still counts"
    );
    let (mut t, read) = tally_on("/v1/messages", None);
    t.feed(b"{\"type\":\"message\",");
    drop(t);
    assert_eq!(
        read(),
        AccountTokens::default(),
        "nothing reported, nothing counted"
    );
}

/// Each message of a socket is counted on its own, and `also` sees each.
#[test]
fn a_tally_counts_every_message_and_calls_also() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (t, read) = tally_on("/v1/responses", None);
    let s = seen.clone();
    let mut t = t.also(Box::new(move |u| s.lock().unwrap().push(u.output)));
    for out in [5, 7] {
        t.feed(format!(r#"{{"type":"response.completed","response":{{"model":"gpt-5","usage":{{"input_tokens":1,"output_tokens":{out}}}}}}}"#).as_bytes());
        t.end_message();
    }
    drop(t);
    assert_eq!(read().total.output, 12);
    assert_eq!(*seen.lock().unwrap(), vec![5, 7]);
}

/// Guards a big prompt held for a whole stream: the request body is let go
/// as soon as the answer names its model, and never kept for a path that
/// names it.
#[test]
fn a_tally_lets_the_request_go_once_the_answer_names_its_model() {
    let ledger = Arc::new(Mutex::new(TokenLedger::new()));
    let id = AccountId("a1".into());
    let request = vec![b' '; 1 << 20];
    let mut t = Tally::new(
        ledger.clone(),
        id.clone(),
        Framing::EventStream,
        "/v1/messages",
        Some(request.clone()),
    );
    assert!(t.holds_request());
    t.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",");
    assert!(!t.holds_request());
    let t = Tally::new(
        ledger,
        id,
        Framing::EventStream,
        "/v1beta/models/g:streamGenerateContent",
        Some(request),
    );
    assert!(!t.holds_request());
}

/// The model comes from the request when the answer names none: the Gemini
/// path first, then the request body's `model`.
#[test]
fn a_tallys_model_falls_back_to_the_request() {
    let usage = br#"{"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1}}"#;
    for (path, request, want) in [
        (
            "/v1beta/models/gemini-2.5-pro:generateContent",
            None,
            "gemini-2.5-pro",
        ),
        (
            "/v1/messages",
            Some(br#"{"model":"claude-x"}"#.to_vec()),
            "claude-x",
        ),
        ("/v1/messages", None, UNKNOWN_MODEL),
    ] {
        let (mut t, read) = tally_on(path, request);
        t.feed(usage);
        t.finish();
        let models: Vec<String> = read().models.into_iter().map(|(m, _)| m).collect();
        assert_eq!(models, vec![want.to_string()]);
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of real answers and of broken ones.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("\"usage\"".to_owned()),
            Just("\"usageMetadata\"".to_owned()),
            Just("\"model\"".to_owned()),
            Just("\"message\"".to_owned()),
            Just("\"response\"".to_owned()),
            Just("\"input_tokens\":".to_owned()),
            Just("\"prompt_tokens\":".to_owned()),
            Just("\"promptTokenCount\":".to_owned()),
            Just("\"cached_tokens\":".to_owned()),
            Just("\"m-1\"".to_owned()),
            Just("12".to_owned()),
            Just("null".to_owned()),
            Just("data: ".to_owned()),
            Just("event: x".to_owned()),
            Just(": ping".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\r".to_owned()),
            Just("\n\n".to_owned()),
            "[ -~]{0,12}",
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(piece(), 0..48).prop_map(|p| p.concat().into_bytes())
    }

    fn run(framing: Framing, chunks: &[&[u8]]) -> (Option<TokenUsage>, Option<String>) {
        let mut s = UsageScanner::new(framing);
        for c in chunks {
            s.feed(c);
        }
        (s.usage(), s.model().map(|m| m.into_owned()))
    }

    use serde_json::{Map, Value, json};

    /// A count's value: mostly a count, sometimes what is not one.
    fn count_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => (0u64..1_000_000).prop_map(Value::from),
            1 => Just(json!(-3)),
            1 => Just(json!(1.5)),
            1 => Just(json!(1e3)),
            1 => Just(json!("12")),
            1 => Just(Value::Null),
            1 => Just(json!([1, 2])),
        ]
    }

    fn details_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => (0u64..1000).prop_map(|n| json!({"cached_tokens": n})),
            1 => (0u64..1000).prop_map(|n| json!({"audio_tokens": 1, "cached_tokens": n, "x": [1, {"cached_tokens": 9}]})),
            1 => Just(json!(7)),
            1 => Just(json!({"cached_tokens": "x"})),
        ]
    }

    /// A usage object as any provider writes it, or what is not one.
    fn usage_value() -> impl Strategy<Value = Value> {
        let count = prop::sample::select(vec![
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "promptTokenCount",
            "toolUsePromptTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
            "cachedContentTokenCount",
            "cached_tokens",
        ]);
        let field = prop_oneof![
            4 => (count, count_value()).prop_map(|(k, v)| (k.to_owned(), v)),
            1 => (
                prop::sample::select(vec!["input_tokens_details", "prompt_tokens_details"]),
                details_value()
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
        ];
        prop_oneof![
            6 => prop::collection::vec(field, 0..6).prop_map(|f| Value::Object(f.into_iter().collect())),
            1 => Just(Value::Null),
            1 => Just(json!([{"input_tokens": 5}])),
            1 => Just(json!("{\"input_tokens\":5}")),
        ]
    }

    fn model_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => "[a-z0-9.-]{1,24}".prop_map(Value::from),
            1 => "[ -~]{0,12}".prop_map(Value::from),
            1 => "\\PC{0,6}".prop_map(Value::from),
            1 => Just(Value::from("m".repeat(140))),
            1 => Just(json!(12)),
        ]
    }

    /// What no reader of usage should take: look-alikes one level too deep,
    /// or in text.
    fn noise() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!({"usage": {"input_tokens": 999}, "model": "fake"})),
            Just(json!([{"usage": {"output_tokens": 5}}, "]}", {"message": {"model": "deep"}}])),
            Just(json!("\"usage\":{\"output_tokens\":5} \\")),
            Just(json!({"type": "text", "text": "a } b ] c { d [ e"})),
            Just(Value::Null),
            Just(json!(123)),
        ]
    }

    fn leaf_entry() -> impl Strategy<Value = (String, Value)> {
        prop_oneof![
            (
                prop::sample::select(vec!["model", "modelVersion"]),
                model_value()
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
            (
                prop::sample::select(vec!["usage", "usageMetadata"]),
                usage_value()
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
            (
                prop::sample::select(vec!["id", "choices", "content", "delta"]),
                noise()
            )
                .prop_map(|(k, v)| (k.to_owned(), v)),
        ]
    }

    fn object(entries: Vec<(String, Value)>) -> Value {
        Value::Object(entries.into_iter().collect())
    }

    /// An answer (or one event of a stream): usage and model at the root
    /// or one wrapper down, with a wrapper inside the wrapper (not read).
    fn answer() -> impl Strategy<Value = Value> {
        let inner = prop::collection::vec(leaf_entry(), 0..4).prop_map(object);
        let wrapper_entry = prop_oneof![
            3 => leaf_entry(),
            1 => (prop::sample::select(vec!["message", "response"]), inner)
                .prop_map(|(k, v)| (k.to_owned(), v)),
        ];
        let wrapper = prop::collection::vec(wrapper_entry, 0..5).prop_map(object);
        let entry = prop_oneof![
            3 => leaf_entry(),
            1 => (prop::sample::select(vec!["message", "response"]), wrapper)
                .prop_map(|(k, v)| (k.to_owned(), v)),
        ];
        prop::collection::vec(entry, 0..7).prop_map(object)
    }

    /// What a reader should take from `answers`, in order, independently of
    /// the scanner: the last model string (within the cap), and every count
    /// of every usage object at the root or one wrapper down, last one
    /// winning. Returned as one flat answer.
    fn reference(answers: &[Value]) -> Value {
        fn visit(
            obj: &Map<String, Value>,
            top: bool,
            usage: &mut Map<String, Value>,
            model: &mut Option<String>,
        ) {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("model" | "modelVersion", Value::String(s)) => {
                        let raw = serde_json::to_string(s).unwrap().len() - 2;
                        if (1..=MAX_MODEL_BYTES).contains(&raw) {
                            *model = Some(s.clone());
                        }
                    }
                    ("usage" | "usageMetadata", Value::Object(u)) => {
                        for (ck, cv) in u {
                            if ck == "input_tokens_details" || ck == "prompt_tokens_details" {
                                if let Some(n) = cv.get("cached_tokens").filter(|n| n.is_u64()) {
                                    // Both name the one cached count.
                                    usage.insert(
                                        "prompt_tokens_details".into(),
                                        json!({"cached_tokens": n}),
                                    );
                                }
                            } else if cv.is_u64() {
                                usage.insert(ck.clone(), cv.clone());
                            }
                        }
                    }
                    ("message" | "response", Value::Object(w)) if top => {
                        visit(w, false, usage, model)
                    }
                    _ => {}
                }
            }
        }
        let (mut usage, mut model) = (Map::new(), None);
        for a in answers {
            if let Value::Object(obj) = a {
                visit(obj, true, &mut usage, &mut model);
            }
        }
        json!({"model": model, "usage": usage})
    }

    /// `body` cut at the sampled points.
    fn cut<'a>(body: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&body[last..p]);
            last = p;
        }
        chunks.push(&body[last..]);
        chunks
    }

    proptest! {
        #[test]
        fn any_split_same_answer(
            body in body(),
            sse in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let framing = if sse { Framing::EventStream } else { Framing::Json };
            let whole = run(framing, &[&body]);
            let chunks = cut(&body, &cuts);
            prop_assert_eq!(run(framing, &chunks), whole.clone());
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            prop_assert_eq!(run(framing, &bytes), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..256), 0..16),
        ) {
            for framing in [Framing::Json, Framing::EventStream] {
                let mut s = UsageScanner::new(framing);
                for c in &chunks {
                    s.feed(c);
                }
                let _ = s.usage();
                prop_assert!(s.model().is_none_or(|m| m.len() <= MAX_MODEL_BYTES));
            }
            let joined = chunks.concat();
            let _ = request_model(&joined);
            let _ = path_model(&String::from_utf8_lossy(&joined));
        }

        /// Whatever the answers hold and however they are framed and split,
        /// the scanner reads what the reference reads.
        #[test]
        fn reads_what_a_full_parse_reads(
            answers in prop::collection::vec(answer(), 1..4),
            framing in 0..3u8,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let docs: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
            let (framing, body) = match framing {
                0 => (Framing::Json, docs.join("\n")),
                1 => (Framing::Json, format!("[{}]", docs.join(","))),
                _ => (
                    Framing::EventStream,
                    docs.iter().map(|d| format!("data: {d}\n\n")).collect(),
                ),
            };
            let body = body.into_bytes();
            let chunks = cut(&body, &cuts);
            let want = reference(&answers);
            let (usage, model) = run(framing, &chunks);
            prop_assert_eq!(model.as_deref(), want["model"].as_str());
            prop_assert_eq!(usage, run(Framing::Json, &[want.to_string().as_bytes()]).0);
        }

        /// A real answer keeps its counts whatever junk text its content holds.
        #[test]
        fn content_text_never_changes_the_counts(text in "[ -~]{0,64}") {
            let quoted = serde_json::to_string(&text).unwrap();
            let body = format!(
                r#"{{"model":"m","content":[{{"type":"text","text":{quoted}}}],"usage":{{"input_tokens":3,"output_tokens":4}}}}"#
            );
            prop_assert_eq!(
                run(Framing::Json, &[body.as_bytes()]),
                (Some(usage(3, 4, 0, 0)), Some("m".to_owned()))
            );
        }
    }
}
