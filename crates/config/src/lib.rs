//! # marathon-config: where marathon finds its settings
//!
//! One TOML file (DESIGN §6), `MARATHON_*` variables over it, command-line
//! flags over both (the CLI edits the returned [`Config`]). Its roles:
//! - [`Paths`]: where the config file and the data directory are
//!   (`MARATHON_HOME`/`--home`, else the XDG directories);
//! - [`load`] / [`load_str`]: file → checked [`Config`]; a missing file means
//!   the built-in presets;
//! - [`presets`]: the built-in providers (`anthropic`, `openai`, `codex`,
//!   `google`, `copilot`) — their upstreams, how they take credentials, and
//!   the OAuth preset each logs in with ([`ProviderConfig::oauth_preset`]);
//!   `[providers.<name>.oauth]` ([`OAuthConfig`]) overrides a preset or
//!   describes a generic OpenID/OAuth server;
//! - errors: every mistake is a [`ConfigError`] naming the file, line, column
//!   and key (or the variable). Nothing invalid is replaced by a default, and
//!   no error message quotes an access key.
//!
//! See `example.toml` in this crate for every setting, documented.

mod env;
mod model;
mod parse;
pub mod presets;
mod values;

use std::path::{Path, PathBuf};

pub use env::{GLOBAL_VARS, PROVIDER_SUFFIXES, provider_prefix};
pub use model::{
    AccessKey, AuthStyle, Config, EventsConfig, ExtraCa, HeaderRule, HeaderSource, OAuthConfig,
    ProviderConfig, ProviderKind, ServerConfig, StoreBackend, StoreConfig, UpstreamProxy,
};

/// Checks a Redis URL as `[store] url` is checked (`redis://` or
/// `rediss://`, no `user:password@`): for `marathon store copy --to`.
pub fn check_store_url(url: &str) -> Result<String, String> {
    values::redis_url(url)
}

/// Where marathon keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The TOML config file (it need not exist).
    pub config_file: PathBuf,
    /// The data directory (accounts store, hot state, locks).
    pub data_dir: PathBuf,
}

impl Paths {
    /// `home` (the `--home` flag), else `$MARATHON_HOME`: `<home>/config.toml` and
    /// `<home>/data`. Otherwise the XDG directories:
    /// `${XDG_CONFIG_HOME:-~/.config}/marathon/config.toml` and
    /// `${XDG_DATA_HOME:-~/.local/share}/marathon`.
    pub fn resolve(home: Option<&Path>) -> Paths {
        Self::resolve_with(home, |k| std::env::var_os(k).map(PathBuf::from))
    }

    /// [`Paths::resolve`] with the environment given as a lookup (for tests).
    pub fn resolve_with(home: Option<&Path>, env: impl Fn(&str) -> Option<PathBuf>) -> Paths {
        let nonempty = |k: &str| env(k).filter(|p| !p.as_os_str().is_empty());
        if let Some(home) = home
            .map(Path::to_path_buf)
            .or_else(|| nonempty("MARATHON_HOME"))
        {
            return Paths {
                config_file: home.join("config.toml"),
                data_dir: home.join("data"),
            };
        }
        let user_home = nonempty("HOME").unwrap_or_else(|| PathBuf::from("."));
        // The XDG spec says relative paths in these variables are invalid and must be ignored.
        let xdg = |k: &str, fallback: &[&str]| {
            nonempty(k).filter(|p| p.is_absolute()).unwrap_or_else(|| {
                fallback
                    .iter()
                    .fold(user_home.clone(), |p, part| p.join(part))
            })
        };
        Paths {
            config_file: xdg("XDG_CONFIG_HOME", &[".config"])
                .join("marathon")
                .join("config.toml"),
            data_dir: xdg("XDG_DATA_HOME", &[".local", "share"]).join("marathon"),
        }
    }
}

/// What is wrong with the configuration, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {}: {source}", file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds an invalid setting.
    #[error("{}:{line}:{column}: {}{message}", file.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// Dotted key path (`providers.anthropic.strategy`), when the error is about a key.
        key: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A `MARATHON_*` variable holds an invalid value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// Loads the config file at `paths.config_file` (a missing file means all
/// defaults) and applies `MARATHON_*` variables from the process environment.
pub fn load(paths: &Paths) -> Result<Config, ConfigError> {
    // `vars()` would panic on a non-UTF-8 variable anywhere in the environment:
    // such a variable of ours is an error, anyone else's is none of our business.
    let mut vars = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Ok(k) = k.into_string() else { continue };
        match v.into_string() {
            Ok(v) => vars.push((k, v)),
            Err(_) if k.starts_with("MARATHON_") => {
                return Err(ConfigError::Env {
                    var: k,
                    message: "the value is not valid UTF-8".to_owned(),
                });
            }
            Err(_) => {}
        }
    }
    load_with_env(paths, vars)
}

/// [`load`] with the environment given explicitly (for tests and embedders).
pub fn load_with_env(
    paths: &Paths,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let file = &paths.config_file;
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                file: file.clone(),
                source,
            });
        }
    };
    let mut config = parse::parse(&src, file)?;
    env::apply(&mut config, vars)?;
    Ok(config)
}

/// Parses config text (the contents of `file`, which is only used in errors).
/// No environment variables are applied.
pub fn load_str(src: &str, file: &Path) -> Result<Config, ConfigError> {
    parse::parse(src, file)
}

impl Default for Config {
    /// The built-in presets with default settings, as when no file exists.
    fn default() -> Self {
        parse::parse("", Path::new("config.toml")).expect("the empty config is valid")
    }
}
