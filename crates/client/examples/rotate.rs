//! Failover in-process: the simulator with two Anthropic accounts, the
//! first one rate-limited, and a reqwest client with marathon's middleware.
//!
//!     cargo run -p marathon-client --example rotate
//!
//! The program sends its requests without a credential; the middleware
//! tries `limited`, sees its 429, benches it until the reset the answer
//! names, and sends the same request with `steady`'s key. The program only
//! ever sees the 200s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marathon_client::Marathon;
use marathon_core::Secret;
use marathon_sim::{Account, QuotaStyle, Scenario};
use marathon_store::{MemoryStore, NewAccount, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The simulated provider on 127.0.0.1: `limited` has no requests left in
    // its one-hour window, `steady` always answers.
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("limited", "sk-sim-limited").quota(
            0,
            Duration::from_secs(3600),
            QuotaStyle::AnthropicApi,
        ),
        Account::ok("steady", "sk-sim-steady"),
    ]))
    .await?;

    // The same config file and store `marathon` uses; here the anthropic
    // provider points at the simulator, and the store lives in memory.
    let config = marathon_config::load_str(
        &format!("[providers.anthropic]\nupstream = \"{}\"\n", sim.url()),
        Path::new("example.toml"),
    )?;
    let store = Arc::new(MemoryStore::new());
    for (label, key) in [("limited", "sk-sim-limited"), ("steady", "sk-sim-steady")] {
        store.add(NewAccount::api_key(
            "anthropic",
            Some(label.into()),
            Secret::new(key),
        ))?;
    }
    let marathon = Marathon::from_config(&config, store).await?;
    let mut events = marathon.subscribe();

    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(marathon.middleware("anthropic")?)
        .build();
    for i in 1..=3 {
        let answer = client
            .post(format!("{}/v1/messages", sim.url()))
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await?;
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        println!(
            "request {i}: {} from {:<8} attempts: {}",
            answer.status(),
            header("x-marathon-account"),
            header("x-marathon-attempts"),
        );
    }
    while let Ok(event) = events.try_recv() {
        println!("event: {event}");
    }
    let mut counts: Vec<_> = sim.counts().into_iter().collect();
    counts.sort();
    println!("the simulator saw: {counts:?}");
    for a in marathon.accounts("anthropic").unwrap_or_default() {
        println!("{:<8} {}", a.label, a.state);
    }
    Ok(())
}
