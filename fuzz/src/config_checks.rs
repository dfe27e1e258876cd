//! What the `config` fuzz target checks.
//!
//! Compiled twice: by the fuzz crate and, through `#[path]`, by
//! `crates/config/tests/fuzz_seeds.rs`, which runs every checked-in seed through
//! this function in the normal test suite (so the target cannot rot).

#![allow(unreachable_pub, dead_code)]

use std::path::Path;

use marathon_config::{ConfigError, ProviderConfig, load_str};
use marathon_core::cooldown::cooldown_for;
use marathon_core::pool::PoolConfig;
use marathon_core::{AccountKind, Class, Classification, UnixMillis};

/// TOML text → `Config`: any text gives `Ok` or an error naming a position
/// inside the file; an error never quotes an access key; a loaded config
/// answers every question the proxy and CLI ask of it.
pub fn config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        // The file is read as UTF-8 text before it is parsed.
        return;
    };
    match load_str(src, Path::new("config.toml")) {
        Ok(config) => {
            let _ = config.server.check_exposure();
            for (name, p) in &config.providers {
                assert_eq!(&p.name, name);
                assert!(config.provider(name).is_some());
                let _ = p.kind.flavor();
                let _ = (p.oauth_preset(), p.has_oauth());
                let _ = (
                    p.auth.rules(AccountKind::ApiKey),
                    p.auth.rules(AccountKind::Oauth),
                );
                engine_accepts(p);
            }
            let _ = format!("{config:?}");
        }
        Err(err) => {
            if let ConfigError::Invalid { line, column, .. } = &err {
                assert!(
                    *line >= 1 && *line <= src.matches('\n').count() + 1,
                    "{err}"
                );
                assert!(*column >= 1, "{err}");
            }
            let message = err.to_string();
            for key in access_key_candidates(src) {
                assert!(
                    !message.contains(key),
                    "an error quotes the access key {key:?}: {message}"
                );
            }
        }
    }
}

/// Whatever durations the file set, the engine can rest an account with them:
/// the pool settings the proxy builds from a provider (as in
/// `crates/proxy/src/settings.rs`) through every cooldown rule, at the
/// extremes of streak and jitter.
fn engine_accepts(p: &ProviderConfig) {
    let cfg = PoolConfig {
        strategy: p.strategy,
        rate_limit_cooldown: p.rate_limit_cooldown,
        auth_failure_cooldown: p.auth_failure_cooldown,
        proactive_threshold: p.proactive_threshold,
        ..PoolConfig::default()
    };
    for class in [
        Class::RateLimited,
        Class::Unusable,
        Class::Auth,
        Class::Forbidden,
        Class::Transport,
    ] {
        let c = Classification {
            class,
            status: None,
            reason: "fuzz".into(),
            reset: None,
            usage: Vec::new(),
        };
        for streak in [0, 1, 40, u32::MAX] {
            for sample in [0.0, 0.5, 0.999_999] {
                for now in [UnixMillis(1_764_331_200_000), UnixMillis(u64::MAX - 1)] {
                    let _ = cooldown_for(&c, streak, &cfg, now, sample);
                }
            }
        }
    }
}

/// Quoted strings of 8 or more characters from the first `access_keys` line to
/// the first line holding a `]`, read textually so that broken TOML counts
/// too, and only those written once in the file (a string that appears
/// elsewhere may be quoted for that other use).
fn access_key_candidates(src: &str) -> Vec<&str> {
    let Some(start) = src.find("access_keys") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in src[start..].lines() {
        let mut parts = line.split('"');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            if inside.chars().count() >= 8 && src.matches(inside).count() == 1 {
                out.push(inside);
            }
        }
        if line.contains(']') {
            break;
        }
    }
    out
}
