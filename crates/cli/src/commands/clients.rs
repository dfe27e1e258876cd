//! What each client needs to talk to marathon: environment variables, a
//! config file's settings, or both — the single source `connect` prints,
//! `connect --write` merges into the client's files, `run` applies for one
//! run, and the README's "Use it with …" section shows.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use marathon_config::{Config, ProviderConfig, ProviderKind};
use serde_json::{Map, Value, json};

use crate::output::Failure;
use marathon_store::client_config::{self, Format};

/// The clients `connect` and `run` know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Client {
    /// Claude Code (`claude`)
    ClaudeCode,
    /// OpenAI Codex CLI (`codex`)
    Codex,
    /// opencode (`opencode`)
    Opencode,
    /// Gemini CLI (`gemini`)
    GeminiCli,
    /// The OpenAI SDKs (Python, TypeScript, ...) and tools built on them
    OpenaiSdk,
    /// The Anthropic SDKs (Python, TypeScript, ...) and tools built on them
    AnthropicSdk,
    /// curl, or any HTTP client
    Curl,
}

impl Client {
    /// The name on the command line (`claude-code`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Client::ClaudeCode => "claude-code",
            Client::Codex => "codex",
            Client::Opencode => "opencode",
            Client::GeminiCli => "gemini-cli",
            Client::OpenaiSdk => "openai-sdk",
            Client::AnthropicSdk => "anthropic-sdk",
            Client::Curl => "curl",
        }
    }

    /// The name people know it by.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Client::ClaudeCode => "Claude Code",
            Client::Codex => "Codex",
            Client::Opencode => "opencode",
            Client::GeminiCli => "Gemini CLI",
            Client::OpenaiSdk => "the OpenAI SDKs",
            Client::AnthropicSdk => "the Anthropic SDKs",
            Client::Curl => "curl",
        }
    }

    /// The program `run` starts, for the clients that are programs.
    pub(crate) fn program(self) -> Option<&'static str> {
        match self {
            Client::ClaudeCode => Some("claude"),
            Client::Codex => Some("codex"),
            Client::Opencode => Some("opencode"),
            Client::GeminiCli => Some("gemini"),
            Client::OpenaiSdk | Client::AnthropicSdk | Client::Curl => None,
        }
    }

    /// The marathon routes the client's requests may take, by API.
    fn slots(self) -> &'static [Slot] {
        match self {
            Client::ClaudeCode | Client::AnthropicSdk => &[Slot::Anthropic],
            Client::Codex => &[Slot::Codex],
            Client::GeminiCli => &[Slot::Google],
            Client::OpenaiSdk => &[Slot::Openai],
            Client::Opencode => &[Slot::Anthropic, Slot::Openai, Slot::Google],
            Client::Curl => &[Slot::Anthropic, Slot::Openai],
        }
    }
}

/// One API a client speaks, and the marathon providers that can serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Anthropic,
    Openai,
    Codex,
    Google,
}

impl Slot {
    /// Built-in providers to use, in order of preference.
    fn preferred(self) -> &'static [&'static str] {
        match self {
            Slot::Anthropic => &["anthropic"],
            Slot::Openai => &["openai", "codex"],
            Slot::Codex => &["codex", "openai"],
            Slot::Google => &["google"],
        }
    }

    /// Provider kinds a `--provider` may name for it.
    fn accepts(self, kind: ProviderKind) -> bool {
        match self {
            Slot::Anthropic => kind == ProviderKind::Anthropic,
            Slot::Openai | Slot::Codex => matches!(
                kind,
                ProviderKind::Openai | ProviderKind::Codex | ProviderKind::OpenaiCompatible
            ),
            Slot::Google => kind == ProviderKind::Google,
        }
    }
}

/// The proxy a client is pointed at.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// What clients present as their key: the proxy's access key, or any
    /// value (`marathon`) when it requires none — some clients refuse to
    /// start without one.
    pub(crate) key: String,
    /// Whether `key` is a real access key (then files refer to it through
    /// an environment variable instead of holding it).
    pub(crate) secret_key: bool,
}

/// The variable clients read the key from when a file names a variable.
pub(crate) const KEY_VAR: &str = "MARATHON_API_KEY";

/// A config file and the settings marathon merges into it.
#[derive(Clone, Debug)]
pub(crate) struct FileSettings {
    pub(crate) path: PathBuf,
    pub(crate) format: Format,
    pub(crate) settings: Map<String, Value>,
}

/// Everything a client needs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Setup {
    /// Variables to export, in order.
    pub(crate) env: Vec<(&'static str, String)>,
    /// Config files to change.
    pub(crate) files: Vec<FileSettings>,
    /// Example commands (curl).
    pub(crate) commands: Vec<String>,
}

/// Where the client's own files are: the user's home and the variables
/// that move them.
pub(crate) struct Places {
    pub(crate) home: PathBuf,
    pub(crate) codex_home: Option<PathBuf>,
    pub(crate) xdg_config_home: Option<PathBuf>,
    /// `GEMINI_CLI_HOME`: the home Gemini CLI keeps its `.gemini` in.
    pub(crate) gemini_cli_home: Option<PathBuf>,
}

impl Places {
    pub(crate) fn from_env() -> Places {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Places {
            home: var("HOME").unwrap_or_else(|| PathBuf::from(".")),
            codex_home: var("CODEX_HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME").filter(|p| p.is_absolute()),
            gemini_cli_home: var("GEMINI_CLI_HOME"),
        }
    }

    fn codex_config(&self) -> PathBuf {
        self.codex_home
            .clone()
            .unwrap_or_else(|| self.home.join(".codex"))
            .join("config.toml")
    }

    fn opencode_config(&self) -> PathBuf {
        self.xdg_config_home
            .clone()
            .unwrap_or_else(|| self.home.join(".config"))
            .join("opencode")
            .join("opencode.json")
    }

    fn gemini_settings(&self) -> PathBuf {
        self.gemini_cli_home
            .as_ref()
            .unwrap_or(&self.home)
            .join(".gemini")
            .join("settings.json")
    }

    /// `path` with the home directory written `~`, as people write it.
    pub(crate) fn show(&self, path: &Path) -> String {
        match path.strip_prefix(&self.home) {
            Ok(rest) if self.home != Path::new(".") => format!("~/{}", rest.display()),
            _ => path.display().to_string(),
        }
    }
}

/// The marathon provider serving `slot`: the one named, else the first
/// preferred provider that has accounts, else the first preferred.
fn provider_for<'c>(
    config: &'c Config,
    slot: Slot,
    named: Option<&str>,
    has_accounts: &dyn Fn(&str) -> bool,
) -> anyhow::Result<&'c ProviderConfig> {
    if let Some(name) = named {
        let p = config.provider(name).ok_or_else(|| {
            Failure::usage(
                format!("unknown provider {name:?}"),
                "name one of your providers (see `marathon status`)",
            )
        })?;
        if !slot.accepts(p.kind) {
            return Err(Failure::usage(
                format!(
                    "provider {} speaks the {} API, which this client does not",
                    p.name, p.kind
                ),
                "name a provider of a kind the client speaks",
            )
            .into());
        }
        return Ok(p);
    }
    let preferred = slot.preferred();
    let chosen = preferred
        .iter()
        .find(|n| has_accounts(n))
        .or(preferred.first())
        .and_then(|n| config.provider(n));
    chosen.ok_or_else(|| anyhow::anyhow!("the built-in provider {} is missing", preferred[0]))
}

/// The base URL a client uses for provider `p`: marathon's route, plus `/v1`
/// for an OpenAI provider whose upstream leaves it out (clients of the
/// OpenAI API expect it in the base URL).
fn base_url(target: &Target, p: &ProviderConfig) -> String {
    let upstream_has_v1 = p.upstream.trim_end_matches('/').ends_with("/v1");
    let v1 = if p.kind == ProviderKind::Openai && !upstream_has_v1 {
        "/v1"
    } else {
        ""
    };
    format!("{}/{}{v1}", target.url, p.name)
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `export NAME=value` lines.
pub(crate) fn export_lines(env: &[(&'static str, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect()
}

/// What `client` needs to use marathon at `target`.
pub(crate) fn setup(
    client: Client,
    target: &Target,
    config: &Config,
    named: Option<&str>,
    has_accounts: &dyn Fn(&str) -> bool,
    places: &Places,
) -> anyhow::Result<Setup> {
    // opencode and curl cover several APIs: those with accounts, else all.
    let slots: Vec<Slot> = {
        let all = client.slots();
        let served: Vec<Slot> = all
            .iter()
            .copied()
            .filter(|s| s.preferred().iter().any(|n| has_accounts(n)))
            .collect();
        if all.len() > 1 && named.is_none() && !served.is_empty() {
            served
        } else {
            all.to_vec()
        }
    };
    let provider = |slot| provider_for(config, slot, named, has_accounts);
    let key = target.key.clone();
    let mut s = Setup::default();
    match client {
        Client::ClaudeCode | Client::AnthropicSdk => {
            let p = provider(Slot::Anthropic)?;
            s.env.push(("ANTHROPIC_BASE_URL", base_url(target, p)));
            // Claude Code says "Not logged in" without a key; the SDKs refuse to start.
            s.env.push(("ANTHROPIC_API_KEY", key));
        }
        Client::OpenaiSdk => {
            let p = provider(Slot::Openai)?;
            s.env.push(("OPENAI_BASE_URL", base_url(target, p)));
            s.env.push(("OPENAI_API_KEY", key));
        }
        Client::Codex => {
            // Codex ignores OPENAI_BASE_URL: it takes a provider entry.
            let p = provider(Slot::Codex)?;
            let settings = json!({
                "model_provider": "marathon",
                "model_providers": {"marathon": {
                    "name": "marathon",
                    "base_url": base_url(target, p),
                    "env_key": KEY_VAR,
                    "wire_api": "responses",
                }}
            });
            s.files
                .push(file(places.codex_config(), Format::Toml, settings));
            s.env.push((KEY_VAR, key));
        }
        Client::Opencode => {
            let mut providers = Map::new();
            // A real access key stays out of the file: opencode reads it from the variable.
            let api_key = if target.secret_key {
                format!("{{env:{KEY_VAR}}}")
            } else {
                key.clone()
            };
            for slot in &slots {
                let p = provider(*slot)?;
                let (id, base) = match slot {
                    // opencode's built-in providers take the API version in the base URL.
                    Slot::Anthropic => ("anthropic", format!("{}/v1", base_url(target, p))),
                    Slot::Google => ("google", format!("{}/v1beta", base_url(target, p))),
                    Slot::Openai | Slot::Codex => ("openai", base_url(target, p)),
                };
                providers.insert(
                    id.to_owned(),
                    json!({"options": {"baseURL": base, "apiKey": api_key}}),
                );
            }
            let settings =
                json!({"$schema": "https://opencode.ai/config.json", "provider": providers});
            s.files
                .push(file(places.opencode_config(), Format::Json, settings));
            if target.secret_key {
                s.env.push((KEY_VAR, key));
            }
        }
        Client::GeminiCli => {
            let p = provider(Slot::Google)?;
            // API-key auth is what makes Gemini CLI honour a base URL.
            let settings = json!({"security": {"auth": {"selectedType": "gemini-api-key"}}});
            s.files
                .push(file(places.gemini_settings(), Format::Json, settings));
            s.env.push(("GOOGLE_GEMINI_BASE_URL", base_url(target, p)));
            s.env.push(("GEMINI_API_KEY", key));
            // Without it Gemini CLI refuses to work in a folder it was not told to trust.
            s.env
                .push(("GEMINI_CLI_TRUST_WORKSPACE", "true".to_owned()));
        }
        Client::Curl => {
            s.env.push(("MARATHON_URL", target.url.clone()));
            s.env.push((KEY_VAR, key));
            for slot in &slots {
                let p = provider(*slot)?;
                let route = base_url(target, p)[target.url.len()..].to_owned();
                s.commands.push(match slot {
                    Slot::Anthropic => format!(
                        "curl -s \"$MARATHON_URL{route}/v1/models\" -H \"x-api-key: ${KEY_VAR}\" -H 'anthropic-version: 2023-06-01'"
                    ),
                    _ => format!(
                        "curl -s \"$MARATHON_URL{route}/models\" -H \"authorization: Bearer ${KEY_VAR}\""
                    ),
                });
            }
        }
    }
    Ok(s)
}

fn file(path: PathBuf, format: Format, settings: Value) -> FileSettings {
    let Value::Object(settings) = settings else {
        unreachable!("settings are written as objects")
    };
    FileSettings {
        path,
        format,
        settings,
    }
}

/// What `connect` prints: the files' settings under the file's name, then
/// the variables, then example commands.
pub(crate) fn render(client: Client, setup: &Setup, places: &Places) -> String {
    let mut sections: Vec<String> = setup
        .files
        .iter()
        .map(|f| {
            format!(
                "# {} (marathon connect {} --write merges this in)\n{}",
                places.show(&f.path),
                client.name(),
                client_config::render(f.format, &f.settings)
            )
        })
        .collect();
    let mut shell = String::new();
    if !setup.files.is_empty() && !setup.env.is_empty() {
        shell.push_str("# and in your shell:\n");
    }
    shell.push_str(&export_lines(&setup.env));
    for c in &setup.commands {
        shell.push_str(c);
        shell.push('\n');
    }
    if !shell.is_empty() {
        sections.push(shell);
    }
    sections.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            url: "http://127.0.0.1:8787".into(),
            key: "marathon".into(),
            secret_key: false,
        }
    }

    fn places() -> Places {
        Places {
            home: "/home/ana".into(),
            codex_home: None,
            xdg_config_home: None,
            gemini_cli_home: None,
        }
    }

    fn run(client: Client, with_accounts: &[&str]) -> Setup {
        let config = Config::default();
        let has = |n: &str| with_accounts.contains(&n);
        setup(client, &target(), &config, None, &has, &places()).unwrap()
    }

    #[test]
    fn base_urls_follow_each_providers_route() {
        let s = run(Client::OpenaiSdk, &[]);
        assert_eq!(
            s.env[0],
            ("OPENAI_BASE_URL", "http://127.0.0.1:8787/openai/v1".into())
        );
        let s = run(Client::ClaudeCode, &[]);
        assert_eq!(
            s.env[0],
            (
                "ANTHROPIC_BASE_URL",
                "http://127.0.0.1:8787/anthropic".into()
            )
        );
        let s = run(Client::Codex, &[]);
        let base = &s.files[0].settings["model_providers"]["marathon"]["base_url"];
        assert_eq!(base, "http://127.0.0.1:8787/codex");
        assert_eq!(s.files[0].path, Path::new("/home/ana/.codex/config.toml"));
    }

    #[test]
    fn a_provider_with_accounts_is_preferred() {
        // Only OpenAI API keys: Codex goes to the openai route.
        let s = run(Client::Codex, &["openai"]);
        let base = &s.files[0].settings["model_providers"]["marathon"]["base_url"];
        assert_eq!(base, "http://127.0.0.1:8787/openai/v1");
        // opencode gets blocks only for the APIs marathon has accounts for.
        let s = run(Client::Opencode, &["anthropic"]);
        let providers = s.files[0].settings["provider"].as_object().unwrap();
        assert_eq!(providers.keys().collect::<Vec<_>>(), ["anthropic"]);
        assert_eq!(
            providers["anthropic"]["options"]["baseURL"],
            "http://127.0.0.1:8787/anthropic/v1"
        );
    }

    #[test]
    fn an_access_key_stays_out_of_files() {
        let t = Target {
            key: "team-key-1".into(),
            secret_key: true,
            ..target()
        };
        let config = Config::default();
        let s = setup(Client::Opencode, &t, &config, None, &|_| false, &places()).unwrap();
        let text = serde_json::to_string(&s.files[0].settings).unwrap();
        assert!(!text.contains("team-key-1"), "{text}");
        assert!(text.contains("{env:MARATHON_API_KEY}"), "{text}");
        assert_eq!(s.env, [(KEY_VAR, "team-key-1".to_owned())]);
    }

    #[test]
    fn a_named_provider_must_speak_the_clients_api() {
        let config = Config::default();
        let e = setup(
            Client::ClaudeCode,
            &target(),
            &config,
            Some("openai"),
            &|_| false,
            &places(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("speaks the openai API"), "{e}");
        let s = setup(
            Client::Codex,
            &target(),
            &config,
            Some("openai"),
            &|_| false,
            &places(),
        )
        .unwrap();
        assert_eq!(
            s.files[0].settings["model_providers"]["marathon"]["base_url"],
            "http://127.0.0.1:8787/openai/v1"
        );
    }

    #[test]
    fn shell_values_are_quoted_when_needed() {
        assert_eq!(
            shell_quote("http://127.0.0.1:8787/anthropic"),
            "http://127.0.0.1:8787/anthropic"
        );
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
        assert_eq!(shell_quote(""), "''");
    }
}
