//! The official Python SDKs (`anthropic`, `openai`) as marathon clients
//! (DESIGN §7): the simulator and the proxy run in this process on 127.0.0.1,
//! the scripts in `tests/python/` drive the SDKs against the proxy — JSON and
//! streams — and print what they saw as one `SUMMARY {json}` line.
//!
//! The SDKs run with `max_retries=0`: when a request survives an account's
//! 429, it was marathon that moved it, and the simulator's per-account counts
//! say exactly which upstream requests happened.
//!
//! The interpreter is `$MARATHON_TEST_PYTHON` (set by `scripts/test`), else
//! `<repo>/.venv/bin/python`; without either the tests fail and say how to
//! get one (`bash scripts/test`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use marathon_proxy::{ProxyHandle, ProxySettings, StartOptions, UpstreamBase};
use marathon_sim::{Account, QuotaStyle, Scenario, SimHandle};
use marathon_store::{MemoryStore, NewAccount, Secret, Store};
use serde_json::Value;

/// The simulator's answer when a scenario names none.
const REPLY: &str = "Hello from the marathon simulator.";
const ALICE_KEY: &str = "sk-test-alice-0123456789";
const BOB_KEY: &str = "sk-test-bob-9876543210";
const HOUR: Duration = Duration::from_secs(3600);

/// A simulator and a proxy in front of it, with accounts `alice` and `bob`
/// (in that order) for `provider`.
struct World {
    sim: SimHandle,
    proxy: ProxyHandle,
}

/// `provider_toml`: lines for `[providers.<provider>]` in the config file
/// (empty: the defaults a user without a config file gets).
async fn world(provider: &str, provider_toml: &str, alice: Account, bob: Account) -> World {
    world_keyed(provider, provider_toml, alice, bob, None).await
}

/// [`world`], with an access key (named `team`) clients must present.
async fn world_keyed(
    provider: &str,
    provider_toml: &str,
    alice: Account,
    bob: Account,
    access_key: Option<&str>,
) -> World {
    let sim = marathon_sim::start(Scenario::new([alice, bob]))
        .await
        .expect("simulator starts");
    let store = Arc::new(MemoryStore::new());
    for (label, key) in [("alice", ALICE_KEY), ("bob", BOB_KEY)] {
        store
            .add(NewAccount::api_key(
                provider,
                Some(label.to_owned()),
                Secret::new(key),
            ))
            .expect("account added");
    }
    let config = marathon_config::load_str(
        &format!("[providers.{provider}]\n{provider_toml}\n"),
        Path::new("config.toml"),
    )
    .expect("test config is valid");
    let mut settings = ProxySettings::from_config(&config).expect("config is servable");
    settings.listen = "127.0.0.1:0".parse().expect("address");
    settings
        .provider_mut(provider)
        .expect("built-in provider exists")
        .upstream = UpstreamBase::parse(&sim.url()).expect("simulator URL");
    if let Some(key) = access_key {
        settings.access_keys = vec![marathon_proxy::AccessKey::new("team", Secret::new(key))];
    }
    let proxy = marathon_proxy::start(settings, StartOptions::new(store))
        .await
        .expect("proxy starts");
    World { sim, proxy }
}

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The interpreter with the SDKs; never a silent skip when there is none.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MARATHON_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "MARATHON_TEST_PYTHON={} does not exist; run `bash scripts/test` to create the venv with the SDKs",
            p.display()
        );
        return p;
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the openai and anthropic SDKs: neither MARATHON_TEST_PYTHON nor {} exists. \
         Run `bash scripts/test` (it creates .venv from tests/python/requirements.txt)",
        venv.display()
    );
    venv
}

/// Runs `tests/python/<script> <scenario> <base_url>` and returns its summary.
/// A failing script fails the test with its stdout and stderr.
async fn run_script(script: &str, scenario: &str, base_url: &str) -> Value {
    run_script_keyed(script, scenario, base_url, None).await
}

/// [`run_script`], the SDK presenting `access_key` as its API key.
async fn run_script_keyed(
    script: &str,
    scenario: &str,
    base_url: &str,
    access_key: Option<&str>,
) -> Value {
    let python = python();
    let path = repo_root().join("tests/python").join(script);
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&path)
        .arg(scenario)
        .arg(base_url)
        .args(access_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Loopback only: a proxy from the environment must not get in between,
        // and nothing the user exported may redirect or authenticate the SDKs.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} {scenario} did not finish within 90s"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {scenario} failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n\
         (a missing module means the venv lacks the SDKs: run `bash scripts/test`)",
        out.status
    );
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| {
            panic!("{script} printed no SUMMARY line.\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
        });
    // Shown with a failing assertion (nextest prints a failing test's output).
    eprintln!("{script} {scenario}: SUMMARY {line}");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script}: bad SUMMARY json ({e}): {line}"))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// Each call answered 200 with the whole reply, on the expected account.
fn assert_calls(summary: &Value, expected: &[(&str, &str)]) {
    let calls = summary["calls"].as_array().expect("calls");
    let seen: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (s(c, "call"), s(c, "account")))
        .collect();
    assert_eq!(
        seen, expected,
        "calls and the account that served each (x-marathon-account)"
    );
    for c in calls {
        assert_eq!(c["status"], 200, "{c}");
        assert_eq!(s(c, "text"), REPLY, "text assembled by the SDK in {c}");
        if let Some(final_text) = c.get("final_text") {
            assert_eq!(final_text, REPLY, "the SDK's final object in {c}");
        }
    }
}

fn call(summary: &Value, i: usize) -> &Value {
    &summary["calls"][i]
}

fn events(c: &Value) -> Vec<&str> {
    c["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e.as_str().expect("event type"))
        .collect()
}

/// The first failing call tried alice, then bob; the later ones found both
/// benched and sent nothing upstream.
fn assert_exhausting_attempts(errors: &[Value]) {
    let first = s(&errors[0], "attempts");
    assert!(
        first.starts_with("alice=429(") && first.contains(" bob=429("),
        "attempts of the first call: {first}"
    );
    for e in &errors[1..] {
        assert!(
            e["attempts"].as_str().is_none_or(str::is_empty),
            "no upstream attempt once every account is benched: {e}"
        );
    }
}

fn assert_counts(sim: &SimHandle, alice: u64, bob: u64) {
    assert_eq!(
        (sim.count("alice"), sim.count("bob")),
        (alice, bob),
        "upstream requests (alice, bob) as the simulator counted them: {:?}",
        sim.counts()
    );
}

fn account_state(proxy: &ProxyHandle, provider: &str, label: &str) -> Value {
    let status = proxy.status();
    let p = status["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["name"] == provider)
        .expect("provider in status")
        .clone();
    p["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["label"] == label)
        .unwrap_or_else(|| panic!("{label} in {p}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_survives_a_429_without_seeing_it() {
    let w = world(
        "anthropic",
        "",
        Account::ok("alice", ALICE_KEY).quota(2, HOUR, QuotaStyle::AnthropicUnified),
        Account::ok("bob", BOB_KEY),
    )
    .await;
    let summary = run_script(
        "anthropic_sdk.py",
        "failover",
        &format!("{}/anthropic", w.proxy.url()),
    )
    .await;

    assert_calls(
        &summary,
        &[
            ("messages.create", "alice"),
            ("messages.stream", "alice"),
            ("messages.create(stream=True)", "bob"),
            ("messages.create", "bob"),
            ("messages.stream", "bob"),
        ],
    );
    // The switch: alice's 429, then bob's stream, within one SDK call.
    assert_eq!(s(call(&summary, 1), "attempts"), "alice=200");
    let switched = s(call(&summary, 2), "attempts");
    assert!(
        switched.starts_with("alice=429") && switched.ends_with(" bob=200"),
        "attempts of the switching call: {switched}"
    );
    assert_eq!(s(call(&summary, 3), "attempts"), "bob=200");
    assert_eq!(
        events(call(&summary, 2)).first().copied(),
        Some("message_start")
    );
    assert_eq!(
        events(call(&summary, 2)).last().copied(),
        Some("message_stop")
    );
    assert_eq!(call(&summary, 0)["stop_reason"], "end_turn");
    // alice: her quota, plus the one 429 that benched her; never asked again.
    assert_counts(&w.sim, 3, 3);
    assert_eq!(
        account_state(&w.proxy, "anthropic", "alice")["state"],
        "cooling",
        "{}",
        w.proxy.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_moves_before_the_429_on_unified_usage_headers() {
    // With `proactive_threshold` set (it is off by default), the unified
    // headers on alice's second 200 say her window is used up, so marathon
    // moves on without spending a request on a 429.
    let w = world(
        "anthropic",
        "proactive_threshold = 0.95",
        Account::ok("alice", ALICE_KEY).quota(2, HOUR, QuotaStyle::AnthropicUnified),
        Account::ok("bob", BOB_KEY),
    )
    .await;
    let summary = run_script(
        "anthropic_sdk.py",
        "failover",
        &format!("{}/anthropic", w.proxy.url()),
    )
    .await;

    assert_calls(
        &summary,
        &[
            ("messages.create", "alice"),
            ("messages.stream", "alice"),
            ("messages.create(stream=True)", "bob"),
            ("messages.create", "bob"),
            ("messages.stream", "bob"),
        ],
    );
    assert_eq!(s(call(&summary, 2), "attempts"), "bob=200");
    assert_counts(&w.sim, 2, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_gets_marathons_rate_limit_error_when_every_account_is_out() {
    let w = world(
        "anthropic",
        "",
        Account::ok("alice", ALICE_KEY).quota(0, HOUR, QuotaStyle::AnthropicUnified),
        Account::ok("bob", BOB_KEY).quota(0, HOUR, QuotaStyle::AnthropicApi),
    )
    .await;
    let summary = run_script(
        "anthropic_sdk.py",
        "exhausted",
        &format!("{}/anthropic", w.proxy.url()),
    )
    .await;

    let errors = summary["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2);
    for e in errors {
        assert_eq!(e["error"], "RateLimitError", "{e}");
        assert_eq!(e["status"], 429, "{e}");
        assert_eq!(e["body"]["type"], "error", "{e}");
        assert_eq!(e["body"]["error"]["type"], "rate_limit_error", "{e}");
        let message = s(e, "message");
        assert!(
            message
                .contains("marathon: all 2 anthropic accounts are unavailable (alice cooling for "),
            "{message}"
        );
        assert!(message.contains(", bob cooling for "), "{message}");
        assert!(
            message.contains("; the first one is usable again in "),
            "{message}"
        );
        assert_eq!(
            e["body"]["marathon"]["accounts"][0]["state"], "cooling",
            "{e}"
        );
        let retry_after: u64 = s(e, "retry_after").parse().expect("retry-after seconds");
        assert!(
            (3000..=4000).contains(&retry_after),
            "retry-after {retry_after}"
        );
        assert!(e["account"].is_null(), "no account served it: {e}");
    }
    assert!(
        s(&errors[0], "message").contains("alice cooling for 1h00m after rate_limit_error"),
        "{}",
        errors[0]
    );
    // The first call asked each account once; the second found both benched
    // and went nowhere.
    assert_exhausting_attempts(errors);
    assert_counts(&w.sim, 1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_survives_a_429_without_seeing_it() {
    let w = world(
        "openai",
        "",
        Account::ok("alice", ALICE_KEY).quota(3, HOUR, QuotaStyle::OpenAi),
        Account::ok("bob", BOB_KEY),
    )
    .await;
    let summary = run_script(
        "openai_sdk.py",
        "failover",
        &format!("{}/openai/v1", w.proxy.url()),
    )
    .await;

    assert_calls(
        &summary,
        &[
            ("chat.completions.create", "alice"),
            ("chat.completions.create(stream=True)", "alice"),
            ("responses.create", "alice"),
            ("responses.create(stream=True)", "bob"),
            ("chat.completions.create(stream=True)", "bob"),
            ("responses.create", "bob"),
            ("chat.completions.create", "bob"),
        ],
    );
    let switched = s(call(&summary, 3), "attempts");
    assert!(
        switched.starts_with("alice=429") && switched.ends_with(" bob=200"),
        "attempts of the switching call: {switched}"
    );
    assert_eq!(s(call(&summary, 4), "attempts"), "bob=200");
    let ev = events(call(&summary, 3));
    assert_eq!(ev.first().copied(), Some("response.created"), "{ev:?}");
    assert_eq!(ev.last().copied(), Some("response.completed"), "{ev:?}");
    assert_eq!(call(&summary, 0)["finish_reason"], "stop");
    assert_eq!(call(&summary, 1)["finish_reason"], "stop");
    assert!(
        call(&summary, 1)["usage_total_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "include_usage chunk: {}",
        call(&summary, 1)
    );
    assert_eq!(call(&summary, 2)["response_status"], "completed");
    assert_counts(&w.sim, 4, 4);
    assert_eq!(
        account_state(&w.proxy, "openai", "alice")["state"],
        "cooling",
        "{}",
        w.proxy.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_gets_marathons_rate_limit_error_when_every_account_is_out() {
    let w = world(
        "openai",
        "",
        Account::ok("alice", ALICE_KEY).quota(0, HOUR, QuotaStyle::OpenAi),
        Account::ok("bob", BOB_KEY).quota(0, HOUR, QuotaStyle::OpenAi),
    )
    .await;
    let summary = run_script(
        "openai_sdk.py",
        "exhausted",
        &format!("{}/openai/v1", w.proxy.url()),
    )
    .await;

    let errors = summary["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 3);
    for e in errors {
        assert_eq!(e["error"], "RateLimitError", "{e}");
        assert_eq!(e["status"], 429, "{e}");
        // The SDK hands over the `error` object of the body.
        let body = if e["body"].get("error").is_some() {
            &e["body"]["error"]
        } else {
            &e["body"]
        };
        // An hour is a spent quota: the form Codex stops on, and x-should-retry: false.
        assert_eq!(body["type"], "usage_limit_reached", "{e}");
        let message = s(e, "message");
        assert!(
            message.contains("marathon: all 2 openai accounts are unavailable (alice cooling for "),
            "{message}"
        );
        assert!(message.contains(", bob cooling for "), "{message}");
        let retry_after: u64 = s(e, "retry_after").parse().expect("retry-after seconds");
        assert!(
            (3000..=4000).contains(&retry_after),
            "retry-after {retry_after}"
        );
        assert!(e["account"].is_null(), "no account served it: {e}");
    }
    assert!(
        s(&errors[0], "message").contains("alice cooling for 1h00m after rate_limit_exceeded"),
        "{}",
        errors[0]
    );
    assert_exhausting_attempts(errors);
    assert_counts(&w.sim, 1, 1);
}

// ---- Exhaustion with the SDKs' own retries on (issue 11) ----
//
// Users leave the SDKs' retries at their defaults. Every account spent for an
// hour must make the SDK raise at once with marathon's message (not retry for
// minutes); the soonest account back in 20 s must make it wait and succeed.

/// How long "at once" may take: the SDKs' backoff before giving up on a 429
/// whose retry-after they will not honour is a few seconds at most.
const AT_ONCE: f64 = 10.0;
const SOON: Duration = Duration::from_secs(20);

/// `(script, provider, base path, quota style)` for each SDK.
const SDKS: [(&str, &str, &str, QuotaStyle); 2] = [
    (
        "anthropic_sdk.py",
        "anthropic",
        "/anthropic",
        QuotaStyle::AnthropicApi,
    ),
    ("openai_sdk.py", "openai", "/openai/v1", QuotaStyle::OpenAi),
];

async fn sdk_spent_for_an_hour(sdk: usize) {
    let (script, provider, base, style) = SDKS[sdk];
    let w = world(
        provider,
        "",
        Account::ok("alice", ALICE_KEY).quota(0, HOUR, style),
        Account::ok("bob", BOB_KEY).quota(0, HOUR, style),
    )
    .await;
    let summary = run_script(script, "spent", &format!("{}{base}", w.proxy.url())).await;
    let e = &summary["errors"][0];
    assert_eq!(e["status"], 429, "{e}");
    let elapsed = e["elapsed"].as_f64().expect("elapsed");
    assert!(elapsed < AT_ONCE, "{script} retried for {elapsed:.1}s: {e}");
    let message = s(e, "message");
    assert!(message.contains("marathon"), "{message}");
    assert!(
        ["59m", "1h00m"].iter().any(|t| message.contains(t)),
        "no reset time in {message}"
    );
}

async fn sdk_waits_for_a_reset_in_20s(sdk: usize) {
    let (script, provider, base, style) = SDKS[sdk];
    let w = world(
        provider,
        "",
        Account::ok("alice", ALICE_KEY).quota(1, SOON, style),
        Account::ok("bob", BOB_KEY).quota(0, HOUR, style),
    )
    .await;
    // alice's one request in this window, spent before the SDK asks.
    let spent = std::time::Instant::now();
    let first = run_script(script, "wait", &format!("{}{base}", w.proxy.url())).await;
    assert!(first["elapsed"].as_f64().expect("elapsed") < AT_ONCE);
    let summary = run_script(script, "wait", &format!("{}{base}", w.proxy.url())).await;
    let elapsed = summary["elapsed"].as_f64().expect("elapsed");
    assert!(
        spent.elapsed() >= SOON,
        "{script} was answered after {elapsed:.1}s, before alice's window reset"
    );
    assert!(w.sim.count("alice") >= 2, "{:?}", w.sim.counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_raises_at_once_when_every_account_is_spent_for_an_hour() {
    sdk_spent_for_an_hour(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_raises_at_once_when_every_account_is_spent_for_an_hour() {
    sdk_spent_for_an_hour(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_waits_for_an_account_back_in_20s_and_succeeds() {
    sdk_waits_for_a_reset_in_20s(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_waits_for_an_account_back_in_20s_and_succeeds() {
    sdk_waits_for_a_reset_in_20s(1).await;
}

/// Guards token accounting against what the official SDKs parse: every
/// answer's usage as the SDK saw it (Anthropic JSON and stream helper; Chat
/// JSON and a stream with `include_usage`, Responses JSON and stream; some
/// with prompt-cache reads, which OpenAI counts inside the prompt), summed,
/// is what `/_marathon/status` shows per account, per model and for the
/// access key the SDK used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_usage_is_what_marathon_counts() {
    const KEY: &str = "mk-sdk-team-7d2c90b1e4";
    for (provider, script, path, calls) in [
        ("anthropic", "anthropic_sdk.py", "/anthropic", 2),
        ("openai", "openai_sdk.py", "/openai/v1", 4),
    ] {
        let w = world_keyed(
            provider,
            "",
            Account::ok("alice", ALICE_KEY),
            Account::ok("bob", BOB_KEY),
            Some(KEY),
        )
        .await;
        let url = format!("{}{path}", w.proxy.url());
        let summary = run_script_keyed(script, "usage", &url, Some(KEY)).await;
        let seen = summary["calls"].as_array().expect("calls");
        assert_eq!(seen.len(), calls, "{summary}");
        let kinds = ["input", "output", "cache_read", "cache_write"];
        let sum = |k: &str| seen.iter().map(|c| c[k].as_u64().expect(k)).sum::<u64>();
        let want: Vec<u64> = kinds.iter().map(|k| sum(k)).collect();
        assert!(want[0] > 0 && want[1] > 0, "the SDK saw usage: {summary}");
        assert!(want[2] > 0, "a call asked for caching: {summary}");
        let model = s(&seen[0], "model").to_owned();

        // Both accounts, whichever served: the totals are the provider's.
        let status = w.proxy.status();
        let mut counted = vec![0u64; 4];
        let mut by_model = vec![0u64; 4];
        for label in ["alice", "bob"] {
            let a = account_state(&w.proxy, provider, label);
            if a["tokens"].is_null() {
                continue;
            }
            for (i, k) in kinds.iter().enumerate() {
                counted[i] += a["tokens"][*k].as_u64().unwrap();
            }
            let models = a["tokens_by_model"].as_array().unwrap();
            assert_eq!(models.len(), 1, "one model: {a}");
            assert_eq!(models[0]["model"], model.as_str(), "{a}");
            for (i, k) in kinds.iter().enumerate() {
                by_model[i] += models[0][*k].as_u64().unwrap();
            }
        }
        assert_eq!(
            counted, want,
            "{provider}: counted vs the SDK's usage {summary}"
        );
        assert_eq!(by_model, want, "{provider}: per model");
        let key = &status["access_keys"][0];
        assert_eq!(key["name"], "team");
        assert_eq!(key["requests"], calls);
        assert_eq!(
            (key["input_tokens"].as_u64(), key["output_tokens"].as_u64()),
            (Some(want[0]), Some(want[1])),
            "{key}"
        );
    }
}
