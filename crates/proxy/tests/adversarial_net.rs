//! The proxy left running beside a browser and on shared gateways (issue 9):
//! web pages that rebind a name to 127.0.0.1 or post across sites, clients
//! that send a header a byte at a time or hold idle connections, upstreams
//! that drip an error body. Real sockets on 127.0.0.1, the simulator (or a
//! raw socket playing a bad upstream) behind the proxy.
//!
//! Every test here fails on the proxy before issue 9: it answered any Host
//! and any Origin, had no head or idle timeout, no connection cap, and
//! restarted its error-body timeout with every chunk.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marathon_sim::{Account, Scenario};
use support::{Api, Opts, world_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;

/// One request on a fresh connection, `connection: close`, read to the end:
/// (status, head, body).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy answers within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = h
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, h.to_ascii_lowercase(), b.to_owned())
}

fn post(host: &str, extra: &str) -> String {
    format!(
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: {host}\r\nx-api-key: client-key\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n{extra}"
    )
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}")
}

fn alice() -> Scenario {
    Scenario::new([Account::ok("alice", "sk-alice")])
}

/// DNS rebinding: a page on evil.example re-points its name at 127.0.0.1;
/// the browser still sends its name as Host. Refused before anything is
/// read or forwarded — health and status too; the loopback names work.
/// Before issue 9 every Host was served (200, and the request went upstream).
#[tokio::test]
async fn a_foreign_host_is_refused_before_any_work() {
    let w = world_with(alice(), Opts::new(Api::Anthropic)).await;
    let addr = w.proxy.local_addr();
    let port = addr.port();
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let (status, head, body) = raw(addr, &post(&host, ""), BODY).await;
        assert_eq!(status, 421, "{host}: {head}\n{body}");
        assert!(body.contains("allowed_hosts"), "{body}");
        assert!(
            body.contains("\"type\":\"error\""),
            "Anthropic's format: {body}"
        );
        assert!(!head.contains("access-control-"), "{head}");
        for path in ["/_marathon/health", "/_marathon/status", "/_marathon/"] {
            let (status, _, _) = raw(addr, &get(path, &host, ""), "").await;
            assert_eq!(status, 421, "{host}{path}");
        }
    }
    assert_eq!(w.sim.count("alice"), 0, "nothing reached the upstream");

    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, _, body) = raw(addr, &post(&host, ""), BODY).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    assert_eq!(w.sim.count("alice"), 2);
}

/// A page on another site posting a "simple" request (text/plain, no
/// preflight) or loading the status and event stream: refused, nothing sent
/// upstream, no CORS header. The dashboard's own origin still works.
/// Before issue 9 Origin was ignored: the POST spent quota upstream.
#[tokio::test]
async fn a_cross_site_origin_is_refused_before_any_work() {
    let w = world_with(alice(), Opts::new(Api::Anthropic)).await;
    let addr = w.proxy.local_addr();
    let host = format!("127.0.0.1:{}", addr.port());
    let evil = "origin: https://evil.example\r\n";
    let simple = format!(
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-type: text/plain\r\n{evil}"
    );
    let (status, head, body) = raw(addr, &simple, BODY).await;
    assert_eq!(status, 403, "{head}\n{body}");
    assert!(body.contains("allowed_origins"), "{body}");
    assert!(!head.contains("access-control-"), "{head}");
    for path in ["/_marathon/status", "/_marathon/events"] {
        let (status, head, body) = raw(addr, &get(path, &host, evil), "").await;
        assert_eq!(status, 403, "{path}: {head}\n{body}");
        assert!(!head.contains("text/event-stream"), "{head}");
    }
    // An image or script tag on another site: no Origin, but Sec-Fetch-Site says so.
    let (status, _, _) = raw(
        addr,
        &get(
            "/_marathon/events",
            &host,
            "sec-fetch-site: cross-site\r\nsec-fetch-mode: no-cors\r\n",
        ),
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(w.sim.count("alice"), 0, "nothing reached the upstream");

    // The dashboard (same origin) posting, and a page the user opened by hand.
    let own = format!("origin: http://{host}\r\n");
    let (status, head, body) = raw(addr, &post(&host, &own), BODY).await;
    assert_eq!(status, 200, "{body}");
    assert!(!head.contains("access-control-"), "{head}");
    let (status, _, _) = raw(
        addr,
        &get("/_marathon/status", &host, "sec-fetch-site: none\r\n"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(w.sim.count("alice"), 1);
}

/// `server.allowed_origins` lets one page in: its preflight is answered
/// without going upstream, its answers carry CORS headers, and its Origin
/// does not reach the provider. Before issue 9 the preflight was forwarded
/// upstream and no answer was readable by the page.
#[tokio::test]
async fn a_configured_origin_gets_cors() {
    let echo = support::Echo::start().await;
    let mut settings = support::test_settings(&echo.url());
    settings.allowed_origins = vec!["http://localhost:3000".into()];
    let store = std::sync::Arc::new(marathon_store::MemoryStore::new());
    use marathon_store::Store as _;
    store
        .add(marathon_store::NewAccount::api_key(
            "openai",
            Some("a".into()),
            marathon_core::Secret::new("sk-a"),
        ))
        .unwrap();
    let proxy = marathon_proxy::start(settings, marathon_proxy::StartOptions::new(store))
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let host = format!("127.0.0.1:{}", addr.port());
    let app = "origin: http://localhost:3000\r\n";
    let (status, head, _) = raw(
        addr,
        &format!(
            "OPTIONS /openai/v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n{app}\
             access-control-request-method: POST\r\naccess-control-request-headers: authorization, content-type\r\n"
        ),
        "",
    )
    .await;
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization, content-type"),
        "{head}"
    );
    assert!(
        echo.seen.lock().unwrap().is_empty(),
        "a preflight is not forwarded"
    );

    let (status, head, _) = raw(
        addr,
        &format!(
            "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n{app}\
             authorization: Bearer client\r\ncontent-type: application/json\r\n"
        ),
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000"),
        "{head}"
    );
    let seen = echo.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].get("origin").is_none(),
        "Origin stays between browser and proxy"
    );
}

/// Slowloris: a header sent a byte at a time and never finished is closed
/// at the head timeout; so is a connection that sends nothing. Before issue
/// 9 there was no head timeout: both stayed open for ever.
#[tokio::test]
async fn a_slow_header_is_closed_at_the_header_timeout() {
    let w = world_with(
        alice(),
        Opts::new(Api::Anthropic).settings(|s| {
            s.limits.header_read_timeout = Duration::from_secs(1);
        }),
    )
    .await;
    let addr = w.proxy.local_addr();
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let dripping = async {
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                r = slow.read(&mut buf) => return (r, started.elapsed()),
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if slow.write_all(b"a").await.is_err() {
                        return (Ok(0), started.elapsed());
                    }
                }
            }
        }
    };
    let (read, took) = tokio::time::timeout(Duration::from_secs(5), dripping)
        .await
        .expect("the slow header was not cut within 5 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without an answer: {read:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}, expected about 1 s"
    );
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf))
        .await
        .expect("a connection that never sends is closed too");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(w.sim.count("alice"), 0);
}

/// An idle keep-alive connection is closed after `idle_timeout`, while a
/// stream that runs longer than both timeouts is delivered whole. Before
/// issue 9 idle connections were never closed.
#[tokio::test]
async fn idle_connections_close_but_long_streams_do_not() {
    let scenario = Scenario::new([Account::ok("alice", "sk-alice")
        .stream_events(12)
        .slow_ms(250)]);
    let w = world_with(
        scenario,
        Opts::new(Api::Anthropic).settings(|s| {
            s.limits.header_read_timeout = Duration::from_secs(1);
            s.limits.idle_timeout = Duration::from_secs(1);
        }),
    )
    .await;
    let addr = w.proxy.local_addr();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /_marathon/health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle_since = Instant::now();

    let started = Instant::now();
    let (head, body) = (
        post("localhost", ""),
        BODY.replace("\"max_tokens\":5", "\"max_tokens\":5,\"stream\":true"),
    );
    let stream = raw(addr, &head, &body);
    let closed = async {
        let r = idle.read(&mut buf).await;
        (r, idle_since.elapsed())
    };
    let ((status, _, body), (r, idle_for)) = tokio::join!(stream, closed);
    let streamed = started.elapsed();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_secs(3),
        "idle connection closed after {idle_for:?}, expected about 1 s"
    );
    assert_eq!(status, 200);
    assert!(streamed > Duration::from_millis(2500), "{streamed:?}");
    assert!(body.contains("message_stop"), "the stream was cut: {body}");
    assert_eq!(
        body.matches("event: content_block_delta").count(),
        12,
        "{body}"
    );
}

/// An upstream whose 503 body arrives a byte every 200 ms, for ever.
async fn dripping_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"error\":";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if s.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The error body gets one deadline, not one per chunk: a dripping 503
/// finishes (as a 503, with what arrived) instead of stalling the request.
/// Before issue 9 each byte restarted a 30 s timeout and the rest of the
/// body then streamed on: the request never ended.
#[tokio::test]
async fn a_dripping_error_body_does_not_stall_the_request() {
    let upstream = dripping_upstream().await;
    let mut settings = support::test_settings(&format!("http://{upstream}"));
    settings.error_body_timeout = Duration::from_secs(1);
    // One attempt, so the time is one error body's.
    settings
        .provider_mut("openai")
        .unwrap()
        .retry
        .provider_retries = 0;
    let store = std::sync::Arc::new(marathon_store::MemoryStore::new());
    use marathon_store::Store as _;
    store
        .add(marathon_store::NewAccount::api_key(
            "openai",
            Some("a".into()),
            marathon_core::Secret::new("sk-a"),
        ))
        .unwrap();
    let proxy = marathon_proxy::start(settings, marathon_proxy::StartOptions::new(store))
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let started = Instant::now();
    let (status, _, body) = raw(
        addr,
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n\
         authorization: Bearer client\r\ncontent-type: application/json\r\n",
        "{}",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("{\"error\":"), "{body}");
    assert!(
        took < Duration::from_secs(3),
        "the request took {took:?}; the error body's deadline is 1 s"
    );
}

/// Past `max_connections`, the oldest idle connections make room: a new
/// client (a health check) is served at once. Before issue 9 there was no
/// cap: connections piled up until descriptors ran out.
#[tokio::test]
async fn past_the_cap_the_oldest_idle_connections_make_room() {
    let w = world_with(
        alice(),
        Opts::new(Api::Anthropic).settings(|s| {
            s.limits.max_connections = Some(50);
        }),
    )
    .await;
    let addr = w.proxy.local_addr();
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /_marathon/health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("each new connection is served")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        conns.push(s);
    }
    let started = Instant::now();
    let (status, _, _) = raw(addr, &get("/_marathon/health", "localhost", ""), "").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The oldest were closed; at most the cap (plus the batch closing now) stay open.
    let mut open = 0;
    for s in &mut conns {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            Err(_) => open += 1,
            Ok(r) => assert!(matches!(r, Ok(0) | Err(_)), "{r:?}"),
        }
    }
    assert!(
        open <= 50,
        "{open} connections still open past the cap of 50"
    );
    assert!(open >= 10, "newer idle connections are kept: {open}");
}
