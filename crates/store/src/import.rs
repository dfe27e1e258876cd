//! Importers: other tools' credential files → [`NewAccount`]s (DESIGN §3).
//!
//! Formats:
//! - opencode `auth.json`: a flat map of provider → `{type:"oauth",refresh,access,expires,accountId?}`
//!   or `{type:"api",key}`. opencode's `openai` OAuth login is a ChatGPT login,
//!   so it becomes a `codex` account; its `openai` API key stays `openai`.
//! - Claude Code `~/.claude/.credentials.json`: `{"claudeAiOauth":{accessToken,refreshToken,expiresAt,scopes,..}}`;
//!   who is logged in is in `~/.claude.json` (`oauthAccount.emailAddress`).
//! - Codex `~/.codex/auth.json`: `{OPENAI_API_KEY, tokens:{id_token,access_token,refresh_token,account_id}, last_refresh}`.
//! - Gemini CLI `~/.gemini/oauth_creds.json`: `{access_token, refresh_token, expiry_date, id_token?, scope?}`.
//!
//! Reading never changes the source. An imported OAuth account shares its
//! refresh-token family with the tool it came from (refresh tokens are
//! single-use at most providers, so whichever refreshes first logs the other
//! out); such accounts carry `source = "import:<format>"`, and
//! [`remove_from_source`] implements `--move`: it takes the credential out of
//! the source file, so marathon alone owns it.
//!
//! Errors name the file and the JSON key that is wrong; they never quote a
//! value from the file (it holds secrets).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::{AccountKind, Credential, Map, NewAccount, Secret, UnixMillis};

/// A credential file format marathon can import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImportFormat {
    /// opencode's `auth.json`.
    Opencode,
    /// Claude Code's `.credentials.json`.
    ClaudeCode,
    /// Codex CLI's `auth.json`.
    Codex,
    /// Gemini CLI's `oauth_creds.json`.
    Gemini,
}

impl ImportFormat {
    /// Every format.
    pub const ALL: [ImportFormat; 4] = [
        ImportFormat::Opencode,
        ImportFormat::ClaudeCode,
        ImportFormat::Codex,
        ImportFormat::Gemini,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Opencode => "opencode",
            ImportFormat::ClaudeCode => "claude-code",
            ImportFormat::Codex => "codex",
            ImportFormat::Gemini => "gemini",
        }
    }

    /// The `source` recorded on accounts imported from this format.
    pub fn source_tag(self) -> String {
        format!("import:{}", self.as_str())
    }
}

impl fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImportFormat::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            format!("unknown import format {s:?} (expected one of opencode, claude-code, codex, gemini)")
        })
    }
}

/// Where `format`'s tool keeps its credentials, from `$HOME` (and
/// `$XDG_DATA_HOME` for opencode, `$CODEX_HOME` for Codex). `None` without a home.
pub fn default_path(format: ImportFormat) -> Option<PathBuf> {
    default_path_with(format, |k| std::env::var_os(k).map(PathBuf::from))
}

/// [`default_path`] with the environment given as a lookup (for tests).
pub fn default_path_with(
    format: ImportFormat,
    env: impl Fn(&str) -> Option<PathBuf>,
) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|p| p.is_absolute());
    let home = var("HOME");
    match format {
        ImportFormat::Opencode => var("XDG_DATA_HOME")
            .or_else(|| Some(home?.join(".local").join("share")))
            .map(|d| d.join("opencode").join("auth.json")),
        ImportFormat::ClaudeCode => Some(home?.join(".claude").join(".credentials.json")),
        ImportFormat::Codex => var("CODEX_HOME")
            .or_else(|| Some(home?.join(".codex")))
            .map(|d| d.join("auth.json")),
        ImportFormat::Gemini => Some(home?.join(".gemini").join("oauth_creds.json")),
    }
}

/// What one import found.
#[derive(Clone, Debug, Default)]
pub struct Import {
    /// Accounts to add, each with the source entry it came from.
    pub accounts: Vec<ImportedAccount>,
    /// Entries that were not imported, and why (unknown provider, duplicate...).
    pub skipped: Vec<Skipped>,
}

impl Import {
    /// Just the accounts.
    pub fn into_accounts(self) -> Vec<NewAccount> {
        self.accounts.into_iter().map(|a| a.account).collect()
    }
}

/// One account found in a source file.
#[derive(Clone, Debug)]
pub struct ImportedAccount {
    /// The account, ready for [`crate::Store::add`].
    pub account: NewAccount,
    /// The top-level key in the source file that held it (opencode: the
    /// provider id; Claude Code: `claudeAiOauth`; Codex: `tokens` or
    /// `OPENAI_API_KEY`; Gemini: empty, the whole file).
    pub entry: String,
}

/// A source entry that was not imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The top-level key in the source file.
    pub entry: String,
    /// Why, in words for the user.
    pub reason: String,
}

/// Why an import failed. Messages name the file; none quotes a value from it.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The source file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what its format should look like.
    #[error("{}: not a valid {format} credentials file: {detail}", path.as_deref().map_or_else(|| format!("{format} credentials"), |p| p.display().to_string()))]
    Malformed {
        /// The source file (`None` when parsing text that came from no file).
        path: Option<PathBuf>,
        /// The format it was read as.
        format: ImportFormat,
        /// What is wrong: a position or a key name, never a value.
        detail: String,
    },
    /// `--move` could not rewrite the source file (it is unchanged).
    #[error("could not update {}: {source}; it was left as it was", path.display())]
    Write {
        /// The source file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `--move`: the source's credential changed after it was imported (the
    /// other tool refreshed it), so the imported copy may already be dead.
    #[error(
        "{}: the {entry} credential changed since it was imported (the other tool refreshed it); \
         the file was left as it was — import it again, then move it",
        path.display()
    )]
    Changed {
        /// The source file.
        path: PathBuf,
        /// The entry that changed.
        entry: String,
    },
}

impl ImportError {
    fn with_path(self, file: &Path) -> Self {
        match self {
            ImportError::Malformed {
                path: None,
                format,
                detail,
            } => ImportError::Malformed {
                path: Some(file.to_owned()),
                format,
                detail,
            },
            other => other,
        }
    }
}

/// Parses the contents of a `format` credentials file. Pure: no file access.
pub fn parse(format: ImportFormat, contents: &str) -> Result<Import, ImportError> {
    let malformed = |detail: String| ImportError::Malformed {
        path: None,
        format,
        detail,
    };
    let root = parse_json(contents).map_err(malformed)?;
    let Value::Object(root) = root else {
        return Err(malformed(
            "expected a JSON object at the top level".to_owned(),
        ));
    };
    let import = match format {
        ImportFormat::Opencode => opencode(&root),
        ImportFormat::ClaudeCode => claude_code(&root),
        ImportFormat::Codex => codex(&root),
        ImportFormat::Gemini => gemini(&root),
    }
    .map_err(malformed)?;
    Ok(import)
}

/// Reads and parses a `format` credentials file. For Claude Code, whose
/// credentials file does not say who is logged in, the identity comes from
/// its profile ([`claude_code_identity`]) when one is found.
pub fn read(format: ImportFormat, path: &Path) -> Result<Import, ImportError> {
    let contents = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut import = parse(format, &contents).map_err(|e| e.with_path(path))?;
    if format == ImportFormat::ClaudeCode {
        let identity = claude_code_identity(path);
        for item in &mut import.accounts {
            if item.account.identity.is_none() {
                item.account.identity.clone_from(&identity);
            }
        }
    }
    Ok(import)
}

/// Who is logged in to Claude Code: `oauthAccount.emailAddress` (else its
/// `accountUuid`) in the `.claude.json` Claude Code keeps next to its
/// credentials (`$CLAUDE_CONFIG_DIR`) or, for `~/.claude/.credentials.json`,
/// in `~/.claude.json`. With it a re-import after Claude Code refreshed its
/// tokens updates the account instead of adding a second one, and it matches
/// `marathon auth login anthropic`'s identity (the email). Best effort: no
/// profile, or one that cannot be read, means no identity.
pub fn claude_code_identity(credentials: &Path) -> Option<String> {
    let dir = credentials.parent()?;
    let mut candidates = vec![dir.join(".claude.json")];
    if dir.file_name().is_some_and(|n| n == ".claude") {
        candidates.push(dir.parent()?.join(".claude.json"));
    }
    candidates.iter().find_map(|profile| {
        let text = std::fs::read_to_string(profile).ok()?;
        let root: Value = serde_json::from_str(&text).ok()?;
        let account = root.get("oauthAccount")?;
        ["emailAddress", "accountUuid"].iter().find_map(|k| {
            account
                .get(k)?
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        })
    })
}

/// What [`remove_from_source`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// The file was rewritten without the moved entries (other contents and
    /// file mode kept).
    Rewritten,
    /// The file held nothing but the moved credential (Gemini), so it was deleted.
    Deleted,
}

/// `--move`: takes the imported credentials out of the source file, so the
/// other tool stops using (and refreshing) them. The file is rewritten
/// atomically with its other contents and its mode; a Gemini file, which is
/// one credential, is deleted.
///
/// Refuses with [`ImportError::Changed`], touching nothing, when an entry no
/// longer holds the credential that was imported: the other tool refreshed it
/// in between, and removing it would lose the only live refresh token.
pub fn remove_from_source(
    format: ImportFormat,
    path: &Path,
    moved: &[ImportedAccount],
) -> Result<Removed, ImportError> {
    // One read serves both the check and the rewrite, so what is removed is
    // exactly what was checked. (A write by the other tool between this read
    // and the rename would be lost; the tools keep no lock we could take.)
    let contents = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let current = parse(format, &contents).map_err(|e| e.with_path(path))?;
    for m in moved {
        let still_there = current.accounts.iter().any(|c| {
            c.entry == m.entry && same_credential(&c.account.credential, &m.account.credential)
        });
        if !still_there {
            return Err(ImportError::Changed {
                path: path.to_owned(),
                entry: entry_name(format, &m.entry),
            });
        }
    }
    if moved.is_empty() {
        return Ok(Removed::Rewritten);
    }
    if format == ImportFormat::Gemini {
        std::fs::remove_file(path).map_err(|source| ImportError::Write {
            path: path.to_owned(),
            source,
        })?;
        return Ok(Removed::Deleted);
    }
    // `parse` succeeded, so the text is a JSON object.
    let mut root: Map = serde_json::from_str(&contents).map_err(|_| ImportError::Malformed {
        path: Some(path.to_owned()),
        format,
        detail: "expected a JSON object at the top level".to_owned(),
    })?;
    for m in moved {
        match (format, m.entry.as_str()) {
            // Codex writes `"OPENAI_API_KEY": null` when it has no key.
            (ImportFormat::Codex, "OPENAI_API_KEY") => {
                root.insert(m.entry.clone(), Value::Null);
            }
            _ => {
                root.shift_remove(&m.entry);
            }
        }
    }
    let mut bytes =
        serde_json::to_vec_pretty(&Value::Object(root)).expect("a JSON value serializes");
    bytes.push(b'\n');
    write_keeping_mode(path, &bytes).map_err(|source| ImportError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(Removed::Rewritten)
}

fn entry_name(format: ImportFormat, entry: &str) -> String {
    if entry.is_empty() {
        format!("{format} login")
    } else {
        entry.to_owned()
    }
}

fn same_credential(a: &Credential, b: &Credential) -> bool {
    match (a, b) {
        (Credential::ApiKey { key: a }, Credential::ApiKey { key: b }) => a.same_as(b),
        (
            Credential::Oauth {
                access: a1,
                refresh: r1,
                ..
            },
            Credential::Oauth {
                access: a2,
                refresh: r2,
                ..
            },
        ) => {
            let refresh_same = match (r1, r2) {
                (Some(x), Some(y)) => x.same_as(y),
                (None, None) => true,
                _ => false,
            };
            refresh_same && a1.same_as(a2)
        }
        _ => false,
    }
}

/// Replaces `path` atomically (temp file in the same directory, fsync, rename)
/// with the original's permissions.
fn write_keeping_mode(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("credentials");
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.marathon-{}-{n}", std::process::id()));
    let result = (|| {
        // Created private, then given the original mode: never briefly wider.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// JSON text → value. serde_json's messages can quote input, so only the
/// position is kept.
fn parse_json(contents: &str) -> Result<Value, String> {
    if contents.trim().is_empty() {
        return Err("the file is empty".to_owned());
    }
    serde_json::from_str(contents).map_err(|e| {
        format!(
            "not valid JSON (syntax error at line {}, column {})",
            e.line(),
            e.column()
        )
    })
}

/// Reads fields of one JSON object, naming `path.key` in errors.
struct Obj<'a> {
    map: &'a Map,
    path: String,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: &str) -> Result<Obj<'a>, String> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                path: path.to_owned(),
            }),
            other => Err(format!(
                "{path} should be an object, found {}",
                json_type(other)
            )),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// A string field; absent, null and "" are `None`.
    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "{} should be a string, found {}",
                self.key(key),
                json_type(other)
            )),
        }
    }

    fn str(&self, key: &str) -> Result<&'a str, String> {
        self.opt_str(key)?
            .ok_or_else(|| format!("{} is missing", self.key(key)))
    }

    fn secret(&self, key: &str) -> Result<Secret, String> {
        self.str(key).map(Secret::new)
    }

    fn opt_secret(&self, key: &str) -> Result<Option<Secret>, String> {
        Ok(self.opt_str(key)?.map(Secret::new))
    }

    /// Epoch milliseconds (a JSON number; some tools write floats).
    fn opt_millis(&self, key: &str) -> Result<Option<UnixMillis>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            {
                Some(ms) => Ok(Some(UnixMillis(ms))),
                None => Err(format!(
                    "{} should be a time in epoch milliseconds",
                    self.key(key)
                )),
            },
            Some(other) => Err(format!(
                "{} should be a number (epoch milliseconds), found {}",
                self.key(key),
                json_type(other)
            )),
        }
    }

    fn opt_strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("{} should hold strings", self.key(key)))
                })
                .collect(),
            Some(other) => Err(format!(
                "{} should be a list of strings, found {}",
                self.key(key),
                json_type(other)
            )),
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn oauth_account(
    provider: &str,
    format: ImportFormat,
    credential: Credential,
    identity: Option<String>,
    extras: Map,
) -> NewAccount {
    NewAccount {
        provider: provider.to_owned(),
        label: None,
        kind: AccountKind::Oauth,
        priority: 0,
        identity,
        credential,
        extras,
        source: Some(format.source_tag()),
    }
}

fn opencode(root: &Map) -> Result<Import, String> {
    let mut import = Import::default();
    for (id, value) in root {
        let entry = Obj::new(value, id)?;
        let kind = entry.str("type")?;
        let provider = match (id.as_str(), kind) {
            ("anthropic", _) => "anthropic",
            // opencode's OpenAI login is a ChatGPT (Codex) login; its key is a platform key.
            ("openai", "oauth") => "codex",
            ("openai", _) => "openai",
            ("github-copilot", _) => "copilot",
            ("google", _) => "google",
            _ => {
                import.skipped.push(Skipped {
                    entry: id.clone(),
                    reason: format!(
                        "marathon has no built-in provider for opencode's {id:?}; configure [providers.<name>] \
                         and add the credential with `marathon auth add`"
                    ),
                });
                continue;
            }
        };
        let account = match kind {
            "api" => NewAccount::api_key(provider, None, entry.secret("key")?),
            "oauth" => {
                let access = entry.secret("access")?;
                let mut extras = Map::new();
                let mut identity = None;
                if provider == "codex" {
                    let claims = jwt_claims(access.expose());
                    let account_id = entry
                        .opt_str("accountId")?
                        .map(str::to_owned)
                        .or_else(|| claims.as_ref().and_then(chatgpt_account_id));
                    identity = claims.as_ref().and_then(email);
                    if let Some(id) = account_id {
                        identity = identity.or_else(|| Some(id.clone()));
                        extras.insert("chatgpt_account_id".to_owned(), Value::String(id));
                    }
                }
                if let Some(url) = entry.opt_str("enterpriseUrl")? {
                    extras.insert("enterprise_url".to_owned(), Value::String(url.to_owned()));
                }
                let credential = Credential::Oauth {
                    access,
                    refresh: entry.opt_secret("refresh")?,
                    expires_at: entry.opt_millis("expires")?,
                    id_token: None,
                    scopes: Vec::new(),
                };
                oauth_account(
                    provider,
                    ImportFormat::Opencode,
                    credential,
                    identity,
                    extras,
                )
            }
            _ => {
                import.skipped.push(Skipped {
                    entry: id.clone(),
                    reason: "only \"oauth\" and \"api\" credentials can be imported".to_owned(),
                });
                continue;
            }
        };
        import.accounts.push(ImportedAccount {
            account,
            entry: id.clone(),
        });
    }
    Ok(import)
}

fn claude_code(root: &Map) -> Result<Import, String> {
    let Some(value) = root.get("claudeAiOauth") else {
        return Err("no claudeAiOauth login in it (log in with `claude` first, or it keeps the login in the keychain)".to_owned());
    };
    let o = Obj::new(value, "claudeAiOauth")?;
    let mut extras = Map::new();
    if let Some(plan) = o.opt_str("subscriptionType")? {
        extras.insert(
            "subscription_type".to_owned(),
            Value::String(plan.to_owned()),
        );
    }
    let credential = Credential::Oauth {
        access: o.secret("accessToken")?,
        refresh: o.opt_secret("refreshToken")?,
        expires_at: o.opt_millis("expiresAt")?,
        id_token: None,
        scopes: o.opt_strings("scopes")?,
    };
    let account = oauth_account(
        "anthropic",
        ImportFormat::ClaudeCode,
        credential,
        None,
        extras,
    );
    Ok(Import {
        accounts: vec![ImportedAccount {
            account,
            entry: "claudeAiOauth".to_owned(),
        }],
        skipped: Vec::new(),
    })
}

fn codex(root: &Map) -> Result<Import, String> {
    let top = Obj {
        map: root,
        path: String::new(),
    };
    let mut import = Import::default();
    match root.get("tokens") {
        None | Some(Value::Null) => {}
        Some(tokens) => {
            let t = Obj::new(tokens, "tokens")?;
            let access = t.secret("access_token")?;
            let id_token = t.opt_secret("id_token")?;
            let id_claims = id_token.as_ref().and_then(|t| jwt_claims(t.expose()));
            let access_claims = jwt_claims(access.expose());
            let mut extras = Map::new();
            let account_id = id_claims
                .as_ref()
                .and_then(chatgpt_account_id)
                .or_else(|| access_claims.as_ref().and_then(chatgpt_account_id))
                .or(t.opt_str("account_id")?.map(str::to_owned));
            let identity = id_claims
                .as_ref()
                .and_then(email)
                .or_else(|| access_claims.as_ref().and_then(email))
                .or_else(|| account_id.clone());
            if let Some(id) = account_id {
                extras.insert("chatgpt_account_id".to_owned(), Value::String(id));
            }
            // Codex keeps no expiry; the access token is a JWT that carries it.
            let expires_at = access_claims
                .as_ref()
                .and_then(|c| c.get("exp"))
                .and_then(Value::as_u64)
                .map(UnixMillis::from_secs);
            let credential = Credential::Oauth {
                access,
                refresh: t.opt_secret("refresh_token")?,
                expires_at,
                id_token,
                scopes: Vec::new(),
            };
            let account = oauth_account("codex", ImportFormat::Codex, credential, identity, extras);
            import.accounts.push(ImportedAccount {
                account,
                entry: "tokens".to_owned(),
            });
        }
    }
    if let Some(key) = top.opt_secret("OPENAI_API_KEY")? {
        let account = NewAccount::api_key("openai", None, key);
        import.accounts.push(ImportedAccount {
            account,
            entry: "OPENAI_API_KEY".to_owned(),
        });
    }
    if import.accounts.is_empty() {
        return Err(
            "neither tokens nor OPENAI_API_KEY is set (log in with `codex login` first)".to_owned(),
        );
    }
    Ok(import)
}

fn gemini(root: &Map) -> Result<Import, String> {
    let o = Obj {
        map: root,
        path: String::new(),
    };
    let id_token = o.opt_secret("id_token")?;
    let identity = id_token
        .as_ref()
        .and_then(|t| jwt_claims(t.expose()))
        .as_ref()
        .and_then(email);
    let scopes = o
        .opt_str("scope")?
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let credential = Credential::Oauth {
        access: o.secret("access_token")?,
        refresh: o.opt_secret("refresh_token")?,
        expires_at: o.opt_millis("expiry_date")?,
        id_token,
        scopes,
    };
    let account = oauth_account(
        "google",
        ImportFormat::Gemini,
        credential,
        identity,
        Map::new(),
    );
    Ok(Import {
        accounts: vec![ImportedAccount {
            account,
            entry: String::new(),
        }],
        skipped: Vec::new(),
    })
}

fn email(claims: &Map) -> Option<String> {
    let direct = claims.get("email").and_then(Value::as_str);
    // ChatGPT access tokens keep it under a namespaced claim.
    let profile = || {
        claims
            .get("https://api.openai.com/profile")?
            .get("email")?
            .as_str()
    };
    direct
        .or_else(profile)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
}

fn chatgpt_account_id(claims: &Map) -> Option<String> {
    claims
        .get("https://api.openai.com/auth")?
        .get("chatgpt_account_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The claims of a JWT, read without verifying it: they only name the account
/// (its email, workspace id, expiry); the provider checks the token itself.
fn jwt_claims(token: &str) -> Option<Map> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Unpadded (or padded) base64url, as in JWTs.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover character cannot encode a byte.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(base64url_decode("Z").is_none());
        assert!(base64url_decode("Zm9v!").is_none());
    }

    #[test]
    fn jwt_claims_reads_the_payload() {
        // {"alg":"none"} . {"email":"a@example.com"} . (no signature)
        let token = "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImFAZXhhbXBsZS5jb20ifQ.";
        let claims = jwt_claims(token).unwrap();
        assert_eq!(email(&claims).as_deref(), Some("a@example.com"));
        assert!(jwt_claims("not-a-jwt").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
    }
}
