//! `MARATHON_*` overrides: they win over the file. A variable that looks like a
//! provider setting but names no provider is an error, so a typo does not
//! silently leave the file's value in place.

use marathon_core::Secret;

use crate::ConfigError;
use crate::model::{AccessKey, Config, ProviderConfig};
use crate::values;

/// Server and event settings, by variable name.
pub const GLOBAL_VARS: [&str; 22] = [
    "MARATHON_LISTEN",
    "MARATHON_ACCESS_KEYS",
    "MARATHON_ACCESS_KEY",
    "MARATHON_MAX_BODY",
    "MARATHON_PEEK_FIRST_EVENT",
    "MARATHON_UPSTREAM_TIMEOUT",
    "MARATHON_ALLOWED_HOSTS",
    "MARATHON_ALLOWED_ORIGINS",
    "MARATHON_HEADER_READ_TIMEOUT",
    "MARATHON_IDLE_TIMEOUT",
    "MARATHON_MAX_CONNECTIONS",
    "MARATHON_ERROR_BODY_TIMEOUT",
    "MARATHON_SHUTDOWN_GRACE",
    "MARATHON_UPSTREAM_PROXY",
    "MARATHON_EXTRA_CA_FILE",
    "MARATHON_WEBHOOK",
    "MARATHON_EVENT_COMMAND",
    "MARATHON_STORE_BACKEND",
    "MARATHON_STORE_URL",
    "MARATHON_STORE_USERNAME",
    "MARATHON_STORE_PASSWORD",
    "MARATHON_STORE_PREFIX",
];

/// Provider settings: `MARATHON_<PROVIDER>_<SUFFIX>`, where `<PROVIDER>` is the
/// provider name upper-cased with `-` as `_` (`my-llm` → `MY_LLM`).
pub const PROVIDER_SUFFIXES: [&str; 14] = [
    "UPSTREAM",
    "STRATEGY",
    "MAX_ATTEMPTS",
    "MAX_IN_FLIGHT",
    "RATE_LIMIT_COOLDOWN",
    "AUTH_FAILURE_COOLDOWN",
    "NETWORK_RETRY_ATTEMPTS",
    "MAX_WAIT",
    "REFRESH_LEAD",
    "PROACTIVE_THRESHOLD",
    "SESSION_HEADERS",
    "USAGE_POLL",
    "USAGE_URL",
    // The older spelling: one header.
    "SESSION_HEADER",
];

/// The variable prefix for a provider's settings (`my-llm` → `MARATHON_MY_LLM_`).
pub fn provider_prefix(name: &str) -> String {
    format!("MARATHON_{}_", name.to_ascii_uppercase().replace('-', "_"))
}

pub(crate) fn apply(
    config: &mut Config,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("MARATHON_"))
        .collect();
    vars.sort();
    let mut listen_set = false;
    for (var, value) in &vars {
        let err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        match var.as_str() {
            "MARATHON_LISTEN" => {
                config.server.listen = values::listen(value).map_err(err)?;
                listen_set = true;
            }
            // The singular is accepted too: with one key it is the natural spelling.
            "MARATHON_ACCESS_KEYS" | "MARATHON_ACCESS_KEY" => {
                // Comma-separated; a key itself never contains a comma in
                // practice. Named by position (key-1, ...): names need the file.
                config.server.access_keys = value
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .enumerate()
                    .map(|(i, k)| AccessKey::unnamed(i, Secret::new(k)))
                    .collect();
            }
            "MARATHON_MAX_BODY" => config.server.max_body = values::bytes(value).map_err(err)?,
            "MARATHON_UPSTREAM_TIMEOUT" => {
                config.server.upstream_timeout = values::optional_duration(value).map_err(err)?
            }
            "MARATHON_ALLOWED_HOSTS" => {
                config.server.allowed_hosts = values::list(value)
                    .into_iter()
                    .map(values::host_name)
                    .collect::<Result<_, _>>()
                    .map_err(err)?
            }
            "MARATHON_ALLOWED_ORIGINS" => {
                config.server.allowed_origins = values::list(value)
                    .into_iter()
                    .map(values::origin)
                    .collect::<Result<_, _>>()
                    .map_err(err)?
            }
            "MARATHON_HEADER_READ_TIMEOUT" => {
                config.server.header_read_timeout = values::positive_duration(value).map_err(err)?
            }
            "MARATHON_IDLE_TIMEOUT" => {
                config.server.idle_timeout = values::positive_duration(value).map_err(err)?
            }
            "MARATHON_ERROR_BODY_TIMEOUT" => {
                config.server.error_body_timeout = values::positive_duration(value).map_err(err)?
            }
            "MARATHON_SHUTDOWN_GRACE" => {
                config.server.shutdown_grace = values::duration(value).map_err(err)?
            }
            "MARATHON_UPSTREAM_PROXY" => {
                config.server.upstream_proxy = values::upstream_proxy(value).map_err(err)?
            }
            "MARATHON_EXTRA_CA_FILE" => {
                config.server.extra_ca = if value.trim().is_empty() {
                    None
                } else {
                    Some(values::extra_ca(std::path::Path::new("."), value).map_err(err)?)
                }
            }
            "MARATHON_MAX_CONNECTIONS" => {
                config.server.max_connections = values::max_connections_str(value).map_err(err)?
            }
            "MARATHON_PEEK_FIRST_EVENT" => {
                config.server.peek_first_event = values::boolean(value).map_err(err)?
            }
            "MARATHON_WEBHOOK" => {
                config.events.webhook = if value.trim().is_empty() {
                    None
                } else {
                    Some(values::url("webhook URL", value).map_err(err)?)
                }
            }
            "MARATHON_EVENT_COMMAND" => {
                config.events.command = Some(value.trim().to_owned()).filter(|c| !c.is_empty());
            }
            "MARATHON_STORE_BACKEND" => {
                config.store.backend = values::store_backend(value).map_err(err)?
            }
            "MARATHON_STORE_URL" => config.store.url = Some(values::redis_url(value).map_err(err)?),
            "MARATHON_STORE_USERNAME" => {
                config.store.username = Some(value.trim().to_owned()).filter(|u| !u.is_empty())
            }
            "MARATHON_STORE_PASSWORD" => {
                config.store.password =
                    Some(Secret::new(value.to_owned())).filter(|_| !value.is_empty())
            }
            "MARATHON_STORE_PREFIX" => {
                config.store.prefix = values::key_prefix(value).map_err(err)?
            }
            _ => provider_var(config, var, value)?,
        }
    }
    if config.store.backend == crate::model::StoreBackend::Redis && config.store.url.is_none() {
        return Err(ConfigError::Env {
            var: "MARATHON_STORE_BACKEND".to_owned(),
            message: "the redis backend needs a URL: set MARATHON_STORE_URL or [store] url"
                .to_owned(),
        });
    }
    if let Err(m) = config.server.check_exposure() {
        let var = if listen_set {
            "MARATHON_LISTEN"
        } else {
            "MARATHON_ACCESS_KEYS"
        };
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: m,
        });
    }
    Ok(())
}

fn provider_var(config: &mut Config, var: &str, value: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    // Longest suffix first, so `..._MAX_ATTEMPTS` is never read as a provider ending in `_MAX`.
    let mut suffixes = PROVIDER_SUFFIXES;
    suffixes.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let Some(suffix) = suffixes
        .iter()
        .find(|s| var.len() > "MARATHON_".len() + s.len() && var.ends_with(&format!("_{s}")))
    else {
        // Not a provider setting: another part of marathon (MARATHON_HOME, MARATHON_LOG, ...).
        return Ok(());
    };
    let middle = &var["MARATHON_".len()..var.len() - suffix.len() - 1];
    let name = middle.to_ascii_lowercase().replace('_', "-");
    let name = crate::presets::canonical_name(&name).to_owned();
    let known: Vec<String> = config.providers.keys().cloned().collect();
    let Some(provider) = config.providers.get_mut(&name) else {
        return Err(err(format!(
            "names no configured provider {name:?} (known: {}; a variable is MARATHON_<PROVIDER>_{suffix})",
            known.join(", ")
        )));
    };
    set(provider, suffix, value).map_err(err)
}

fn set(p: &mut ProviderConfig, suffix: &str, value: &str) -> Result<(), String> {
    match suffix {
        "UPSTREAM" => p.upstream = values::upstream_url(value)?,
        "STRATEGY" => p.strategy = values::strategy(value)?,
        "MAX_ATTEMPTS" => p.max_attempts = values::max_attempts_str(value)?,
        "MAX_IN_FLIGHT" => p.max_in_flight = values::max_in_flight_str(value)?,
        "RATE_LIMIT_COOLDOWN" => p.rate_limit_cooldown = values::duration(value)?,
        "AUTH_FAILURE_COOLDOWN" => p.auth_failure_cooldown = values::duration(value)?,
        "NETWORK_RETRY_ATTEMPTS" => {
            p.network_retry_attempts = values::count("network_retry_attempts", value)?
        }
        "MAX_WAIT" => p.max_wait = values::optional_duration(value)?,
        "SHORT_WAIT" => p.short_wait = values::duration(value)?,
        "REFRESH_LEAD" => p.refresh_lead = values::duration(value)?,
        "PROACTIVE_THRESHOLD" => p.proactive_threshold = values::threshold_str(value)?,
        "USAGE_POLL" => p.usage_poll = values::usage_poll(value)?,
        "USAGE_URL" => p.usage_url = Some(values::upstream_url(value)?),
        // Comma-separated; empty for no session affinity.
        "SESSION_HEADERS" | "SESSION_HEADER" => {
            let mut names: Vec<String> = Vec::new();
            for h in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                let name = values::header_name(h)?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            p.session_headers = names;
        }
        _ => unreachable!("PROVIDER_SUFFIXES and set() list the same settings"),
    }
    Ok(())
}
