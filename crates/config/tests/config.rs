//! The config file and `MARATHON_*` variables, setting by setting and error by error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use marathon_config::{
    Config, ConfigError, HeaderRule, HeaderSource, Paths, ProviderKind, load_str, load_with_env,
};
use marathon_core::strategy::Strategy;
use marathon_core::{AccountKind, ApiFlavor};

fn parse(src: &str) -> Config {
    match load_str(src, Path::new("config.toml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

/// The error's full message.
fn error(src: &str) -> String {
    match load_str(src, Path::new("config.toml")) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e.to_string(),
    }
}

fn env(src: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, src).unwrap();
    let paths = Paths {
        config_file: file,
        data_dir: dir.path().join("data"),
    };
    let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    load_with_env(&paths, vars)
}

#[test]
fn an_empty_file_gives_the_builtin_presets_with_defaults() {
    let c = parse("");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
    assert!(c.server.access_keys.is_empty());
    assert_eq!(c.server.max_body, 32 * 1024 * 1024);
    assert!(c.server.peek_first_event);
    assert_eq!(c.server.upstream_timeout, None, "off by default");
    assert_eq!(c.events.webhook, None);
    assert_eq!(c.events.command, None);
    let names: Vec<&str> = c.providers.keys().map(String::as_str).collect();
    assert_eq!(names, ["anthropic", "codex", "copilot", "google", "openai"]);
    let upstreams: Vec<(&str, &str)> = c
        .providers
        .values()
        .map(|p| (p.name.as_str(), p.upstream.as_str()))
        .collect();
    assert_eq!(
        upstreams,
        [
            ("anthropic", "https://api.anthropic.com"),
            ("codex", "https://chatgpt.com/backend-api/codex"),
            ("copilot", "https://api.githubcopilot.com"),
            ("google", "https://generativelanguage.googleapis.com"),
            ("openai", "https://api.openai.com"),
        ]
    );
    let a = &c.providers["anthropic"];
    assert_eq!(a.kind, ProviderKind::Anthropic);
    assert_eq!(a.strategy, Strategy::Sticky);
    assert_eq!(a.max_attempts, None);
    assert_eq!(a.rate_limit_cooldown, Duration::from_secs(60));
    assert_eq!(a.auth_failure_cooldown, Duration::from_secs(300));
    assert_eq!(a.network_retry_attempts, 1);
    assert_eq!(a.max_wait, None);
    assert_eq!(a.refresh_lead, Duration::from_secs(300));
    assert_eq!(a.proactive_threshold, None);
    // Claude Code, Codex and opencode send their session ids without any setup.
    assert_eq!(
        a.session_headers,
        ["x-claude-code-session-id", "session-id", "x-session-id"]
    );
    assert_eq!(Config::default().providers.len(), 5);
}

#[test]
fn kinds_map_to_api_flavors() {
    let c = parse("");
    let flavor = |n: &str| c.providers[n].kind.flavor();
    assert_eq!(flavor("anthropic"), ApiFlavor::Anthropic);
    assert_eq!(flavor("openai"), ApiFlavor::Openai);
    assert_eq!(flavor("codex"), ApiFlavor::Openai);
    assert_eq!(flavor("google"), ApiFlavor::Google);
    assert_eq!(flavor("copilot"), ApiFlavor::Copilot);
    assert_eq!(ProviderKind::OpenaiCompatible.flavor(), ApiFlavor::Openai);
}

#[test]
fn anthropic_oauth_uses_bearer_and_the_oauth_beta_and_drops_x_api_key() {
    let c = parse("");
    let auth = &c.providers["anthropic"].auth;
    assert_eq!(auth.strip, ["authorization", "x-api-key"]);
    assert_eq!(
        auth.rules(AccountKind::ApiKey),
        [HeaderRule {
            name: "x-api-key".into(),
            value: HeaderSource::Credential { prefix: "".into() },
            merge: false
        }]
    );
    assert_eq!(
        auth.rules(AccountKind::Oauth),
        [
            HeaderRule {
                name: "authorization".into(),
                value: HeaderSource::Credential {
                    prefix: "Bearer ".into()
                },
                merge: false
            },
            HeaderRule {
                name: "anthropic-beta".into(),
                value: HeaderSource::Static("oauth-2025-04-20".into()),
                merge: true
            },
        ]
    );
}

#[test]
fn codex_sends_the_chatgpt_account_id_from_extras_and_google_keys_use_x_goog_api_key() {
    let c = parse("");
    let codex = &c.providers["codex"].auth;
    assert!(codex.strip.contains(&"chatgpt-account-id".to_owned()));
    assert_eq!(
        codex.rules(AccountKind::Oauth)[1],
        HeaderRule {
            name: "chatgpt-account-id".into(),
            value: HeaderSource::Extra("chatgpt_account_id".into()),
            merge: false
        }
    );
    let google = &c.providers["google"].auth;
    assert_eq!(google.rules(AccountKind::ApiKey)[0].name, "x-goog-api-key");
    assert_eq!(google.rules(AccountKind::Oauth)[0].name, "authorization");
    for p in ["openai", "copilot"] {
        assert_eq!(
            c.providers[p].auth.rules(AccountKind::ApiKey),
            [HeaderRule {
                name: "authorization".into(),
                value: HeaderSource::Credential {
                    prefix: "Bearer ".into()
                },
                merge: false
            }]
        );
    }
}

#[test]
fn the_example_config_parses_with_the_values_it_documents() {
    let src = include_str!("../example.toml");
    let c = parse(src);
    assert_eq!(c.server.max_body, 32 << 20);
    let a = &c.providers["anthropic"];
    assert_eq!(
        a.session_headers,
        [
            "x-claude-code-session-id",
            "session-id",
            "x-session-id",
            "x-my-session"
        ]
    );
    assert_eq!(a.strategy, Strategy::Sticky);
    let codex = &c.providers["codex"];
    assert_eq!(codex.strategy, Strategy::DrainSoonest);
    assert_eq!(codex.proactive_threshold, Some(0.95));
    // [defaults] lists the clients' headers, codex does not override them.
    assert_eq!(
        codex.session_headers,
        ["x-claude-code-session-id", "session-id", "x-session-id"]
    );
    assert_eq!(
        c.providers["google"].max_wait,
        Some(Duration::from_secs(30))
    );
    let local = &c.providers["local-llm"];
    assert_eq!(local.kind, ProviderKind::OpenaiCompatible);
    assert_eq!(local.upstream, "http://127.0.0.1:11434/v1");
    assert_eq!(local.strategy, Strategy::RoundRobin);
    assert_eq!(local.max_attempts, Some(2));
    assert_eq!(local.rate_limit_cooldown, Duration::from_secs(10));
    assert_eq!(local.auth_failure_cooldown, Duration::from_secs(300));
    let team = &c.providers["openai-team"];
    assert_eq!(
        (team.kind, team.upstream.as_str()),
        (ProviderKind::Openai, "https://api.openai.com")
    );
    assert_eq!(team.strategy, Strategy::LeastUsed);
    let azure = &c.providers["azure"].auth;
    assert_eq!(
        azure.rules(AccountKind::ApiKey),
        [HeaderRule {
            name: "api-key".into(),
            value: HeaderSource::Credential { prefix: "".into() },
            merge: false
        }]
    );
    assert_eq!(azure.strip, ["authorization", "api-key", "x-ms-client-key"]);
    assert_eq!(c.providers.len(), 8);
}

/// The text of one `[table]` of a TOML file, header included, up to the next
/// header.
fn section(src: &str, header: &str) -> String {
    let start = src
        .find(&format!("\n{header}\n"))
        .unwrap_or_else(|| panic!("no {header} in example.toml"));
    let body = &src[start + 1..];
    let end = body[1..].find("\n[").map_or(body.len(), |i| i + 1);
    body[..end].to_owned()
}

/// Guards the bug where example.toml (and the config) said the rate-limit
/// cooldown was 60 s while the engine's `PoolConfig::default()` said 30 s:
/// what the example documents as a default, what an empty file gives, and
/// what the engine's own defaults are must be one value.
#[test]
fn the_examples_documented_defaults_are_the_codes_defaults() {
    use marathon_core::{PoolConfig, RetryPolicy, defaults};

    let example = include_str!("../example.toml");
    let documented = parse(&format!(
        "{}\n{}",
        section(example, "[server]"),
        section(example, "[defaults]")
    ));
    let builtin = parse("");

    let (d, b) = (&documented.server, &builtin.server);
    assert_eq!(d.listen, b.listen);
    assert_eq!(d.access_keys.len(), b.access_keys.len());
    assert_eq!(d.max_body, b.max_body);
    assert_eq!(d.peek_first_event, b.peek_first_event);
    assert_eq!(d.upstream_timeout, b.upstream_timeout);

    let (pool, retry) = (PoolConfig::default(), RetryPolicy::default());
    for (name, b) in &builtin.providers {
        let d = &documented.providers[name];
        let settings = |p: &marathon_config::ProviderConfig| {
            format!(
                "strategy={:?} max_attempts={:?} rate_limit_cooldown={:?} \
                 auth_failure_cooldown={:?} network_retry_attempts={} max_wait={:?} \
                 refresh_lead={:?} proactive_threshold={:?} session_headers={:?} \
                 usage_poll={:?}",
                p.strategy,
                p.max_attempts,
                p.rate_limit_cooldown,
                p.auth_failure_cooldown,
                p.network_retry_attempts,
                p.max_wait,
                p.refresh_lead,
                p.proactive_threshold,
                p.session_headers,
                p.usage_poll,
            )
        };
        assert_eq!(
            settings(d),
            settings(b),
            "{name}: example.toml [defaults] vs code"
        );
        // The config's defaults are the engine's.
        assert_eq!(b.strategy, pool.strategy, "{name}");
        assert_eq!(b.rate_limit_cooldown, pool.rate_limit_cooldown, "{name}");
        assert_eq!(
            b.auth_failure_cooldown, pool.auth_failure_cooldown,
            "{name}"
        );
        assert_eq!(b.proactive_threshold, pool.proactive_threshold, "{name}");
        assert_eq!(b.max_attempts, retry.max_attempts, "{name}");
        assert_eq!(
            b.network_retry_attempts, retry.transport_retries_same,
            "{name}"
        );
        assert_eq!(b.refresh_lead, defaults::REFRESH_LEAD, "{name}");
        assert_eq!(b.max_wait, defaults::MAX_WAIT, "{name}");
        assert_eq!(b.usage_poll, defaults::USAGE_POLL, "{name}");
    }
}

#[test]
fn every_setting_is_read() {
    let c = parse(
        r#"
[server]
listen = "0.0.0.0:9999"
access_keys = ["team-key-1", "team-key-2"]
max_body = 1048576
peek_first_event = false
upstream_timeout = "10m"

[events]
webhook = "https://hooks.example.com/marathon/"
command = "notify-send marathon"

[providers.openai]
upstream = "http://127.0.0.1:4010/"
strategy = "priority"
max_attempts = 7
rate_limit_cooldown = "90s"
auth_failure_cooldown = "1h"
network_retry_attempts = 0
max_wait = "2m"
refresh_lead = "10m"
proactive_threshold = 0.8
session_headers = ["X-Session-Id", "x-other"]
"#,
    );
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9999");
    let keys: Vec<&str> = c
        .server
        .access_keys
        .iter()
        .map(|k| k.key.expose())
        .collect();
    assert_eq!(keys, ["team-key-1", "team-key-2"]);
    assert_eq!(c.server.max_body, 1_048_576);
    assert!(!c.server.peek_first_event);
    assert_eq!(c.server.upstream_timeout, Some(Duration::from_secs(600)));
    assert_eq!(
        c.events.webhook.as_deref(),
        Some("https://hooks.example.com/marathon")
    );
    assert_eq!(c.events.command.as_deref(), Some("notify-send marathon"));
    let p = &c.providers["openai"];
    assert_eq!(p.upstream, "http://127.0.0.1:4010");
    assert_eq!(p.strategy, Strategy::Priority);
    assert_eq!(p.max_attempts, Some(7));
    assert_eq!(p.rate_limit_cooldown, Duration::from_secs(90));
    assert_eq!(p.auth_failure_cooldown, Duration::from_secs(3600));
    assert_eq!(p.network_retry_attempts, 0);
    assert_eq!(p.max_wait, Some(Duration::from_secs(120)));
    assert_eq!(p.refresh_lead, Duration::from_secs(600));
    assert_eq!(p.proactive_threshold, Some(0.8));
    assert_eq!(p.session_headers, ["x-session-id", "x-other"]);
    // Other providers keep their defaults.
    assert_eq!(c.providers["anthropic"].strategy, Strategy::Sticky);
}

#[test]
fn defaults_apply_to_every_provider_and_a_provider_section_wins() {
    let c = parse(
        r#"
[defaults]
strategy = "round-robin"
max_attempts = 3
max_wait = "45s"
proactive_threshold = 1

[providers.anthropic]
strategy = "least-used"
max_attempts = "accounts"
max_wait = "off"
"#,
    );
    let a = &c.providers["anthropic"];
    assert_eq!(
        (a.strategy, a.max_attempts, a.max_wait),
        (Strategy::LeastUsed, None, None)
    );
    assert_eq!(a.proactive_threshold, Some(1.0));
    for name in ["openai", "codex", "google", "copilot"] {
        let p = &c.providers[name];
        assert_eq!(p.strategy, Strategy::RoundRobin, "{name}");
        assert_eq!(p.max_attempts, Some(3), "{name}");
        assert_eq!(p.max_wait, Some(Duration::from_secs(45)), "{name}");
    }
}

#[test]
fn aliases_configure_and_find_the_builtin_provider() {
    let c = parse(
        "[providers.gemini]\nstrategy = \"priority\"\n\n[providers.openai-chatgpt]\nmax_attempts = 2\n",
    );
    assert_eq!(c.providers["google"].strategy, Strategy::Priority);
    assert_eq!(c.providers["codex"].max_attempts, Some(2));
    assert!(!c.providers.contains_key("gemini"));
    assert_eq!(c.provider("gemini").unwrap().name, "google");
    assert_eq!(c.provider("github-copilot").unwrap().name, "copilot");
    assert!(c.provider("nope").is_none());
}

#[test]
fn sizes_accept_units() {
    assert_eq!(
        parse("[server]\nmax_body = \"500KB\"").server.max_body,
        500_000
    );
    assert_eq!(
        parse("[server]\nmax_body = \"2GiB\"").server.max_body,
        2 << 30
    );
}

#[test]
fn a_non_loopback_listen_with_access_keys_is_accepted() {
    let c = parse("[server]\nlisten = \"[::]:8787\"\naccess_keys = [\"k\"]");
    assert_eq!(c.server.listen.to_string(), "[::]:8787");
}

// ---- errors: each names the file, line, column and key ----

#[test]
fn unknown_strategy() {
    let src = "[server]\nlisten = \"127.0.0.1:8787\"\n\n[providers.anthropic]\nupstream = \"http://127.0.0.1:1\"\n\nstrategy = \"fastest\"\n";
    assert_eq!(
        error(src),
        "config.toml:7:12: providers.anthropic.strategy: unknown strategy \"fastest\" \
         (expected one of sticky, round-robin, least-used, priority, drain-soonest, headroom)"
    );
}

#[test]
fn unknown_strategy_in_defaults_names_the_defaults_key() {
    assert_eq!(
        error("[defaults]\nstrategy = \"random\""),
        "config.toml:2:12: defaults.strategy: unknown strategy \"random\" \
         (expected one of sticky, round-robin, least-used, priority, drain-soonest, headroom)"
    );
}

#[test]
fn unknown_top_level_key() {
    let e = error("listen = \"127.0.0.1:1\"\n");
    assert!(
        e.starts_with("config.toml:1:1: listen: unknown field `listen`, expected one of"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_a_provider() {
    let e = error("[providers.anthropic]\nstrategy = \"sticky\"\nretries = 3\n");
    assert!(
        e.starts_with("config.toml:3:1: providers.anthropic.retries: unknown field `retries`"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_server_and_events_and_auth() {
    let e = error("[server]\nport = 8787\n");
    assert!(
        e.starts_with("config.toml:2:1: server.port: unknown field `port`"),
        "{e}"
    );
    let e = error("[events]\nslack = \"x\"\n");
    assert!(
        e.starts_with("config.toml:2:1: events.slack: unknown field `slack`"),
        "{e}"
    );
    let e = error("[providers.openai.auth]\nheader = \"api-key\"\n");
    assert!(
        e.starts_with("config.toml:2:1: providers.openai.auth.header: unknown field `header`"),
        "{e}"
    );
}

#[test]
fn toml_syntax_error_has_a_position() {
    let e = error("[server]\nlisten = \"127.0.0.1:8787\n");
    assert!(e.starts_with("config.toml:2:"), "{e}");
    let e = error("[server\n");
    assert!(e.starts_with("config.toml:1:"), "{e}");
}

#[test]
fn invalid_duration() {
    assert_eq!(
        error("[providers.openai]\nrate_limit_cooldown = \"5 minutes later\""),
        "config.toml:2:23: providers.openai.rate_limit_cooldown: invalid duration \"5 minutes later\": \
         expected number at 10 (expected e.g. \"30s\", \"5m\", \"1h\")"
    );
}

#[test]
fn a_duration_without_quotes_is_a_type_error() {
    assert_eq!(
        error("[providers.openai]\nrefresh_lead = 30"),
        "config.toml:2:16: providers.openai.refresh_lead: expected a duration such as \"30s\", found an integer"
    );
}

#[test]
fn max_wait_accepts_off_but_not_nonsense() {
    let e = error("[defaults]\nmax_wait = \"never\"");
    assert!(
        e.starts_with("config.toml:2:12: defaults.max_wait: invalid duration \"never\""),
        "{e}"
    );
    assert!(e.ends_with("or \"off\""), "{e}");
}

#[test]
fn max_attempts_must_be_positive() {
    assert_eq!(
        error("[providers.codex]\nmax_attempts = 0"),
        "config.toml:2:16: providers.codex.max_attempts: max_attempts must be at least 1 (got 0); \
         \"accounts\" means one per account"
    );
    let e = error("[providers.codex]\nmax_attempts = \"lots\"");
    assert!(
        e.contains("providers.codex.max_attempts: invalid max_attempts \"lots\""),
        "{e}"
    );
    let e = error("[providers.codex]\nmax_attempts = 2.5");
    assert!(
        e.contains("expected a number of attempts or \"accounts\", found a float"),
        "{e}"
    );
}

#[test]
fn network_retry_attempts_must_be_a_whole_number() {
    let e = error("[providers.codex]\nnetwork_retry_attempts = -1");
    assert!(e.starts_with("config.toml:2:26: providers.codex.network_retry_attempts: network_retry_attempts must be"), "{e}");
    let e = error("[providers.codex]\nnetwork_retry_attempts = \"2\"");
    assert!(
        e.ends_with("expected a whole number, found a string"),
        "{e}"
    );
}

#[test]
fn proactive_threshold_must_be_a_fraction() {
    assert_eq!(
        error("[providers.codex]\nproactive_threshold = 1.5"),
        "config.toml:2:23: providers.codex.proactive_threshold: proactive_threshold must be above 0 and at most 1 \
         (got 1.5); e.g. 0.95, or \"off\""
    );
    let e = error("[providers.codex]\nproactive_threshold = true");
    assert!(e.ends_with("found a boolean"), "{e}");
}

#[test]
fn session_header_must_be_a_header_name() {
    assert_eq!(
        error("[providers.codex]\nsession_header = \"x session\""),
        "config.toml:2:18: providers.codex.session_header: invalid header name \"x session\""
    );
    assert_eq!(
        error("[providers.codex]\nsession_headers = [\"session-id\", \"x y\"]"),
        "config.toml:2:34: providers.codex.session_headers: invalid header name \"x y\""
    );
}

/// The list replaces the clients' defaults; the older one-header spelling
/// still reads, and `""` or `[]` turn affinity off. Guards a config written
/// for the one-header key silently losing its header, and two spellings in
/// one section silently preferring one.
#[test]
fn session_headers_list_and_the_older_single_spelling() {
    let c = parse(
        "[defaults]\nsession_header = \"X-Conv\"\n[providers.openai]\nsession_headers = []\n[providers.codex]\nsession_headers = [\"session-id\", \"Session-Id\", \"x-turn\"]\n",
    );
    assert_eq!(c.providers["anthropic"].session_headers, ["x-conv"]);
    assert!(c.providers["openai"].session_headers.is_empty());
    assert_eq!(
        c.providers["codex"].session_headers,
        ["session-id", "x-turn"]
    );
    let c = parse("[providers.google]\nsession_header = \"\"\n");
    assert!(c.providers["google"].session_headers.is_empty());
    assert_eq!(
        error("[providers.codex]\nsession_headers = [\"a\"]\nsession_header = \"b\"\n"),
        "config.toml:3:18: providers.codex.session_header: set either session_headers (a list) or session_header, not both"
    );
    let c = env(
        "",
        &[
            ("MARATHON_CODEX_SESSION_HEADERS", "session-id, X-Turn"),
            ("MARATHON_OPENAI_SESSION_HEADERS", ""),
        ],
    )
    .unwrap();
    assert_eq!(
        c.providers["codex"].session_headers,
        ["session-id", "x-turn"]
    );
    assert!(c.providers["openai"].session_headers.is_empty());
    let e = env("", &[("MARATHON_CODEX_SESSION_HEADERS", "a b")]).unwrap_err();
    assert!(e.to_string().contains("invalid header name"), "{e}");
}

#[test]
fn invalid_upstream() {
    assert_eq!(
        error("[providers.anthropic]\nupstream = \"api.anthropic.com\""),
        "config.toml:2:12: providers.anthropic.upstream: invalid upstream \"api.anthropic.com\" \
         (expected an http:// or https:// URL)"
    );
}

/// A password in a URL would be printed by `serve`'s banner, `status` and
/// the dashboard (it was, before this check). Every URL setting refuses
/// one, naming file, line and key, and never quotes it back.
#[test]
fn a_password_in_any_url_is_refused_without_quoting_it() {
    let cases = [
        (
            "[providers.anthropic]\nupstream = \"https://user:secret@api.example.com\"",
            "config.toml:2:12: providers.anthropic.upstream: ",
        ),
        (
            "[events]\nwebhook = \"https://hook:secret@hooks.example.com/x\"",
            "config.toml:2:11: events.webhook: ",
        ),
        (
            "[providers.corp]\nkind = \"openai\"\nupstream = \"https://llm.example.com\"\n\
             [providers.corp.oauth]\nclient_id = \"c\"\nissuer = \"https://admin:secret@id.example.com\"",
            "config.toml:6:10: providers.corp.oauth.issuer: ",
        ),
        (
            "[providers.anthropic.oauth]\ntoken_url = \"https://secret@id.example.com/token\"",
            "config.toml:2:13: providers.anthropic.oauth.token_url: ",
        ),
    ];
    for (src, start) in cases {
        let e = error(src);
        assert!(e.starts_with(start), "{e}");
        assert!(e.contains("user name or password"), "{e}");
        assert!(!e.contains("secret"), "the password is quoted: {e}");
    }
    // The same through the environment.
    let e = env(
        "",
        &[(
            "MARATHON_ANTHROPIC_UPSTREAM",
            "https://user:secret@api.example.com",
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("environment variable MARATHON_ANTHROPIC_UPSTREAM: "),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
    let e = env(
        "",
        &[("MARATHON_WEBHOOK", "https://user:secret@h.example.com")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("user name or password") && !e.contains("secret"),
        "{e}"
    );
    // An '@' in a path is not a password.
    assert_eq!(
        parse("[events]\nwebhook = \"https://hooks.example.com/u/@team\"")
            .events
            .webhook
            .as_deref(),
        Some("https://hooks.example.com/u/@team")
    );
}

/// A query on an upstream is where a key hides (`?key=...`); it is refused
/// at load, not when `serve` starts, and is not quoted.
#[test]
fn an_upstream_query_is_refused_without_quoting_it() {
    let e = error("[providers.google]\nupstream = \"https://g.example.com/v1?key=secret\"");
    assert!(
        e.starts_with("config.toml:2:12: providers.google.upstream: "),
        "{e}"
    );
    assert!(e.contains("query string"), "{e}");
    assert!(!e.contains("secret"), "{e}");
}

#[test]
fn invalid_listen_address() {
    assert_eq!(
        error("[server]\nlisten = \"localhost:8787\""),
        "config.toml:2:10: server.listen: invalid listen address \"localhost:8787\" \
         (expected IP:port, e.g. \"127.0.0.1:8787\")"
    );
}

#[test]
fn a_non_loopback_listen_needs_access_keys() {
    let e = error("[server]\nlisten = \"0.0.0.0:8787\"");
    assert!(
        e.starts_with(
            "config.toml:2:10: server.listen: listening on 0.0.0.0:8787 exposes your accounts"
        ),
        "{e}"
    );
}

#[test]
fn access_keys_are_never_quoted_in_errors() {
    let e = error("[server]\naccess_keys = [\"\"]");
    assert_eq!(
        e,
        "config.toml:2:16: server.access_keys: an access key must not be empty"
    );
    let e = error("[server]\naccess_keys = \"sk-team-secret-value\"");
    assert!(
        e.starts_with("config.toml:2:15: server.access_keys:"),
        "{e}"
    );
    assert!(!e.contains("sk-team-secret-value"), "{e}");
    let e = error("[server]\naccess_keys = [\"ok-key\", 42, \"sk-other-secret\"]");
    assert!(e.starts_with("config.toml:2:"), "{e}");
    assert!(e.contains("server.access_keys"), "{e}");
    assert!(
        !e.contains("ok-key") && !e.contains("sk-other-secret"),
        "{e}"
    );
}

#[test]
fn invalid_max_body_and_boolean() {
    let e = error("[server]\nmax_body = \"32 megs\"");
    assert!(
        e.starts_with("config.toml:2:12: server.max_body: invalid size \"32 megs\""),
        "{e}"
    );
    let e = error("[server]\nmax_body = -1");
    assert!(
        e.contains("server.max_body: max_body must not be negative (got -1)"),
        "{e}"
    );
    assert_eq!(
        error("[server]\npeek_first_event = \"yes\""),
        "config.toml:2:20: server.peek_first_event: expected true or false, found a string"
    );
    let e = error("[server]\nupstream_timeout = \"soon\"");
    assert!(
        e.starts_with("config.toml:2:20: server.upstream_timeout: "),
        "{e}"
    );
    assert!(e.contains("\"off\""), "{e}");
    assert_eq!(
        error("[server]\nupstream_timeout = 600"),
        "config.toml:2:20: server.upstream_timeout: expected a duration such as \"10m\", or \"off\", found an integer"
    );
}

#[test]
fn invalid_events() {
    assert_eq!(
        error("[events]\nwebhook = \"hooks.example.com\""),
        "config.toml:2:11: events.webhook: invalid webhook URL \"hooks.example.com\" (expected an http:// or https:// URL)"
    );
    assert_eq!(
        error("[events]\ncommand = \"  \""),
        "config.toml:2:11: events.command: the command is empty; remove the key to run none"
    );
}

#[test]
fn a_new_provider_needs_a_kind() {
    assert_eq!(
        error("[providers.mistral]\nupstream = \"https://api.mistral.ai\""),
        "config.toml:1:12: providers.mistral: unknown provider \"mistral\": a provider that is not built in \
         needs `kind` (e.g. kind = \"openai\") and `upstream`"
    );
}

#[test]
fn an_openai_compatible_provider_needs_an_upstream() {
    assert_eq!(
        error("\n[providers.local]\nkind = \"openai-compatible\""),
        "config.toml:2:12: providers.local: provider \"local\" has kind openai-compatible and needs `upstream` \
         (the server's base URL)"
    );
}

#[test]
fn unknown_kind() {
    assert_eq!(
        error("[providers.x]\nkind = \"azure\"\nupstream = \"https://x.example\""),
        "config.toml:2:8: providers.x.kind: unknown provider kind \"azure\" \
         (expected one of anthropic, openai, codex, google, copilot, openai-compatible)"
    );
}

#[test]
fn a_builtin_provider_cannot_change_kind() {
    assert_eq!(
        error("[providers.anthropic]\nkind = \"openai\""),
        "config.toml:2:8: providers.anthropic.kind: anthropic is built in with kind anthropic; \
         give a openai provider its own name"
    );
}

#[test]
fn an_alias_and_its_provider_together_are_ambiguous() {
    let e = error(
        "[providers.google]\nstrategy = \"priority\"\n\n[providers.gemini]\nstrategy = \"sticky\"\n",
    );
    assert!(
        e.contains(
            "[providers.google] and [providers.gemini] configure the same provider \"google\""
        ),
        "{e}"
    );
    assert!(e.starts_with("config.toml:1:12: providers.google:"), "{e}");
}

#[test]
fn provider_names_are_restricted() {
    assert_eq!(
        error("[providers.My_LLM]\nkind = \"openai\""),
        "config.toml:1:12: providers.My_LLM: invalid provider name \"My_LLM\" (use lower-case letters, digits and '-')"
    );
}

#[test]
fn per_provider_keys_are_refused_in_defaults() {
    assert_eq!(
        error("[defaults]\nupstream = \"http://127.0.0.1:1\""),
        "config.toml:2:12: defaults.upstream: upstream is set per provider, not in [defaults]"
    );
    assert_eq!(
        error("[defaults]\nkind = \"openai\""),
        "config.toml:2:8: defaults.kind: kind is set per provider, not in [defaults]"
    );
}

#[test]
fn wrong_table_types_are_errors() {
    let e = error("providers = 3");
    assert!(
        e.starts_with("config.toml:1:13: providers: invalid type: integer `3`, expected a map"),
        "{e}"
    );
    let e = error("[providers.openai]\nstrategy = [\"sticky\"]");
    assert!(
        e.starts_with("config.toml:2:12: providers.openai.strategy: invalid type: sequence"),
        "{e}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let e = error("# café ☕\n[providers.openai]\nstrategy = \"x\" # é\n");
    assert!(e.starts_with("config.toml:3:12:"), "{e}");
    let e = error("[events]\ncommand = \"é\" ; x = 1\n");
    assert!(e.starts_with("config.toml:2:"), "{e}");
}

// ---- the file on disk ----

#[test]
fn a_missing_file_means_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths {
        config_file: dir.path().join("absent.toml"),
        data_dir: dir.path().into(),
    };
    let c = load_with_env(&paths, Vec::new()).unwrap();
    assert_eq!(c.providers.len(), 5);
}

#[test]
fn errors_name_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[providers.openai]\nstrategy = \"fastest\"\n").unwrap();
    let paths = Paths {
        config_file: file.clone(),
        data_dir: dir.path().into(),
    };
    let e = load_with_env(&paths, Vec::new()).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}:2:12: providers.openai.strategy:",
            file.display()
        )),
        "{e}"
    );
    match e {
        ConfigError::Invalid {
            file: f,
            line,
            column,
            key,
            ..
        } => {
            assert_eq!(
                (f, line, column, key.as_deref()),
                (file, 2, 12, Some("providers.openai.strategy"))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreadable_config_is_an_error_not_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: reading fails with something other than NotFound.
    let paths = Paths {
        config_file: dir.path().to_owned(),
        data_dir: dir.path().into(),
    };
    let e = load_with_env(&paths, Vec::new()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read config file {}", dir.path().display())),
        "{e}"
    );
}

// ---- environment ----

#[test]
fn env_overrides_the_file() {
    let c = env(
        "[providers.anthropic]\nstrategy = \"sticky\"\n",
        &[
            ("MARATHON_LISTEN", "127.0.0.1:9100"),
            ("MARATHON_MAX_BODY", "1MiB"),
            ("MARATHON_PEEK_FIRST_EVENT", "false"),
            ("MARATHON_WEBHOOK", "http://127.0.0.1:5000/hook"),
            ("MARATHON_EVENT_COMMAND", "cat"),
            ("MARATHON_ANTHROPIC_STRATEGY", "round-robin"),
            ("MARATHON_ANTHROPIC_UPSTREAM", "http://127.0.0.1:4000"),
            ("MARATHON_ANTHROPIC_MAX_ATTEMPTS", "4"),
            ("MARATHON_ANTHROPIC_RATE_LIMIT_COOLDOWN", "2m"),
            ("MARATHON_ANTHROPIC_AUTH_FAILURE_COOLDOWN", "10m"),
            ("MARATHON_ANTHROPIC_NETWORK_RETRY_ATTEMPTS", "3"),
            ("MARATHON_ANTHROPIC_MAX_WAIT", "15s"),
            ("MARATHON_ANTHROPIC_REFRESH_LEAD", "1m"),
            ("MARATHON_ANTHROPIC_PROACTIVE_THRESHOLD", "0.9"),
            ("MARATHON_ANTHROPIC_SESSION_HEADER", "X-Conversation"),
            ("MARATHON_HOME", "/ignored/here"),
            ("PATH", "/usr/bin"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(c.server.max_body, 1 << 20);
    assert!(!c.server.peek_first_event);
    assert_eq!(
        c.events.webhook.as_deref(),
        Some("http://127.0.0.1:5000/hook")
    );
    assert_eq!(c.events.command.as_deref(), Some("cat"));
    let a = &c.providers["anthropic"];
    assert_eq!(a.strategy, Strategy::RoundRobin);
    assert_eq!(a.upstream, "http://127.0.0.1:4000");
    assert_eq!(a.max_attempts, Some(4));
    assert_eq!(a.rate_limit_cooldown, Duration::from_secs(120));
    assert_eq!(a.auth_failure_cooldown, Duration::from_secs(600));
    assert_eq!(a.network_retry_attempts, 3);
    assert_eq!(a.max_wait, Some(Duration::from_secs(15)));
    assert_eq!(a.refresh_lead, Duration::from_secs(60));
    assert_eq!(a.proactive_threshold, Some(0.9));
    assert_eq!(a.session_headers, ["x-conversation"]);
    assert_eq!(c.providers["openai"].strategy, Strategy::Sticky);
}

#[test]
fn env_reaches_providers_with_dashes_and_aliases() {
    let c = env(
        "[providers.my-llm]\nkind = \"openai-compatible\"\nupstream = \"http://127.0.0.1:1\"\n",
        &[
            ("MARATHON_MY_LLM_UPSTREAM", "http://127.0.0.1:2/v1"),
            ("MARATHON_GEMINI_STRATEGY", "priority"),
        ],
    )
    .unwrap();
    assert_eq!(c.providers["my-llm"].upstream, "http://127.0.0.1:2/v1");
    assert_eq!(c.providers["google"].strategy, Strategy::Priority);
}

#[test]
fn env_errors_name_the_variable() {
    let e = env("", &[("MARATHON_ANTHROPIC_STRATEGY", "fastest")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable MARATHON_ANTHROPIC_STRATEGY: unknown strategy \"fastest\" \
         (expected one of sticky, round-robin, least-used, priority, drain-soonest, headroom)"
    );
    let e = env("", &[("MARATHON_LISTEN", "8787")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable MARATHON_LISTEN: invalid listen address"),
        "{e}"
    );
    let e = env("", &[("MARATHON_OPENAI_MAX_WAIT", "soon")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable MARATHON_OPENAI_MAX_WAIT: invalid duration"),
        "{e}"
    );
}

#[test]
fn env_for_an_unknown_provider_is_an_error_not_ignored() {
    let e = env("", &[("MARATHON_ANTROPIC_STRATEGY", "sticky")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable MARATHON_ANTROPIC_STRATEGY: names no configured provider \"antropic\" \
         (known: anthropic, codex, copilot, google, openai; a variable is MARATHON_<PROVIDER>_STRATEGY)"
    );
}

#[test]
fn env_cannot_open_the_proxy_without_access_keys() {
    let e = env("", &[("MARATHON_LISTEN", "0.0.0.0:8787")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable MARATHON_LISTEN: listening on 0.0.0.0:8787"),
        "{e}"
    );
    let c = env(
        "",
        &[
            ("MARATHON_LISTEN", "0.0.0.0:8787"),
            ("MARATHON_ACCESS_KEYS", "k1, k2"),
        ],
    )
    .unwrap();
    let keys: Vec<&str> = c
        .server
        .access_keys
        .iter()
        .map(|k| k.key.expose())
        .collect();
    assert_eq!(keys, ["k1", "k2"]);
    let c = env(
        "",
        &[
            ("MARATHON_LISTEN", "0.0.0.0:8787"),
            ("MARATHON_ACCESS_KEY", "solo"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.access_keys.len(), 1);
    assert_eq!(c.server.access_keys[0].key.expose(), "solo");
}

#[test]
fn env_file_errors_come_first() {
    let e = env(
        "[server]\nbogus = 1\n",
        &[("MARATHON_LISTEN", "127.0.0.1:1")],
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { line: 2, .. }), "{e:?}");
}

// ---- paths ----

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<PathBuf> {
    let vars: Vec<(String, PathBuf)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), PathBuf::from(v)))
        .collect();
    move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

#[test]
fn paths_follow_home_flag_then_marathon_home_then_xdg() {
    let env = lookup(&[("HOME", "/home/u"), ("MARATHON_HOME", "/srv/marathon")]);
    let p = Paths::resolve_with(Some(Path::new("/tmp/m")), &env);
    assert_eq!(
        p,
        Paths {
            config_file: "/tmp/m/config.toml".into(),
            data_dir: "/tmp/m/data".into()
        }
    );
    let p = Paths::resolve_with(None, &env);
    assert_eq!(
        p,
        Paths {
            config_file: "/srv/marathon/config.toml".into(),
            data_dir: "/srv/marathon/data".into()
        }
    );

    let p = Paths::resolve_with(None, lookup(&[("HOME", "/home/u")]));
    assert_eq!(
        p,
        Paths {
            config_file: "/home/u/.config/marathon/config.toml".into(),
            data_dir: "/home/u/.local/share/marathon".into()
        }
    );
    let p = Paths::resolve_with(
        None,
        lookup(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "/cfg"),
            ("XDG_DATA_HOME", "/data"),
        ]),
    );
    assert_eq!(
        p,
        Paths {
            config_file: "/cfg/marathon/config.toml".into(),
            data_dir: "/data/marathon".into()
        }
    );
    // Relative XDG paths are invalid per the spec and ignored; an empty MARATHON_HOME is unset.
    let p = Paths::resolve_with(
        None,
        lookup(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "rel"),
            ("MARATHON_HOME", ""),
        ]),
    );
    assert_eq!(
        p.config_file,
        PathBuf::from("/home/u/.config/marathon/config.toml")
    );
}

// ---- browser origins and connection limits (issue 9) ----

#[test]
fn security_and_limit_settings_have_safe_defaults() {
    let c = parse("");
    assert!(c.server.allowed_hosts.is_empty());
    assert!(c.server.allowed_origins.is_empty());
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_connections, None, "auto");
    assert_eq!(c.server.error_body_timeout, Duration::from_secs(10));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    // The example documents exactly these defaults.
    let e = parse(include_str!("../example.toml"));
    assert_eq!(e.server.header_read_timeout, c.server.header_read_timeout);
    assert_eq!(e.server.idle_timeout, c.server.idle_timeout);
    assert_eq!(e.server.max_connections, c.server.max_connections);
    assert_eq!(e.server.error_body_timeout, c.server.error_body_timeout);
    assert_eq!(e.server.shutdown_grace, c.server.shutdown_grace);
    assert!(e.server.allowed_hosts.is_empty() && e.server.allowed_origins.is_empty());
}

#[test]
fn security_and_limit_settings_are_read() {
    let c = parse(
        r#"
[server]
allowed_hosts = ["Proxy.Internal", "[::1]"]
allowed_origins = ["https://Chat.Example", "http://localhost:3000"]
header_read_timeout = "5s"
idle_timeout = "2m"
max_connections = 5000
error_body_timeout = "3s"
shutdown_grace = "0s"
"#,
    );
    assert_eq!(c.server.allowed_hosts, ["proxy.internal", "[::1]"]);
    assert_eq!(
        c.server.allowed_origins,
        ["https://chat.example", "http://localhost:3000"]
    );
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.server.max_connections, Some(5000));
    assert_eq!(c.server.error_body_timeout, Duration::from_secs(3));
    assert_eq!(c.server.shutdown_grace, Duration::ZERO);
    assert_eq!(
        parse("[server]\nmax_connections = \"auto\"")
            .server
            .max_connections,
        None
    );
}

#[test]
fn security_and_limit_mistakes_name_the_key() {
    assert_eq!(
        error("[server]\nallowed_hosts = [\"proxy.internal:8787\"]"),
        "config.toml:2:18: server.allowed_hosts: invalid host name \"proxy.internal:8787\" \
         (expected a name such as \"proxy.internal\", without scheme or port)"
    );
    assert!(
        error("[server]\nallowed_origins = [\"https://chat.example/\"]")
            .starts_with("config.toml:2:20: server.allowed_origins: invalid origin"),
    );
    assert!(
        error("[server]\nidle_timeout = \"0s\"")
            .starts_with("config.toml:2:16: server.idle_timeout: \"0s\" is zero"),
    );
    assert!(error("[server]\nmax_connections = 0").starts_with(
        "config.toml:2:19: server.max_connections: max_connections must be at least 1"
    ),);
}

#[test]
fn security_and_limit_settings_from_the_environment() {
    let c = env(
        "",
        &[
            ("MARATHON_ALLOWED_HOSTS", "proxy.internal, gw.example"),
            ("MARATHON_ALLOWED_ORIGINS", "http://localhost:3000"),
            ("MARATHON_HEADER_READ_TIMEOUT", "2s"),
            ("MARATHON_IDLE_TIMEOUT", "30s"),
            ("MARATHON_MAX_CONNECTIONS", "100"),
            ("MARATHON_ERROR_BODY_TIMEOUT", "1s"),
            ("MARATHON_SHUTDOWN_GRACE", "5s"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.allowed_hosts, ["proxy.internal", "gw.example"]);
    assert_eq!(c.server.allowed_origins, ["http://localhost:3000"]);
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(2));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_connections, Some(100));
    assert_eq!(c.server.error_body_timeout, Duration::from_secs(1));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
    let e = env("", &[("MARATHON_ALLOWED_ORIGINS", "evil")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable MARATHON_ALLOWED_ORIGINS: invalid origin"),
        "{e}"
    );
}

/// The usage poll: a setting per provider with an env override; a poll
/// more often than once a minute is refused (the endpoints are throttled),
/// and the usage URL follows `upstream` unless set.
#[test]
fn usage_poll_and_url() {
    let c = parse(
        r#"
[providers.anthropic]
upstream = "http://127.0.0.1:9/sim"
usage_poll = "5m"

[providers.codex]
usage_poll = "off"
usage_url = "http://127.0.0.1:9/wham/usage"
"#,
    );
    let a = &c.providers["anthropic"];
    assert_eq!(a.usage_poll, Some(Duration::from_secs(300)));
    assert_eq!(
        a.usage_endpoint().unwrap().0,
        "http://127.0.0.1:9/api/oauth/usage"
    );
    let codex = &c.providers["codex"];
    assert_eq!(codex.usage_poll, None);
    assert_eq!(
        codex.usage_endpoint().unwrap().0,
        "http://127.0.0.1:9/wham/usage"
    );
    assert!(c.providers["openai"].usage_endpoint().is_none());
    let err = error("[defaults]\nusage_poll = \"10s\"\n");
    assert!(err.contains("usage_poll") && err.contains("1m"), "{err}");
}

/// `[store]` (issue 12): the Redis backend's keys, their errors naming the
/// key, and a password never in a URL marathon would show.
#[test]
fn the_store_section_selects_redis_and_keeps_passwords_out_of_urls() {
    let c = parse(
        "[store]\nbackend = \"redis\"\nurl = \"rediss://cache:6380/2\"\nusername = \"gw\"\npassword = \"s3cret-pw\"\nprefix = \"team:a\"\n",
    );
    assert_eq!(c.store.backend, marathon_config::StoreBackend::Redis);
    assert_eq!(c.store.url.as_deref(), Some("rediss://cache:6380/2"));
    assert_eq!(c.store.password.as_ref().unwrap().expose(), "s3cret-pw");
    assert_eq!(c.store.prefix, "team:a");
    let e = error("[store]\nbackend = \"redis\"\n");
    assert!(e.contains("store.url"), "{e}");
    let e = error("[store]\nurl = \"redis://u:hunter2@cache:6379\"\n");
    assert!(e.contains("store.url") && !e.contains("hunter2"), "{e}");
    let e = error("[store]\nbackend = \"mongo\"\n");
    assert!(e.contains("store.backend"), "{e}");
    let c = env(
        "",
        &[
            ("MARATHON_STORE_BACKEND", "redis"),
            ("MARATHON_STORE_URL", "redis://127.0.0.1:6379/0"),
            ("MARATHON_STORE_PASSWORD", "pw"),
        ],
    )
    .unwrap();
    assert_eq!(c.store.backend, marathon_config::StoreBackend::Redis);
    assert_eq!(c.store.password.unwrap().expose(), "pw");
    assert!(env("", &[("MARATHON_STORE_BACKEND", "redis")]).is_err());
}

/// Named access keys: a table of name = key, counted per name in status and
/// metrics. The list form still works, named by position.
#[test]
fn access_keys_can_be_named() {
    let c = parse("[server]\naccess_keys = { alice = \"k-alice\", ci-bot = \"k-ci\" }");
    let keys: Vec<(&str, &str)> = c
        .server
        .access_keys
        .iter()
        .map(|k| (k.name.as_str(), k.key.expose()))
        .collect();
    assert_eq!(keys, [("alice", "k-alice"), ("ci-bot", "k-ci")]);
    let c = parse("[server.access_keys]\nbob = \"k-bob\"");
    assert_eq!(c.server.access_keys[0].name, "bob");
    let c = parse("[server]\naccess_keys = [\"a\", \"b\"]");
    let names: Vec<&str> = c
        .server
        .access_keys
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(names, ["key-1", "key-2"]);
}

/// A name is a metrics label: no quotes or spaces that would break the
/// exposition format; one key under two names would count under either.
#[test]
fn bad_access_key_names_and_duplicate_keys_are_refused_without_quoting_the_key() {
    let e = error("[server]\naccess_keys = { \"al ice\" = \"k-secret-1\" }");
    assert!(
        e.contains("server.access_keys: invalid access key name"),
        "{e}"
    );
    assert!(!e.contains("k-secret-1"), "{e}");
    let e = error("[server]\naccess_keys = { a = \"k-secret-2\", b = \"k-secret-2\" }");
    assert!(e.contains("listed twice"), "{e}");
    assert!(!e.contains("k-secret-2"), "{e}");
    let e = error("[server]\naccess_keys = { a = 42 }");
    assert!(e.contains("server.access_keys"), "{e}");
}

#[test]
fn upstream_proxy_and_extra_ca_file_are_read() {
    use marathon_config::UpstreamProxy;
    assert!(matches!(
        parse("").server.upstream_proxy,
        UpstreamProxy::Env
    ));
    let c = parse("[server]\nupstream_proxy = \"off\"");
    assert!(matches!(c.server.upstream_proxy, UpstreamProxy::Off));
    let c = parse("[server]\nupstream_proxy = \"http://u:pw-secret@proxy.corp:3128\"");
    match &c.server.upstream_proxy {
        UpstreamProxy::Url(u) => assert_eq!(u.expose(), "http://u:pw-secret@proxy.corp:3128"),
        other => panic!("{other:?}"),
    }
    // The password never reaches an error message.
    for bad in [
        "https://u:pw-secret@proxy.corp:3128",
        "http://u:pw-secret@proxy.corp:3128/path",
    ] {
        let e = error(&format!("[server]\nupstream_proxy = \"{bad}\""));
        assert!(
            e.contains("server.upstream_proxy: invalid proxy URL"),
            "{e}"
        );
        assert!(!e.contains("pw-secret"), "{e}");
    }
    let e = error("[server]\nupstream_proxy = 3128");
    assert!(e.contains("server.upstream_proxy"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(&file, "[server]\nextra_ca_file = \"ca.pem\"\n").unwrap();
    let paths = Paths {
        config_file: file.clone(),
        data_dir: dir.path().join("data"),
    };
    let c = load_with_env(&paths, std::iter::empty()).unwrap();
    let ca = c.server.extra_ca.unwrap();
    assert_eq!(
        ca.path,
        dir.path().join("ca.pem"),
        "relative to the config file"
    );
    std::fs::write(&file, "[server]\nextra_ca_file = \"missing.pem\"\n").unwrap();
    let e = load_with_env(&paths, std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2:17: server.extra_ca_file: cannot read"),
        "{e}"
    );
    std::fs::write(dir.path().join("not.pem"), "hello").unwrap();
    std::fs::write(&file, "[server]\nextra_ca_file = \"not.pem\"\n").unwrap();
    let e = load_with_env(&paths, std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
}

#[test]
fn account_proxies_are_read_per_provider() {
    let c =
        parse("[providers.anthropic]\naccount_proxies = { work = \"http://egress-1.corp:3128\" }");
    let p = &c.providers["anthropic"].account_proxies;
    assert_eq!(p["work"].expose(), "http://egress-1.corp:3128");
    let e = error("[providers.anthropic]\naccount_proxies = { work = \"socks5://u:pw-x@h:1\" }");
    assert!(
        e.contains("providers.anthropic.account_proxies: invalid proxy URL"),
        "{e}"
    );
    assert!(!e.contains("pw-x"), "{e}");
    let e = error("[defaults]\naccount_proxies = { work = \"http://h:1\" }");
    assert!(e.contains("defaults.account_proxies"), "{e}");
}

#[test]
fn network_settings_from_the_environment() {
    use marathon_config::UpstreamProxy;
    let c = env("", &[("MARATHON_UPSTREAM_PROXY", "http://proxy.corp:8080")]).unwrap();
    assert!(matches!(c.server.upstream_proxy, UpstreamProxy::Url(_)));
    let e = env("", &[("MARATHON_EXTRA_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
    assert!(e.to_string().contains("MARATHON_EXTRA_CA_FILE"), "{e}");
}

#[test]
fn max_in_flight_per_provider_and_per_account() {
    let c = parse(
        "[defaults]\nmax_in_flight = 8\n[providers.anthropic]\nmax_in_flight = 4\n\
         account_max_in_flight = { work = 2 }\n[providers.openai]\n",
    );
    let a = &c.providers["anthropic"];
    assert_eq!(a.max_in_flight, Some(4));
    assert_eq!(a.account_max_in_flight["work"], 2);
    // The pool reads them: an account's own cap, else the provider's.
    let pool = a.pool_config();
    assert_eq!(pool.cap_of("work"), Some(2));
    assert_eq!(pool.cap_of("home"), Some(4));
    // [defaults] applies to every provider; no key at all: no cap.
    assert_eq!(c.providers["openai"].max_in_flight, Some(8));
    assert_eq!(
        parse("[providers.anthropic]\n").providers["anthropic"].max_in_flight,
        None
    );
    assert_eq!(
        parse("[providers.anthropic]\nmax_in_flight = \"off\"").providers["anthropic"]
            .max_in_flight,
        None
    );
}

#[test]
fn bad_max_in_flight_names_file_line_and_key() {
    let e = error("[providers.anthropic]\nstrategy = \"sticky\"\nmax_in_flight = 0");
    assert!(e.contains(":3"), "{e}");
    assert!(e.contains("providers.anthropic.max_in_flight"), "{e}");
    assert!(e.contains("at least 1"), "{e}");
    let e = error("[providers.anthropic]\nmax_in_flight = true");
    assert!(e.contains("providers.anthropic.max_in_flight"), "{e}");
    let e = error("[providers.anthropic]\naccount_max_in_flight = { work = -1 }");
    assert!(
        e.contains("providers.anthropic.account_max_in_flight.work"),
        "{e}"
    );
    let e = error("[providers.anthropic]\naccount_max_in_flight = { work = \"off\" }");
    assert!(e.contains("account_max_in_flight.work"), "{e}");
    let e = error("[defaults]\naccount_max_in_flight = { work = 2 }");
    assert!(e.contains("defaults.account_max_in_flight"), "{e}");
    let e = error("[store]\nslot_lease = \"100ms\"");
    assert!(e.contains("store.slot_lease"), "{e}");
    let c = env("", &[("MARATHON_ANTHROPIC_MAX_IN_FLIGHT", "3")]).unwrap();
    assert_eq!(c.providers["anthropic"].max_in_flight, Some(3));
    let e = env("", &[("MARATHON_ANTHROPIC_MAX_IN_FLIGHT", "none")]).unwrap_err();
    assert!(
        e.to_string().contains("MARATHON_ANTHROPIC_MAX_IN_FLIGHT"),
        "{e}"
    );
}
