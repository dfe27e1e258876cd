//! The running world: which credential belongs to whom, and what each account
//! does for its next request.
//!
//! [`decide`] is a pure function of the account, its state and the two clocks
//! (monotonic for windows, wall for the reset times put in headers), so the
//! quota and failure rules are unit-tested without a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::scenario::{Account, ErrorKind, Quota, QuotaStyle, Scenario};

/// Length of the secondary ("7d") window reported by unified and Codex headers.
pub(crate) const WEEK: Duration = Duration::from_secs(7 * 86_400);
/// The secondary window admits this many times the primary quota; only used
/// for the utilisation it reports, never to reject.
const WEEK_FACTOR: u64 = 10;

/// Per-account mutable state; replaced when the account is redefined.
#[derive(Debug, Default)]
pub(crate) struct AccountState {
    seen: u64,
    primary: Option<Window>,
    week: Option<Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    start_wall: SystemTime,
    used: u64,
}

impl Window {
    /// The window containing `now`, opening a new one if the last has ended.
    fn current(
        slot: &mut Option<Window>,
        len: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> &mut Window {
        let fresh = Window {
            start: now,
            start_wall: wall,
            used: 0,
        };
        match slot {
            Some(w) if now < w.start + len => {}
            _ => *slot = Some(fresh),
        }
        slot.get_or_insert(fresh)
    }
}

/// A quota's state as the headers report it, after this request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuotaView {
    /// The style asked for, if any (else the route's).
    pub(crate) style: Option<QuotaStyle>,
    /// Whether this request was refused.
    pub(crate) rejected: bool,
    pub(crate) limit: u64,
    pub(crate) used: u64,
    pub(crate) window: Duration,
    /// Wall time the primary window ends.
    pub(crate) reset_wall: SystemTime,
    /// Time left in the primary window.
    pub(crate) reset_in: Duration,
    pub(crate) week_used: u64,
    pub(crate) week_limit: u64,
    pub(crate) week_reset_wall: SystemTime,
}

impl QuotaView {
    /// Primary utilisation, 0..=1.
    pub(crate) fn utilization(&self) -> f64 {
        if self.limit == 0 {
            1.0
        } else {
            self.used as f64 / self.limit as f64
        }
    }

    /// Secondary utilisation, 0..=1.
    pub(crate) fn week_utilization(&self) -> f64 {
        if self.week_limit == 0 {
            1.0
        } else {
            (self.week_used as f64 / self.week_limit as f64).min(1.0)
        }
    }
}

/// What the simulator does with one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// 401 because the account's credential has expired.
    Expired,
    /// Drop the connection before the response head.
    Reset,
    /// A fixed failure.
    Fail {
        status: u16,
        kind: Option<ErrorKind>,
        retry_after: Option<u64>,
    },
    /// 429 over quota.
    Limited(QuotaView),
    /// Success, with the quota state for usage headers.
    Ok(Option<QuotaView>),
}

fn admit(q: &Quota, st: &mut AccountState, now: Instant, wall: SystemTime) -> QuotaView {
    let window = q.window.0;
    let week_limit = q.requests.saturating_mul(WEEK_FACTOR);
    let p = *Window::current(&mut st.primary, window, now, wall);
    let rejected = p.used >= q.requests;
    if !rejected {
        Window::current(&mut st.primary, window, now, wall).used += 1;
        Window::current(&mut st.week, WEEK, now, wall).used += 1;
    }
    let p = *Window::current(&mut st.primary, window, now, wall);
    let w = *Window::current(&mut st.week, WEEK, now, wall);
    QuotaView {
        style: q.style,
        rejected,
        limit: q.requests,
        used: p.used,
        window,
        reset_wall: p.start_wall + window,
        reset_in: (p.start + window).saturating_duration_since(now),
        week_used: w.used,
        week_limit,
        week_reset_wall: w.start_wall + WEEK,
    }
}

/// The quota's state now, as [`admit`] would report it, without counting a
/// request (the usage endpoints).
pub(crate) fn peek(q: &Quota, st: &mut AccountState, now: Instant, wall: SystemTime) -> QuotaView {
    let window = q.window.0;
    let p = *Window::current(&mut st.primary, window, now, wall);
    let w = *Window::current(&mut st.week, WEEK, now, wall);
    QuotaView {
        style: q.style,
        rejected: p.used >= q.requests,
        limit: q.requests,
        used: p.used,
        window,
        reset_wall: p.start_wall + window,
        reset_in: (p.start + window).saturating_duration_since(now),
        week_used: w.used,
        week_limit: q.requests.saturating_mul(WEEK_FACTOR),
        week_reset_wall: w.start_wall + WEEK,
    }
}

/// The rule for one request; see [`Account`] for the order of effects.
pub(crate) fn decide(
    a: &Account,
    st: &mut AccountState,
    now: Instant,
    wall: SystemTime,
) -> Outcome {
    st.seen += 1;
    let failing = a.fail_first.is_none_or(|n| st.seen <= n);
    if failing {
        if a.expired {
            return Outcome::Expired;
        }
        if a.reset {
            return Outcome::Reset;
        }
        if a.status.is_some() || a.error.is_some() {
            let status = a
                .status
                .or(a.error.map(ErrorKind::default_status))
                .unwrap_or(500);
            return Outcome::Fail {
                status,
                kind: a.error,
                retry_after: a.retry_after,
            };
        }
    }
    match &a.quota {
        Some(q) => {
            let view = admit(q, st, now, wall);
            if view.rejected {
                Outcome::Limited(view)
            } else {
                Outcome::Ok(Some(view))
            }
        }
        None => Outcome::Ok(None),
    }
}

/// One account as the server holds it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) account: Account,
    pub(crate) state: Arc<Mutex<AccountState>>,
    pub(crate) count: Arc<AtomicU64>,
}

/// Request counts by account name; they outlive scenario changes.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    map: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Counts {
    /// The counter for `name`, created at zero.
    pub(crate) fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    pub(crate) fn snapshot(&self) -> HashMap<String, u64> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn reset(&self) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for v in map.values() {
            v.store(0, Ordering::Relaxed);
        }
    }
}

/// Requests each account has open right now (from the moment it is
/// identified until its answer's body ends or is dropped), and the most it
/// ever had at once: what a concurrency cap in front of the simulator is
/// checked against.
#[derive(Debug, Default)]
pub(crate) struct Concurrency {
    map: Mutex<HashMap<String, Arc<Gauge>>>,
}

/// One account's open requests and their high-water mark.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    open: AtomicU64,
    max: AtomicU64,
}

/// One open request; dropping it closes it.
#[derive(Debug)]
pub(crate) struct Open(Arc<Gauge>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Concurrency {
    /// Opens a request of `name`.
    pub(crate) fn open(&self, name: &str) -> Open {
        let gauge = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(name.to_owned()).or_default().clone()
        };
        let now = gauge.open.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.max.fetch_max(now, Ordering::SeqCst);
        Open(gauge)
    }

    /// The most requests each account had open at once.
    pub(crate) fn max(&self) -> HashMap<String, u64> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), v.max.load(Ordering::SeqCst)))
            .collect()
    }

    /// Requests each account has open now.
    pub(crate) fn open_now(&self) -> HashMap<String, u64> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), v.open.load(Ordering::SeqCst)))
            .collect()
    }

    /// Forgets the high-water marks (open requests stay counted).
    pub(crate) fn reset(&self) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for v in map.values() {
            v.max.store(v.open.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }
}

/// An immutable snapshot of the scenario with its lookup tables; swapped whole.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) scenario: Scenario,
    pub(crate) accounts: Vec<Live>,
    by_key: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
}

impl World {
    /// Builds a world. States of accounts named in `keep` carry over from
    /// `previous`, so redefining one account leaves the others' windows alone.
    pub(crate) fn build(
        scenario: Scenario,
        counts: &Counts,
        previous: Option<&World>,
        keep: &dyn Fn(&str) -> bool,
    ) -> World {
        let mut accounts = Vec::with_capacity(scenario.accounts.len());
        let mut by_key = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, a) in scenario.accounts.iter().enumerate() {
            let state = previous
                .filter(|_| keep(&a.name))
                .and_then(|p| p.by_name(&a.name))
                .map(|l| l.state.clone())
                .unwrap_or_default();
            for k in &a.keys {
                by_key.insert(k.expose().to_owned(), i);
            }
            by_name.insert(a.name.clone(), i);
            accounts.push(Live {
                account: a.clone(),
                state,
                count: counts.counter(&a.name),
            });
        }
        World {
            scenario,
            accounts,
            by_key,
            by_name,
        }
    }

    /// The account a credential belongs to.
    pub(crate) fn by_key(&self, credential: &str) -> Option<&Live> {
        self.by_key.get(credential).map(|&i| &self.accounts[i])
    }

    /// The account with this name.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Live> {
        self.by_name.get(name).map(|&i| &self.accounts[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks() -> (Instant, SystemTime) {
        (Instant::now(), SystemTime::now())
    }

    #[test]
    fn quota_admits_n_then_rejects_until_the_window_ends() {
        let a = Account::ok("a", "k").quota(2, Duration::from_secs(60), QuotaStyle::OpenAi);
        let mut st = AccountState::default();
        let (t0, w0) = clocks();
        assert!(matches!(decide(&a, &mut st, t0, w0), Outcome::Ok(Some(v)) if v.used == 1));
        let t1 = t0 + Duration::from_secs(10);
        assert!(matches!(decide(&a, &mut st, t1, w0), Outcome::Ok(Some(v)) if v.used == 2));
        let t2 = t0 + Duration::from_secs(20);
        match decide(&a, &mut st, t2, w0 + Duration::from_secs(20)) {
            Outcome::Limited(v) => {
                assert_eq!(v.reset_in, Duration::from_secs(40));
                assert_eq!(v.reset_wall, w0 + Duration::from_secs(60));
                assert_eq!(v.used, 2);
                assert_eq!(v.utilization(), 1.0);
            }
            other => panic!("{other:?}"),
        }
        // The window ends exactly at start + 60 s.
        let t3 = t0 + Duration::from_secs(60);
        assert!(matches!(decide(&a, &mut st, t3, w0), Outcome::Ok(Some(v)) if v.used == 1));
    }

    #[test]
    fn fail_first_then_ok() {
        let a = Account::ok("a", "k").status(503).fail_first(2);
        let mut st = AccountState::default();
        let (t, w) = clocks();
        let fail = Outcome::Fail {
            status: 503,
            kind: None,
            retry_after: None,
        };
        assert_eq!(decide(&a, &mut st, t, w), fail);
        assert_eq!(decide(&a, &mut st, t, w), fail);
        assert_eq!(decide(&a, &mut st, t, w), Outcome::Ok(None));
    }

    #[test]
    fn failure_modes_take_precedence_in_order() {
        let (t, w) = clocks();
        let mut st = AccountState::default();
        assert_eq!(
            decide(&Account::ok("a", "k").expired().reset(), &mut st, t, w),
            Outcome::Expired
        );
        assert_eq!(
            decide(&Account::ok("a", "k").reset().status(500), &mut st, t, w),
            Outcome::Reset
        );
        assert_eq!(
            decide(
                &Account::ok("a", "k").error(ErrorKind::DeactivatedWorkspace),
                &mut st,
                t,
                w
            ),
            Outcome::Fail {
                status: 402,
                kind: Some(ErrorKind::DeactivatedWorkspace),
                retry_after: None
            }
        );
    }

    #[test]
    fn rebuilding_keeps_other_accounts_windows() {
        let counts = Counts::default();
        let s = Scenario::new([
            Account::ok("a", "ka").quota(1, Duration::from_secs(60), QuotaStyle::OpenAi),
            Account::ok("b", "kb").quota(1, Duration::from_secs(60), QuotaStyle::OpenAi),
        ]);
        let w1 = World::build(s.clone(), &counts, None, &|_| false);
        let (t, wall) = clocks();
        for l in &w1.accounts {
            let mut st = l.state.lock().unwrap();
            assert!(matches!(
                decide(&l.account, &mut st, t, wall),
                Outcome::Ok(_)
            ));
        }
        let w2 = World::build(s, &counts, Some(&w1), &|n| n != "b");
        let a = w2.by_name("a").unwrap();
        let b = w2.by_key("kb").unwrap();
        assert!(matches!(
            decide(&a.account, &mut a.state.lock().unwrap(), t, wall),
            Outcome::Limited(_)
        ));
        assert!(matches!(
            decide(&b.account, &mut b.state.lock().unwrap(), t, wall),
            Outcome::Ok(_)
        ));
    }
}
