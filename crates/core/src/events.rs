//! What happened: failovers, cooldowns, recoveries, refreshes, exhaustion.
//!
//! Events are the seed's toast, generalised: the proxy sends them to a
//! structured log, an SSE stream, a webhook and a command hook. They name
//! accounts by **label** only; nothing in an event is a credential, so an
//! event can be printed, posted or stored anywhere. Every reason is a
//! [`Reason`], which cannot hold text an upstream wrote unless it is a safe
//! word.
//!
//! On the wire an event is one flat JSON object whose first key is `type`:
//! `{"type":"failover","at":1764334800000,"provider":"anthropic","from":"personal","to":"work","reason":"rate_limit_error"}`.

use std::fmt;

use serde::ser::SerializeMap;

use crate::clock::UnixMillis;
use crate::fmt::HumanDuration;
use crate::outcome::{Class, HintSource};
use crate::reason::Reason;

/// One thing that happened to a provider's accounts.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct Event {
    /// When it happened.
    pub at: UnixMillis,
    /// The provider whose pool it concerns (`anthropic`, `openai`, ...).
    pub provider: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of event. Every `account`, `from` and `to` is a label.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A request moved from one account to another.
    Failover {
        /// Label of the account that failed.
        from: String,
        /// Label of the account the request moved to.
        to: String,
        /// Why (the classification's reason, e.g. `rate_limit_error`).
        reason: Reason,
    },
    /// An account was benched until `until`.
    Cooldown {
        /// Label.
        account: String,
        /// When it may be used again (it is then probed by one request).
        until: UnixMillis,
        /// The class of the failure that benched it.
        class: Class,
        /// The failure's short reason.
        reason: Reason,
        /// Where the reset time came from, when the provider said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<HintSource>,
    },
    /// A probe succeeded: the account is back in rotation.
    Recovered {
        /// Label.
        account: String,
    },
    /// An OAuth access token was refreshed.
    Refreshed {
        /// Label.
        account: String,
    },
    /// An OAuth refresh failed.
    RefreshFailed {
        /// Label.
        account: String,
        /// Whether the refresh token is dead (`invalid_grant`,
        /// `refresh_token_reused`, ...) as opposed to a transient failure.
        permanent: bool,
        /// Short reason, never the token.
        reason: Reason,
    },
    /// The account needs a new login (or a new key) before it can be used.
    NeedsLogin {
        /// Label.
        account: String,
        /// Why.
        reason: Reason,
    },
    /// No account of the provider could take a request.
    Exhausted {
        /// The earliest time any account becomes usable again, if known.
        #[serde(default)]
        soonest: Option<UnixMillis>,
    },
}

impl EventKind {
    /// The `type` tag (`failover`, `cooldown`, `recovered`, `refreshed`,
    /// `refresh_failed`, `needs_login`, `exhausted`).
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Failover { .. } => "failover",
            EventKind::Cooldown { .. } => "cooldown",
            EventKind::Recovered { .. } => "recovered",
            EventKind::Refreshed { .. } => "refreshed",
            EventKind::RefreshFailed { .. } => "refresh_failed",
            EventKind::NeedsLogin { .. } => "needs_login",
            EventKind::Exhausted { .. } => "exhausted",
        }
    }
}

impl Event {
    /// An event at `at` for `provider`.
    pub fn new(at: UnixMillis, provider: impl Into<String>, kind: EventKind) -> Self {
        Event {
            at,
            provider: provider.into(),
            kind,
        }
    }
}

/// Flat, with `type` first so a human reading a log or a hook's stdin sees
/// what the event is before its details. serde's `flatten` would put the tag
/// after `at` and `provider`, hence the hand-written impl.
impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = serde_json::to_value(&self.kind).map_err(serde::ser::Error::custom)?;
        let serde_json::Value::Object(fields) = fields else {
            return Err(serde::ser::Error::custom(
                "event kind did not serialize to an object",
            ));
        };
        let mut map = serializer.serialize_map(Some(fields.len() + 2))?;
        map.serialize_entry("type", self.kind.as_str())?;
        map.serialize_entry("at", &self.at)?;
        map.serialize_entry("provider", &self.provider)?;
        for (k, v) in &fields {
            if k != "type" {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// One line for humans: `anthropic: failover personal -> work (rate_limit_error)`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.provider)?;
        match &self.kind {
            EventKind::Failover { from, to, reason } => {
                write!(f, "failover {from} -> {to} ({reason})")
            }
            EventKind::Cooldown {
                account,
                until,
                class,
                reason,
                hint,
            } => {
                write!(
                    f,
                    "{account} cooling for {} ({}, {reason}",
                    HumanDuration(self.at.until(*until)),
                    class.as_str()
                )?;
                if let Some(h) = hint {
                    write!(f, ", reset from {}", h.as_str())?;
                }
                f.write_str(")")
            }
            EventKind::Recovered { account } => write!(f, "{account} recovered"),
            EventKind::Refreshed { account } => write!(f, "{account} token refreshed"),
            EventKind::RefreshFailed {
                account,
                permanent,
                reason,
            } => {
                let how = if *permanent {
                    "permanently"
                } else {
                    "transiently"
                };
                write!(f, "{account} token refresh failed {how} ({reason})")
            }
            EventKind::NeedsLogin { account, reason } => {
                write!(f, "{account} needs login ({reason})")
            }
            EventKind::Exhausted { soonest } => match soonest {
                Some(t) => write!(
                    f,
                    "all accounts unavailable; soonest in {}",
                    HumanDuration(self.at.until(*t))
                ),
                None => f.write_str("all accounts unavailable; none will recover without action"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at() -> UnixMillis {
        UnixMillis::from_secs(1_764_330_000)
    }

    #[test]
    fn serializes_flat_with_type_first() {
        let e = Event::new(
            at(),
            "anthropic",
            EventKind::Failover {
                from: "personal".into(),
                to: "work".into(),
                reason: "rate_limit_error".into(),
            },
        );
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"failover","at":1764330000000,"provider":"anthropic","from":"personal","to":"work","reason":"rate_limit_error"}"#
        );
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn cooldown_round_trips_and_omits_missing_hint() {
        let with_hint = Event::new(
            at(),
            "anthropic",
            EventKind::Cooldown {
                account: "personal".into(),
                until: UnixMillis::from_secs(1_764_334_800),
                class: Class::RateLimited,
                reason: "rate_limit_error".into(),
                hint: Some(HintSource::AnthropicUnified),
            },
        );
        let json = serde_json::to_string(&with_hint).unwrap();
        assert_eq!(
            json,
            r#"{"type":"cooldown","at":1764330000000,"provider":"anthropic","account":"personal","until":1764334800000,"class":"rate_limited","reason":"rate_limit_error","hint":"anthropic_unified"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), with_hint);

        let no_hint = Event::new(
            at(),
            "openai",
            EventKind::Cooldown {
                account: "team".into(),
                until: at().plus(Duration::from_secs(30)),
                class: Class::RateLimited,
                reason: "rate_limit_exceeded".into(),
                hint: None,
            },
        );
        assert!(!serde_json::to_string(&no_hint).unwrap().contains("hint"));
    }

    #[test]
    fn every_kind_serializes_with_its_tag() {
        let kinds = [
            EventKind::Recovered {
                account: "a".into(),
            },
            EventKind::Refreshed {
                account: "a".into(),
            },
            EventKind::RefreshFailed {
                account: "a".into(),
                permanent: true,
                reason: "invalid_grant".into(),
            },
            EventKind::NeedsLogin {
                account: "a".into(),
                reason: "refresh_token_reused".into(),
            },
            EventKind::Exhausted {
                soonest: Some(at()),
            },
        ];
        for k in kinds {
            let tag = k.as_str();
            let e = Event::new(at(), "openai", k);
            let v: serde_json::Value = serde_json::to_value(&e).unwrap();
            assert_eq!(v["type"], tag);
            assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        }
    }

    #[test]
    fn display_is_one_human_line() {
        let cool = Event::new(
            at(),
            "anthropic",
            EventKind::Cooldown {
                account: "personal".into(),
                until: UnixMillis::from_secs(1_764_334_800),
                class: Class::RateLimited,
                reason: "rate_limit_error".into(),
                hint: Some(HintSource::AnthropicUnified),
            },
        );
        assert_eq!(
            cool.to_string(),
            "anthropic: personal cooling for 1h20m (rate_limited, rate_limit_error, reset from unified)"
        );
        let fo = Event::new(
            at(),
            "openai",
            EventKind::Failover {
                from: "a".into(),
                to: "b".into(),
                reason: "insufficient_quota".into(),
            },
        );
        assert_eq!(
            fo.to_string(),
            "openai: failover a -> b (insufficient_quota)"
        );
        let ex = Event::new(
            at(),
            "openai",
            EventKind::Exhausted {
                soonest: Some(at().plus(Duration::from_secs(17))),
            },
        );
        assert_eq!(
            ex.to_string(),
            "openai: all accounts unavailable; soonest in 17s"
        );
    }
}
