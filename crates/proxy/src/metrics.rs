//! Prometheus counters and a latency histogram, kept in atomics so the hot
//! path never takes a lock for them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One provider's metrics.
#[derive(Default)]
pub(crate) struct ProviderMetrics {
    pub requests: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub exhausted: AtomicU64,
    pub failovers: AtomicU64,
    pub cooldowns: AtomicU64,
    pub retries: AtomicU64,
    pub stream_errors: AtomicU64,
    pub refreshes: AtomicU64,
    pub usage_polls: AtomicU64,
    pub usage_throttled: AtomicU64,
    pub usage_errors: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl ProviderMetrics {
    /// Records one upstream attempt's time to response head.
    pub(crate) fn observe_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn count_status(&self, status: u16) {
        match status {
            200..=299 => &self.responses_2xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        }
        .fetch_add(1, Relaxed);
    }
}

/// Reads one counter of a provider's metrics.
type Counter = fn(&ProviderMetrics) -> &AtomicU64;

/// Renders all providers' metrics in the Prometheus text format.
pub(crate) fn render<'a>(
    providers: impl Iterator<Item = (&'a str, &'a ProviderMetrics)>,
) -> String {
    let providers: BTreeMap<&str, &ProviderMetrics> = providers.collect();
    let mut out = String::with_capacity(4096);
    let counters: [(&str, &str, Counter); 11] = [
        (
            "marathon_requests_total",
            "Client requests received.",
            |m| &m.requests,
        ),
        (
            "marathon_exhausted_total",
            "Requests answered 429 because every account was unavailable.",
            |m| &m.exhausted,
        ),
        (
            "marathon_failovers_total",
            "Switches from one account to another within a request.",
            |m| &m.failovers,
        ),
        (
            "marathon_cooldowns_total",
            "Accounts put into cooldown.",
            |m| &m.cooldowns,
        ),
        (
            "marathon_retries_total",
            "Upstream attempts beyond the first.",
            |m| &m.retries,
        ),
        (
            "marathon_stream_errors_total",
            "Error events seen inside streamed responses.",
            |m| &m.stream_errors,
        ),
        (
            "marathon_refreshes_total",
            "OAuth access-token refreshes.",
            |m| &m.refreshes,
        ),
        (
            "marathon_usage_polls_total",
            "Subscription usage polls answered with the account's windows.",
            |m| &m.usage_polls,
        ),
        (
            "marathon_usage_polls_throttled_total",
            "Subscription usage polls the provider throttled (429), then waited out.",
            |m| &m.usage_throttled,
        ),
        (
            "marathon_usage_poll_errors_total",
            "Subscription usage polls that failed otherwise (backed off).",
            |m| &m.usage_errors,
        ),
        (
            "marathon_responses_2xx_total",
            "Responses with a 2xx status sent to clients.",
            |m| &m.responses_2xx,
        ),
    ];
    for (name, help, get) in &counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (p, m) in &providers {
            let _ = writeln!(out, "{name}{{provider=\"{p}\"}} {}", get(m).load(Relaxed));
        }
    }
    let name = "marathon_responses_error_total";
    let _ = writeln!(
        out,
        "# HELP {name} Responses with a 4xx or 5xx status sent to clients.\n# TYPE {name} counter"
    );
    for (p, m) in &providers {
        let _ = writeln!(
            out,
            "marathon_responses_error_total{{provider=\"{p}\",class=\"4xx\"}} {}",
            m.responses_4xx.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "marathon_responses_error_total{{provider=\"{p}\",class=\"5xx\"}} {}",
            m.responses_5xx.load(Relaxed)
        );
    }
    let name = "marathon_upstream_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from sending an upstream request to its response head.\n# TYPE {name} histogram"
    );
    for (p, m) in &providers {
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += m.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{provider=\"{p}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let count = m.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{provider=\"{p}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{provider=\"{p}\"}} {}",
            m.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{provider=\"{p}\"}} {count}");
    }
    out
}

/// One provider's accounts, as the gauges show them.
pub(crate) struct AccountGauges {
    pub provider: String,
    pub accounts: Vec<marathon_core::status::AccountReport>,
    pub capacity_until: Option<marathon_core::UnixMillis>,
}

/// A Prometheus label value: backslash, quote and newline escaped (labels
/// are the user's names).
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds_until(now: marathon_core::UnixMillis, t: marathon_core::UnixMillis) -> f64 {
    now.until(t).as_millis() as f64 / 1000.0
}

/// Per-account gauges: state (one series per state word, 1 for the
/// current one), cooldown left, each window's utilisation, reset and
/// forecast exhaustion, and each provider's capacity.
pub(crate) fn render_accounts(
    out: &mut String,
    providers: &[AccountGauges],
    now: marathon_core::UnixMillis,
) {
    use marathon_core::status::AccountState;
    const STATES: [AccountState; 5] = [
        AccountState::Ready,
        AccountState::Cooling,
        AccountState::Probing,
        AccountState::NeedsLogin,
        AccountState::Disabled,
    ];
    let gauges: [(&str, &str); 6] = [
        (
            "marathon_account_state",
            "1 for the account's current state.",
        ),
        (
            "marathon_account_cooldown_seconds",
            "Time left on the account's cooldown (0 when not cooling).",
        ),
        (
            "marathon_account_window_utilization",
            "Share of a quota window used, 0 to 1.",
        ),
        (
            "marathon_account_window_resets_in_seconds",
            "Time until a quota window resets.",
        ),
        (
            "marathon_account_window_runs_out_in_seconds",
            "Forecast: time until a quota window runs out at the current burn rate (only when before its reset).",
        ),
        (
            "marathon_provider_capacity_seconds",
            "Forecast: how long the provider's accounts last together at the current burn rate.",
        ),
    ];
    for (i, (name, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in providers {
            let pl = label(&p.provider);
            if i == 5 {
                if let Some(t) = p.capacity_until {
                    let _ = writeln!(out, "{name}{{provider=\"{pl}\"}} {}", seconds_until(now, t));
                }
                continue;
            }
            for a in &p.accounts {
                let al = format!("provider=\"{pl}\",account=\"{}\"", label(&a.label));
                match i {
                    0 => {
                        for s in STATES {
                            let v = u8::from(a.state == s);
                            let _ = writeln!(out, "{name}{{{al},state=\"{s}\"}} {v}");
                        }
                    }
                    1 => {
                        let left = a.cooling_until.map_or(0.0, |t| seconds_until(now, t));
                        let _ = writeln!(out, "{name}{{{al}}} {left}");
                    }
                    _ => {
                        for w in &a.windows {
                            let wl = format!("{al},window=\"{}\"", label(&w.name));
                            let value = match i {
                                2 => Some(w.utilization),
                                3 => w.resets_at.map(|t| seconds_until(now, t)),
                                _ => w.runs_out_at.map(|t| seconds_until(now, t)),
                            };
                            if let Some(v) = value {
                                let _ = writeln!(out, "{name}{{{wl}}} {v}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Tokens the answers reported, per account and model (token accounting),
/// as `marathon_tokens_total{provider,account,model,kind}`; an account's
/// total is the sum over its models.
pub(crate) fn render_tokens(out: &mut String, providers: &[AccountGauges]) {
    let name = "marathon_tokens_total";
    let _ = writeln!(
        out,
        "# HELP {name} Tokens the answers reported since the proxy started, per account and model (kind: input, output, cache_read, cache_write; input excludes the cache).\n# TYPE {name} counter"
    );
    for p in providers {
        let pl = label(&p.provider);
        for a in &p.accounts {
            let al = label(&a.label);
            for m in &a.tokens_by_model {
                let t = &m.tokens;
                for (kind, n) in [
                    ("input", t.input),
                    ("output", t.output),
                    ("cache_read", t.cache_read),
                    ("cache_write", t.cache_write),
                ] {
                    let _ = writeln!(
                        out,
                        "{name}{{provider=\"{pl}\",account=\"{al}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                        label(&m.model)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards a label breaking the exposition format.
    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = ProviderMetrics::default();
        m.requests.fetch_add(3, Relaxed);
        m.failovers.fetch_add(1, Relaxed);
        m.observe_latency(Duration::from_millis(3));
        m.observe_latency(Duration::from_millis(40));
        m.count_status(429);
        let text = render([("anthropic", &m)].into_iter());
        assert!(text.contains("marathon_requests_total{provider=\"anthropic\"} 3"));
        assert!(text.contains("marathon_failovers_total{provider=\"anthropic\"} 1"));
        assert!(text.contains(
            "marathon_upstream_latency_seconds_bucket{provider=\"anthropic\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "marathon_upstream_latency_seconds_bucket{provider=\"anthropic\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("marathon_upstream_latency_seconds_count{provider=\"anthropic\"} 2"));
        assert!(
            text.contains("marathon_responses_error_total{provider=\"anthropic\",class=\"4xx\"} 1")
        );
    }

    /// Guards the token series: one per account, model and kind, labels
    /// escaped, nothing for an account without tokens.
    #[test]
    fn tokens_per_account_model_and_kind() {
        use marathon_core::accounting::{TokenLedger, TokenUsage};
        use marathon_core::status::AccountReport;
        let id = marathon_core::AccountId("a1".into());
        let mut ledger = TokenLedger::new();
        let usage = TokenUsage {
            input: 5,
            output: 7,
            cache_read: 11,
            cache_write: 13,
        };
        ledger.add(&id, Some("gpt-4.1"), &usage);
        let json = serde_json::json!({"id": "a1", "label": "wo\"rk", "kind": "api_key",
            "priority": 0, "enabled": true, "state": "ready"});
        let mut with = serde_json::from_value::<AccountReport>(json.clone()).unwrap();
        with.set_tokens(ledger.account(&id).unwrap());
        let mut other = serde_json::from_value::<AccountReport>(json).unwrap();
        other.label = "idle".into();
        let mut out = String::new();
        render_tokens(
            &mut out,
            &[AccountGauges {
                provider: "openai".into(),
                accounts: vec![with, other],
                capacity_until: None,
            }],
        );
        for (kind, n) in [
            ("input", 5),
            ("output", 7),
            ("cache_read", 11),
            ("cache_write", 13),
        ] {
            let line = format!(
                "marathon_tokens_total{{provider=\"openai\",account=\"wo\\\"rk\",model=\"gpt-4.1\",kind=\"{kind}\"}} {n}\n"
            );
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(!out.contains("idle"), "{out}");
    }
}
