//! The config file: TOML → raw, spanned values → checked [`Config`].
//!
//! Structure (tables, unknown keys, types of compound values) is checked by
//! serde with `deny_unknown_fields`; every scalar setting is read as a spanned
//! [`Scalar`] and checked here, so an error always knows its key and position.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use marathon_core::Secret;
// Default settings every provider starts from are the engine's own, so the
// config and the engine cannot disagree.
use marathon_core::defaults;
use serde::Deserialize;
use toml::Spanned;

use crate::ConfigError;
use crate::model::{
    AccessKey, AuthStyle, Config, EventsConfig, HeaderRule, OAuthConfig, ProviderConfig,
    ProviderKind, ServerConfig, StoreBackend, StoreConfig,
};
use crate::presets;
use crate::values;

/// A TOML scalar, before we know which setting it is for.
#[derive(Clone, Debug)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Int(_) => "an integer",
            Scalar::Float(_) => "a float",
            Scalar::Bool(_) => "a boolean",
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

type Field = Option<Spanned<Scalar>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    defaults: RawProvider,
    #[serde(default)]
    providers: BTreeMap<Spanned<String>, RawProvider>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Field,
    access_keys: Option<RawAccessKeys>,
    max_body: Field,
    peek_first_event: Field,
    upstream_timeout: Field,
    allowed_hosts: Option<Vec<Spanned<String>>>,
    allowed_origins: Option<Vec<Spanned<String>>>,
    header_read_timeout: Field,
    idle_timeout: Field,
    max_connections: Field,
    error_body_timeout: Field,
    shutdown_grace: Field,
    upstream_proxy: Field,
    extra_ca_file: Field,
}

/// `access_keys`: a list of keys (named `key-1`, `key-2`, ... by position)
/// or a table of name = key.
#[derive(Default)]
struct RawAccessKeys(Vec<(Option<Spanned<String>>, Spanned<Secret>)>);

impl<'de> Deserialize<'de> for RawAccessKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawAccessKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of keys or a table of name = key")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element::<Spanned<Secret>>()? {
                    keys.push((None, k));
                }
                Ok(RawAccessKeys(keys))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some((name, k)) = map.next_entry::<Spanned<String>, Spanned<Secret>>()? {
                    keys.push((Some(name), k));
                }
                Ok(RawAccessKeys(keys))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Field,
    url: Field,
    username: Field,
    password: Option<Spanned<Secret>>,
    prefix: Field,
    slot_lease: Field,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    webhook: Field,
    command: Field,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Field,
    upstream: Field,
    strategy: Field,
    max_attempts: Field,
    rate_limit_cooldown: Field,
    auth_failure_cooldown: Field,
    network_retry_attempts: Field,
    max_wait: Field,
    short_wait: Field,
    refresh_lead: Field,
    proactive_threshold: Field,
    usage_poll: Field,
    usage_url: Field,
    session_headers: Option<Spanned<Vec<Spanned<String>>>>,
    /// The older spelling: one header, `""` for none.
    session_header: Field,
    account_proxies: Option<BTreeMap<Spanned<String>, Spanned<Secret>>>,
    max_in_flight: Field,
    account_max_in_flight: Option<BTreeMap<Spanned<String>, Spanned<Scalar>>>,
    auth: Option<Spanned<RawAuth>>,
    oauth: Option<Spanned<RawOAuth>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    preset: Field,
    issuer: Field,
    authorize_url: Field,
    token_url: Field,
    device_url: Field,
    userinfo_url: Field,
    client_id: Field,
    scopes: Option<Spanned<Vec<Spanned<String>>>>,
    extra_authorize_params: Option<BTreeMap<Spanned<String>, Spanned<Scalar>>>,
    redirect_port: Field,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    api_key_header: Field,
    api_key_prefix: Field,
    strip: Option<Vec<Spanned<String>>>,
}

/// Parses `src` (the contents of `file`) into a checked config, without
/// looking at the environment.
pub(crate) fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(src).map_err(|e| from_toml(e, src, file))?;
    let cx = Cx { src, file };
    let server = server(&cx, raw.server)?;
    let events = events(&cx, raw.events)?;
    let store = store(&cx, raw.store)?;
    for (key, what) in [
        ("kind", &raw.defaults.kind),
        ("upstream", &raw.defaults.upstream),
    ] {
        if let Some(v) = what {
            return Err(cx.err(
                v.span(),
                &format!("defaults.{key}"),
                format!("{key} is set per provider, not in [defaults]"),
            ));
        }
    }
    if let Some(auth) = &raw.defaults.auth {
        return Err(cx.err(
            auth.span(),
            "defaults.auth",
            "auth is set per provider, not in [defaults]".to_owned(),
        ));
    }
    if let Some(proxies) = raw
        .defaults
        .account_proxies
        .as_ref()
        .and_then(|p| p.keys().next())
    {
        return Err(cx.err(
            proxies.span(),
            "defaults.account_proxies",
            "account_proxies is set per provider, not in [defaults]".to_owned(),
        ));
    }
    if let Some(caps) = raw
        .defaults
        .account_max_in_flight
        .as_ref()
        .and_then(|p| p.keys().next())
    {
        return Err(cx.err(
            caps.span(),
            "defaults.account_max_in_flight",
            "account_max_in_flight is set per provider, not in [defaults]".to_owned(),
        ));
    }
    if let Some(oauth) = &raw.defaults.oauth {
        return Err(cx.err(
            oauth.span(),
            "defaults.oauth",
            "oauth is set per provider ([providers.<name>.oauth]), not in [defaults]".to_owned(),
        ));
    }
    let mut providers = BTreeMap::new();
    for (name, kind) in presets::BUILTIN {
        let p = provider(
            &cx,
            name,
            kind,
            &RawProvider::default(),
            &raw.defaults,
            None,
        )?;
        providers.insert(name.to_owned(), p);
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (key, section) in &raw.providers {
        let written = key.get_ref().as_str();
        let path = format!("providers.{written}");
        values::provider_name(written).map_err(|m| cx.err(key.span(), &path, m))?;
        let name = presets::canonical_name(written);
        if let Some(other) = seen.insert(name.to_owned(), written.to_owned()) {
            return Err(cx.err(
                key.span(),
                &path,
                format!("[providers.{written}] and [providers.{other}] configure the same provider {name:?}; keep one"),
            ));
        }
        let builtin = presets::BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k);
        let kind = match (&section.kind, builtin) {
            (Some(k), builtin) => {
                let kp = format!("{path}.kind");
                let kind = with_str(
                    &cx,
                    k,
                    &kp,
                    "a provider kind such as \"openai\"",
                    values::kind,
                )?;
                if let Some(b) = builtin.filter(|b| *b != kind) {
                    return Err(cx.err(
                        k.span(),
                        &kp,
                        format!(
                            "{name} is built in with kind {b}; give a {kind} provider its own name"
                        ),
                    ));
                }
                kind
            }
            (None, Some(b)) => b,
            (None, None) => {
                return Err(cx.err(
                    key.span(),
                    &path,
                    format!(
                        "unknown provider {written:?}: a provider that is not built in needs `kind` (e.g. kind = \"openai\") and `upstream`"
                    ),
                ));
            }
        };
        let p = provider(
            &cx,
            name,
            kind,
            section,
            &raw.defaults,
            Some((&path, key.span())),
        )?;
        providers.insert(name.to_owned(), p);
    }
    let config = Config {
        server,
        providers,
        events,
        store,
    };
    Ok(config)
}

struct Cx<'a> {
    src: &'a str,
    file: &'a Path,
}

impl Cx<'_> {
    fn err(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        let (line, column) = line_col(self.src, span.start);
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            key: (!key.is_empty()).then(|| key.to_owned()),
            message,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let offset = (0..=offset)
        .rev()
        .find(|i| src.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A toml/serde error → our error: position from its span, key path from the
/// keys toml collected (only reachable through its context-free `Display`).
fn from_toml(mut e: toml::de::Error, src: &str, file: &Path) -> ConfigError {
    let message = e.message().trim_end().to_owned();
    let (line, column) = e.span().map_or((1, 1), |s| line_col(src, s.start));
    e.set_input(None);
    let rendered = e.to_string();
    let mut key = rendered
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'))
        .map(str::to_owned);
    // serde names an unknown key only in the message; make it part of the path.
    if let Some(unknown) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        key = Some(match key {
            Some(parent) => format!("{parent}.{unknown}"),
            None => unknown.to_owned(),
        });
    }
    // serde's type errors quote the offending value; under access_keys that is a secret.
    let message = if key
        .as_deref()
        .is_some_and(|k| k.starts_with("server.access_keys"))
    {
        "expected a list of keys, e.g. access_keys = [\"<key>\"], or a table of name = key, \
         e.g. access_keys = { alice = \"<key>\" }"
            .to_owned()
    } else if key
        .as_deref()
        .is_some_and(|k| k.starts_with("server.upstream_proxy") || k.contains(".account_proxies"))
    {
        // Proxy URLs may hold a password.
        "expected a proxy URL such as \"http://proxy.example:3128\"".to_owned()
    } else if key.as_deref() == Some("store.password") {
        "expected a string".to_owned()
    } else {
        message
    };
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// Reads a string-valued field through `parse`.
fn with_str<T>(
    cx: &Cx<'_>,
    v: &Spanned<Scalar>,
    key: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match v.get_ref() {
        Scalar::Str(s) => parse(s).map_err(|m| cx.err(v.span(), key, m)),
        other => Err(cx.err(
            v.span(),
            key,
            format!("expected {expected}, found {}", other.type_name()),
        )),
    }
}

fn server(cx: &Cx<'_>, mut raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let mut s = ServerConfig::default();
    if let Some(v) = &raw.listen {
        s.listen = with_str(
            cx,
            v,
            "server.listen",
            "an address such as \"127.0.0.1:8787\"",
            values::listen,
        )?;
    }
    if let Some(keys) = raw.access_keys.take() {
        s.access_keys = access_keys(cx, keys)?;
    }
    network(cx, &raw, &mut s)?;
    if let Some(v) = &raw.max_body {
        s.max_body = match v.get_ref() {
            Scalar::Int(n) => u64::try_from(*n).map_err(|_| {
                cx.err(
                    v.span(),
                    "server.max_body",
                    format!("max_body must not be negative (got {n})"),
                )
            })?,
            Scalar::Str(t) => {
                values::bytes(t).map_err(|m| cx.err(v.span(), "server.max_body", m))?
            }
            other => {
                return Err(cx.err(
                    v.span(),
                    "server.max_body",
                    format!(
                        "expected a size such as \"32MiB\" or a number of bytes, found {}",
                        other.type_name()
                    ),
                ));
            }
        };
    }
    if let Some(v) = &raw.peek_first_event {
        s.peek_first_event = boolean(cx, v, "server.peek_first_event")?;
    }
    if let Some(v) = &raw.upstream_timeout {
        s.upstream_timeout = with_str(
            cx,
            v,
            "server.upstream_timeout",
            "a duration such as \"10m\", or \"off\"",
            values::optional_duration,
        )?;
    }
    connection_limits(cx, &raw, &mut s)?;
    if let Some(list) = &raw.allowed_hosts {
        s.allowed_hosts = checked_list(cx, list, "server.allowed_hosts", values::host_name)?;
    }
    if let Some(list) = &raw.allowed_origins {
        s.allowed_origins = checked_list(cx, list, "server.allowed_origins", values::origin)?;
    }
    if let Err(m) = s.check_exposure() {
        let span = raw.listen.as_ref().map_or(0..0, |v| v.span());
        return Err(cx.err(span, "server.listen", m));
    }
    Ok(s)
}

/// `server.access_keys`: no empty key, no two keys alike, names fit for a metrics label.
fn access_keys(cx: &Cx<'_>, raw: RawAccessKeys) -> Result<Vec<AccessKey>, ConfigError> {
    let mut keys: Vec<AccessKey> = Vec::with_capacity(raw.0.len());
    for (i, (name, key)) in raw.0.into_iter().enumerate() {
        let span = key.span();
        let key = key.into_inner();
        let err = |m: &str| cx.err(span.clone(), "server.access_keys", m.to_owned());
        if key.expose().trim().is_empty() {
            return Err(err("an access key must not be empty"));
        }
        if keys.iter().any(|k| k.key.same_as(&key)) {
            return Err(err(
                "the same access key is listed twice; give each client its own",
            ));
        }
        let named = match name {
            Some(name) => {
                let n = values::access_key_name(name.get_ref())
                    .map_err(|m| cx.err(name.span(), "server.access_keys", m))?;
                AccessKey::new(n, key)
            }
            None => AccessKey::unnamed(i, key),
        };
        keys.push(named);
    }
    Ok(keys)
}

/// `server.upstream_proxy` and `server.extra_ca_file`.
fn network(cx: &Cx<'_>, raw: &RawServer, s: &mut ServerConfig) -> Result<(), ConfigError> {
    if let Some(v) = &raw.upstream_proxy {
        s.upstream_proxy = with_str(
            cx,
            v,
            "server.upstream_proxy",
            "\"env\", \"off\" or a URL such as \"http://proxy.example:3128\"",
            values::upstream_proxy,
        )?;
    }
    if let Some(v) = &raw.extra_ca_file {
        let dir = cx.file.parent().unwrap_or(Path::new("."));
        s.extra_ca = Some(with_str(
            cx,
            v,
            "server.extra_ca_file",
            "the path of a PEM file",
            |p| values::extra_ca(dir, p),
        )?);
    }
    Ok(())
}

/// `providers.<name>.account_proxies`: account label → proxy URL.
fn account_proxies(
    cx: &Cx<'_>,
    raw: &RawProvider,
    path: &str,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let mut out = BTreeMap::new();
    for (label, url) in raw.account_proxies.iter().flatten() {
        let key = format!("{path}.account_proxies");
        let url =
            values::proxy_url(url.get_ref().expose()).map_err(|m| cx.err(url.span(), &key, m))?;
        out.insert(label.get_ref().clone(), url);
    }
    Ok(out)
}

/// `providers.<name>.account_max_in_flight`: account label → cap.
fn account_max_in_flight(
    cx: &Cx<'_>,
    raw: &RawProvider,
    path: &str,
) -> Result<BTreeMap<String, u32>, ConfigError> {
    let mut out = BTreeMap::new();
    for (label, cap) in raw.account_max_in_flight.iter().flatten() {
        let key = format!("{path}.account_max_in_flight.{}", label.get_ref());
        let n = in_flight_cap(cx, cap, &key)?.ok_or_else(|| {
            cx.err(
                cap.span(),
                &key,
                "an account's cap is a number of at least 1; remove the entry for no cap"
                    .to_owned(),
            )
        })?;
        out.insert(label.get_ref().clone(), n);
    }
    Ok(out)
}

/// A `max_in_flight` value: a number of at least 1, or "off".
fn in_flight_cap(cx: &Cx<'_>, v: &Spanned<Scalar>, key: &str) -> Result<Option<u32>, ConfigError> {
    match v.get_ref() {
        Scalar::Int(n) => values::max_in_flight_int(*n).map_err(|m| cx.err(v.span(), key, m)),
        Scalar::Str(s) => values::max_in_flight_str(s).map_err(|m| cx.err(v.span(), key, m)),
        other => Err(cx.err(
            v.span(),
            key,
            format!(
                "expected a number of requests (at least 1) or \"off\", found {}",
                other.type_name()
            ),
        )),
    }
}

/// Timeouts and the connection cap of `[server]`.
fn connection_limits(
    cx: &Cx<'_>,
    raw: &RawServer,
    s: &mut ServerConfig,
) -> Result<(), ConfigError> {
    let timeout = |v: &Field, key: &str, slot: &mut std::time::Duration| {
        if let Some(v) = v {
            *slot = with_str(
                cx,
                v,
                key,
                "a duration such as \"10s\"",
                values::positive_duration,
            )?;
        }
        Ok::<_, ConfigError>(())
    };
    timeout(
        &raw.header_read_timeout,
        "server.header_read_timeout",
        &mut s.header_read_timeout,
    )?;
    timeout(
        &raw.idle_timeout,
        "server.idle_timeout",
        &mut s.idle_timeout,
    )?;
    timeout(
        &raw.error_body_timeout,
        "server.error_body_timeout",
        &mut s.error_body_timeout,
    )?;
    if let Some(v) = &raw.shutdown_grace {
        // Zero is fine here: stop at once, after saving state.
        s.shutdown_grace = with_str(
            cx,
            v,
            "server.shutdown_grace",
            "a duration such as \"30s\"",
            values::duration,
        )?;
    }
    if let Some(v) = &raw.max_connections {
        let key = "server.max_connections";
        s.max_connections = match v.get_ref() {
            Scalar::Int(n) => {
                values::max_connections_int(*n).map_err(|m| cx.err(v.span(), key, m))?
            }
            Scalar::Str(t) => {
                values::max_connections_str(t).map_err(|m| cx.err(v.span(), key, m))?
            }
            other => {
                return Err(cx.err(
                    v.span(),
                    key,
                    format!(
                        "expected a number of connections or \"auto\", found {}",
                        other.type_name()
                    ),
                ));
            }
        };
    }
    Ok(())
}

/// A list of strings, each checked by `check`.
fn checked_list(
    cx: &Cx<'_>,
    list: &[Spanned<String>],
    key: &str,
    check: fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, ConfigError> {
    list.iter()
        .map(|v| check(v.get_ref()).map_err(|m| cx.err(v.span(), key, m)))
        .collect()
}

fn boolean(cx: &Cx<'_>, v: &Spanned<Scalar>, key: &str) -> Result<bool, ConfigError> {
    match v.get_ref() {
        Scalar::Bool(b) => Ok(*b),
        other => Err(cx.err(
            v.span(),
            key,
            format!("expected true or false, found {}", other.type_name()),
        )),
    }
}

fn store(cx: &Cx<'_>, raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let mut s = StoreConfig::default();
    if let Some(v) = &raw.backend {
        s.backend = with_str(
            cx,
            v,
            "store.backend",
            "\"file\" or \"redis\"",
            values::store_backend,
        )?;
    }
    if let Some(v) = &raw.url {
        s.url = Some(with_str(
            cx,
            v,
            "store.url",
            "a redis:// URL",
            values::redis_url,
        )?);
    }
    if let Some(v) = &raw.username {
        s.username = Some(with_str(cx, v, "store.username", "a user name", |u| {
            Ok(u.trim().to_owned())
        })?);
    }
    s.password = raw.password.map(Spanned::into_inner);
    if let Some(v) = &raw.prefix {
        s.prefix = with_str(cx, v, "store.prefix", "a key prefix", values::key_prefix)?;
    }
    if let Some(v) = &raw.slot_lease {
        s.slot_lease = with_str(
            cx,
            v,
            "store.slot_lease",
            "a duration such as \"30s\"",
            values::slot_lease,
        )?;
    }
    if s.backend == StoreBackend::Redis && s.url.is_none() {
        let span = raw.backend.as_ref().map(|v| v.span()).unwrap_or_default();
        return Err(cx.err(
            span,
            "store.url",
            "backend = \"redis\" needs url = \"redis://host:6379/0\" (or MARATHON_STORE_URL)"
                .to_owned(),
        ));
    }
    Ok(s)
}

fn events(cx: &Cx<'_>, raw: RawEvents) -> Result<EventsConfig, ConfigError> {
    let mut e = EventsConfig::default();
    if let Some(v) = &raw.webhook {
        e.webhook = Some(with_str(cx, v, "events.webhook", "a URL", |s| {
            values::url("webhook URL", s)
        })?);
    }
    if let Some(v) = &raw.command {
        let cmd = with_str(cx, v, "events.command", "a shell command", |s| {
            Ok(s.trim().to_owned())
        })?;
        if cmd.is_empty() {
            return Err(cx.err(
                v.span(),
                "events.command",
                "the command is empty; remove the key to run none".to_owned(),
            ));
        }
        e.command = Some(cmd);
    }
    Ok(e)
}

/// One provider: its own section, else `[defaults]`, else the built-in default.
fn provider(
    cx: &Cx<'_>,
    name: &str,
    kind: ProviderKind,
    own: &RawProvider,
    defaults: &RawProvider,
    section: Option<(&str, Range<usize>)>,
) -> Result<ProviderConfig, ConfigError> {
    let own_path = section
        .as_ref()
        .map_or_else(|| format!("providers.{name}"), |(p, _)| (*p).to_owned());
    // The field's value and the key path it was written at.
    let pick = |f: fn(&RawProvider) -> &Field, key: &str| -> Option<(Spanned<Scalar>, String)> {
        if let Some(v) = f(own) {
            Some((v.clone(), format!("{own_path}.{key}")))
        } else {
            f(defaults)
                .as_ref()
                .map(|v| (v.clone(), format!("defaults.{key}")))
        }
    };

    let upstream = match &own.upstream {
        Some(v) => with_str(
            cx,
            v,
            &format!("{own_path}.upstream"),
            "a URL",
            values::upstream_url,
        )?,
        None => match presets::default_upstream(kind) {
            Some(u) => u.to_owned(),
            None => {
                let span = section.map_or(0..0, |(_, s)| s);
                return Err(cx.err(
                    span,
                    &own_path,
                    format!("provider {name:?} has kind {kind} and needs `upstream` (the server's base URL)"),
                ));
            }
        },
    };

    let strategy = match pick(|r| &r.strategy, "strategy") {
        Some((v, key)) => with_str(
            cx,
            &v,
            &key,
            "a strategy name such as \"sticky\"",
            values::strategy,
        )?,
        None => defaults::STRATEGY,
    };
    let max_attempts = match pick(|r| &r.max_attempts, "max_attempts") {
        Some((v, key)) => match v.get_ref() {
            Scalar::Int(n) => {
                values::max_attempts_int(*n).map_err(|m| cx.err(v.span(), &key, m))?
            }
            Scalar::Str(s) => values::max_attempts_str(s).map_err(|m| cx.err(v.span(), &key, m))?,
            other => {
                return Err(cx.err(
                    v.span(),
                    &key,
                    format!(
                        "expected a number of attempts or \"accounts\", found {}",
                        other.type_name()
                    ),
                ));
            }
        },
        None => defaults::MAX_ATTEMPTS,
    };
    let duration = |field: fn(&RawProvider) -> &Field, key: &str, default| match pick(field, key) {
        Some((v, path)) => with_str(
            cx,
            &v,
            &path,
            "a duration such as \"30s\"",
            values::duration,
        ),
        None => Ok(default),
    };
    let rate_limit_cooldown = duration(
        |r| &r.rate_limit_cooldown,
        "rate_limit_cooldown",
        defaults::RATE_LIMIT_COOLDOWN,
    )?;
    let auth_failure_cooldown = duration(
        |r| &r.auth_failure_cooldown,
        "auth_failure_cooldown",
        defaults::AUTH_FAILURE_COOLDOWN,
    )?;
    let refresh_lead = duration(|r| &r.refresh_lead, "refresh_lead", defaults::REFRESH_LEAD)?;
    let short_wait = duration(|r| &r.short_wait, "short_wait", defaults::SHORT_WAIT)?;
    let network_retry_attempts = match pick(|r| &r.network_retry_attempts, "network_retry_attempts")
    {
        Some((v, key)) => match v.get_ref() {
            Scalar::Int(n) => values::count_int("network_retry_attempts", *n)
                .map_err(|m| cx.err(v.span(), &key, m))?,
            other => {
                return Err(cx.err(
                    v.span(),
                    &key,
                    format!("expected a whole number, found {}", other.type_name()),
                ));
            }
        },
        None => defaults::NETWORK_RETRY_ATTEMPTS,
    };
    let max_wait = match pick(|r| &r.max_wait, "max_wait") {
        Some((v, key)) => with_str(
            cx,
            &v,
            &key,
            "a duration such as \"30s\", or \"off\"",
            values::optional_duration,
        )?,
        None => defaults::MAX_WAIT,
    };
    let proactive_threshold = match pick(|r| &r.proactive_threshold, "proactive_threshold") {
        Some((v, key)) => match v.get_ref() {
            Scalar::Float(t) => values::threshold(*t).map_err(|m| cx.err(v.span(), &key, m))?,
            Scalar::Int(t) => {
                values::threshold(*t as f64).map_err(|m| cx.err(v.span(), &key, m))?
            }
            Scalar::Str(s) => values::threshold_str(s).map_err(|m| cx.err(v.span(), &key, m))?,
            Scalar::Bool(_) => {
                return Err(cx.err(
                    v.span(),
                    &key,
                    "expected a fraction like 0.95 or \"off\", found a boolean".to_owned(),
                ));
            }
        },
        None => defaults::PROACTIVE_THRESHOLD,
    };
    let usage_poll = match pick(|r| &r.usage_poll, "usage_poll") {
        Some((v, key)) => with_str(
            cx,
            &v,
            &key,
            "a duration such as \"2m\", or \"off\"",
            values::usage_poll,
        )?,
        None => defaults::USAGE_POLL,
    };
    let usage_url = match &own.usage_url {
        Some(v) => Some(with_str(
            cx,
            v,
            &format!("{own_path}.usage_url"),
            "a URL",
            values::upstream_url,
        )?),
        None => None,
    };
    let session_headers = session_headers(cx, &[(own, &own_path), (defaults, "defaults")])?;

    let mut auth = presets::default_auth(kind);
    if let Some(raw) = &own.auth {
        apply_auth(cx, &mut auth, raw.get_ref(), &format!("{own_path}.auth"))?;
    }
    let oauth = match &own.oauth {
        Some(raw) => Some(oauth(cx, kind, raw, &format!("{own_path}.oauth"))?),
        None => None,
    };
    let account_proxies = account_proxies(cx, own, &own_path)?;
    let max_in_flight = match pick(|r| &r.max_in_flight, "max_in_flight") {
        Some((v, key)) => in_flight_cap(cx, &v, &key)?,
        None => None,
    };
    let account_max_in_flight = account_max_in_flight(cx, own, &own_path)?;

    Ok(ProviderConfig {
        name: name.to_owned(),
        kind,
        upstream,
        strategy,
        max_attempts,
        rate_limit_cooldown,
        auth_failure_cooldown,
        network_retry_attempts,
        max_wait,
        short_wait,
        refresh_lead,
        proactive_threshold,
        usage_poll,
        usage_url,
        session_headers,
        auth,
        oauth,
        account_proxies,
        max_in_flight,
        account_max_in_flight,
    })
}

/// `session_headers` (a list) or its older spelling `session_header` (one
/// name, `""` for none), from the first section that sets either; else the
/// clients' own session headers.
fn session_headers(
    cx: &Cx<'_>,
    sections: &[(&RawProvider, &str)],
) -> Result<Vec<String>, ConfigError> {
    for (raw, path) in sections {
        match (&raw.session_headers, &raw.session_header) {
            (Some(_), Some(one)) => {
                return Err(cx.err(
                    one.span(),
                    &format!("{path}.session_header"),
                    "set either session_headers (a list) or session_header, not both".to_owned(),
                ));
            }
            (Some(list), None) => {
                let key = format!("{path}.session_headers");
                let mut names: Vec<String> = Vec::new();
                for h in list.get_ref() {
                    let name =
                        values::header_name(h.get_ref()).map_err(|m| cx.err(h.span(), &key, m))?;
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                return Ok(names);
            }
            (None, Some(one)) => {
                let key = format!("{path}.session_header");
                return with_str(cx, one, &key, "a header name", |s| {
                    if s.is_empty() {
                        Ok(Vec::new())
                    } else {
                        values::header_name(s).map(|n| vec![n])
                    }
                });
            }
            (None, None) => {}
        }
    }
    Ok(ProviderConfig::DEFAULT_SESSION_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect())
}

/// Authorization parameters marathon itself sets; configuring them would
/// break the flow (PKCE, state, the redirect) or silently be ignored.
const RESERVED_AUTHORIZE_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// `[providers.x.oauth]`: a built-in preset with overrides, or a generic
/// server complete enough to log in to.
fn oauth(
    cx: &Cx<'_>,
    kind: ProviderKind,
    raw: &Spanned<RawOAuth>,
    path: &str,
) -> Result<OAuthConfig, ConfigError> {
    let section = raw.span();
    let raw = raw.get_ref();
    let mut o = OAuthConfig::default();
    if let Some(v) = &raw.preset {
        o.preset = Some(with_str(
            cx,
            v,
            &format!("{path}.preset"),
            "a preset name such as \"anthropic\"",
            |s| {
                let s = s.trim();
                if presets::OAUTH_PRESETS.contains(&s) {
                    Ok(s.to_owned())
                } else {
                    Err(format!(
                        "unknown OAuth preset {s:?} (expected one of {})",
                        presets::OAUTH_PRESETS.join(", ")
                    ))
                }
            },
        )?);
    }
    let url = |field: &Field, key: &str| -> Result<Option<String>, ConfigError> {
        match field {
            Some(v) => with_str(cx, v, &format!("{path}.{key}"), "a URL", |s| {
                values::url(key, s)
            })
            .map(Some),
            None => Ok(None),
        }
    };
    o.issuer = url(&raw.issuer, "issuer")?;
    o.authorize_url = url(&raw.authorize_url, "authorize_url")?;
    o.token_url = url(&raw.token_url, "token_url")?;
    o.device_url = url(&raw.device_url, "device_url")?;
    o.userinfo_url = url(&raw.userinfo_url, "userinfo_url")?;
    if let Some(v) = &raw.client_id {
        let id = with_str(cx, v, &format!("{path}.client_id"), "a client id", |s| {
            Ok(s.trim().to_owned())
        })?;
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(cx.err(
                v.span(),
                &format!("{path}.client_id"),
                "the client id must not be empty or contain spaces".to_owned(),
            ));
        }
        o.client_id = Some(id);
    }
    if let Some(list) = &raw.scopes {
        let mut scopes = Vec::new();
        for scope in list.get_ref() {
            let s = scope.get_ref().trim();
            if s.is_empty() || s.contains(char::is_whitespace) {
                return Err(cx.err(
                    scope.span(),
                    &format!("{path}.scopes"),
                    format!("invalid scope {s:?}: write one scope per string, e.g. scopes = [\"openid\", \"email\"]"),
                ));
            }
            scopes.push(s.to_owned());
        }
        o.scopes = Some(scopes);
    }
    if let Some(params) = &raw.extra_authorize_params {
        for (k, v) in params {
            let name = k.get_ref().as_str();
            let key = format!("{path}.extra_authorize_params.{name}");
            if RESERVED_AUTHORIZE_PARAMS.contains(&name) {
                return Err(cx.err(
                    k.span(),
                    &key,
                    format!("{name} is set by marathon itself; remove it (scopes go in `scopes`)"),
                ));
            }
            let value = with_str(cx, v, &key, "a string", |s| Ok(s.to_owned()))?;
            o.extra_authorize_params.push((name.to_owned(), value));
        }
    }
    if let Some(v) = &raw.redirect_port {
        let key = format!("{path}.redirect_port");
        o.redirect_port = Some(match v.get_ref() {
            Scalar::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0).ok_or_else(|| {
                cx.err(
                    v.span(),
                    &key,
                    format!("redirect_port must be a port from 1 to 65535 (got {n})"),
                )
            })?,
            other => {
                return Err(cx.err(
                    v.span(),
                    &key,
                    format!("expected a port number, found {}", other.type_name()),
                ));
            }
        });
    }
    // A preset (named, or implied by the kind) fills in whatever is not
    // written; without one the section must describe a whole server.
    if o.preset.is_none() && presets::default_oauth_preset(kind).is_none() {
        let missing = if o.client_id.is_none() {
            Some("client_id is missing (the OAuth client marathon logs in as)")
        } else if o.issuer.is_none() && o.token_url.is_none() {
            Some("set `issuer` (endpoints found by discovery) or `token_url`")
        } else if o.issuer.is_none() && o.authorize_url.is_none() && o.device_url.is_none() {
            Some("set `issuer`, `authorize_url` or `device_url`: there is no way to log in")
        } else {
            None
        };
        if let Some(m) = missing {
            return Err(cx.err(
                section,
                path,
                format!(
                    "{m}; or name a built-in preset with `preset` ({})",
                    presets::OAUTH_PRESETS.join(", ")
                ),
            ));
        }
    }
    Ok(o)
}

/// `[providers.x.auth]`: where an API key goes for servers that do not take
/// `Authorization: Bearer` (e.g. Azure's `api-key`), and extra client headers to drop.
fn apply_auth(
    cx: &Cx<'_>,
    auth: &mut AuthStyle,
    raw: &RawAuth,
    path: &str,
) -> Result<(), ConfigError> {
    if raw.api_key_header.is_some() || raw.api_key_prefix.is_some() {
        let current = auth.api_key.first().cloned();
        let (mut header, mut prefix) = match current.map(|r| (r.name, r.value)) {
            Some((n, crate::model::HeaderSource::Credential { prefix })) => (n, prefix),
            _ => ("authorization".to_owned(), "Bearer ".to_owned()),
        };
        if let Some(v) = &raw.api_key_header {
            header = with_str(
                cx,
                v,
                &format!("{path}.api_key_header"),
                "a header name",
                values::header_name,
            )?;
            // A custom header carries the bare key unless a prefix is given.
            prefix = String::new();
        }
        if let Some(v) = &raw.api_key_prefix {
            prefix = with_str(
                cx,
                v,
                &format!("{path}.api_key_prefix"),
                "a string such as \"Bearer \"",
                |s| Ok(s.to_owned()),
            )?;
        }
        auth.api_key
            .retain(|r| !matches!(r.value, crate::model::HeaderSource::Credential { .. }));
        auth.api_key
            .insert(0, HeaderRule::credential(&header, &prefix));
        if !auth.strip.contains(&header) {
            auth.strip.push(header);
        }
    }
    if let Some(strip) = &raw.strip {
        for h in strip {
            let name = values::header_name(h.get_ref())
                .map_err(|m| cx.err(h.span(), &format!("{path}.strip"), m))?;
            if !auth.strip.contains(&name) {
                auth.strip.push(name);
            }
        }
    }
    Ok(())
}
