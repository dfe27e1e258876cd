//! Safe token refresh across processes, end to end (the must-show):
//! several `marathon serve` processes share one account store; their
//! upstream is a marathon-sim that accepts only access tokens the real
//! authorization server (oidc-provider, rotating single-use refresh tokens:
//! a reused one revokes the whole grant) says are active. Traffic crosses
//! several token expiries; every request must succeed, the grant must
//! survive, and each expiry must cost exactly one refresh — not one per
//! process.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use marathon_oauth::{HttpClient, HttpRequest, HyperHttpClient};
use support::{Flow, Home, OidcServer, block_on, login, text};

/// The simulated provider, accepting bearer tokens the server introspects as
/// active; the account is the token's `sub` (alice, bob).
fn start_sim(rt: &tokio::runtime::Runtime, server: &OidcServer) -> marathon_sim::SimHandle {
    let scenario = marathon_sim::Scenario::from_toml(&format!(
        "introspection_url = \"{}/token/introspection\"\n\
         introspection_client_id = \"resource-server\"\n\
         introspection_client_secret = \"rs-secret\"\n\
         introspection_cache = \"30s\"\n\
         [[accounts]]\nname = \"api-key-only\"\nkey = \"sk-not-used\"\n",
        server.issuer
    ))
    .unwrap();
    rt.block_on(marathon_sim::start_with(
        scenario,
        marathon_sim::Options::default(),
    ))
    .unwrap()
}

fn config(server: &OidcServer, sim: &marathon_sim::SimHandle) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [providers.corp]\nkind = \"openai-compatible\"\nupstream = \"{}\"\n\
         strategy = \"round-robin\"\nrefresh_lead = \"1s\"\n\n{}",
        sim.url(),
        server.oauth_section("corp")
    )
}

/// A running `marathon serve`; killed on drop.
struct Serve {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(home: &Home) -> Serve {
        let mut child = home
            .marathon()
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut banner = String::new();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_string());
            }
            if line.contains("dashboard") {
                break;
            }
        }
        let url = url.unwrap_or_else(|| panic!("serve did not start:\n{banner}"));
        let log = Arc::new(Mutex::new(banner));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Serve { child, url, log }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn status(&self) -> serde_json::Value {
        let r = block_on(
            HyperHttpClient::new().send(HttpRequest::get(format!("{}/_marathon/status", self.url))),
        )
        .unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleeps until every stored access token has expired (plus a margin), so
/// the next traffic crosses exactly one expiry per account.
fn wait_past_expiry(home: &Home) {
    let latest = home
        .accounts("corp")
        .iter()
        .map(|a| a.expires_at_ms.expect("the server gives expires_in"))
        .max()
        .unwrap();
    let target = latest + 300;
    let now = now_ms();
    if target > now {
        std::thread::sleep(Duration::from_millis(target - now));
    }
}

/// `n` concurrent chat requests to each proxy; returns (status, account) per request.
async fn wave(proxies: &[String], n: usize) -> Vec<(u16, String)> {
    let client = Arc::new(HyperHttpClient::with_timeout(Duration::from_secs(30)));
    let mut set = tokio::task::JoinSet::new();
    for url in proxies {
        for i in 0..n {
            let client = client.clone();
            let req = HttpRequest::json(
                format!("{url}/corp/v1/chat/completions"),
                &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": format!("hi {i}")}]}),
            )
            .header("authorization", "Bearer client-key-ignored");
            set.spawn(async move {
                match client.send(req).await {
                    Ok(r) => (
                        r.status,
                        r.header("x-marathon-account")
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    Err(e) => (0, format!("no response: {e}")),
                }
            });
        }
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[test]
fn eight_proxies_share_refreshes_across_expiries_without_a_failed_request() {
    const TTL: u64 = 4;
    const PROCESSES: usize = 8;
    const PER_PROCESS: usize = 50;
    const WAVES: u64 = 3;
    let started = Instant::now();
    let server = OidcServer::start(TTL);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = start_sim(&rt, &server);
    let home = Home::new(&config(&server, &sim));
    for user in ["alice", "bob"] {
        let out = login(&home, &server, "corp", Flow::Loopback, user, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let accounts = home.accounts("corp");
    assert_eq!(accounts.len(), 2);
    let first_refresh_tokens: Vec<String> = accounts
        .iter()
        .map(|a| a.refresh.clone().unwrap())
        .collect();

    let mut proxies: Vec<Serve> = (0..PROCESSES).map(|_| Serve::start(&home)).collect();
    let urls: Vec<String> = proxies.iter().map(|p| p.url.clone()).collect();

    let mut total = 0u64;
    // Refreshes seen so far, and expiries the traffic crossed (at least one
    // per account per wave; more only if a wave outlasted a token).
    let mut refreshed = 0u64;
    let mut slow_waves = 0u64;
    let mut seen_tokens: Vec<String> = accounts.iter().map(|a| a.access.clone()).collect();
    for w in 1..=WAVES {
        // Both accounts' tokens are dead at the server now: this wave crosses
        // one expiry per account...
        wait_past_expiry(&home);
        let wave_started = Instant::now();
        let results = rt.block_on(wave(&urls, PER_PROCESS));
        // ...and one more per account for each time the wave outlasted a
        // fresh token's usable life (TTL minus the 1s lead) on a slow machine.
        let usable = Duration::from_secs(TTL - 1);
        let extra = (wave_started.elapsed().as_millis() / usable.as_millis()) as u64;
        let (low, high) = (refreshed + 2, refreshed + 2 * (1 + extra));
        slow_waves += u64::from(extra > 0);
        let failed: Vec<&(u16, String)> = results.iter().filter(|(s, _)| *s != 200).collect();
        assert!(
            failed.is_empty(),
            "wave {w}: {} of {} requests failed, e.g. {:?}\n{}",
            failed.len(),
            results.len(),
            &failed[..failed.len().min(5)],
            proxies[0].log.lock().unwrap()
        );
        for label in ["alice@example.com", "bob@example.com"] {
            assert!(
                results.iter().any(|(_, a)| a == label),
                "wave {w}: {label} served nothing"
            );
        }
        total += results.len() as u64;
        let stats = server.stats();
        // One refresh per account per expiry crossed, however many
        // processes and requests wanted a token at that moment.
        let refreshes = stats["refreshes"].as_u64().unwrap();
        assert!(
            (low..=high).contains(&refreshes),
            "wave {w}: {stats}; expected {low} refreshes (2 accounts x {w} expiries{}), not up to {}",
            if high > low {
                format!(", up to {high} on a slow machine")
            } else {
                String::new()
            },
            2 * w * PROCESSES as u64
        );
        refreshed = refreshes;
        assert_eq!(stats["grant_errors"], 0, "wave {w}: {stats}");
        seen_tokens.extend(home.accounts("corp").into_iter().map(|a| a.access));
    }

    let stats = server.stats();
    eprintln!(
        "race: {PROCESSES} processes x {PER_PROCESS} concurrent requests x {WAVES} waves = {total} requests, \
         0 failed; expiries crossed: {} (2 accounts x {WAVES} waves; waves outlasting a token: {slow_waves}); \
         refreshes at the server: {}; \
         invalid_grant: {}; took {:?}",
        2 * WAVES,
        stats["refreshes"],
        stats["invalid_grant_errors"],
        started.elapsed()
    );
    assert_eq!(stats["invalid_grant_errors"], 0, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    // The provider saw every request, from the two real logins.
    assert_eq!(sim.count("alice") + sim.count("bob"), total);
    // The grants are alive: the stored (rotated) tokens introspect active.
    let after = home.accounts("corp");
    for (a, first) in after.iter().zip(&first_refresh_tokens) {
        assert_eq!(a.state, "active");
        assert_ne!(
            a.refresh.as_ref().unwrap(),
            first,
            "the refresh token never rotated"
        );
    }
    // The last access tokens may have just expired; a fresh refresh with the
    // stored refresh token proves the grant is intact.
    for p in proxies.iter_mut() {
        assert!(p.alive());
        let log = p.log.lock().unwrap().clone();
        assert!(!log.contains("refresh failed"), "{log}");
        // No token in any log line.
        for t in seen_tokens.iter().chain(&first_refresh_tokens) {
            assert!(!log.contains(t.as_str()), "a token leaked into the log");
        }
        for a in &after {
            assert!(
                !log.contains(a.refresh.as_deref().unwrap()),
                "a refresh token leaked into the log"
            );
        }
    }
    drop(proxies);
    for a in &after {
        let r = block_on(HyperHttpClient::new().send(HttpRequest::form(
            format!("{}/token", server.issuer),
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", a.refresh.as_deref().unwrap()),
                ("client_id", "marathon"),
            ],
        )))
        .unwrap();
        assert_eq!(r.status, 200, "{}: {}", a.label, text(&r.body));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let intro = server.introspect(body["access_token"].as_str().unwrap());
        assert_eq!(intro["active"], true, "{intro}");
    }
}

/// The proxy's SSE event stream, collected in the background.
fn events(url: &str) -> Arc<Mutex<String>> {
    let addr = url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "GET /_marathon/events HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

#[test]
fn a_revoked_grant_sends_the_account_to_needs_login_and_traffic_to_the_other() {
    const TTL: u64 = 3;
    let server = OidcServer::start(TTL);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = start_sim(&rt, &server);
    let home = Home::new(&config(&server, &sim));
    for user in ["alice", "bob"] {
        let out = login(&home, &server, "corp", Flow::Loopback, user, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut proxy = Serve::start(&home);
    let seen = events(&proxy.url);
    let urls = vec![proxy.url.clone()];

    let before = rt.block_on(wave(&urls, 10));
    assert!(before.iter().all(|(s, _)| *s == 200), "{before:?}");
    assert!(before.iter().any(|(_, a)| a == "alice@example.com"));

    // An administrator ends alice's login.
    assert_eq!(server.revoke_user("alice"), 1);
    wait_past_expiry(&home);
    let after = rt.block_on(wave(&urls, 20));
    let failed: Vec<_> = after.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{failed:?}\n{}",
        proxy.log.lock().unwrap()
    );
    assert!(
        after.iter().all(|(_, a)| a == "bob@example.com"),
        "traffic did not move to bob: {after:?}"
    );
    assert!(proxy.alive(), "the proxy died");

    // Live view, event and store agree.
    let status = proxy.status();
    let accounts = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "corp")
        .unwrap()["accounts"]
        .as_array()
        .unwrap()
        .clone();
    let health = |label: &str| {
        let a = accounts.iter().find(|a| a["label"] == label).unwrap();
        a["state"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(health("alice@example.com"), "needs_login", "{status}");
    assert_eq!(health("bob@example.com"), "ready", "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = seen.lock().unwrap().clone();
        let needs_login = text.lines().any(|l| {
            l.starts_with("data: ")
                && l.contains("\"type\":\"needs_login\"")
                && l.contains("alice@example.com")
        });
        if needs_login {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no needs_login event for alice:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // One failed refresh, announced once, though 20 requests were in flight.
    let sse = seen.lock().unwrap().clone();
    let count = |kind: &str| {
        sse.lines()
            .filter(|l| l.starts_with("data: ") && l.contains(&format!("\"type\":\"{kind}\"")))
            .count()
    };
    assert_eq!(
        (count("needs_login"), count("refresh_failed")),
        (1, 1),
        "{sse}"
    );
    let needs_login = sse
        .lines()
        .find(|l| l.contains("\"type\":\"needs_login\""))
        .unwrap();
    assert!(
        needs_login.contains("\"reason\":\"invalid_grant\""),
        "{needs_login}"
    );
    assert_eq!(server.stats()["invalid_grant_errors"], 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let states: Vec<(String, String)> = home
            .accounts("corp")
            .into_iter()
            .map(|a| (a.label, a.state))
            .collect();
        if states[0].1 == "needs_login" {
            assert_eq!(states[1], ("bob@example.com".into(), "active".into()));
            break;
        }
        assert!(Instant::now() < deadline, "store not updated: {states:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = server.stats();
    assert_eq!(stats["grants_revoked"], 1, "{stats}");
    let list = home.marathon().args(["auth", "list"]).output().unwrap();
    let list = text(&list.stdout);
    assert!(list.contains("needs login"), "{list}");

    // Alice logs in again: the same account is updated, and the running
    // proxy picks it up (store sync every 2s) and serves her again.
    let again = login(&home, &server, "corp", Flow::Loopback, "alice", &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).starts_with("updated corp/alice@example.com"),
        "{}",
        text(&again.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let results = rt.block_on(wave(&urls, 4));
        assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
        if results.iter().any(|(_, a)| a == "alice@example.com") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice never came back after logging in again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(proxy.alive());
    assert_eq!(home.accounts("corp")[0].state, "active");
}
