//! The Gemini API (`generativelanguage.googleapis.com`): `…/models/{model}:generateContent`,
//! `:streamGenerateContent` (SSE with `?alt=sse`, else one JSON array),
//! `:countTokens`, and Google's error JSON (`{"error":{code,message,status,details[]}}`,
//! with `google.rpc.RetryInfo`/`QuotaFailure` on a spent quota), as Gemini CLI
//! and the Google SDKs read them.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::scenario::{ErrorKind, StreamErrorKind};
use crate::shapes::{Answer, Canned};
use crate::timefmt::{proto_duration, secs_ceil};
use crate::world::QuotaView;

/// What a Gemini route asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// `:generateContent`: one JSON answer.
    Generate,
    /// `:streamGenerateContent?alt=sse`: `data: {chunk}` events.
    StreamSse,
    /// `:streamGenerateContent` without `alt=sse`: the chunks as one JSON array.
    StreamArray,
    /// `:countTokens`.
    CountTokens,
}

/// A Gemini call parsed from the path: `…/models/{model}:{method}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) model: String,
    pub(crate) method: Method,
}

impl Call {
    /// `path` (without the query) and the query, if this is a Gemini route.
    pub(crate) fn parse(path: &str, query: Option<&str>) -> Option<Call> {
        let (before, method) = path.rsplit_once(':')?;
        let model = before.rsplit_once("/models/")?.1;
        if model.is_empty() || model.contains('/') {
            return None;
        }
        let sse = query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
        let method = match method {
            "generateContent" => Method::Generate,
            "streamGenerateContent" if sse => Method::StreamSse,
            "streamGenerateContent" => Method::StreamArray,
            "countTokens" => Method::CountTokens,
            _ => return None,
        };
        Some(Call {
            model: model.to_owned(),
            method,
        })
    }
}

/// Google's canonical status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        402 | 412 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// `{"error": {code, message, status, details}}`.
pub(crate) fn error(status: u16, message: &str, details: Value) -> Canned {
    let mut e = json!({"code": status, "message": message, "status": status_name(status)});
    if details.as_array().is_some_and(|d| !d.is_empty()) {
        e["details"] = details;
    }
    Canned {
        status,
        headers: Vec::new(),
        content_type: "application/json; charset=UTF-8",
        body: json!({ "error": e }).to_string(),
    }
}

fn error_info(reason: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
           "domain": "googleapis.com",
           "metadata": {"service": "generativelanguage.googleapis.com"}})
}

/// An unknown API key (Google answers 400, not 401) or an expired OAuth token.
pub(crate) fn unauthorized(expired: bool) -> Canned {
    if expired {
        error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            json!([error_info("ACCESS_TOKEN_EXPIRED")]),
        )
    } else {
        error(
            400,
            "API key not valid. Please pass a valid API key.",
            json!([error_info("API_KEY_INVALID")]),
        )
    }
}

/// A fixed failure in Google's shape.
pub(crate) fn failure(status: u16, kind: Option<ErrorKind>) -> Canned {
    use ErrorKind as K;
    let message = match kind {
        Some(K::InsufficientQuota) => {
            "You exceeded your current quota, please check your plan and billing details."
        }
        Some(K::Billing | K::DeactivatedWorkspace) => {
            "This API method requires billing to be enabled."
        }
        Some(K::Permission | K::UsageNotIncluded) => "The caller does not have permission",
        Some(K::NotFound) => {
            "models/sim is not found for API version v1beta, or is not supported for generateContent."
        }
        Some(K::InvalidRequest) => "Invalid JSON payload received.",
        Some(K::Overloaded | K::ServerIsOverloaded) => {
            "The model is overloaded. Please try again later."
        }
        Some(K::BadGateway) => "Bad gateway.",
        Some(K::ApiError) | None => match status {
            503 | 529 => "The model is overloaded. Please try again later.",
            400 => "Invalid JSON payload received.",
            403 => "The caller does not have permission",
            404 => "Requested entity was not found.",
            429 => "Resource has been exhausted (e.g. check quota).",
            _ => {
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
            }
        },
    };
    error(status, message, json!([]))
}

/// The 429 for a spent quota window, as the Gemini API sends it: the
/// free-tier metric, a per-minute or (for windows over an hour) per-day
/// quota id, and `RetryInfo.retryDelay` in whole seconds, rounded up so a
/// client never retries before the window ends.
pub(crate) fn quota_exhausted(v: &QuotaView, model: &str) -> Canned {
    let per = if v.window > std::time::Duration::from_secs(3600) {
        "PerDay"
    } else {
        "PerMinute"
    };
    let metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests";
    let message = format!(
        "You exceeded your current quota, please check your plan and billing details. \
         For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n\
         * Quota exceeded for metric: {metric}, limit: {}, model: {model}\nPlease retry in {}.",
        v.limit,
        proto_duration(v.reset_in)
    );
    error(
        429,
        &message,
        json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{"quotaMetric": metric,
                             "quotaId": format!("GenerateRequests{per}PerProjectPerModel-FreeTier"),
                             "quotaDimensions": {"location": "global", "model": model},
                             "quotaValue": v.limit.to_string()}]},
            {"@type": "type.googleapis.com/google.rpc.Help",
             "links": [{"description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": format!("{}s", secs_ceil(v.reset_in))}
        ]),
    )
}

/// One `GenerateContentResponse`: the text so far (a stream chunk) or all of it.
fn response(a: &Answer<'_>, text: &str, done: bool, output_tokens: u64) -> Value {
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if done {
        candidate["finishReason"] = json!("STOP");
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage_metadata(a, output_tokens),
        "modelVersion": a.model,
        "responseId": a.id,
    })
}

/// `usageMetadata`: the prompt count includes the cached part, reported
/// (with its details) only when there is one, as Google does.
fn usage_metadata(a: &Answer<'_>, output_tokens: u64) -> Value {
    let mut u = json!({"promptTokenCount": a.input_tokens,
                       "candidatesTokenCount": output_tokens,
                       "totalTokenCount": a.input_tokens + output_tokens,
                       "promptTokensDetails": [{"modality": "TEXT", "tokenCount": a.input_tokens}]});
    if a.cached_tokens > 0 {
        u["cachedContentTokenCount"] = json!(a.cached_tokens);
        u["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": a.cached_tokens}]);
    }
    u
}

/// The non-streamed answer.
pub(crate) fn json_body(a: &Answer<'_>) -> String {
    response(a, &a.text.full(), true, a.text.len() as u64).to_string()
}

/// `:countTokens`.
pub(crate) fn count_tokens(input_tokens: u64) -> String {
    json!({"totalTokens": input_tokens,
           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}]})
    .to_string()
}

/// The error a stream ends with when it breaks after `n` chunks.
fn stream_error(kind: StreamErrorKind) -> Value {
    let (status, message) = match kind {
        StreamErrorKind::Overloaded => (503, "The model is overloaded. Please try again later."),
        StreamErrorKind::RateLimit => (429, "Resource has been exhausted (e.g. check quota)."),
    };
    json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

/// A stream's pieces: SSE events (`data: …\r\n\r\n`, as Google sends them),
/// or the pieces of one JSON array (`[{…}`, `,\r\n{…}`, …, `]`).
pub(crate) fn stream(
    a: &Answer<'_>,
    sse: bool,
    error: Option<(u64, StreamErrorKind)>,
) -> Vec<Bytes> {
    let text = match error {
        Some((n, _)) => a.text.clone().at_least(n),
        None => a.text.clone(),
    };
    let n = text.len();
    let mut chunks: Vec<Value> = (0..n)
        .map(|i| response(a, text.delta(i), i + 1 == n, (i + 1) as u64))
        .collect();
    if let Some((after, kind)) = error {
        chunks.truncate(usize::try_from(after).unwrap_or(usize::MAX));
        chunks.push(stream_error(kind));
    }
    if sse {
        return chunks
            .iter()
            .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
            .collect();
    }
    let mut pieces: Vec<Bytes> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| Bytes::from(format!("{}{c}", if i == 0 { "[" } else { ",\r\n" })))
        .collect();
    pieces.push(Bytes::from_static(b"]"));
    pieces
}

/// `GET …/models` for a Google client.
pub(crate) fn models(model: &str) -> String {
    json!({"models": [{"name": format!("models/{model}"), "version": "001",
                       "displayName": model, "inputTokenLimit": 1_048_576,
                       "outputTokenLimit": 65_536,
                       "supportedGenerationMethods": ["generateContent", "countTokens"]}]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_parse_from_the_path_under_any_prefix() {
        let c = Call::parse(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            Some("alt=sse"),
        );
        assert_eq!(
            c,
            Some(Call {
                model: "gemini-2.5-pro".into(),
                method: Method::StreamSse
            })
        );
        let c = Call::parse("/google/v1beta/models/g:streamGenerateContent", None).unwrap();
        assert_eq!(c.method, Method::StreamArray);
        let c = Call::parse("/v1/models/g:countTokens", Some("key=abc")).unwrap();
        assert_eq!(c.method, Method::CountTokens);
        assert_eq!(Call::parse("/v1beta/models/g:embedContent", None), None);
        assert_eq!(Call::parse("/v1internal:generateContent", None), None);
        assert_eq!(Call::parse("/v1/messages", None), None);
    }
}
