//! What a hostile or careless client can make the proxy do with one request,
//! over real sockets: the upstream (`Echo`, which records every request it
//! receives) must never see a client's credential or the proxy's access key,
//! nor a request that steps out of the provider's prefix or uses a method an
//! LLM API has no use for; an oversized head is refused before it is kept.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use marathon_core::Secret;
use marathon_proxy::{ProxyHandle, StartOptions};
use marathon_store::{MemoryStore, NewAccount, Store};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ACCESS: &str = "mk-access-HOSTILE-7f3a";
const PROVIDERS: [&str; 5] = ["anthropic", "openai", "codex", "google", "copilot"];

fn account_key(provider: &str) -> String {
    format!("sk-acct-{provider}-own")
}

/// An echo upstream behind a proxy with the access key set, one API-key
/// account per built-in provider, and `x-session-id` as every provider's
/// session header.
async fn echo_proxy() -> (Echo, ProxyHandle) {
    let echo = Echo::start().await;
    let store = Arc::new(MemoryStore::new());
    for p in PROVIDERS {
        store
            .add(NewAccount::api_key(
                p,
                Some(format!("{p}-acct")),
                Secret::new(account_key(p)),
            ))
            .unwrap();
    }
    let mut settings = test_settings(&echo.url());
    settings.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))];
    for p in &mut settings.providers {
        p.session_headers = vec![http::HeaderName::from_static("x-session-id")];
    }
    let proxy = marathon_proxy::start(settings, StartOptions::new(store))
        .await
        .unwrap();
    (echo, proxy)
}

fn seen_count(echo: &Echo) -> usize {
    echo.seen.lock().unwrap().len()
}

/// Guards against a client's credentials travelling upstream next to the
/// account's: cookies, Azure-style `api-key`, Google's `x-goog-api-key` and
/// `?key=`, OAuth's `?access_token=`, another provider's header, and the
/// proxy's own access key — on every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_and_the_access_key_never_reach_upstream_on_any_route() {
    let (echo, proxy) = echo_proxy().await;
    let client = http_client();
    for provider in PROVIDERS {
        let uri = format!(
            "{}/{provider}/v1/models/m:generate?alt=sse&key=client-secret-q1&%6Bey=client-secret-q2&access_token=client-secret-q3",
            proxy.url()
        );
        let req = Request::post(uri)
            .header("content-type", "application/json")
            // The access key as an SDK sends its API key.
            .header("x-api-key", ACCESS)
            .header("x-marathon-key", ACCESS)
            .header("authorization", "Bearer client-secret-h1")
            .header("api-key", "client-secret-h2")
            .header("x-goog-api-key", "client-secret-h3")
            .header("cookie", "sid=client-secret-h4")
            .header("proxy-authorization", "Basic client-secret-h5")
            .header("chatgpt-account-id", "client-secret-h6")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let r = send(&client, req).await;
        assert_eq!(r.status, 200, "{provider}: {}", r.dump());

        let seen = echo.seen.lock().unwrap().pop().expect("request upstream");
        let mut everything = String::new();
        for (name, value) in &seen {
            everything.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        assert!(
            !everything.contains("client-secret") && !everything.contains(ACCESS),
            "{provider} forwarded a client credential:\n{everything}"
        );
        let uri = seen["x-echo-uri"].to_str().unwrap();
        assert_eq!(uri, "/v1/models/m:generate?alt=sse", "{provider}");
        // The account's own credential is there, in the provider's style.
        let own = account_key(provider);
        let (header, expected) = match provider {
            "anthropic" => ("x-api-key", own.clone()),
            "google" => ("x-goog-api-key", own.clone()),
            _ => ("authorization", format!("Bearer {own}")),
        };
        assert_eq!(seen[header], expected.as_str(), "{provider}");
        assert_eq!(seen["anthropic-version"], "2023-06-01", "others pass");
    }
}

/// One raw HTTP/1.1 exchange (the request exactly as written, no client
/// normalising it), read to the connection's end; the status and the head.
async fn raw(proxy: &ProxyHandle, request: String) -> (u16, String) {
    let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Written while the answer is read: the proxy may answer (and close)
    // before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(request.as_bytes()).await;
        wr
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got)).await;
    drop(writer.await);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    (status, head)
}

fn request(method: &str, target: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nhost: localhost\r\nx-marathon-key: {ACCESS}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n{extra}\r\n{{}}"
    )
}

/// Guards against a client stepping out of the configured upstream prefix
/// (`/backend-api/codex`, a gateway's path) with the account's token: dot
/// segments in any encoding and encoded separators are refused with 400 and
/// nothing goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused_before_anything_goes_upstream() {
    let (echo, proxy) = echo_proxy().await;
    for target in [
        "/codex/../admin",
        "/codex/v1/../../admin",
        "/codex/v1/%2e%2e/%2e%2e/admin",
        "/codex/v1/%2E%2e/admin",
        "/codex/v1/.%2e/admin",
        "/codex/v1/%2f../admin",
        "/codex/v1%2F..%2Fadmin",
        "/codex/v1/%5c..%5cadmin",
        "/codex/./v1/messages",
        "/codex/v1/%2e/messages",
    ] {
        let (status, head) = raw(&proxy, request("POST", target, "")).await;
        assert_eq!(status, 400, "{target}: {head}");
    }
    assert_eq!(seen_count(&echo), 0, "nothing reached the upstream");
    // An ordinary path with dots in a name still passes.
    let (status, head) = raw(
        &proxy,
        request("POST", "/codex/v1/models/gemini-2.5-pro:generate", ""),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(seen_count(&echo), 1);
}

/// Guards against methods an LLM API has no use for being sent upstream with
/// the account's credential: TRACE (echoes the request back), CONNECT (a
/// tunnel) and extension methods get 405 with `allow`, and nothing upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_connect_and_unknown_methods_are_refused_with_405() {
    let (echo, proxy) = echo_proxy().await;
    for method in ["TRACE", "CONNECT", "PROPFIND", "BREW"] {
        let (status, head) = raw(&proxy, request(method, "/anthropic/v1/messages", "")).await;
        assert_eq!(status, 405, "{method}: {head}");
        let allow = head
            .lines()
            .find_map(|l| l.strip_prefix("allow: "))
            .unwrap_or_else(|| panic!("{method}: no allow header in {head}"));
        assert!(
            allow.contains("POST") && !allow.contains("TRACE"),
            "{allow}"
        );
    }
    // CONNECT in its usual authority form is not a proxy route at all.
    let (status, head) = raw(&proxy, request("CONNECT", "api.anthropic.com:443", "")).await;
    assert!((400..500).contains(&status), "{head}");
    assert_eq!(seen_count(&echo), 0, "nothing reached the upstream");
    // The methods provider APIs use still pass (DELETE: the Files API).
    for method in ["GET", "POST", "DELETE", "PATCH"] {
        let (status, head) = raw(&proxy, request(method, "/openai/v1/files/file-1", "")).await;
        assert_eq!(status, 200, "{method}: {head}");
    }
    assert_eq!(seen_count(&echo), 4);
}

/// Guards against a client making the proxy hold arbitrary amounts of
/// memory through request heads (300 KB session ids drove it to 1.7 GB): a
/// head past 64 KiB gets a clean 431 and goes nowhere; one just under it
/// (a long session id) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431_and_a_large_one_passes() {
    let (echo, proxy) = echo_proxy().await;
    let huge = format!("x-session-id: {}\r\n", "s".repeat(300 * 1024));
    let (status, head) = raw(&proxy, request("POST", "/anthropic/v1/messages", &huge)).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(seen_count(&echo), 0);
    let large = format!("x-session-id: {}\r\n", "s".repeat(60 * 1024));
    let (status, head) = raw(&proxy, request("POST", "/anthropic/v1/messages", &large)).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(seen_count(&echo), 1);
}
