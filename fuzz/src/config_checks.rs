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
            // Each access key written in the file, changed to another of the
            // same length: the message must not change, so it quotes no key.
            for key in access_keys(src) {
                let changed = src.replacen(key, &other_text(key), 1);
                let again = load_str(&changed, Path::new("config.toml"))
                    .expect_err("changing an access key made a bad file valid");
                assert_eq!(
                    err.to_string(),
                    again.to_string(),
                    "the message depends on the access key {key:?}"
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

/// The access keys of a file that is valid TOML (its errors are about
/// settings), when they are written once and look like keys (8 or more of
/// `A-Za-z0-9_-`), so that [`other_text`] can replace them in the text without
/// changing anything else.
fn access_keys(src: &str) -> Vec<&str> {
    let Ok(table) = src.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some(keys) = table.get("server").and_then(|s| s.get("access_keys")) {
        // Whatever its shape: a mistyped value is where a quoting error would be.
        collect_strings(keys, &mut found);
    }
    found
        .into_iter()
        .filter(|k| {
            k.len() >= 8
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .filter_map(|k| {
            let at = src.find(k.as_str())?;
            (src.matches(k.as_str()).count() == 1).then(|| &src[at..at + k.len()])
        })
        .collect()
}

fn collect_strings(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        toml::Value::Table(t) => t.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// `key` with every letter and digit changed, same length and shape.
fn other_text(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            'a' => 'b',
            c if c.is_ascii_alphanumeric() => 'a',
            c => c,
        })
        .collect()
}
