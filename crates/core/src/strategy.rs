//! Selection strategies: which ready account a pool hands out next.
//!
//! The strategy only decides the *order* among usable accounts; health
//! (cooling, needs-login, disabled) is the pool's business and always wins.
//! See [`crate::pool`] for how each strategy is indexed so that a pick costs
//! O(log n) in the number of accounts (O(1) for round-robin and least-used).

use std::fmt;
use std::str::FromStr;

/// How a pool chooses among its ready accounts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Keep the current account until it fails, then move to the first ready
    /// account in priority order and stay there. Keeps prompt caches warm.
    #[default]
    Sticky,
    /// Hand accounts out in turn: the least recently picked ready account next.
    RoundRobin,
    /// Fewest requests in flight; among those, the account that has had
    /// that count the longest (since it was added, picked, or a request on
    /// it ended): for idle accounts, the one idle the longest. An account
    /// back from a cooldown, a login or being disabled goes first among its
    /// peers. With one request at a time this rotates like round-robin; an
    /// account that just finished a long request waits behind those that
    /// were idle meanwhile.
    LeastUsed,
    /// Fill-first: the lowest priority number that is ready.
    Priority,
    /// The account whose quota window resets soonest (from usage headers):
    /// spend quota that is about to be renewed anyway. Accounts without usage
    /// data are tried first, once each (they may reset soonest of all).
    DrainSoonest,
    /// The account with the most headroom for the time left: the share of
    /// its tightest window expected still free at that window's reset, at
    /// the current burn rate ([`crate::forecast`]). A session stays on its
    /// account and moves once, when that account's forecast crosses the
    /// threshold (`proactive_threshold`, else 0.9), never back and forth.
    Headroom,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 6] = [
        Strategy::Sticky,
        Strategy::RoundRobin,
        Strategy::LeastUsed,
        Strategy::Priority,
        Strategy::DrainSoonest,
        Strategy::Headroom,
    ];

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Sticky => "sticky",
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastUsed => "least-used",
            Strategy::Priority => "priority",
            Strategy::DrainSoonest => "drain-soonest",
            Strategy::Headroom => "headroom",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is not one of [`Strategy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownStrategy(pub String);

impl fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown strategy {:?}; valid strategies: ", self.0)?;
        for (i, s) in Strategy::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownStrategy {}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for s in Strategy::ALL {
            assert_eq!(s.to_string().parse::<Strategy>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), s);
        }
        assert_eq!(
            "round-robin".parse::<Strategy>().unwrap(),
            Strategy::RoundRobin
        );
        assert_eq!(
            " Drain-Soonest ".parse::<Strategy>().unwrap(),
            Strategy::DrainSoonest
        );
    }

    #[test]
    fn sticky_is_the_default() {
        assert_eq!(Strategy::default(), Strategy::Sticky);
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "roundrobin".parse::<Strategy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown strategy \"roundrobin\"; valid strategies: sticky, round-robin, least-used, priority, drain-soonest, headroom"
        );
        assert!(serde_json::from_str::<Strategy>("\"fastest\"").is_err());
    }
}
