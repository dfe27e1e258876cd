//! The usage poller: one background task per proxy reads each OAuth
//! account's subscription usage from its provider's usage endpoint
//! (Anthropic's OAuth usage, ChatGPT's `wham/usage`; DESIGN §10), so the
//! windows and forecasts of accounts that served no traffic are known.
//!
//! Off the hot path: requests never wait for it, and it touches a pool only
//! for the short `observe_usage` call. Polite, because both endpoints are
//! throttled:
//! - each account is polled at most once per interval (`usage_poll`),
//!   across every process sharing the store (a store lease, `usage-poll`);
//! - one poll at a time per proxy;
//! - a 429 is waited out (its `retry-after`, else a doubling backoff up to
//!   an hour), and the wait is written to the lease so other processes wait
//!   too; other failures back off the same way; a 429 never refreshes a token;
//! - always with the account's own credential headers (the provider's OAuth
//!   style: `Authorization: Bearer`, Anthropic's OAuth beta flag, Codex's
//!   `chatgpt-account-id`), never another account's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use marathon_config::presets::UsageEndpoint;
use marathon_core::usage_api::UsageFormat;
use marathon_core::{AccountId, AccountKind, UnixMillis};
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::state::{AppState, ProviderRuntime};
use crate::upstream::Endpoint;

/// The store lease that keeps processes from polling one account at once.
const LEASE: &str = "usage-poll";
/// A poll that takes longer than this is abandoned (and backed off).
const POLL_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait after failures (a `retry-after` may ask for more).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Usage answers are small; anything bigger is not one.
const MAX_ANSWER: usize = 64 * 1024;

/// How one provider's usage is polled.
#[derive(Clone, Debug)]
pub struct UsagePollSettings {
    /// The provider's usage endpoint (its path relative to the upstream,
    /// and the answer's shape).
    pub endpoint: UsageEndpoint,
    /// An absolute URL instead (`usage_url`); `None`: the endpoint's path
    /// resolved against the provider's upstream when the proxy starts.
    pub url: Option<String>,
    /// Time between two polls of one account.
    pub interval: Duration,
}

impl UsagePollSettings {
    fn url(&self, upstream: &crate::UpstreamBase) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => self.endpoint.resolve(&upstream.to_string()),
        }
    }
}

/// The poller's view of one provider.
struct Target {
    rt: Arc<ProviderRuntime>,
    endpoint: Endpoint,
    path: Uri,
    format: UsageFormat,
    interval: Duration,
}

/// When each account is due, and its failure streak.
#[derive(Default)]
struct Due {
    at: UnixMillis,
    streak: u32,
}

/// What one poll came to.
enum Polled {
    Windows,
    /// Throttled: wait at least until then.
    Throttled(Option<UnixMillis>),
    Failed,
    /// Another process holds the lease: its poll counts for this interval.
    Skipped,
}

/// Starts the poller when a provider polls; it ends with the proxy.
pub(crate) fn spawn(state: Arc<AppState>, shutdown: watch::Receiver<bool>) {
    let targets: Vec<Target> = state
        .providers
        .values()
        .filter_map(|rt| {
            let s = rt.settings.usage.as_ref()?;
            let uri: Uri = s.url(&rt.settings.upstream).parse().ok()?;
            let (endpoint, path) = state.client.endpoint_of_url(&uri)?;
            Some(Target {
                rt: rt.clone(),
                endpoint,
                path,
                format: s.endpoint.format,
                interval: s.interval,
            })
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    tokio::spawn(run(state, targets, shutdown));
}

async fn run(state: Arc<AppState>, targets: Vec<Target>, mut shutdown: watch::Receiver<bool>) {
    let shortest = targets.iter().map(|t| t.interval).min().unwrap_or_default();
    let tick = (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut due: HashMap<AccountId, Due> = HashMap::new();
    loop {
        for t in &targets {
            for id in oauth_accounts(t) {
                let now = state.now();
                let d = due.entry(id.clone()).or_default();
                if now < d.at {
                    continue;
                }
                let polled = tokio::select! {
                    p = poll(&state, t, &id, now) => p,
                    _ = shutdown.changed() => return,
                };
                let d = due.entry(id).or_default();
                schedule(&state, t, d, polled);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The OAuth accounts of a provider that can be polled: enabled and
/// logged in (a poll cannot fix a login, and must not try).
fn oauth_accounts(t: &Target) -> Vec<AccountId> {
    let now_unused = UnixMillis(0);
    let pool = t.rt.pool.lock().unwrap_or_else(|e| e.into_inner());
    pool.status(now_unused)
        .into_iter()
        .filter(|a| a.kind == AccountKind::Oauth && a.enabled)
        .filter(|a| a.health != marathon_core::pool::Health::NeedsLogin)
        .map(|a| a.id)
        .collect()
}

fn schedule(state: &AppState, t: &Target, d: &mut Due, polled: Polled) {
    let now = state.now();
    let m = &t.rt.metrics;
    match polled {
        Polled::Windows | Polled::Skipped => {
            d.streak = 0;
            d.at = now.plus(t.interval);
            if let Polled::Windows = polled {
                m.usage_polls.fetch_add(1, Relaxed);
            }
        }
        Polled::Throttled(retry_at) => {
            m.usage_throttled.fetch_add(1, Relaxed);
            d.streak = d.streak.saturating_add(1);
            let backoff = now.plus(backoff(t.interval, d.streak));
            d.at = retry_at.map_or(backoff, |r| r.max(backoff));
        }
        Polled::Failed => {
            m.usage_errors.fetch_add(1, Relaxed);
            d.streak = d.streak.saturating_add(1);
            d.at = now.plus(backoff(t.interval, d.streak));
        }
    }
}

/// The interval doubled per failure in a row, up to [`MAX_BACKOFF`].
fn backoff(interval: Duration, streak: u32) -> Duration {
    let factor = 1u32 << streak.min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

async fn poll(state: &Arc<AppState>, t: &Target, id: &AccountId, now: UnixMillis) -> Polled {
    let until = now.plus(t.interval);
    let (store, lease_id) = (state.store.clone(), id.clone());
    let leased =
        tokio::task::spawn_blocking(move || store.try_lease(&lease_id, LEASE, now, until)).await;
    match leased {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Polled::Skipped,
        Ok(Err(e)) => {
            tracing::warn!("usage poll: cannot take the lease: {e}");
            return Polled::Failed;
        }
        Err(_) => return Polled::Failed,
    }
    let polled = match tokio::time::timeout(POLL_TIMEOUT, fetch(state, t, id)).await {
        Ok(p) => p,
        Err(_) => Polled::Failed,
    };
    if let Polled::Throttled(retry_at) = &polled {
        // Every process waits the throttle out, not only this one.
        let wait = retry_at.unwrap_or(now).max(until);
        let (store, lease_id) = (state.store.clone(), id.clone());
        let _ = tokio::task::spawn_blocking(move || store.set_lease(&lease_id, LEASE, wait)).await;
    }
    polled
}

async fn fetch(state: &Arc<AppState>, t: &Target, id: &AccountId) -> Polled {
    let Some(cred) =
        t.rt.creds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    else {
        return Polled::Skipped;
    };
    let label = cred.label.clone();
    // The account's own token: the refresher's when there is one (it may
    // renew it first; that is a routine refresh, not the poll's doing).
    let token = match &state.tokens {
        Some(tokens) => match tokens.access_token(id).await {
            Ok(tok) => tok,
            Err(_) => return Polled::Failed,
        },
        None => cred.stored_secret().clone(),
    };
    let style = &t.rt.settings.credentials;
    let Ok(rendered) = style.render(AccountKind::Oauth, &token, &cred.extras) else {
        return Polled::Failed;
    };
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(t.path.clone())
        .body(ProxyBody::Empty)
        .expect("a GET with an origin-form URI is a valid request");
    let h = req.headers_mut();
    h.insert(header::HOST, t.endpoint.host().clone());
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("marathon/", env!("CARGO_PKG_VERSION"))),
    );
    style.apply_rendered(h, &rendered);
    let (resp, reuse) = match state.client.send(&t.endpoint, req).await {
        Ok(r) => r,
        Err(_) => return Polled::Failed,
    };
    let status = resp.status();
    let retry_at = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| marathon_core::hints::parse_retry_after(v, state.now()));
    let body: Bytes = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
        Ok(b) => {
            reuse.finish();
            b.to_bytes()
        }
        Err(_) => return Polled::Failed,
    };
    match status {
        StatusCode::OK => {
            let windows = t.format.parse(&body);
            let n = windows.len();
            if n > 0 {
                let mut pool = t.rt.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.observe_usage(id, &windows, state.now());
            }
            tracing::debug!(account = %label, windows = n, "usage polled");
            Polled::Windows
        }
        StatusCode::TOO_MANY_REQUESTS => {
            tracing::debug!(account = %label, "usage endpoint throttled; backing off");
            Polled::Throttled(retry_at)
        }
        other => {
            tracing::debug!(account = %label, status = other.as_u16(), "usage poll failed");
            Polled::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour_but_never_below_the_interval() {
        let m = Duration::from_secs(60);
        assert_eq!(backoff(m, 1), Duration::from_secs(120));
        assert_eq!(backoff(m, 3), Duration::from_secs(480));
        assert_eq!(backoff(m, 30), MAX_BACKOFF);
        let long = Duration::from_secs(7200);
        assert_eq!(backoff(long, 2), long);
    }
}
