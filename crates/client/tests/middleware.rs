//! What only the middleware face has: requests to other hosts, the
//! program's own credentials, bodies that cannot be cloned, base
//! rewriting. Real sockets on 127.0.0.1.

#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marathon_client::{Marathon, Options};
use marathon_core::Secret;
use marathon_sim::{Account, QuotaStyle, Scenario};
use marathon_store::{MemoryStore, NewAccount, Store};
use reqwest_middleware::ClientWithMiddleware;
use tokio::net::TcpListener;

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

/// An upstream that answers 200 and remembers every request's headers.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            log.lock().unwrap().push(req.headers().clone());
                            let _ = req.into_body().collect().await;
                            let resp = hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Echo { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client whose anthropic provider points at `upstream`, with one API-key
/// account per (label, key).
async fn client(upstream: &str, accounts: &[(&str, &str)]) -> (Marathon, ClientWithMiddleware) {
    let config = marathon_config::load_str(
        &format!("[providers.anthropic]\nupstream = \"{upstream}\"\n"),
        Path::new("test.toml"),
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    for (label, key) in accounts {
        store
            .add(NewAccount::api_key(
                "anthropic",
                Some(label.to_string()),
                Secret::new(*key),
            ))
            .unwrap();
    }
    let options = Options {
        background: false,
        ..Options::default()
    };
    let marathon = Marathon::with_options(&config, store, options)
        .await
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(marathon.middleware("anthropic").unwrap())
        .build();
    (marathon, client)
}

/// Guards against credential exfiltration: a request to any other host
/// through the same client goes out as the program wrote it, without an
/// account's key.
#[tokio::test]
async fn a_request_to_another_host_never_gets_an_accounts_credential() {
    let provider = Echo::start().await;
    let elsewhere = Echo::start().await;
    let (_m, client) = client(&provider.url(), &[("a1", "sk-account-secret")]).await;
    let r = client
        .post(format!("{}/v1/messages", elsewhere.url()))
        .header("x-api-key", "program-own")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-marathon-account").is_none());
    let seen = elsewhere.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].get("x-api-key").unwrap(), "program-own");
    assert!(
        !format!("{:?}", seen[0]).contains("sk-account-secret"),
        "{seen:?}"
    );
    assert!(provider.seen().is_empty());
    // A host that merely starts like the upstream is another host too.
    let lookalike = format!("{}0/v1/messages", provider.url());
    assert!(client.post(lookalike).body(BODY).send().await.is_err());
    assert!(provider.seen().is_empty());
}

/// The program's own credential headers never reach the provider next to
/// the account's.
#[tokio::test]
async fn the_programs_credentials_are_replaced_by_the_accounts() {
    let provider = Echo::start().await;
    let (_m, client) = client(&provider.url(), &[("a1", "sk-account-a1")]).await;
    let r = client
        .post(format!("{}/v1/messages", provider.url()))
        .header("x-api-key", "program-own")
        .header("authorization", "Bearer program-own")
        .header("x-marathon-key", "program-own")
        .header("anthropic-version", "2023-06-01")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a1");
    assert_eq!(r.headers().get("x-marathon-attempts").unwrap(), "a1=200");
    let seen = provider.seen();
    assert_eq!(seen[0].get("x-api-key").unwrap(), "sk-account-a1");
    assert_eq!(seen[0].get("anthropic-version").unwrap(), "2023-06-01");
    assert!(seen[0].get("authorization").is_none(), "{seen:?}");
    assert!(seen[0].get("x-marathon-key").is_none(), "{seen:?}");
}

/// A streaming body cannot be sent twice: it goes to one account once and
/// its answer (here a 429) is the program's, marked not replayable.
#[tokio::test]
async fn a_body_that_cannot_be_cloned_is_sent_once_without_rotation() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("a1", "sk-a1").quota(0, Duration::from_secs(60), QuotaStyle::AnthropicApi),
        Account::ok("a2", "sk-a2"),
    ]))
    .await
    .unwrap();
    let (_m, client) = client(&sim.url(), &[("a1", "sk-a1"), ("a2", "sk-a2")]).await;
    let stream = reqwest::Body::wrap(Full::new(Bytes::from_static(BODY.as_bytes())));
    let r = client
        .post(format!("{}/v1/messages", sim.url()))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a1");
    assert_eq!(r.headers().get("x-marathon-replayable").unwrap(), "false");
    assert!(r.text().await.unwrap().contains("rate_limit_error"));
    assert_eq!((sim.count("a1"), sim.count("a2")), (1, 0));
    // The same request with a plain body moves on to a2.
    let r = client
        .post(format!("{}/v1/messages", sim.url()))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a2");
    assert!(r.headers().get("x-marathon-replayable").is_none());
}

/// Code written against a placeholder (or the provider's public URL) goes
/// to the configured upstream, path and query kept.
#[tokio::test]
async fn a_rewritten_base_goes_to_the_configured_upstream() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a1", "sk-a1")]))
        .await
        .unwrap();
    let config = marathon_config::load_str(
        &format!("[providers.anthropic]\nupstream = \"{}\"\n", sim.url()),
        Path::new("test.toml"),
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    store
        .add(NewAccount::api_key(
            "anthropic",
            Some("a1".into()),
            Secret::new("sk-a1"),
        ))
        .unwrap();
    let middleware = marathon_client::MarathonMiddleware::new("anthropic", &config, store)
        .await
        .unwrap()
        .rewrite_base("http://anthropic.marathon/")
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();
    let r = client
        .post("http://anthropic.marathon/v1/messages?beta=true")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a1");
    assert_eq!(sim.count("a1"), 1);
}

/// A provider that is not configured is an error naming it.
#[tokio::test]
async fn an_unknown_provider_is_named() {
    let (m, _) = client("http://127.0.0.1:9", &[]).await;
    let err = m.middleware("nope").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no provider named \"nope\" in the configuration"
    );
}

/// A success stream reaches the program as the upstream sent it, event for
/// event, while the middleware watches it for an error event.
#[tokio::test]
async fn a_long_stream_passes_through_intact_and_in_order() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("a1", "sk-a1").stream_events(2_000)
    ]))
    .await
    .unwrap();
    let (_m, client) = client(&sim.url(), &[("a1", "sk-a1")]).await;
    let body = BODY.replace("\"max_tokens\":16,", "\"max_tokens\":16,\"stream\":true,");
    let r = client
        .post(format!("{}/v1/messages", sim.url()))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a1");
    let through = r.text().await.unwrap();
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/messages", sim.url()))
        .header("x-api-key", "sk-a1")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deltas = |s: &str| -> Vec<String> {
        s.split("\n\n")
            .filter(|e| e.contains("content_block_delta"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(deltas(&through).len(), 2_000);
    assert_eq!(deltas(&through), deltas(&direct));
    assert!(
        through.contains("message_stop"),
        "the stream ran to its end"
    );
}

/// Without the first-event peek (`peek_first_event = false`) a stream is
/// passed on at once, its head intact, and an error event inside it still
/// benches the account for the next request.
#[tokio::test]
async fn without_the_peek_a_stream_keeps_its_head_and_is_still_watched() {
    use marathon_sim::StreamErrorKind;
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("a1", "sk-a1").stream_error_after(2, StreamErrorKind::Overloaded),
        Account::ok("a2", "sk-a2"),
    ]))
    .await
    .unwrap();
    let config = marathon_config::load_str(
        &format!(
            "[server]\npeek_first_event = false\n[providers.anthropic]\nupstream = \"{}\"\n",
            sim.url()
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    for (label, key) in [("a1", "sk-a1"), ("a2", "sk-a2")] {
        store
            .add(NewAccount::api_key(
                "anthropic",
                Some(label.into()),
                Secret::new(key),
            ))
            .unwrap();
    }
    let options = Options {
        background: false,
        ..Options::default()
    };
    let marathon = Marathon::with_options(&config, store, options)
        .await
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(marathon.middleware("anthropic").unwrap())
        .build();
    let url = format!("{}/v1/messages", sim.url());
    let body = BODY.replace("\"max_tokens\":16,", "\"max_tokens\":16,\"stream\":true,");
    let r = client.post(&url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a1");
    assert!(r.text().await.unwrap().contains("overloaded_error"));
    let r = client.post(&url).body(BODY).send().await.unwrap();
    assert_eq!(r.headers().get("x-marathon-account").unwrap(), "a2");
    let a1 = marathon
        .accounts("anthropic")
        .unwrap()
        .into_iter()
        .find(|a| a.label == "a1")
        .unwrap();
    assert_eq!(a1.state.as_str(), "cooling");
}

/// (input, output) as an Anthropic answer reported them, read the plain way
/// (the whole body parsed; a stream's last usage wins).
fn reported(body: &str) -> (u64, u64) {
    let docs: Vec<serde_json::Value> = match serde_json::from_str(body) {
        Ok(v) => vec![v],
        Err(_) => body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect(),
    };
    let (mut input, mut output) = (0, 0);
    for d in docs {
        for usage in [&d["usage"], &d["message"]["usage"]] {
            if let Some(i) = usage["input_tokens"].as_u64() {
                input = i;
            }
            if let Some(o) = usage["output_tokens"].as_u64() {
                output = o;
            }
        }
    }
    (input, output)
}

/// Token accounting in-process: what each answer reported, JSON and
/// streamed, is counted per account and model in `Marathon::accounts`, once
/// the program has read the body; an answer the program drops half-way
/// counts what it reported so far; a refused request counts nothing.
#[tokio::test]
async fn answers_are_counted_per_account_and_model() {
    let sim = marathon_sim::start(Scenario::new(
        [Account::ok("a1", "sk-a1").stream_events(50)],
    ))
    .await
    .unwrap();
    let (marathon, client) = client(&sim.url(), &[("a1", "sk-a1")]).await;
    let url = format!("{}/v1/messages", sim.url());
    let tokens = || {
        let a1 = marathon
            .accounts("anthropic")
            .unwrap()
            .into_iter()
            .find(|a| a.label == "a1")
            .unwrap();
        (a1.tokens, a1.tokens_by_model)
    };
    assert_eq!(tokens().0, None, "nothing counted before any answer");

    let r = client.post(&url).body(BODY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let json = r.text().await.unwrap();
    let stream_body = BODY.replace("\"max_tokens\":16,", "\"max_tokens\":16,\"stream\":true,");
    let r = client
        .post(&url)
        .body(stream_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let streamed = r.text().await.unwrap();
    let (ji, jo) = reported(&json);
    let (si, so) = reported(&streamed);
    assert!(ji > 0 && jo > 0 && si > 0 && so > 0, "{json}\n{streamed}");

    let (total, by_model) = tokens();
    let total = total.expect("counted");
    assert_eq!((total.input, total.output), (ji + si, jo + so));
    assert_eq!(by_model.len(), 1, "{by_model:?}");
    assert_eq!(by_model[0].model, "claude-sonnet-4-5");
    assert_eq!(by_model[0].tokens, total);

    // Dropped after its head: a stream counts what it reported before (its
    // first event, read ahead, carries the input).
    let r = client.post(&url).body(stream_body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let after = tokens().0.unwrap();
    assert_eq!(after.input, total.input + si, "{after:?}");
}
