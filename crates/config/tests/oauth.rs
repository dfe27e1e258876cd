//! `[providers.<name>.oauth]`: presets by kind, overrides, generic servers,
//! and an error naming file, line and key for every mistake.

use std::path::Path;

use marathon_config::{Config, OAuthConfig, load_str};

fn parse(src: &str) -> Config {
    match load_str(src, Path::new("config.toml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

fn error(src: &str) -> String {
    match load_str(src, Path::new("config.toml")) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn builtin_providers_log_in_with_their_builtin_preset() {
    let c = parse("");
    let presets: Vec<(&str, Option<&str>)> = c
        .providers
        .values()
        .map(|p| (p.name.as_str(), p.oauth_preset()))
        .collect();
    assert_eq!(
        presets,
        [
            ("anthropic", Some("anthropic")),
            ("codex", Some("openai-chatgpt")),
            ("copilot", Some("github-copilot")),
            ("google", Some("google-gemini")),
            ("openai", None),
        ]
    );
    assert!(c.providers.values().all(|p| p.oauth.is_none()));
    assert!(!c.providers["openai"].has_oauth());
    assert!(c.providers["anthropic"].has_oauth());
}

#[test]
fn a_generic_provider_with_an_issuer() {
    let c = parse(
        r#"
[providers.corp]
kind = "openai-compatible"
upstream = "http://127.0.0.1:9000/v1"

[providers.corp.oauth]
issuer = "http://127.0.0.1:4444/"
client_id = "marathon"
scopes = ["openid", "email", "offline_access"]
extra_authorize_params = { prompt = "consent", access_type = "offline" }
redirect_port = 1455
"#,
    );
    let p = &c.providers["corp"];
    assert_eq!(p.oauth_preset(), None);
    assert!(p.has_oauth());
    assert_eq!(
        p.oauth.as_ref().unwrap(),
        &OAuthConfig {
            preset: None,
            issuer: Some("http://127.0.0.1:4444".into()),
            client_id: Some("marathon".into()),
            scopes: Some(vec![
                "openid".into(),
                "email".into(),
                "offline_access".into()
            ]),
            // In key order.
            extra_authorize_params: vec![
                ("access_type".into(), "offline".into()),
                ("prompt".into(), "consent".into())
            ],
            redirect_port: Some(1455),
            ..OAuthConfig::default()
        }
    );
}

#[test]
fn explicit_endpoints_without_an_issuer() {
    let c = parse(
        r#"
[providers.corp]
kind = "openai"
[providers.corp.oauth]
authorize_url = "https://id.example.com/authorize"
token_url = "https://id.example.com/token"
device_url = "https://id.example.com/device"
userinfo_url = "https://id.example.com/userinfo"
client_id = "abc"
"#,
    );
    let o = c.providers["corp"].oauth.clone().unwrap();
    assert_eq!(o.issuer, None);
    assert_eq!(
        o.authorize_url.as_deref(),
        Some("https://id.example.com/authorize")
    );
    assert_eq!(o.token_url.as_deref(), Some("https://id.example.com/token"));
    assert_eq!(
        o.device_url.as_deref(),
        Some("https://id.example.com/device")
    );
    assert_eq!(
        o.userinfo_url.as_deref(),
        Some("https://id.example.com/userinfo")
    );
}

#[test]
fn a_preset_by_name_and_overrides_of_a_builtin() {
    let c = parse(
        r#"
[providers.claude-team]
kind = "anthropic"
[providers.claude-team.oauth]
preset = "anthropic"

[providers.my-codex]
kind = "openai"
[providers.my-codex.oauth]
preset = "openai-chatgpt"

[providers.google.oauth]
client_id = "my-own-client.apps.googleusercontent.com"
"#,
    );
    assert_eq!(c.providers["claude-team"].oauth_preset(), Some("anthropic"));
    // An openai-kind provider logging in through the ChatGPT preset.
    assert_eq!(
        c.providers["my-codex"].oauth_preset(),
        Some("openai-chatgpt")
    );
    let g = &c.providers["google"];
    assert_eq!(g.oauth_preset(), Some("google-gemini"));
    assert_eq!(
        g.oauth.as_ref().unwrap().client_id.as_deref(),
        Some("my-own-client.apps.googleusercontent.com")
    );
}

#[test]
fn an_unknown_key_is_refused_with_its_path() {
    let e = error("[providers.anthropic.oauth]\nclient = \"x\"\n");
    assert!(
        e.starts_with("config.toml:2:1: providers.anthropic.oauth.client: unknown field `client`"),
        "{e}"
    );
}

#[test]
fn an_unknown_preset() {
    assert_eq!(
        error("[providers.anthropic.oauth]\npreset = \"claude\"\n"),
        "config.toml:2:10: providers.anthropic.oauth.preset: unknown OAuth preset \"claude\" \
         (expected one of anthropic, openai-chatgpt, github-copilot, google-gemini)"
    );
}

#[test]
fn a_generic_provider_must_be_complete() {
    let base = "[providers.corp]\nkind = \"openai-compatible\"\nupstream = \"http://127.0.0.1:1\"\n\
                [providers.corp.oauth]\n";
    let e = error(&format!("{base}issuer = \"https://id.example.com\"\n"));
    assert!(
        e.starts_with("config.toml:4:1: providers.corp.oauth: client_id is missing"),
        "{e}"
    );
    assert!(e.contains("`preset`"), "{e}");
    let e = error(&format!("{base}client_id = \"m\"\n"));
    assert!(
        e.starts_with(
            "config.toml:4:1: providers.corp.oauth: set `issuer` (endpoints found by discovery) or `token_url`"
        ),
        "{e}"
    );
    let e = error(&format!(
        "{base}client_id = \"m\"\ntoken_url = \"https://id.example.com/token\"\n"
    ));
    assert!(e.contains("there is no way to log in"), "{e}");
}

#[test]
fn invalid_values_name_their_key() {
    let pre = "[providers.anthropic.oauth]\n";
    assert_eq!(
        error(&format!("{pre}issuer = \"id.example.com\"\n")),
        "config.toml:2:10: providers.anthropic.oauth.issuer: invalid issuer \"id.example.com\" \
         (expected an http:// or https:// URL)"
    );
    assert_eq!(
        error(&format!("{pre}redirect_port = 70000\n")),
        "config.toml:2:17: providers.anthropic.oauth.redirect_port: redirect_port must be a port \
         from 1 to 65535 (got 70000)"
    );
    assert_eq!(
        error(&format!("{pre}redirect_port = \"1455\"\n")),
        "config.toml:2:17: providers.anthropic.oauth.redirect_port: expected a port number, found a string"
    );
    assert_eq!(
        error(&format!("{pre}client_id = \"\"\n")),
        "config.toml:2:13: providers.anthropic.oauth.client_id: the client id must not be empty or contain spaces"
    );
    let e = error(&format!("{pre}scopes = [\"openid email\"]\n"));
    assert!(
        e.starts_with(
            "config.toml:2:11: providers.anthropic.oauth.scopes: invalid scope \"openid email\""
        ),
        "{e}"
    );
    let e = error(&format!("{pre}scopes = \"openid\"\n"));
    assert!(
        e.starts_with("config.toml:2:10: providers.anthropic.oauth.scopes:"),
        "{e}"
    );
    assert_eq!(
        error(&format!(
            "{pre}extra_authorize_params = {{ redirect_uri = \"http://x\" }}\n"
        )),
        "config.toml:2:28: providers.anthropic.oauth.extra_authorize_params.redirect_uri: \
         redirect_uri is set by marathon itself; remove it (scopes go in `scopes`)"
    );
    assert_eq!(
        error(&format!(
            "{pre}extra_authorize_params = {{ max_age = 5 }}\n"
        )),
        "config.toml:2:38: providers.anthropic.oauth.extra_authorize_params.max_age: \
         expected a string, found an integer"
    );
}

#[test]
fn oauth_is_per_provider_not_a_default() {
    let e = error("[defaults.oauth]\nclient_id = \"x\"\n");
    assert!(
        e.starts_with("config.toml:1:1: defaults.oauth: oauth is set per provider"),
        "{e}"
    );
}
