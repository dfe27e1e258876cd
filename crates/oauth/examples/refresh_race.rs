//! A worker for the cross-process refresh race test: several of these share
//! one `FileStore` and call `access_token` concurrently across expiries.
//!
//! Usage: refresh_race <store-dir> <account-id> <issuer> <rounds> <base-ms> <start-ms> <round-ms>
//!
//! Round `r` runs with the (manual) clock at `base + r * 3601 s`, so a token
//! refreshed in round `r` (valid 3600 s) is stale in round `r + 1`: whichever
//! process gets the lock first in a round must refresh, every other must
//! adopt its token. All workers start round `r` at the same wall-clock
//! instant `start + r * round` so their calls really overlap.
//! Prints one JSON line: `{"refreshes":..,"attempts":..,"adopted":..,"errors":..}`.

use std::sync::Arc;
use std::time::Duration;

use marathon_core::{AccountId, Clock, ManualClock, SystemClock, UnixMillis};
use marathon_oauth::{GenericProvider, HyperHttpClient, Refresher, RefresherConfig};
use marathon_store::FileStore;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, id, issuer, rounds, base, start, round_ms] = args.as_slice() else {
        return Err(
            "usage: refresh_race <store-dir> <account-id> <issuer> <rounds> <base-ms> <start-ms> <round-ms>".into(),
        );
    };
    let rounds: u64 = rounds.parse()?;
    let base = UnixMillis(base.parse()?);
    let start = UnixMillis(start.parse()?);
    let round_ms: u64 = round_ms.parse()?;
    let http = Arc::new(HyperHttpClient::new());
    let preset = GenericProvider {
        name: "corp".into(),
        issuer: Some(issuer.clone()),
        client_id: "marathon".into(),
        ..GenericProvider::default()
    }
    .resolve(http.as_ref())
    .await?;
    let store = Arc::new(FileStore::open(std::path::Path::new(dir))?);
    let clock = Arc::new(ManualClock::new(base));
    let refresher = Arc::new(
        Refresher::new(
            store,
            http,
            clock.clone(),
            RefresherConfig {
                refresh_lead: Duration::from_secs(30),
                ..RefresherConfig::default()
            },
        )
        .with_preset("corp", preset),
    );
    let id = AccountId(id.as_str().into());
    let mut errors = 0u64;
    for round in 0..rounds {
        let go = start.plus(Duration::from_millis(round_ms * round));
        tokio::time::sleep(SystemClock.now().until(go)).await;
        clock.set(base.plus(Duration::from_secs(3601 * round)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            for _ in 0..50 {
                let (r, id) = (refresher.clone(), id.clone());
                tasks.spawn(async move { r.access_token(&id).await });
            }
        }
        while let Some(res) = tasks.join_next().await {
            match res {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("round {round}: {e}");
                    errors += 1;
                }
                Err(e) => {
                    eprintln!("round {round}: task failed: {e}");
                    errors += 1;
                }
            }
        }
    }
    let s = refresher.stats();
    println!(
        "{}",
        serde_json::json!({
            "refreshes": s.refreshes,
            "attempts": s.attempts,
            "adopted": s.adopted_from_store,
            "errors": errors,
        })
    );
    Ok(())
}
