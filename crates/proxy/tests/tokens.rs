//! Token accounting end to end: answers from the simulator pass through the
//! proxy over real sockets, JSON and streamed, for every API shape; what each
//! answer reported (read here the plain way: the whole body, parsed) must
//! show in `/_marathon/status` per account, per model and per access key,
//! and in `/_marathon/metrics`.

mod support;

use marathon_core::Secret;
use marathon_proxy::AccessKey;
use marathon_sim::{Account, Scenario};
use serde_json::{Value, json};
use support::*;

const KEY: &str = "mk-tokens-5e1f0c93aa";

async fn world_for(api: Api) -> World {
    world_with(
        Scenario::new([Account::ok("a1", "sk-test-a1-0123456789abcdef")]),
        Opts::new(api).settings(|s| s.access_keys = vec![AccessKey::new("team", Secret::new(KEY))]),
    )
    .await
}

async fn call(w: &World, path: &str, body: Value) -> Resp {
    let mut req = w.request_body(body.to_string().into());
    *req.uri_mut() = w.url(path).parse().unwrap();
    req.headers_mut()
        .insert("x-marathon-key", KEY.parse().unwrap());
    let r = send(&w.client, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// The JSON documents of a body: itself, a JSON array's elements, or each
/// SSE `data:` line.
fn documents(body: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return match v {
            Value::Array(a) => a,
            v => vec![v],
        };
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

/// (input, output) as the answer reported them: the last usage object
/// anywhere the provider puts one, fields taken as they come.
fn reported(body: &str) -> (u64, u64) {
    let (mut input, mut output) = (0, 0);
    for d in documents(body) {
        for usage in [
            &d["usage"],
            &d["message"]["usage"],
            &d["response"]["usage"],
            &d["usageMetadata"],
        ] {
            let n = |k: &str| usage[k].as_u64();
            if let Some(i) = n("input_tokens")
                .or(n("prompt_tokens"))
                .or(n("promptTokenCount"))
            {
                input = i;
            }
            if let Some(o) = n("output_tokens")
                .or(n("completion_tokens"))
                .or(n("candidatesTokenCount"))
            {
                output = o;
            }
        }
    }
    (input, output)
}

async fn get(w: &World, path: &str) -> Resp {
    let req = http::Request::get(format!("{}{path}", w.proxy.url()))
        .header("x-marathon-key", KEY)
        .body(Default::default())
        .unwrap();
    send(&w.client, req).await
}

/// The world's one account in a status report.
fn account(status: &Value, w: &World) -> Value {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == w.api.provider())
        .unwrap()["accounts"][0]
        .clone()
}

/// Checks status and metrics against the sums of what the answers reported.
async fn assert_counted(w: &World, model: &str, input: u64, output: u64) {
    let status = get(w, "/_marathon/status").await.json();
    let account = &account(&status, w);
    assert_eq!(
        account["tokens"],
        json!({"input": input, "output": output, "cache_read": 0, "cache_write": 0}),
        "{account}"
    );
    assert_eq!(
        account["tokens_by_model"],
        json!([{"model": model, "input": input, "output": output, "cache_read": 0, "cache_write": 0}]),
        "{account}"
    );
    let key = &status["access_keys"][0];
    assert_eq!(
        (&key["name"], &key["input_tokens"], &key["output_tokens"]),
        (&json!("team"), &json!(input), &json!(output)),
        "{key}"
    );
    let metrics = get(w, "/_marathon/metrics").await.text();
    let p = w.api.provider();
    for (kind, n) in [("input", input), ("output", output), ("cache_read", 0)] {
        let line = format!(
            "marathon_tokens_total{{provider=\"{p}\",account=\"a1\",model=\"{model}\",kind=\"{kind}\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let line =
        format!("marathon_access_key_tokens_total{{key=\"team\",kind=\"output\"}} {output}\n");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}

/// Sends each body, reads each answer whole, and checks the proxy counted
/// exactly what they reported.
async fn run(api: Api, model: &str, calls: &[(&str, Value)]) {
    let w = world_for(api).await;
    let (mut input, mut output) = (0, 0);
    for (path, body) in calls {
        let r = call(&w, path, body.clone()).await;
        let (i, o) = reported(&r.text());
        assert!(i > 0 && o > 0, "the simulator reports usage: {}", r.text());
        input += i;
        output += o;
    }
    assert_counted(&w, model, input, output).await;
}

/// Guards: Anthropic JSON and stream (input from `message_start`, output from
/// `message_delta`) counted per account, model and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_json_and_stream_are_counted() {
    let m = |stream| {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
                            "messages": [{"role": "user", "content": "count me"}]})
    };
    run(
        Api::Anthropic,
        "claude-sonnet-4-5",
        &[
            ("/v1/messages", m(false)),
            ("/v1/messages", m(true)),
            ("/v1/messages", m(true)),
        ],
    )
    .await;
}

/// Guards: Chat Completions JSON and a stream with `include_usage`; a stream
/// without it reports nothing and counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_json_and_stream_are_counted() {
    let w = world_for(Api::Openai).await;
    let plain = json!({"model": "gpt-4.1", "stream": true,
                       "messages": [{"role": "user", "content": "no usage asked"}]});
    let r = call(&w, "/v1/chat/completions", plain).await;
    assert_eq!(reported(&r.text()), (0, 0));
    let status = get(&w, "/_marathon/status").await.json();
    assert_eq!(account(&status, &w)["tokens"], Value::Null);
    drop(w);
    let m = |stream| {
        json!({"model": "gpt-4.1", "stream": stream,
                            "stream_options": {"include_usage": true},
                            "messages": [{"role": "user", "content": "count me"}]})
    };
    run(
        Api::Openai,
        "gpt-4.1",
        &[
            (
                "/v1/chat/completions",
                json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "json"}]}),
            ),
            ("/v1/chat/completions", m(true)),
        ],
    )
    .await;
}

/// Guards: Responses JSON and stream (`response.completed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_json_and_stream_are_counted() {
    let m = |stream| json!({"model": "gpt-5-codex", "stream": stream, "input": "count me"});
    run(
        Api::Codex,
        "gpt-5-codex",
        &[("/responses", m(false)), ("/responses", m(true))],
    )
    .await;
}

/// Guards: Gemini JSON, `alt=sse` and JSON-array streams (the last chunk's
/// `usageMetadata`), the model from `modelVersion`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_json_and_streams_are_counted() {
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "count me"}]}]});
    run(
        Api::Google,
        "gemini-2.5-flash",
        &[
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                body.clone(),
            ),
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                body.clone(),
            ),
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                body,
            ),
        ],
    )
    .await;
}

/// Guards: an error answer is not counted, and a request without any
/// access key configured still counts per account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_count_nothing_and_keys_are_optional() {
    let w = world_with(
        Scenario::new([Account::ok("a1", "sk-test-a1-0123456789abcdef")]),
        Opts::new(Api::Anthropic),
    )
    .await;
    let bad = send(&w.client, w.request_body("{not json".into())).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(account(&w.proxy.status(), &w)["tokens"], Value::Null);
    let r = w.call_stream().await;
    let (i, o) = reported(&r.text());
    assert_eq!(
        account(&w.proxy.status(), &w)["tokens"],
        json!({"input": i, "output": o, "cache_read": 0, "cache_write": 0})
    );
}
