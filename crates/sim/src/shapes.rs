//! What providers send: success bodies, SSE event sequences, error bodies and
//! rate-limit headers, shaped after the real APIs (see the samples these
//! tests quote) so the official SDKs parse them.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::scenario::{ErrorKind, QuotaStyle, StreamErrorKind};
use crate::timefmt::{
    epoch_secs_ceil, go_duration, human_duration, percent, proto_duration, ratio, rfc3339,
    secs_ceil,
};
use crate::world::QuotaView;

/// The API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Anthropic Messages.
    Messages,
    /// OpenAI Chat Completions.
    Chat,
    /// OpenAI Responses (also the Codex backend).
    Responses,
    /// Gemini `:generateContent` / `:streamGenerateContent`.
    Gemini,
}

/// Whose error format a route uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    Anthropic,
    OpenAi,
    Google,
}

impl Api {
    pub(crate) fn flavour(self) -> Flavour {
        match self {
            Api::Messages => Flavour::Anthropic,
            Api::Chat | Api::Responses => Flavour::OpenAi,
            Api::Gemini => Flavour::Google,
        }
    }
}

/// A complete non-success answer.
#[derive(Debug)]
pub(crate) struct Canned {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
}

impl Canned {
    fn json(status: u16, body: Value) -> Canned {
        Canned {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.to_string(),
        }
    }
}

/// The reply text, cut into stream deltas.
#[derive(Debug, Clone)]
pub(crate) struct Text {
    words: Vec<String>,
    n: usize,
}

impl Text {
    /// `n` deltas cycling through the words of `reply` (default: one per word).
    pub(crate) fn new(reply: &str, n: Option<u64>) -> Text {
        let mut words: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
        if words.is_empty() {
            words.push(String::from("ok"));
        }
        let n = n.map_or(words.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
        Text { words, n }
    }

    /// At least `n` deltas.
    pub(crate) fn at_least(mut self, n: u64) -> Text {
        self.n = self.n.max(usize::try_from(n).unwrap_or(usize::MAX));
        self
    }

    pub(crate) fn len(&self) -> usize {
        self.n
    }

    pub(crate) fn delta(&self, i: usize) -> &str {
        &self.words[i % self.words.len()]
    }

    pub(crate) fn full(&self) -> String {
        (0..self.n).map(|i| self.delta(i)).collect()
    }
}

/// Everything a success body needs.
#[derive(Debug, Clone)]
pub(crate) struct Answer<'a> {
    pub(crate) id: &'a str,
    pub(crate) model: &'a str,
    pub(crate) text: &'a Text,
    pub(crate) input_tokens: u64,
    /// The part of the prompt read from the prompt cache (see
    /// [`cached_tokens`]); included in `input_tokens` here, reported in
    /// each provider's own way.
    pub(crate) cached_tokens: u64,
    pub(crate) created: u64,
}

/// The simulator's prompt cache: a request that asks for caching
/// (Anthropic `cache_control`, OpenAI `prompt_cache_key`, Gemini
/// `cachedContent`) reads half its prompt from the cache; others none.
pub(crate) fn cached_tokens(body: &[u8], input_tokens: u64) -> u64 {
    let asks = [
        &b"\"cache_control\""[..],
        b"\"prompt_cache_key\"",
        b"\"cachedContent\"",
    ]
    .iter()
    .any(|k| body.windows(k.len()).any(|w| w == *k));
    if asks { input_tokens / 2 } else { 0 }
}

pub(crate) fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn anthropic_message(a: &Answer<'_>, text: &str, stop: Option<&str>, output_tokens: u64) -> Value {
    let content = if stop.is_some() {
        json!([{"type": "text", "text": text}])
    } else {
        json!([])
    };
    json!({
        "id": a.id, "type": "message", "role": "assistant", "model": a.model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        // Anthropic reports cache reads beside the uncached input.
        "usage": {"input_tokens": a.input_tokens - a.cached_tokens,
                  "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": a.cached_tokens,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": output_tokens, "service_tier": "standard"}
    })
}

fn response_object(a: &Answer<'_>, status: &str, text: Option<&str>) -> Value {
    let out = a.text.len() as u64;
    let output = match text {
        Some(t) => json!([{
            "type": "message", "id": format!("{}_msg", a.id), "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": t, "annotations": []}]
        }]),
        None => json!([]),
    };
    let usage = if text.is_some() {
        json!({"input_tokens": a.input_tokens, "input_tokens_details": {"cached_tokens": a.cached_tokens},
               "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": a.input_tokens + out})
    } else {
        Value::Null
    };
    json!({
        "id": a.id, "object": "response", "created_at": a.created, "status": status,
        "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
        "model": a.model, "output": output, "parallel_tool_calls": true,
        "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
        "store": false, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": usage, "user": null, "metadata": {}
    })
}

/// Chat Completions usage: the prompt count includes the cached part.
fn chat_usage(a: &Answer<'_>, out: u64) -> Value {
    json!({"prompt_tokens": a.input_tokens, "completion_tokens": out,
           "total_tokens": a.input_tokens + out,
           "prompt_tokens_details": {"cached_tokens": a.cached_tokens, "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                         "accepted_prediction_tokens": 0,
                                         "rejected_prediction_tokens": 0}})
}

/// A non-streamed success body.
pub(crate) fn json_body(api: Api, a: &Answer<'_>) -> String {
    let text = a.text.full();
    let out = a.text.len() as u64;
    match api {
        Api::Messages => anthropic_message(a, &text, Some("end_turn"), out),
        Api::Chat => json!({
            "id": a.id, "object": "chat.completion", "created": a.created, "model": a.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": chat_usage(a, out),
            "system_fingerprint": null
        }),
        Api::Responses => response_object(a, "completed", Some(&text)),
        Api::Gemini => return crate::gemini::json_body(a),
    }
    .to_string()
}

fn sse(event: Option<&str>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 32);
    if let Some(e) = event {
        s.push_str("event: ");
        s.push_str(e);
        s.push('\n');
    }
    s.push_str("data: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

fn typed(event: &str, data: Value) -> Bytes {
    sse(Some(event), &data.to_string())
}

/// The SSE events of a successful stream, then (if asked) cut after `error.0`
/// events and ended with an error event.
pub(crate) fn sse_events(
    api: Api,
    a: &Answer<'_>,
    include_usage: bool,
    error: Option<(u64, StreamErrorKind)>,
) -> Vec<Bytes> {
    if api == Api::Gemini {
        return crate::gemini::stream(a, true, error);
    }
    let text = match error {
        Some((n, _)) => a.text.clone().at_least(n),
        None => a.text.clone(),
    };
    let a = &Answer {
        text: &text,
        ..a.clone()
    };
    let n = text.len();
    let out = n as u64;
    let mut ev = Vec::with_capacity(n + 10);
    match api {
        Api::Messages => {
            let start =
                json!({"type": "message_start", "message": anthropic_message(a, "", None, 1)});
            ev.push(typed("message_start", start));
            ev.push(typed(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            ev.push(typed("ping", json!({"type": "ping"})));
            for i in 0..n {
                ev.push(typed(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": text.delta(i)}}),
                ));
            }
            ev.push(typed(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            ev.push(typed(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": out}}),
            ));
            ev.push(typed("message_stop", json!({"type": "message_stop"})));
        }
        Api::Chat => {
            let chunk = |delta: Value, finish: Option<&str>| {
                json!({"id": a.id, "object": "chat.completion.chunk", "created": a.created,
                       "model": a.model, "system_fingerprint": null,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            };
            let data = |v: Value| sse(None, &v.to_string());
            ev.push(data(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            )));
            for i in 0..n {
                ev.push(data(chunk(json!({"content": text.delta(i)}), None)));
            }
            ev.push(data(chunk(json!({}), Some("stop"))));
            if include_usage {
                ev.push(data(json!({
                    "id": a.id, "object": "chat.completion.chunk", "created": a.created,
                    "model": a.model, "choices": [],
                    "usage": chat_usage(a, out)})));
            }
            ev.push(sse(None, "[DONE]"));
        }
        Api::Responses => {
            let item_id = format!("{}_msg", a.id);
            let mut seq = 0u64;
            let mut push = |name: &str, mut v: Value| {
                v["type"] = json!(name);
                v["sequence_number"] = json!(seq);
                seq += 1;
                ev.push(typed(name, v));
            };
            push(
                "response.created",
                json!({"response": response_object(a, "in_progress", None)}),
            );
            push(
                "response.in_progress",
                json!({"response": response_object(a, "in_progress", None)}),
            );
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message", "id": item_id,
                       "status": "in_progress", "role": "assistant", "content": []}}),
            );
            push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for i in 0..n {
                push(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                           "delta": text.delta(i), "logprobs": []}),
                );
            }
            let full = text.full();
            push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "text": full, "logprobs": []}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": full, "annotations": []}}),
            );
            push(
                "response.output_item.done",
                json!({"output_index": 0, "item": {"type": "message", "id": item_id,
                       "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": full, "annotations": []}]}}),
            );
            push(
                "response.completed",
                json!({"response": response_object(a, "completed", Some(&full))}),
            );
        }
        Api::Gemini => unreachable!("Gemini streams are built by gemini::stream"),
    }
    if let Some((after, kind)) = error {
        let keep = usize::try_from(after).unwrap_or(usize::MAX).min(ev.len());
        ev.truncate(keep);
        ev.push(stream_error_event(api, kind, after));
    }
    ev
}

/// The error event a provider sends inside a 200 stream.
pub(crate) fn stream_error_event(api: Api, kind: StreamErrorKind, seq: u64) -> Bytes {
    match (api, kind) {
        (Api::Messages, StreamErrorKind::Overloaded) => typed(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
        (Api::Messages, StreamErrorKind::RateLimit) => typed(
            "error",
            json!({"type": "error", "error": {"type": "rate_limit_error",
                   "message": "This request would exceed your account's rate limit. Please try again later."}}),
        ),
        (_, k) => {
            let (code, message) = match k {
                StreamErrorKind::Overloaded => (
                    "server_is_overloaded",
                    "Our servers are currently overloaded. Please try again later.",
                ),
                StreamErrorKind::RateLimit => (
                    "rate_limit_exceeded",
                    "Rate limit reached. Please try again later.",
                ),
            };
            // Both shapes in one event: the Responses `error` event (top-level
            // code/message) and the `{"error": {...}}` the SDKs raise on.
            typed(
                "error",
                json!({"type": "error", "code": code, "message": message, "param": null,
                       "sequence_number": seq,
                       "error": {"type": "server_error", "code": code, "message": message, "param": null}}),
            )
        }
    }
}

fn anthropic_error(status: u16, etype: &str, message: &str, request_id: &str) -> Canned {
    Canned::json(
        status,
        json!({"type": "error", "error": {"type": etype, "message": message}, "request_id": request_id}),
    )
}

fn openai_error(status: u16, message: &str, etype: &str, code: Option<&str>) -> Canned {
    Canned::json(
        status,
        json!({"error": {"message": message, "type": etype, "param": null, "code": code}}),
    )
}

/// The body of a fixed failure.
pub(crate) fn failure(
    flavour: Flavour,
    status: u16,
    kind: Option<ErrorKind>,
    request_id: &str,
) -> Canned {
    use ErrorKind as K;
    if flavour == Flavour::Google {
        return crate::gemini::failure(status, kind);
    }
    let kind = kind.unwrap_or(match (status, flavour) {
        (400, _) => K::InvalidRequest,
        (402, Flavour::OpenAi) => K::DeactivatedWorkspace,
        (402, Flavour::Anthropic) => K::Billing,
        (403, Flavour::OpenAi) => K::UsageNotIncluded,
        (403, Flavour::Anthropic) => K::Permission,
        (404, _) => K::NotFound,
        (429, _) => K::InsufficientQuota,
        (502, _) => K::BadGateway,
        (503, Flavour::OpenAi) => K::ServerIsOverloaded,
        (503 | 529, _) => K::Overloaded,
        _ => K::ApiError,
    });
    match (kind, flavour) {
        // Provider-specific bodies the scenario named explicitly.
        (K::InsufficientQuota, _) => openai_error(
            status,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        (K::DeactivatedWorkspace, _) => {
            Canned::json(status, json!({"detail": {"code": "deactivated_workspace"}}))
        }
        (K::UsageNotIncluded, _) => Canned::json(
            status,
            json!({"error": {"type": "usage_not_included",
                   "message": "Your plan does not include access to this model."}}),
        ),
        (K::Billing, _) => anthropic_error(
            status,
            if status == 402 {
                "billing_error"
            } else {
                "invalid_request_error"
            },
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            request_id,
        ),
        (K::Overloaded | K::ServerIsOverloaded, Flavour::Anthropic) => {
            anthropic_error(status, "overloaded_error", "Overloaded", request_id)
        }
        (K::Overloaded | K::ServerIsOverloaded, Flavour::OpenAi) => Canned::json(
            status,
            json!({"error": {"code": "server_is_overloaded",
                   "message": "Our servers are currently overloaded. Please try again later.",
                   "type": "server_error", "param": null}}),
        ),
        (K::ApiError, Flavour::Anthropic) => {
            anthropic_error(status, "api_error", "Internal server error", request_id)
        }
        (K::ApiError, Flavour::OpenAi) => openai_error(
            status,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        (K::BadGateway, Flavour::Anthropic) => {
            anthropic_error(status, "api_error", "Bad gateway", request_id)
        }
        (K::BadGateway, Flavour::OpenAi) => {
            openai_error(status, "Bad gateway.", "server_error", None)
        }
        (K::Permission, Flavour::Anthropic) => anthropic_error(
            status,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
            request_id,
        ),
        (K::Permission, Flavour::OpenAi) => openai_error(
            status,
            "You are not allowed to sample from this model.",
            "invalid_request_error",
            Some("permission_denied"),
        ),
        (K::InvalidRequest, Flavour::Anthropic) => anthropic_error(
            status,
            "invalid_request_error",
            "messages: field required",
            request_id,
        ),
        (K::InvalidRequest, Flavour::OpenAi) => openai_error(
            status,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        ),
        (K::NotFound, Flavour::Anthropic) => {
            anthropic_error(status, "not_found_error", "model: not found", request_id)
        }
        (K::NotFound, Flavour::OpenAi) => openai_error(
            status,
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        (_, Flavour::Google) => unreachable!("answered by gemini::failure above"),
    }
}

/// A malformed request body.
pub(crate) fn bad_request(flavour: Flavour, message: &str, request_id: &str) -> Canned {
    match flavour {
        Flavour::Anthropic => anthropic_error(400, "invalid_request_error", message, request_id),
        Flavour::OpenAi => openai_error(400, message, "invalid_request_error", None),
        Flavour::Google => crate::gemini::error(400, message, json!([])),
    }
}

/// 401 for an unknown or expired credential. The credential is never echoed.
pub(crate) fn unauthorized(flavour: Flavour, expired: bool, request_id: &str) -> Canned {
    match (flavour, expired) {
        (Flavour::Google, expired) => crate::gemini::unauthorized(expired),
        (Flavour::Anthropic, false) => {
            anthropic_error(401, "authentication_error", "invalid x-api-key", request_id)
        }
        (Flavour::Anthropic, true) => anthropic_error(
            401,
            "authentication_error",
            "OAuth token has expired. Please obtain a new token or refresh your existing token.",
            request_id,
        ),
        (Flavour::OpenAi, false) => openai_error(
            401,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        (Flavour::OpenAi, true) => openai_error(
            401,
            "Your authentication token has expired. Please try signing in again.",
            "invalid_request_error",
            Some("token_expired"),
        ),
    }
}

/// The quota style a view uses on a route.
pub(crate) fn style_for(view: &QuotaView, flavour: Flavour) -> QuotaStyle {
    view.style.unwrap_or(match flavour {
        Flavour::Anthropic => QuotaStyle::AnthropicApi,
        Flavour::OpenAi => QuotaStyle::OpenAi,
        Flavour::Google => QuotaStyle::GeminiApi,
    })
}

/// Usage/rate-limit headers for a response (200 or 429).
pub(crate) fn quota_headers(style: QuotaStyle, v: &QuotaView) -> Vec<(&'static str, String)> {
    let remaining = v.limit.saturating_sub(v.used);
    let mut h: Vec<(&'static str, String)> = Vec::with_capacity(12);
    if v.rejected
        && !matches!(
            style,
            QuotaStyle::Copilot | QuotaStyle::Google | QuotaStyle::GeminiApi | QuotaStyle::Codex
        )
    {
        h.push(("retry-after", secs_ceil(v.reset_in).to_string()));
    }
    match style {
        QuotaStyle::AnthropicApi => {
            let reset = rfc3339(v.reset_wall);
            let tokens_limit = v.limit.saturating_mul(1000);
            h.push(("anthropic-ratelimit-requests-limit", v.limit.to_string()));
            h.push((
                "anthropic-ratelimit-requests-remaining",
                remaining.to_string(),
            ));
            h.push(("anthropic-ratelimit-requests-reset", reset.clone()));
            h.push(("anthropic-ratelimit-tokens-limit", tokens_limit.to_string()));
            h.push((
                "anthropic-ratelimit-tokens-remaining",
                remaining.saturating_mul(1000).to_string(),
            ));
            h.push(("anthropic-ratelimit-tokens-reset", reset.clone()));
            h.push(("anthropic-ratelimit-input-tokens-reset", reset.clone()));
            h.push(("anthropic-ratelimit-output-tokens-reset", reset));
        }
        QuotaStyle::AnthropicUnified => {
            let u5 = v.utilization();
            let s5 = if v.rejected {
                "rejected"
            } else if u5 >= 0.8 {
                "allowed_warning"
            } else {
                "allowed"
            };
            let r5 = epoch_secs_ceil(v.reset_wall).to_string();
            h.push(("anthropic-ratelimit-unified-status", s5.into()));
            h.push(("anthropic-ratelimit-unified-reset", r5.clone()));
            h.push((
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour".into(),
            ));
            h.push(("anthropic-ratelimit-unified-5h-status", s5.into()));
            h.push(("anthropic-ratelimit-unified-5h-utilization", ratio(u5)));
            h.push(("anthropic-ratelimit-unified-5h-reset", r5));
            h.push(("anthropic-ratelimit-unified-7d-status", "allowed".into()));
            h.push((
                "anthropic-ratelimit-unified-7d-utilization",
                ratio(v.week_utilization()),
            ));
            h.push((
                "anthropic-ratelimit-unified-7d-reset",
                epoch_secs_ceil(v.week_reset_wall).to_string(),
            ));
            h.push((
                "anthropic-ratelimit-unified-fallback-percentage",
                "0.5".into(),
            ));
        }
        QuotaStyle::OpenAi => {
            let reset = go_duration(v.reset_in);
            h.push(("x-ratelimit-limit-requests", v.limit.to_string()));
            h.push(("x-ratelimit-remaining-requests", remaining.to_string()));
            h.push(("x-ratelimit-reset-requests", reset.clone()));
            h.push((
                "x-ratelimit-limit-tokens",
                v.limit.saturating_mul(1000).to_string(),
            ));
            h.push((
                "x-ratelimit-remaining-tokens",
                remaining.saturating_mul(1000).to_string(),
            ));
            h.push(("x-ratelimit-reset-tokens", reset));
        }
        QuotaStyle::Codex => {
            h.push(("x-codex-primary-used-percent", percent(v.utilization())));
            h.push((
                "x-codex-primary-window-minutes",
                v.window.as_secs().div_ceil(60).to_string(),
            ));
            h.push((
                "x-codex-primary-reset-at",
                epoch_secs_ceil(v.reset_wall).to_string(),
            ));
            h.push((
                "x-codex-secondary-used-percent",
                percent(v.week_utilization()),
            ));
            h.push(("x-codex-secondary-window-minutes", "10080".into()));
            h.push((
                "x-codex-secondary-reset-at",
                epoch_secs_ceil(v.week_reset_wall).to_string(),
            ));
        }
        QuotaStyle::Google | QuotaStyle::GeminiApi | QuotaStyle::Copilot => {}
    }
    h
}

/// The 429 for an account over its quota.
pub(crate) fn limited(style: QuotaStyle, v: &QuotaView, model: &str, request_id: &str) -> Canned {
    let mut c = match style {
        QuotaStyle::AnthropicApi => anthropic_error(
            429,
            "rate_limit_error",
            &format!(
                "This request would exceed your organization's rate limit of {} requests per {}. Please try again later.",
                v.limit,
                human_duration(v.window)
            ),
            request_id,
        ),
        QuotaStyle::AnthropicUnified => anthropic_error(
            429,
            "rate_limit_error",
            "This request would exceed your account's rate limit. Please try again later.",
            request_id,
        ),
        QuotaStyle::OpenAi => openai_error(
            429,
            &format!(
                "Rate limit reached for {model} in organization org-sim on requests per min (RPM): Limit {}, Used {}, Requested 1. Please try again in {}.",
                v.limit,
                v.used,
                go_duration(v.reset_in)
            ),
            "requests",
            Some("rate_limit_exceeded"),
        ),
        QuotaStyle::Codex => Canned::json(
            429,
            json!({"error": {"type": "usage_limit_reached",
                   "message": "The usage limit has been reached",
                   "plan_type": "plus", "resets_at": epoch_secs_ceil(v.reset_wall)}}),
        ),
        QuotaStyle::Google => {
            let delay = proto_duration(v.reset_in);
            let long = v.window > std::time::Duration::from_secs(3600);
            let (reason, quota_id) = if long {
                ("QUOTA_EXHAUSTED", "GenerateRequestsPerDayPerProjectPerUser")
            } else {
                (
                    "RATE_LIMIT_EXCEEDED",
                    "GenerateRequestsPerMinutePerProjectPerUser",
                )
            };
            Canned::json(
                429,
                json!({"error": {"code": 429,
                "message": format!("Resource has been exhausted (e.g. check quota). Please retry in {delay}."),
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                     "domain": "cloudcode-pa.googleapis.com"},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                     "violations": [{"quotaId": quota_id}]}
                ]}}),
            )
        }
        QuotaStyle::GeminiApi => crate::gemini::quota_exhausted(v, model),
        QuotaStyle::Copilot => Canned {
            status: 429,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: format!(
                "Sorry, you have exceeded your Copilot usage limit. Please try again in {}.\n",
                human_duration(v.reset_in)
            ),
        },
    };
    c.headers = quota_headers(style, v);
    c
}

/// `GET /v1/models`, readable by both SDKs (they ignore each other's fields).
pub(crate) fn models(model: &str) -> String {
    json!({
        "object": "list",
        "data": [{"id": model, "object": "model", "type": "model", "created": 1_700_000_000,
                  "created_at": "2023-11-14T22:13:20Z", "owned_by": "marathon-sim",
                  "display_name": model}],
        "has_more": false, "first_id": model, "last_id": model
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn answer(text: &Text) -> Answer<'_> {
        Answer {
            id: "msg_1",
            model: "m",
            text,
            input_tokens: 3,
            cached_tokens: 0,
            created: 1,
        }
    }

    fn names(ev: &[Bytes]) -> Vec<String> {
        ev.iter()
            .map(|b| {
                let s = std::str::from_utf8(b).unwrap();
                s.strip_prefix("event: ")
                    .map_or("data", |r| r.split('\n').next().unwrap())
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn anthropic_stream_has_the_real_event_sequence() {
        let text = Text::new("a b", None);
        let ev = sse_events(Api::Messages, &answer(&text), false, None);
        assert_eq!(
            names(&ev),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }

    #[test]
    fn stream_error_cuts_after_n_events() {
        let text = Text::new("a b", None);
        let ev = sse_events(
            Api::Messages,
            &answer(&text),
            false,
            Some((5, StreamErrorKind::Overloaded)),
        );
        assert_eq!(ev.len(), 6);
        assert_eq!(
            ev[5],
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        );
        // Longer than the natural stream: deltas are added so the cut lands at N.
        let ev = sse_events(
            Api::Chat,
            &answer(&text),
            false,
            Some((50, StreamErrorKind::RateLimit)),
        );
        assert_eq!(ev.len(), 51);
        assert!(
            std::str::from_utf8(&ev[50])
                .unwrap()
                .contains("rate_limit_exceeded")
        );
    }

    #[test]
    fn chat_stream_ends_with_done() {
        let text = Text::new("hi", Some(3));
        let ev = sse_events(Api::Chat, &answer(&text), true, None);
        assert_eq!(ev.len(), 1 + 3 + 1 + 1 + 1);
        assert_eq!(ev.last().unwrap(), "data: [DONE]\n\n");
    }

    #[test]
    fn openai_quota_headers_use_go_durations() {
        let now = SystemTime::now();
        let v = QuotaView {
            style: None,
            rejected: true,
            limit: 500,
            used: 500,
            window: Duration::from_secs(600),
            reset_wall: now + Duration::from_secs(360),
            reset_in: Duration::from_secs(360),
            week_used: 500,
            week_limit: 5000,
            week_reset_wall: now,
        };
        let h = quota_headers(QuotaStyle::OpenAi, &v);
        assert!(h.contains(&("x-ratelimit-reset-requests", "6m0s".into())));
        assert!(h.contains(&("x-ratelimit-remaining-requests", "0".into())));
        assert!(h.contains(&("retry-after", "360".into())));
    }

    #[test]
    fn unauthorized_never_contains_a_key() {
        for f in [Flavour::Anthropic, Flavour::OpenAi] {
            let c = unauthorized(f, false, "req_1");
            assert_eq!(c.status, 401);
            assert!(!c.body.contains("sk-"), "{}", c.body);
        }
    }
}
