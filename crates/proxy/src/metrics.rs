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

#[cfg(test)]
mod tests {
    use super::*;

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
}
