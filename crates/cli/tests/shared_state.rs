//! Several `marathon serve` instances acting as one (issue 12), as the real
//! binary: two processes on one file store, and three instances with
//! separate homes on one real `redis-server`. Upstream calls are counted at
//! marathon-sim; OAuth runs against the real oidc-provider server.
//!
//! Before issue 12 the processes did not share cooldowns: the second called
//! an account the first had already cooled (and they overwrote each other's
//! hot.json), and there was no Redis backend at all.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use marathon_oauth::{HttpClient, HttpRequest, HyperHttpClient};
use marathon_sim::{Account, QuotaStyle, Scenario, SimHandle};
use marathon_testkit::redis::RedisServer;
use support::{Flow, Home, OidcServer, accounts_in, block_on, login, text};

const BODY: &str = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A running `marathon serve`; killed on drop.
struct Serve {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(mut cmd: Command) -> Serve {
        let mut child = cmd
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

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// One request, read to the end: its status.
    fn post(&self) -> u16 {
        self.post_body(BODY)
    }

    /// One streamed request (SSE), read to the end: its status.
    fn post_stream(&self) -> u16 {
        self.post_body(STREAM_BODY)
    }

    fn post_body(&self, body: &str) -> u16 {
        let Ok(mut s) = std::net::TcpStream::connect(self.addr()) else {
            return 0;
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = write!(
            s,
            "POST /anthropic/v1/messages HTTP/1.1\r\nhost: {}\r\nx-api-key: client\r\n\
             anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr(),
            body.len()
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn health_of(&self, label: &str) -> String {
        let r = block_on(
            HyperHttpClient::new().send(HttpRequest::get(format!("{}/_marathon/status", self.url))),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["providers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["accounts"].as_array().unwrap().iter())
            .find(|a| a["label"] == label)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    /// Waits until `label` is cooling here; how long that took.
    fn await_cooling(&self, label: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.health_of(label) != "cooling" {
            assert!(
                started.elapsed() < limit,
                "{label} not cooling at {} after {limit:?}",
                self.url
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn sim(rt: &tokio::runtime::Runtime, scenario: Scenario) -> SimHandle {
    rt.block_on(marathon_sim::start_with(
        scenario,
        marathon_sim::Options::default(),
    ))
    .unwrap()
}

/// `limited` (priority 0) is over quota for an hour; `steady` always answers.
fn limited_and_steady() -> Scenario {
    Scenario::new([
        Account::ok("limited", "sk-limited").quota(
            0,
            Duration::from_secs(3600),
            QuotaStyle::AnthropicApi,
        ),
        Account::ok("steady", "sk-steady"),
    ])
}

fn add_key(home: &Home, label: &str, key: &str, priority: u32) {
    let mut add = home
        .marathon()
        .args(["auth", "add", "anthropic", "--label", label])
        .args(["--priority", &priority.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn anthropic_config(sim: &SimHandle, store: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n{store}\n\
         [providers.anthropic]\nupstream = \"{}\"\nstrategy = \"priority\"\n",
        sim.url()
    )
}

fn redis_section(redis: &RedisServer) -> String {
    format!("[store]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url())
}

/// Item 1: two processes on one file store. A cooldown the first learns is
/// honoured by the second within a second (the second never calls the
/// account), and is still in hot.json after both saved (no overwrite).
#[test]
fn two_processes_on_one_file_store_share_a_cooldown_within_a_second() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim(&rt, limited_and_steady());
    let home = Home::new(&anthropic_config(&sim, ""));
    add_key(&home, "limited", "sk-limited", 0);
    add_key(&home, "steady", "sk-steady", 1);
    let a = Serve::start(home.marathon());
    let b = Serve::start(home.marathon());
    assert_eq!(a.post(), 200);
    assert_eq!(sim.count("limited"), 1, "a learned the 429");
    let took = b.await_cooling("limited", Duration::from_secs(1));
    eprintln!("file store: cooldown reached the other process in {took:?}");
    for _ in 0..10 {
        assert_eq!(b.post(), 200);
        assert_eq!(a.post(), 200);
    }
    assert_eq!(sim.count("limited"), 1, "neither process called it again");
    // Both keep merging; the cooldown stays in the shared file.
    std::thread::sleep(Duration::from_millis(600));
    let hot = std::fs::read_to_string(home.path().join("data/hot.json")).unwrap();
    assert!(hot.contains("rate_limit"), "{hot}");
}

/// Three instances (separate homes, one Redis), one account rate-limited:
/// after the first 429 anywhere, no instance calls it again, and every
/// instance's `/_marathon/events` shows the cooldown.
#[test]
fn three_instances_on_redis_never_call_a_rate_limited_account_again() {
    let redis = RedisServer::start(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim(&rt, limited_and_steady());
    let homes: Vec<Home> = (0..3)
        .map(|_| Home::new(&anthropic_config(&sim, &redis_section(&redis))))
        .collect();
    // Added once, through one home: the others see them in Redis.
    add_key(&homes[0], "limited", "sk-limited", 0);
    add_key(&homes[0], "steady", "sk-steady", 1);
    let list = homes[2].marathon().args(["auth", "list"]).output().unwrap();
    assert!(
        text(&list.stdout).contains("limited"),
        "{}",
        text(&list.stdout)
    );
    let proxies: Vec<Serve> = homes.iter().map(|h| Serve::start(h.marathon())).collect();
    let watched = events(&proxies[2].url);
    assert_eq!(proxies[0].post(), 200);
    assert_eq!(sim.count("limited"), 1);
    // At once, with no waiting: the push beat the client's next request.
    let mut handles = Vec::new();
    for p in &proxies {
        for _ in 0..10 {
            handles.push(p.post());
        }
    }
    assert!(handles.iter().all(|s| *s == 200), "{handles:?}");
    assert_eq!(
        sim.count("limited"),
        1,
        "no instance called it after the first 429"
    );
    assert_eq!(sim.count("steady"), 31);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !watched.lock().unwrap().contains("cooldown") {
        assert!(
            Instant::now() < deadline,
            "instance 3 never showed instance 1's cooldown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &proxies {
        assert!(!p.log.lock().unwrap().contains("sk-"), "a key in a log");
    }
}

/// Redis killed (SIGKILL) mid-load and restarted: no client request fails
/// while the accounts are healthy, a cooldown learned during the outage
/// reaches the other instance once Redis is back, and the instances say so
/// in their logs once, not per request.
#[test]
fn redis_killed_mid_load_fails_no_request_and_state_reconciles() {
    let mut redis = RedisServer::start(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim(
        &rt,
        Scenario::new([
            Account::ok("limited", "sk-limited"),
            Account::ok("steady", "sk-steady"),
        ]),
    );
    let homes: Vec<Home> = (0..2)
        .map(|_| Home::new(&anthropic_config(&sim, &redis_section(&redis))))
        .collect();
    add_key(&homes[0], "limited", "sk-limited", 0);
    add_key(&homes[0], "steady", "sk-steady", 1);
    let proxies: Arc<Vec<Serve>> =
        Arc::new(homes.iter().map(|h| Serve::start(h.marathon())).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (proxies, stop) = (proxies.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    statuses.push(proxies[i % 2].post());
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses: Vec<u16> = load.into_iter().flat_map(|h| h.join().unwrap()).collect();
    // Learned during the outage, by instance 1 only.
    sim.set_account(Account::ok("limited", "sk-limited").quota(
        0,
        Duration::from_secs(3600),
        QuotaStyle::AnthropicApi,
    ))
    .unwrap();
    let before = sim.count("limited");
    assert_eq!(proxies[0].post(), 200);
    assert_eq!(
        sim.count("limited"),
        before + 1,
        "instance 1 learned the 429"
    );
    redis.restart();
    let took = proxies[1].await_cooling("limited", Duration::from_secs(10));
    eprintln!(
        "outage: {} requests during load, 0 failed; cooldown learned while Redis was down reached the other instance {took:?} after restart",
        statuses.len()
    );
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "{failed} of {} failed", statuses.len());
    assert!(statuses.len() > 20, "the load ran: {}", statuses.len());
    assert_eq!(proxies[1].post(), 200);
    assert_eq!(sim.count("limited"), before + 1);
    for p in proxies.iter() {
        let log = p.log.lock().unwrap().clone();
        let loud = log.matches("store is unreachable").count();
        assert_eq!(loud, 1, "said once, not per request:\n{log}");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `n` concurrent chat requests to each proxy; the statuses.
async fn wave(proxies: &[String], n: usize) -> Vec<u16> {
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
            set.spawn(async move { client.send(req).await.map(|r| r.status).unwrap_or(0) });
        }
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// Three instances × 50 concurrent requests against oidc-provider with 2 s
/// tokens, over 3 expiries: one refresh per expiry across all instances (the
/// Redis refresh lock), zero invalid_grant, zero failed requests. Between
/// waves 2 and 3 Redis (append-only file on) is SIGKILLed right after the
/// refresh and restarted: the rotated refresh token survived, so the next
/// refresh succeeds.
#[test]
fn three_instances_share_oauth_refreshes_through_redis_and_survive_its_crash() {
    const TTL: u64 = 2;
    const PER_INSTANCE: usize = 50;
    let mut redis = RedisServer::start(true);
    let server = OidcServer::start(TTL);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let scenario = Scenario::from_toml(&format!(
        "introspection_url = \"{}/token/introspection\"\n\
         introspection_client_id = \"resource-server\"\n\
         introspection_client_secret = \"rs-secret\"\n\
         introspection_cache = \"30s\"\n\
         [[accounts]]\nname = \"api-key-only\"\nkey = \"sk-not-used\"\n",
        server.issuer
    ))
    .unwrap();
    let sim = sim(&rt, scenario);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n{}\n\
         [providers.corp]\nkind = \"openai-compatible\"\nupstream = \"{}\"\n\
         refresh_lead = \"500ms\"\n\n{}",
        redis_section(&redis),
        sim.url(),
        server.oauth_section("corp")
    );
    let homes: Vec<Home> = (0..3).map(|_| Home::new(&config)).collect();
    let out = login(&homes[0], &server, "corp", Flow::Loopback, "alice", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = marathon_redis::RedisStore::open(&marathon_redis::RedisOptions {
        url: redis.url(),
        prefix: "marathon".into(),
    })
    .unwrap();
    let first_refresh = accounts_in(&store, "corp")[0].refresh.clone().unwrap();
    let proxies: Vec<Serve> = homes.iter().map(|h| Serve::start(h.marathon())).collect();
    let urls: Vec<String> = proxies.iter().map(|p| p.url.clone()).collect();
    let mut total = 0;
    // Refreshes so far: each wave adds one per expiry it crossed.
    let mut refreshed = 0u64;
    for w in 1..=3u64 {
        // Past the stored token's expiry: this wave crosses one expiry.
        let exp = accounts_in(&store, "corp")[0].expires_at_ms.unwrap();
        let now = now_ms();
        if exp + 200 > now {
            std::thread::sleep(Duration::from_millis(exp + 200 - now));
        }
        if w == 3 {
            // Right after wave 2's refresh: a crash, not a shutdown.
            redis.kill();
            redis.restart();
        }
        let started = Instant::now();
        let statuses = rt.block_on(wave(&urls, PER_INSTANCE));
        let failed = statuses.iter().filter(|s| **s != 200).count();
        assert_eq!(
            failed,
            0,
            "wave {w}: {failed} failed\n{}",
            proxies[0].log.lock().unwrap()
        );
        total += statuses.len();
        let stats = server.stats();
        // A wave slower than a token's usable life crosses another expiry.
        let extra = started.elapsed().as_millis() as u64 / (TTL * 1000 - 500);
        let refreshes = stats["refreshes"].as_u64().unwrap();
        assert!(
            (refreshed + 1..=refreshed + 1 + extra).contains(&refreshes),
            "wave {w}: {stats} (expected {} refreshes, one per expiry crossed, not one per instance)",
            refreshed + 1
        );
        assert_eq!(stats["invalid_grant_errors"], 0, "wave {w}: {stats}");
        refreshed = refreshes;
    }
    // A fresh connection: the test's own one died with the crash.
    let store = marathon_redis::RedisStore::open(&marathon_redis::RedisOptions {
        url: redis.url(),
        prefix: "marathon".into(),
    })
    .unwrap();
    let stats = server.stats();
    eprintln!(
        "redis oauth: 3 instances x {PER_INSTANCE} concurrent x 3 expiries = {total} requests, 0 failed; \
         refreshes {}; invalid_grant {}; Redis SIGKILLed after wave 2's refresh",
        stats["refreshes"], stats["invalid_grant_errors"]
    );
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    let after = &accounts_in(&store, "corp")[0];
    assert_eq!(after.state, "active");
    assert_ne!(after.refresh.as_ref(), Some(&first_refresh), "rotated");
    for p in &proxies {
        let log = p.log.lock().unwrap().clone();
        assert!(
            !log.contains(after.refresh.as_deref().unwrap()),
            "a refresh token leaked"
        );
        assert!(!log.contains("refresh failed"), "{log}");
    }
}

/// Item 5: `marathon store copy` moves every account (ids, labels, keys)
/// and the cooldowns into Redis and back into a file store; `auth list`
/// and `status` work against the Redis store.
#[test]
fn store_copy_moves_everything_to_redis_and_back() {
    use marathon_store::Store as _;
    let redis = RedisServer::start(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim(&rt, limited_and_steady());
    let files = Home::new(&anthropic_config(&sim, ""));
    add_key(&files, "limited", "sk-limited", 0);
    add_key(&files, "steady", "sk-steady", 1);
    // A cooldown in the file store's hot state.
    let a = Serve::start(files.marathon());
    assert_eq!(a.post(), 200);
    drop(a);
    let local = marathon_store::FileStore::open(&files.path().join("data")).unwrap();
    let mut hot = local.load_hot().unwrap();
    let limited_id = local.find("anthropic", "limited").unwrap().unwrap().id;
    hot.cooldowns
        .entry(limited_id.clone())
        .or_default()
        .cooling_until = Some(marathon_core::UnixMillis(now_ms() + 3_600_000));
    local.save_hot(&hot).unwrap();

    let out = files
        .marathon()
        .args(["store", "copy", "--to", &redis.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("copied 2 accounts"),
        "{}",
        text(&out.stdout)
    );
    let shared = Home::new(&anthropic_config(&sim, &redis_section(&redis)));
    let list = shared.marathon().args(["auth", "list"]).output().unwrap();
    let listed = text(&list.stdout);
    assert!(
        listed.contains("limited") && listed.contains("steady"),
        "{listed}"
    );
    let status = shared
        .marathon()
        .args(["status", "--offline", "--json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(
        text(&status.stdout).contains("cooling"),
        "{}",
        text(&status.stdout)
    );

    let back = tempfile::tempdir().unwrap();
    let out = shared
        .marathon()
        .args(["store", "copy", "--to"])
        .arg(back.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copied = marathon_store::FileStore::open(back.path()).unwrap();
    let (mut before, mut after) = (local.list().unwrap(), copied.list().unwrap());
    before.sort_by(|a, b| a.label.cmp(&b.label));
    after.sort_by(|a, b| a.label.cmp(&b.label));
    assert_eq!(before.len(), after.len());
    for (x, y) in before.iter().zip(&after) {
        assert_eq!((&x.id, &x.label, x.priority), (&y.id, &y.label, y.priority));
        assert!(
            x.credential.same_login(&y.credential),
            "{} kept its key",
            x.label
        );
    }
    assert!(
        copied.load_hot().unwrap().cooldowns[&limited_id]
            .cooling_until
            .is_some()
    );
}

/// Item 4: `max_in_flight = 2` holds across three instances (separate
/// homes, one Redis). 30 concurrent streamed requests, 10 per instance,
/// against two accounts capped at 2 each: the simulator never sees more
/// than 2 open requests on either account (each instance alone would allow
/// 2, so 6 together without shared slots), and no request fails: those
/// that find both accounts full wait for a slot.
#[test]
fn max_in_flight_holds_across_three_instances_on_redis() {
    let redis = RedisServer::start(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim(
        &rt,
        Scenario::new([
            Account::ok("capped", "sk-capped")
                .slow_ms(60)
                .stream_events(6),
            Account::ok("other", "sk-other")
                .slow_ms(60)
                .stream_events(6),
        ]),
    );
    let config = format!(
        "{}max_in_flight = 2\n",
        anthropic_config(&sim, &redis_section(&redis))
    );
    let homes: Vec<Home> = (0..3).map(|_| Home::new(&config)).collect();
    add_key(&homes[0], "capped", "sk-capped", 0);
    add_key(&homes[0], "other", "sk-other", 1);
    let proxies: Arc<Vec<Serve>> =
        Arc::new(homes.iter().map(|h| Serve::start(h.marathon())).collect());
    let started = Instant::now();
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let proxies = proxies.clone();
            std::thread::spawn(move || proxies[i % 3].post_stream())
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = started.elapsed();
    let max = sim.max_concurrency();
    let counts = sim.counts();
    eprintln!(
        "max_in_flight=2 x 2 accounts, 3 instances, 30 concurrent streams: {took:?}; \
         most open at once: {max:?}; calls: {counts:?}"
    );
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "{statuses:?}");
    assert_eq!(
        counts.values().sum::<u64>(),
        30,
        "one call per request: {counts:?}"
    );
    for account in ["capped", "other"] {
        let most = max.get(account).copied().unwrap_or(0);
        assert!(
            most <= 2,
            "{account} had {most} requests open at once: {max:?}"
        );
    }
    // The cap was reached (so the check above could have failed).
    assert_eq!(max.get("capped").copied(), Some(2), "{max:?}");
    for p in proxies.iter() {
        let log = p.log.lock().unwrap().clone();
        assert!(
            !log.contains("cooldown"),
            "being at the cap is no failure:\n{log}"
        );
    }
}

/// An instance SIGKILLed while it holds both slots of a capped account:
/// another instance's request waits, and gets a slot once the dead
/// instance's leases end (`slot_lease = "3s"`), not before and not never.
#[test]
fn a_killed_instances_slots_return_after_the_lease() {
    const LEASE: Duration = Duration::from_secs(3);
    let redis = RedisServer::start(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Streams of ~20 s: they outlive the test's waits.
    let sim = sim(
        &rt,
        Scenario::new([Account::ok("capped", "sk-capped")
            .slow_ms(200)
            .stream_events(100)]),
    );
    let config = format!(
        "{}max_in_flight = 2\n",
        anthropic_config(
            &sim,
            &format!("{}slot_lease = \"3s\"\n", redis_section(&redis))
        )
    );
    let homes: Vec<Home> = (0..2).map(|_| Home::new(&config)).collect();
    add_key(&homes[0], "capped", "sk-capped", 0);
    let mut doomed = Serve::start(homes[0].marathon());
    let survivor = Serve::start(homes[1].marathon());
    let addr = doomed.addr();
    let _streams: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr.as_str()).unwrap();
                let _ = write!(
                    s,
                    "POST /anthropic/v1/messages HTTP/1.1\r\nhost: {addr}\r\nx-api-key: client\r\n\
                     anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{STREAM_BODY}",
                    STREAM_BODY.len()
                );
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.open_requests().get("capped").copied().unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "the two streams never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A lease renewal (every second) may have just happened: the slots
    // live up to 3 s from here.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let killed = Instant::now();
    assert_eq!(survivor.post(), 200);
    let waited = killed.elapsed();
    eprintln!("slots of a SIGKILLed instance came back after {waited:?} (lease {LEASE:?})");
    assert!(
        waited >= Duration::from_millis(1500),
        "the survivor did not wait for the dead instance's slots: {waited:?}"
    );
    assert!(
        waited < LEASE + Duration::from_secs(3),
        "the slots did not come back with the lease: {waited:?}"
    );
    let log = survivor.log.lock().unwrap().clone();
    assert!(!log.contains("cooldown"), "{log}");
}

/// Redis killed under a capped account: no request fails (the local cap
/// applies alone), and the instance says so once, loudly, not per request.
#[test]
fn redis_down_leaves_the_local_cap_and_fails_no_request() {
    let mut redis = RedisServer::start(true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim(&rt, Scenario::new([Account::ok("capped", "sk-capped")]));
    let config = format!(
        "{}max_in_flight = 1\n",
        anthropic_config(&sim, &redis_section(&redis))
    );
    let home = Home::new(&config);
    add_key(&home, "capped", "sk-capped", 0);
    let proxy = Serve::start(home.marathon());
    assert_eq!(proxy.post(), 200);
    redis.kill();
    let statuses: Vec<u16> = (0..8).map(|_| proxy.post()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(sim.count("capped"), 9);
    let log = proxy.log.lock().unwrap().clone();
    assert_eq!(
        log.matches("cannot be reached for concurrency slots")
            .count(),
        1,
        "said once:\n{log}"
    );
}
