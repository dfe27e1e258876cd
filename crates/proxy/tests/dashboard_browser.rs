//! The dashboard in a real browser (Debian's chromium, driven through
//! chromedriver's WebDriver protocol; `scripts/test` installs both): it shows
//! a failover within 2 s, its countdown ticks, the event history is there on
//! load, and clicking "disable" makes the next request avoid that account —
//! without and with an access key (typed into the page's form).

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use marathon_core::Secret;
use marathon_sim::{Account, Scenario};
use serde_json::{Value, json};
use support::*;

const ACCESS: &str = "mk-access-BROWSER-7d1e";

/// chromedriver on a free loopback port, and one headless chromium session.
struct Browser {
    driver: Child,
    base: String,
    client: Http,
    _profile: tempfile::TempDir,
}

fn which(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; run `bash scripts/test` (it installs chromium and chromium-driver)"
    )
}

impl Browser {
    async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(which("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = client
                .request(
                    http::Request::get(format!("{base}/status"))
                        .body(Default::default())
                        .unwrap(),
                )
                .await
                .is_ok();
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            base,
            client,
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--user-data-dir={}", b._profile.path().display())]
            }
        }}});
        let session = b.call("POST", "/session", caps).await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string().into())
            .unwrap();
        let r = send(&self.client, req).await;
        let v = r.json();
        assert!(r.status == 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until it returns something truthy; the time it took.
    async fn wait_for(&self, what: &str, script: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `spare` (tried first) always answers 429 with two minutes' retry-after;
/// `work` and `extra` answer.
async fn world_for_browser(access_key: bool) -> World {
    let scenario = Scenario::new([
        Account::ok("spare", "sk-browser-spare")
            .status(429)
            .retry_after(120),
        Account::ok("work", "sk-browser-work"),
        Account::ok("extra", "sk-browser-extra"),
    ]);
    let opts = Opts::new(Api::Anthropic).settings(move |s| {
        s.provider_mut("anthropic").unwrap().pool.strategy = marathon_core::Strategy::Priority;
        if access_key {
            s.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))];
        }
    });
    world_with(scenario, opts).await
}

/// One request through the proxy (with the access key when there is one);
/// the label of the account that served it.
async fn served_by(w: &World, access_key: bool) -> String {
    let mut req = w.request(false);
    if access_key {
        req.headers_mut()
            .insert("x-api-key", http::HeaderValue::from_static(ACCESS));
    }
    let r = send(&w.client, req).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    r.account().unwrap().to_owned()
}

const ROW: &str = "#providers tr.account";

async fn dashboard_end_to_end(access_key: bool) {
    let w = world_for_browser(access_key).await;
    let b = Browser::start().await;
    b.go(&format!("{}/_marathon/", w.proxy.url())).await;
    if access_key {
        b.wait_for(
            "the key form",
            "return !document.getElementById('key-form').hidden",
            Duration::from_secs(5),
        )
        .await;
        b.type_into("#key", ACCESS).await;
        b.click("#key-form button[type=submit]").await;
    }
    b.wait_for(
        "the accounts",
        &format!("return document.querySelectorAll('{ROW}').length === 3"),
        Duration::from_secs(5),
    )
    .await;
    // Providers without accounts are folded away.
    let sections = b
        .js("return [...document.querySelectorAll('section.provider')].map(s => s.dataset.provider)")
        .await;
    assert_eq!(sections, json!(["anthropic"]));
    assert_eq!(
        b.js("return document.getElementById('idle').hidden").await,
        json!(false)
    );

    // A failover: on the page within 2 s, with the cooling account's countdown.
    assert_eq!(served_by(&w, access_key).await, "work");
    let took = b
        .wait_for(
            "the failover event",
            "return document.querySelector('#log [data-type=failover]')",
            Duration::from_secs(2),
        )
        .await;
    eprintln!("failover shown after {took:?}");
    b.wait_for(
        "spare cooling",
        &format!("return document.querySelector('{ROW}[data-label=spare] .retry').textContent"),
        Duration::from_secs(3),
    )
    .await;
    // The tokens the answer reported, on the serving account's row.
    b.wait_for(
        "work's tokens",
        &format!(
            "return /^[0-9]+ in · [0-9]+ out$/.test(document.querySelector('{ROW}[data-label=work] .tokens').textContent)"
        ),
        Duration::from_secs(5),
    )
    .await;
    let retry = "return document.querySelector('#providers tr.account[data-label=spare] .retry').textContent";
    let first = b.js(retry).await;
    b.wait_for(
        "the countdown to tick",
        &format!("return document.querySelector('{ROW}[data-label=spare] .retry').textContent !== {first}"),
        Duration::from_millis(2500),
    )
    .await;
    assert!(first.as_str().unwrap().ends_with('s'), "{first}");

    // The history is there on load.
    b.go(&format!("{}/_marathon/", w.proxy.url())).await;
    b.wait_for(
        "the failover in the history after a reload",
        "return document.querySelector('#log [data-type=failover]')",
        Duration::from_secs(3),
    )
    .await;
    b.wait_for(
        "the accounts after a reload",
        &format!("return document.querySelectorAll('{ROW}').length === 3"),
        Duration::from_secs(5),
    )
    .await;

    // "disable" on work: the next request avoids it.
    b.click(&format!("{ROW}[data-label=work] button.disable"))
        .await;
    b.wait_for(
        "work disabled",
        &format!(
            "return document.querySelector('{ROW}[data-label=work]').dataset.state === 'disabled'"
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(served_by(&w, access_key).await, "extra");
    let stored = w
        .store
        .list()
        .unwrap()
        .into_iter()
        .find(|a| a.label == "work")
        .unwrap();
    assert!(!stored.enabled, "the store has it disabled");
    // And back.
    b.click(&format!("{ROW}[data-label=work] button.enable"))
        .await;
    b.wait_for(
        "work enabled",
        &format!(
            "return document.querySelector('{ROW}[data-label=work]').dataset.state === 'ready'"
        ),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(served_by(&w, access_key).await, "work");
    // The chart has a line per account.
    b.wait_for(
        "the activity chart",
        "return document.querySelectorAll('svg.chart polyline.requests').length === 3",
        Duration::from_secs(5),
    )
    .await;
}

/// Guards the dashboard's promises (issue 13) in a real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_failovers_ticks_and_disables_in_a_real_browser() {
    dashboard_end_to_end(false).await;
}

/// The same with an access key: typed into the page, sent as a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_with_an_access_key_in_a_real_browser() {
    dashboard_end_to_end(true).await;
}

use marathon_store::Store as _;
