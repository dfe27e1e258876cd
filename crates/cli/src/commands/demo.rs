//! `marathon demo`: the whole story in half a minute, on this machine only.
//!
//! A simulated provider with three accounts; the first has a small quota
//! window. Requests go through the real proxy (real sockets, the real file
//! store in a temporary `MARATHON_HOME`); the demo prints each request's
//! outcome and every event as it happens: the failover when the first
//! account runs out, its cooldown until the provider's reset time, and its
//! recovery once the window ends.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marathon_core::Secret;
use marathon_proxy::{ProxySettings, StartOptions, UpstreamBase};
use marathon_sim::{Account, QuotaStyle, Scenario};
use marathon_store::{FileStore, NewAccount, Store};

use bytes::Bytes;
use http_body_util::Full;

use super::proxy_client::ProxyClient;
use crate::cli::DemoArgs;
use crate::output::{Style, outln};

const PROVIDER: &str = "anthropic";

pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let style = Style::stdout();
    let home = tempfile::Builder::new()
        .prefix("marathon-demo-")
        .tempdir()?;
    let data = home.path().join("data");

    // The world: three accounts, the first with a small quota window.
    let keys: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| format!("sk-demo-{n}-{}", std::process::id()))
        .collect();
    let scenario = Scenario::new([
        Account::ok("alice", keys[0].as_str()).quota(
            args.quota,
            args.window,
            QuotaStyle::AnthropicUnified,
        ),
        Account::ok("bob", keys[1].as_str()),
        Account::ok("carol", keys[2].as_str()),
    ]);
    let sim = marathon_sim::start(scenario).await?;

    let store = FileStore::open(&data)?;
    for (i, (label, key)) in ["alice", "bob", "carol"].iter().zip(&keys).enumerate() {
        let mut acc = NewAccount::api_key(
            PROVIDER,
            Some((*label).to_string()),
            Secret::new(key.clone()),
        );
        acc.priority = i32::try_from(i).unwrap_or_default();
        store.add(acc)?;
    }
    let store: Arc<dyn Store> = Arc::new(store);

    let mut settings = ProxySettings::from_config(&marathon_config::Config::default())?;
    settings.listen = "127.0.0.1:0".parse()?;
    let provider = settings
        .provider_mut(PROVIDER)
        .ok_or_else(|| anyhow::anyhow!("no {PROVIDER} preset"))?;
    provider.upstream = UpstreamBase::parse(&sim.url())?;
    // Fill-first by priority, so alice is used whenever she can be: that
    // shows the failover and, once her window ends, the recovery.
    provider.pool.strategy = marathon_core::strategy::Strategy::Priority;
    let proxy = marathon_proxy::start(settings, StartOptions::new(store)).await?;
    let base = format!("{}/{PROVIDER}", proxy.url());

    outln!(
        "{}",
        style.bold("marathon demo — three accounts, one of which runs out of quota")
    );
    outln!(
        "  simulated provider  {}   (alice: {} requests per {}; bob, carol: unlimited)",
        sim.url(),
        args.quota,
        marathon_core::fmt::HumanDuration(args.window)
    );
    outln!("  marathon proxy      {base}   (strategy: priority — alice first)");
    outln!("  temporary home      {}", home.path().display());
    outln!();

    let mut events = proxy.subscribe_events();
    let ev_style = style;
    let printer = tokio::spawn(async move {
        let mut recovered = false;
        while let Some(json) = events.recv().await {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let kind = v["type"].as_str().unwrap_or("event");
            let summary = v["summary"].as_str().unwrap_or("");
            let badge = match kind {
                "failover" => ev_style.yellow("  ↪ failover "),
                "cooldown" => ev_style.yellow("  ❄ cooldown "),
                "recovered" => ev_style.green("  ✓ recovered"),
                "exhausted" => ev_style.red("  ✗ exhausted"),
                _ => format!("  • {kind:<9}"),
            };
            // Not outln!: this task answers "recovered?", and a closed
            // stdout only ends the printing.
            if crate::output::write_stdout(format_args!("{badge} {summary}\n")).is_err() {
                break;
            }
            if kind == "recovered" {
                recovered = true;
                break;
            }
        }
        recovered
    });

    let addr = proxy.local_addr();
    let client = ProxyClient::new(Duration::from_secs(10));
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut served: std::collections::BTreeMap<String, u32> = Default::default();
    for i in 1..=args.requests {
        let request = http::Request::post(format!("http://{addr}/anthropic/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", "anything")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"claude-sim","max_tokens":16,"messages":[{"role":"user","content":"Are we there yet?"}]}"#,
            )))?;
        let reply = client.send(request).await;
        let elapsed = started.elapsed().as_secs_f64();
        match reply {
            Ok(r) => {
                let account = r.header("x-marathon-account").unwrap_or("-").to_string();
                let attempts = r.header("x-marathon-attempts").unwrap_or("").to_string();
                let status = if r.status == http::StatusCode::OK {
                    style.green("200")
                } else {
                    style.red(r.status.as_str())
                };
                let detail = if attempts.contains(' ') {
                    format!("   attempts: {attempts}")
                } else {
                    String::new()
                };
                outln!(
                    "{} request {i:>2} → {status} via {account:<6}{detail}",
                    style.dim(&format!("{elapsed:>5.1}s"))
                );
                if r.status == http::StatusCode::OK {
                    ok += 1;
                    *served.entry(account).or_default() += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                failed += 1;
                outln!("{elapsed:>5.1}s request {i:>2} → error: {e}");
            }
        }
        if printer.is_finished() {
            break;
        }
        tokio::time::sleep(args.interval).await;
    }
    // Let the last events print.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recovered = if printer.is_finished() {
        printer.await.unwrap_or(false)
    } else {
        printer.abort();
        false
    };

    outln!();
    let counts = sim.counts();
    let served_text: Vec<String> = served.iter().map(|(a, n)| format!("{a} {n}")).collect();
    outln!(
        "{} {ok} requests answered, {failed} failed; served by: {}",
        style.bold("summary:"),
        served_text.join(", ")
    );
    let mut upstream: Vec<_> = counts.into_iter().collect();
    upstream.sort();
    let upstream_text: Vec<String> = upstream.iter().map(|(a, n)| format!("{a} {n}")).collect();
    outln!(
        "  requests the provider saw per account: {}",
        upstream_text.join(", ")
    );
    outln!(
        "  {}",
        if recovered {
            "alice ran out, traffic moved to bob without a failed request, and alice came back when her window reset."
        } else {
            "alice did not recover within the demo's requests; try --requests 80 or a shorter --window."
        }
    );
    outln!(
        "  next: `marathon auth add <provider> --label <name>` for your own accounts, then `marathon serve`."
    );
    proxy.shutdown(Duration::from_secs(2)).await;
    sim.shutdown().await;
    if std::io::stdout().is_terminal() {
        outln!();
    }
    Ok(())
}
