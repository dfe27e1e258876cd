//! Importers against fixture files of each format (fake tokens, real shapes),
//! malformed files, and the `--move` rewrite.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use marathon_store::import::{self, Import, ImportError, ImportFormat, Removed, Skipped};
use marathon_store::{
    AccountKind, AddResult, Credential, MemoryStore, NewAccount, Store, UnixMillis,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

fn read(format: ImportFormat, name: &str) -> Import {
    import::read(format, &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (access, refresh, expires_at, id_token, scopes) of an OAuth credential.
fn oauth(
    a: &NewAccount,
) -> (
    &str,
    Option<&str>,
    Option<UnixMillis>,
    Option<&str>,
    &[String],
) {
    match &a.credential {
        Credential::Oauth {
            access,
            refresh,
            expires_at,
            id_token,
            scopes,
        } => (
            access.expose(),
            refresh.as_ref().map(|r| r.expose()),
            *expires_at,
            id_token.as_ref().map(|t| t.expose()),
            scopes,
        ),
        other => panic!("expected oauth, got {other:?}"),
    }
}

fn api_key(a: &NewAccount) -> &str {
    match &a.credential {
        Credential::ApiKey { key } => key.expose(),
        other => panic!("expected an API key, got {other:?}"),
    }
}

/// Copies a fixture into a fresh directory with the given mode.
fn scratch(name: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn format_names_round_trip() {
    for f in ImportFormat::ALL {
        assert_eq!(f.as_str().parse::<ImportFormat>().unwrap(), f);
        assert_eq!(f.to_string(), f.as_str());
    }
    assert_eq!(
        "claude-code".parse::<ImportFormat>().unwrap(),
        ImportFormat::ClaudeCode
    );
    assert_eq!(
        "claude".parse::<ImportFormat>().unwrap_err(),
        "unknown import format \"claude\" (expected one of opencode, claude-code, codex, gemini)"
    );
    assert_eq!(ImportFormat::Codex.source_tag(), "import:codex");
}

#[test]
fn default_paths_follow_each_tool() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| PathBuf::from(v))
        }
    };
    let home = env(&[("HOME", "/home/u")]);
    let path = |f| import::default_path_with(f, home).unwrap();
    assert_eq!(
        path(ImportFormat::Opencode),
        PathBuf::from("/home/u/.local/share/opencode/auth.json")
    );
    assert_eq!(
        path(ImportFormat::ClaudeCode),
        PathBuf::from("/home/u/.claude/.credentials.json")
    );
    assert_eq!(
        path(ImportFormat::Codex),
        PathBuf::from("/home/u/.codex/auth.json")
    );
    assert_eq!(
        path(ImportFormat::Gemini),
        PathBuf::from("/home/u/.gemini/oauth_creds.json")
    );

    let custom = env(&[
        ("HOME", "/home/u"),
        ("CODEX_HOME", "/opt/codex"),
        ("XDG_DATA_HOME", "/xdg/data"),
    ]);
    assert_eq!(
        import::default_path_with(ImportFormat::Codex, custom).unwrap(),
        PathBuf::from("/opt/codex/auth.json")
    );
    assert_eq!(
        import::default_path_with(ImportFormat::Opencode, custom).unwrap(),
        PathBuf::from("/xdg/data/opencode/auth.json")
    );
    assert_eq!(
        import::default_path_with(ImportFormat::ClaudeCode, env(&[])),
        None
    );
}

#[test]
fn opencode_oauth_entries_map_to_marathon_providers() {
    let found = read(ImportFormat::Opencode, "opencode-auth.json");
    let got: Vec<(&str, &str, AccountKind)> = found
        .accounts
        .iter()
        .map(|a| {
            (
                a.entry.as_str(),
                a.account.provider.as_str(),
                a.account.kind,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("anthropic", "anthropic", AccountKind::Oauth),
            // opencode's OpenAI login is a ChatGPT login.
            ("openai", "codex", AccountKind::Oauth),
            ("github-copilot", "copilot", AccountKind::Oauth),
            ("google", "google", AccountKind::Oauth),
        ]
    );
    for a in &found.accounts {
        assert_eq!(a.account.source.as_deref(), Some("import:opencode"));
        assert_eq!(a.account.label, None);
    }

    let anthropic = &found.accounts[0].account;
    assert_eq!(
        oauth(anthropic),
        (
            "sk-ant-oat01-FAKE-opencode-access",
            Some("sk-ant-ort01-FAKE-opencode-refresh"),
            Some(UnixMillis(1_764_400_000_000)),
            None,
            &[][..]
        )
    );
    assert_eq!(anthropic.identity, None);

    let codex = &found.accounts[1].account;
    assert_eq!(oauth(codex).1, Some("rt_FAKE-opencode-openai-refresh"));
    assert_eq!(oauth(codex).2, Some(UnixMillis(1_764_500_000_000)));
    // The stored accountId wins over the token's claim; the email comes from the access token.
    assert_eq!(
        codex.extras.get("chatgpt_account_id"),
        Some(&json!("acct-opencode-1"))
    );
    assert_eq!(codex.identity.as_deref(), Some("chat@example.com"));

    let copilot = &found.accounts[2].account;
    assert_eq!(
        oauth(copilot).0,
        "tid=FAKE;exp=1764330000;proxy-ep=proxy.individual.githubcopilot.com"
    );
    assert_eq!(oauth(copilot).1, Some("gho_FAKEgithubOAuthToken0000"));

    assert_eq!(
        found.skipped,
        [
            Skipped {
                entry: "openrouter".into(),
                reason:
                    "marathon has no built-in provider for opencode's \"openrouter\"; configure \
                         [providers.<name>] and add the credential with `marathon auth add`"
                        .into()
            },
            Skipped {
                entry: "cloudflare".into(),
                reason:
                    "marathon has no built-in provider for opencode's \"cloudflare\"; configure \
                         [providers.<name>] and add the credential with `marathon auth add`"
                        .into()
            },
        ]
    );
}

#[test]
fn opencode_api_keys_become_api_key_accounts() {
    let found = read(ImportFormat::Opencode, "opencode-api-keys.json");
    let got: Vec<(&str, AccountKind, &str, Option<&str>)> = found
        .accounts
        .iter()
        .map(|a| {
            (
                a.account.provider.as_str(),
                a.account.kind,
                api_key(&a.account),
                a.account.source.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "anthropic",
                AccountKind::ApiKey,
                "sk-ant-api03-FAKE-key",
                None
            ),
            (
                "openai",
                AccountKind::ApiKey,
                "sk-proj-FAKE-openai-key",
                None
            ),
            ("google", AccountKind::ApiKey, "AIzaFAKE-google-key", None),
        ]
    );
    assert!(found.skipped.is_empty());
}

#[test]
fn opencode_unknown_credential_types_are_skipped_for_known_providers() {
    let found = import::parse(
        ImportFormat::Opencode,
        r#"{"anthropic":{"type":"wellknown","key":"K","token":"T"}}"#,
    )
    .unwrap();
    assert!(found.accounts.is_empty());
    assert_eq!(
        found.skipped,
        [Skipped {
            entry: "anthropic".into(),
            reason: "only \"oauth\" and \"api\" credentials can be imported".into()
        }]
    );
    // An empty opencode file is valid and holds nothing.
    let empty = import::parse(ImportFormat::Opencode, "{}").unwrap();
    assert!(empty.accounts.is_empty() && empty.skipped.is_empty());
}

#[test]
fn claude_code_login_becomes_an_anthropic_oauth_account() {
    let found = read(ImportFormat::ClaudeCode, "claude-code-credentials.json");
    assert_eq!(found.accounts.len(), 1);
    assert_eq!(found.accounts[0].entry, "claudeAiOauth");
    let a = &found.accounts[0].account;
    assert_eq!(
        (a.provider.as_str(), a.kind),
        ("anthropic", AccountKind::Oauth)
    );
    let scopes = [
        "user:inference",
        "user:profile",
        "user:sessions:claude_code",
    ]
    .map(String::from);
    assert_eq!(
        oauth(a),
        (
            "sk-ant-oat01-FAKE-claude-code-access",
            Some("sk-ant-ort01-FAKE-claude-code-refresh"),
            Some(UnixMillis(1_764_358_000_000)),
            None,
            &scopes[..]
        )
    );
    assert_eq!(a.extras.get("subscription_type"), Some(&json!("max")));
    assert_eq!(a.source.as_deref(), Some("import:claude-code"));
}

#[test]
fn codex_login_and_api_key() {
    let found = read(ImportFormat::Codex, "codex-auth.json");
    assert_eq!(found.accounts.len(), 2);
    let login = &found.accounts[0];
    assert_eq!(login.entry, "tokens");
    let a = &login.account;
    assert_eq!((a.provider.as_str(), a.kind), ("codex", AccountKind::Oauth));
    assert_eq!(a.identity.as_deref(), Some("dev@example.com"));
    assert_eq!(
        a.extras.get("chatgpt_account_id"),
        Some(&json!("6f1c2a0e-1111-4222-8333-944455556666"))
    );
    let (access, refresh, expires, id_token, _) = oauth(a);
    assert!(access.starts_with("eyJ"));
    assert_eq!(refresh, Some("rt_FAKE-codex-refresh-0001"));
    // From the access token's `exp` (seconds).
    assert_eq!(expires, Some(UnixMillis(1_765_200_000_000)));
    assert!(id_token.unwrap().starts_with("eyJ"));
    assert_eq!(a.source.as_deref(), Some("import:codex"));

    let key = &found.accounts[1];
    assert_eq!(key.entry, "OPENAI_API_KEY");
    assert_eq!(
        (key.account.provider.as_str(), key.account.kind),
        ("openai", AccountKind::ApiKey)
    );
    assert_eq!(api_key(&key.account), "sk-proj-FAKE-codex-api-key-0000");
}

#[test]
fn codex_without_decodable_tokens_falls_back_to_the_stored_account_id() {
    let found = read(ImportFormat::Codex, "codex-auth-tokens-only.json");
    assert_eq!(found.accounts.len(), 1, "OPENAI_API_KEY is null");
    let a = &found.accounts[0].account;
    assert_eq!(a.identity.as_deref(), Some("acct-only-in-tokens"));
    assert_eq!(
        a.extras.get("chatgpt_account_id"),
        Some(&json!("acct-only-in-tokens"))
    );
    assert_eq!(oauth(a).2, None, "an opaque access token carries no expiry");
}

#[test]
fn gemini_login_becomes_a_google_oauth_account() {
    let found = read(ImportFormat::Gemini, "gemini-oauth_creds.json");
    assert_eq!(found.accounts.len(), 1);
    assert_eq!(found.accounts[0].entry, "");
    let a = &found.accounts[0].account;
    assert_eq!(
        (a.provider.as_str(), a.kind),
        ("google", AccountKind::Oauth)
    );
    assert_eq!(a.identity.as_deref(), Some("gem@example.com"));
    let (access, refresh, expires, id_token, scopes) = oauth(a);
    assert_eq!(access, "ya29.FAKE-gemini-access");
    assert_eq!(refresh, Some("1//FAKE-gemini-refresh"));
    assert_eq!(expires, Some(UnixMillis(1_764_339_999_000)));
    assert!(id_token.is_some());
    assert_eq!(
        scopes,
        [
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/userinfo.email",
            "openid",
            "https://www.googleapis.com/auth/userinfo.profile"
        ]
    );
    assert_eq!(a.source.as_deref(), Some("import:gemini"));
}

#[test]
fn debug_output_of_an_import_never_shows_a_token() {
    for (format, name) in [
        (ImportFormat::Opencode, "opencode-auth.json"),
        (ImportFormat::ClaudeCode, "claude-code-credentials.json"),
        (ImportFormat::Codex, "codex-auth.json"),
        (ImportFormat::Gemini, "gemini-oauth_creds.json"),
    ] {
        let shown = format!("{:?}", read(format, name));
        for secret in [
            "FAKE-opencode",
            "FAKE-claude-code",
            "rt_FAKE",
            "sk-proj-FAKE",
            "ya29",
            "eyJ",
        ] {
            assert!(
                !shown.contains(secret),
                "{name}: {secret} leaked in {shown}"
            );
        }
    }
}

// ---- malformed files: the error names the file and the problem, never a value ----

fn read_err(format: ImportFormat, name: &str) -> String {
    let e = import::read(format, &fixture(name)).unwrap_err();
    assert!(matches!(e, ImportError::Malformed { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&fixture(name).display().to_string()),
        "{msg}"
    );
    assert!(!msg.contains("FAKE"), "a value leaked: {msg}");
    msg
}

#[test]
fn truncated_json_reports_a_position_only() {
    let msg = read_err(ImportFormat::ClaudeCode, "claude-code-truncated.json");
    assert!(
        msg.ends_with("not a valid claude-code credentials file: not valid JSON (syntax error at line 1, column 60)"),
        "{msg}"
    );
}

#[test]
fn a_wrongly_typed_field_is_named() {
    let msg = read_err(ImportFormat::Codex, "codex-tokens-wrong-type.json");
    assert!(
        msg.ends_with(
            "not a valid codex credentials file: tokens should be an object, found a string"
        ),
        "{msg}"
    );
    let msg = read_err(ImportFormat::Gemini, "gemini-expiry-wrong-type.json");
    assert!(
        msg.ends_with("expiry_date should be a number (epoch milliseconds), found a string"),
        "{msg}"
    );
}

#[test]
fn a_missing_field_is_named() {
    let msg = read_err(ImportFormat::Opencode, "opencode-missing-access.json");
    assert!(
        msg.ends_with("not a valid opencode credentials file: anthropic.access is missing"),
        "{msg}"
    );
}

#[test]
fn other_malformed_shapes() {
    let err = |format, text: &str| import::parse(format, text).unwrap_err().to_string();
    assert_eq!(
        err(ImportFormat::Gemini, ""),
        "gemini credentials: not a valid gemini credentials file: the file is empty"
    );
    assert_eq!(
        err(ImportFormat::Opencode, "[\"sk-secret\"]"),
        "opencode credentials: not a valid opencode credentials file: expected a JSON object at the top level"
    );
    assert_eq!(
        err(
            ImportFormat::Opencode,
            r#"{"anthropic":"sk-ant-oat01-secret"}"#
        ),
        "opencode credentials: not a valid opencode credentials file: anthropic should be an object, found a string"
    );
    assert_eq!(
        err(ImportFormat::ClaudeCode, r#"{"other":1}"#),
        "claude-code credentials: not a valid claude-code credentials file: no claudeAiOauth login in it \
         (log in with `claude` first, or it keeps the login in the keychain)"
    );
    assert_eq!(
        err(
            ImportFormat::Codex,
            r#"{"OPENAI_API_KEY":null,"tokens":null}"#
        ),
        "codex credentials: not a valid codex credentials file: neither tokens nor OPENAI_API_KEY is set \
         (log in with `codex login` first)"
    );
    assert_eq!(
        err(
            ImportFormat::ClaudeCode,
            r#"{"claudeAiOauth":{"accessToken":"x","scopes":"user:inference"}}"#
        ),
        "claude-code credentials: not a valid claude-code credentials file: claudeAiOauth.scopes should be a list \
         of strings, found a string"
    );
    assert_eq!(
        err(
            ImportFormat::Gemini,
            r#"{"access_token":"ya29.secret","expiry_date":-5}"#
        ),
        "gemini credentials: not a valid gemini credentials file: expiry_date should be a time in epoch milliseconds"
    );
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let path = Path::new("/nonexistent/marathon-test/auth.json");
    let e = import::read(ImportFormat::Codex, path).unwrap_err();
    assert!(matches!(e, ImportError::Read { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("could not read /nonexistent/marathon-test/auth.json: "),
        "{e}"
    );
}

// ---- --move ----

#[test]
fn move_from_opencode_keeps_other_entries_and_the_mode() {
    let (_dir, path) = scratch("opencode-auth.json", 0o640);
    let found = import::read(ImportFormat::Opencode, &path).unwrap();
    let moved: Vec<_> = found
        .accounts
        .iter()
        .filter(|a| a.entry == "anthropic" || a.entry == "openai")
        .cloned()
        .collect();
    assert_eq!(
        import::remove_from_source(ImportFormat::Opencode, &path, &moved).unwrap(),
        Removed::Rewritten
    );

    let mut expected = json_file(&fixture("opencode-auth.json"));
    let obj = expected.as_object_mut().unwrap();
    obj.shift_remove("anthropic");
    obj.shift_remove("openai");
    assert_eq!(json_file(&path), expected);
    let keys: Vec<String> = json_file(&path)
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        ["github-copilot", "google", "openrouter", "cloudflare"],
        "order kept"
    );
    assert_eq!(mode(&path), 0o640);
    // Nothing else left behind in the directory (no temp file).
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn move_from_codex_removes_the_login_or_nulls_the_key() {
    let (_dir, path) = scratch("codex-auth.json", 0o600);
    let found = import::read(ImportFormat::Codex, &path).unwrap();
    let login: Vec<_> = found
        .accounts
        .iter()
        .filter(|a| a.entry == "tokens")
        .cloned()
        .collect();
    import::remove_from_source(ImportFormat::Codex, &path, &login).unwrap();
    let after = json_file(&path);
    assert_eq!(after.get("tokens"), None);
    assert_eq!(
        after["OPENAI_API_KEY"],
        json!("sk-proj-FAKE-codex-api-key-0000")
    );
    assert_eq!(after["last_refresh"], json!("2025-11-28T12:00:00.000000Z"));
    assert_eq!(mode(&path), 0o600);

    let found = import::read(ImportFormat::Codex, &path).unwrap();
    import::remove_from_source(ImportFormat::Codex, &path, &found.accounts).unwrap();
    assert_eq!(
        json_file(&path),
        json!({"OPENAI_API_KEY": null, "last_refresh": "2025-11-28T12:00:00.000000Z"})
    );
}

#[test]
fn move_from_claude_code_keeps_its_other_keys() {
    let (_dir, path) = scratch("claude-code-credentials.json", 0o600);
    let found = import::read(ImportFormat::ClaudeCode, &path).unwrap();
    import::remove_from_source(ImportFormat::ClaudeCode, &path, &found.accounts).unwrap();
    let after = json_file(&path);
    assert_eq!(after.get("claudeAiOauth"), None);
    assert_eq!(
        after["mcpOAuth"]["example-server|abc123"]["serverName"],
        json!("example-server")
    );
}

#[test]
fn move_from_gemini_deletes_the_file() {
    let (_dir, path) = scratch("gemini-oauth_creds.json", 0o600);
    let found = import::read(ImportFormat::Gemini, &path).unwrap();
    assert_eq!(
        import::remove_from_source(ImportFormat::Gemini, &path, &found.accounts).unwrap(),
        Removed::Deleted
    );
    assert!(!path.exists());
}

#[test]
fn move_refuses_when_the_other_tool_refreshed_in_between() {
    let (_dir, path) = scratch("claude-code-credentials.json", 0o600);
    let found = import::read(ImportFormat::ClaudeCode, &path).unwrap();
    // Claude Code refreshes: a new refresh token replaces the imported one.
    let mut doc = json_file(&path);
    doc["claudeAiOauth"]["refreshToken"] = json!("sk-ant-ort01-FAKE-rotated");
    doc["claudeAiOauth"]["accessToken"] = json!("sk-ant-oat01-FAKE-rotated");
    let rewritten = serde_json::to_string(&doc).unwrap();
    std::fs::write(&path, &rewritten).unwrap();

    let e =
        import::remove_from_source(ImportFormat::ClaudeCode, &path, &found.accounts).unwrap_err();
    assert!(matches!(e, ImportError::Changed { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the claudeAiOauth credential changed since it was imported (the other tool refreshed it); \
             the file was left as it was — import it again, then move it",
            path.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        rewritten,
        "untouched"
    );
}

#[test]
fn move_refuses_a_malformed_source_and_leaves_it() {
    let (_dir, path) = scratch("opencode-auth.json", 0o600);
    let found = import::read(ImportFormat::Opencode, &path).unwrap();
    std::fs::write(&path, "{ broken").unwrap();
    let e = import::remove_from_source(ImportFormat::Opencode, &path, &found.accounts[..1])
        .unwrap_err();
    assert!(matches!(e, ImportError::Malformed { .. }), "{e:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ broken");
}

/// Importing the same file twice must not store a login twice: two accounts
/// holding one single-use refresh token race, and the loser is logged out.
/// On main the logins that name no identity (Claude Code; opencode's
/// Anthropic, Copilot and Google logins) were added a second time.
#[test]
fn importing_the_same_file_twice_keeps_one_account_per_login() {
    for (format, name) in [
        (ImportFormat::Opencode, "opencode-auth.json"),
        (ImportFormat::Opencode, "opencode-api-keys.json"),
        (ImportFormat::ClaudeCode, "claude-code-credentials.json"),
        (ImportFormat::Codex, "codex-auth.json"),
        (ImportFormat::Gemini, "gemini-oauth_creds.json"),
    ] {
        let store = MemoryStore::new();
        for a in read(format, name).into_accounts() {
            assert!(
                matches!(store.add(a).unwrap(), AddResult::Added(_)),
                "{name}"
            );
        }
        let count = store.list().unwrap().len();
        for a in read(format, name).into_accounts() {
            let again = store.add(a).unwrap();
            assert!(matches!(again, AddResult::Updated(_)), "{name}: {again:?}");
        }
        assert_eq!(store.list().unwrap().len(), count, "{name}");
    }
}

/// Claude Code's credentials file does not say who is logged in; its
/// profile (`~/.claude.json`, or `.claude.json` beside the credentials in a
/// `$CLAUDE_CONFIG_DIR`) does. With that identity a re-import after Claude
/// Code refreshed both tokens updates the account instead of adding one.
#[test]
fn claude_code_identity_comes_from_its_profile() {
    let home = tempfile::tempdir().unwrap();
    let claude_dir = home.path().join(".claude");
    std::fs::create_dir(&claude_dir).unwrap();
    let creds = claude_dir.join(".credentials.json");
    std::fs::copy(fixture("claude-code-credentials.json"), &creds).unwrap();
    assert_eq!(
        import::read(ImportFormat::ClaudeCode, &creds)
            .unwrap()
            .accounts[0]
            .account
            .identity,
        None,
        "no profile, no identity"
    );
    std::fs::write(
        home.path().join(".claude.json"),
        r#"{"numStartups":3,"oauthAccount":{"accountUuid":"0b1c-uuid","emailAddress":"ana@example.com"}}"#,
    )
    .unwrap();
    let first = import::read(ImportFormat::ClaudeCode, &creds).unwrap();
    assert_eq!(
        first.accounts[0].account.identity.as_deref(),
        Some("ana@example.com")
    );

    // Claude Code refreshed: new access and refresh tokens, same person.
    let mut refreshed = json_file(&creds);
    refreshed["claudeAiOauth"]["accessToken"] = json!("sk-ant-oat01-FAKE-new-access");
    refreshed["claudeAiOauth"]["refreshToken"] = json!("sk-ant-ort01-FAKE-new-refresh");
    std::fs::write(&creds, refreshed.to_string()).unwrap();
    let store = MemoryStore::new();
    store.add(first.into_accounts().remove(0)).unwrap();
    let again = import::read(ImportFormat::ClaudeCode, &creds).unwrap();
    let AddResult::Updated(a) = store.add(again.into_accounts().remove(0)).unwrap() else {
        panic!("the same identity is an update")
    };
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(
        matches!(&a.credential, Credential::Oauth { refresh: Some(r), .. } if r.expose() == "sk-ant-ort01-FAKE-new-refresh")
    );

    // $CLAUDE_CONFIG_DIR keeps the profile next to the credentials, and a
    // profile without an email still names the account by its uuid.
    let config_dir = tempfile::tempdir().unwrap();
    let creds = config_dir.path().join(".credentials.json");
    std::fs::copy(fixture("claude-code-credentials.json"), &creds).unwrap();
    std::fs::write(
        config_dir.path().join(".claude.json"),
        r#"{"oauthAccount":{"accountUuid":"0b1c-uuid"}}"#,
    )
    .unwrap();
    assert_eq!(
        import::claude_code_identity(&creds).as_deref(),
        Some("0b1c-uuid")
    );
}
