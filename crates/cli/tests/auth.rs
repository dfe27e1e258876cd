//! `marathon auth ...` and `marathon status`, run as the real binary against a
//! temporary MARATHON_HOME.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    fn accounts_file(&self) -> PathBuf {
        self.data().join("accounts.json")
    }

    /// Runs `marathon <args>` with `stdin` piped in.
    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marathon"))
            .args(args)
            .env("MARATHON_HOME", self.path())
            .env("HOME", self.path().join("user-home"))
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CODEX_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The command may exit (e.g. on an unknown provider) before reading stdin.
        match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
        child.wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with_stdin(args, stdin);
        assert!(
            out.status.success(),
            "marathon {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn add_key(&self, provider: &str, label: &str, key: &str) -> String {
        self.ok(&["auth", "add", provider, "--label", label], key)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn list_json(home: &Home) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&home.ok(&["auth", "list", "--json"], ""))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn add_list_rename_disable_priority_remove() {
    let home = Home::new();
    assert_eq!(
        home.add_key("anthropic", "work", "sk-ant-api03-work\n"),
        "added anthropic/work (api key, priority 0)\n"
    );
    home.ok(
        &[
            "auth",
            "add",
            "anthropic",
            "--label",
            "home",
            "--priority",
            "5",
        ],
        "sk-ant-api03-home",
    );
    home.add_key("openai", "work", "sk-proj-openai-work");

    let table = home.ok(&["auth", "list"], "");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["PROVIDER", "LABEL", "KIND", "STATE", "PRIORITY", "ENABLED"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["anthropic", "work", "api", "key", "active", "0", "yes"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["anthropic", "home", "api", "key", "active", "5", "yes"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["openai", "work", "api", "key", "active", "0", "yes"]
    );
    assert!(
        !table.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    home.ok(&["auth", "rename", "anthropic", "home", "personal"], "");
    home.ok(&["auth", "disable", "anthropic", "personal"], "");
    home.ok(&["auth", "priority", "anthropic", "work", "-3"], "");
    let json = list_json(&home);
    let find = |p: &str, l: &str| {
        json.iter()
            .find(|a| a["provider"] == p && a["label"] == l)
            .cloned()
    };
    let personal = find("anthropic", "personal").expect("renamed");
    assert_eq!(personal["enabled"], false);
    assert_eq!(personal["priority"], 5);
    assert_eq!(find("anthropic", "work").unwrap()["priority"], -3);
    assert!(find("anthropic", "home").is_none());

    home.ok(&["auth", "enable", "anthropic", "personal"], "");
    assert!(find_enabled(&home, "personal"));

    // Remove takes exactly one account.
    assert_eq!(
        home.ok(&["auth", "remove", "anthropic", "work"], ""),
        "removed anthropic/work\n"
    );
    let json = list_json(&home);
    assert_eq!(json.len(), 2);
    assert!(
        json.iter()
            .any(|a| a["provider"] == "anthropic" && a["label"] == "personal")
    );
    assert!(
        json.iter()
            .any(|a| a["provider"] == "openai" && a["label"] == "work")
    );
}

fn find_enabled(home: &Home, label: &str) -> bool {
    list_json(home)
        .iter()
        .find(|a| a["label"] == label)
        .unwrap()["enabled"]
        .as_bool()
        .unwrap()
}

#[test]
fn providers_come_from_presets_aliases_and_config() {
    let home = Home::new();
    // An alias resolves to the preset's name.
    home.add_key("gemini", "g", "AIzaSy-test-key");
    assert_eq!(list_json(&home)[0]["provider"], "google");
    // A provider defined in config.toml is accepted.
    std::fs::write(
        home.path().join("config.toml"),
        "[providers.local-llm]\nkind = \"openai-compatible\"\nupstream = \"http://127.0.0.1:11434/v1\"\n",
    )
    .unwrap();
    home.add_key("local-llm", "box", "sk-local");
    assert!(
        list_json(&home)
            .iter()
            .any(|a| a["provider"] == "local-llm")
    );
}

#[test]
fn an_unknown_provider_lists_the_known_ones() {
    let home = Home::new();
    let out = home.run_with_stdin(&["auth", "add", "anthropc", "--label", "x"], "sk-ant-x");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: unknown provider \"anthropc\" (did you mean anthropic?)"),
        "{err}"
    );
    assert!(
        err.contains("known providers: anthropic, codex, copilot, google, openai"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
    assert!(
        err.contains("[providers.anthropc]"),
        "says how to define it: {err}"
    );
    assert!(!home.accounts_file().exists(), "nothing written");
}

#[test]
fn an_unknown_account_names_the_existing_labels() {
    let home = Home::new();
    home.add_key("anthropic", "work", "sk-ant-1");
    home.add_key("anthropic", "home", "sk-ant-2");
    let out = home.run(&["auth", "remove", "anthropic", "wrok"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("error: no anthropic account labelled \"wrok\""),
        "{err}"
    );
    assert!(
        err.contains("hint: anthropic accounts: work, home"),
        "{err}"
    );
    let out = home.run(&["auth", "disable", "openai", "work"]);
    assert!(
        stderr(&out).contains("there are no openai accounts; accounts exist for: anthropic"),
        "{}",
        stderr(&out)
    );
    assert_eq!(list_json(&home).len(), 2);
}

#[test]
fn a_taken_label_says_how_to_rename() {
    let home = Home::new();
    home.add_key("anthropic", "work", "sk-ant-1");
    let out = home.run_with_stdin(&["auth", "add", "anthropic", "--label", "work"], "sk-ant-2");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("already has an account labelled \"work\""),
        "{err}"
    );
    assert!(
        err.contains("marathon auth rename anthropic work <new>"),
        "{err}"
    );
    let out = home.run(&["auth", "rename", "anthropic", "work", "bad\tlabel"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("control characters"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn keys_must_come_on_stdin_as_one_token() {
    let home = Home::new();
    let out = home.run_with_stdin(&["auth", "add", "openai", "--label", "x"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("error: no API key was given"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("printf %s"),
        "says how: {}",
        stderr(&out)
    );
    let out = home.run_with_stdin(
        &["auth", "add", "openai", "--label", "x"],
        "sk-one\nsk-two\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("line breaks"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("sk-one"));
    // There is no way to pass the key as an argument.
    let out = home.run(&["auth", "add", "openai", "sk-proj-in-argv"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("not shown, in case it is a key"), "{err}");
    assert!(!err.contains("sk-proj-in-argv"), "{err}");
    // A mistyped flag is still named, so the user can fix it.
    let out = home.run(&["auth", "add", "openai", "--lable", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--lable"), "{}", stderr(&out));
    assert!(!home.accounts_file().exists());
}

#[test]
fn a_corrupt_or_newer_store_is_refused_and_untouched() {
    for contents in [
        &b"{\"version\":1,\"accounts\":[{\"id\":\"acc_1\",\"provider\":\"anthropic\""[..],
        &br#"{"version":3,"accounts":[],"sharded":true}"#[..],
    ] {
        let home = Home::new();
        std::fs::create_dir_all(home.data()).unwrap();
        std::fs::write(home.accounts_file(), contents).unwrap();
        for args in [
            &["auth", "list"][..],
            &["status"],
            &["auth", "remove", "anthropic", "x"],
        ] {
            let out = home.run(args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = stderr(&out);
            assert!(
                err.contains(&home.accounts_file().display().to_string()),
                "names the file: {err}"
            );
            assert!(err.contains("left untouched"), "{err}");
            assert!(
                err.contains("hint: your accounts file was not changed"),
                "{err}"
            );
        }
        let out = home.run_with_stdin(&["auth", "add", "anthropic", "--label", "x"], "sk-ant-new");
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            std::fs::read(home.accounts_file()).unwrap(),
            contents,
            "byte-for-byte untouched"
        );
    }
}

#[test]
fn store_files_are_private() {
    let home = Home::new();
    home.add_key("anthropic", "work", "sk-ant-1");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.data()), 0o700);
    assert_eq!(mode(&home.accounts_file()), 0o600);
    assert_eq!(mode(&home.data().join("accounts.lock")), 0o600);
}

#[test]
fn status_shows_state_cooldowns_and_shared_tokens() {
    let home = Home::new();
    home.add_key("anthropic", "work", "sk-ant-1");
    let creds = home.path().join("claude.json");
    std::fs::write(
        &creds,
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-a","refreshToken":"sk-ant-ort01-r","expiresAt":1750000000000,"scopes":["user:inference"],"subscriptionType":"max"}}"#,
    )
    .unwrap();
    home.ok(
        &[
            "auth",
            "import",
            "claude-code",
            "--path",
            creds.to_str().unwrap(),
        ],
        "",
    );
    // Mark one account as needing login and cooling, as the proxy would.
    let json = list_json(&home);
    let work = json.iter().find(|a| a["label"] == "work").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let far = 4_102_444_800_000u64; // 2100-01-01
    std::fs::write(
        home.data().join("hot.json"),
        format!(r#"{{"cooldowns":{{"{work}":{{"cooling_until":{far},"reason":"rate_limit","successes":1,"failures":2}}}}}}"#),
    )
    .unwrap();
    let out = home.ok(&["status"], "");
    assert!(out.starts_with("accounts in "), "{out}");
    let work_line = out.lines().find(|l| l.contains(" work ")).unwrap();
    assert!(
        work_line.contains("cooling") && work_line.contains("(rate_limit)"),
        "{work_line}"
    );
    let oauth_line = out.lines().find(|l| l.contains("oauth")).unwrap();
    assert!(
        oauth_line.contains("shares its refresh token with claude-code"),
        "{oauth_line}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&home.ok(&["status", "--json"], "")).unwrap();
    let w = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["accounts"].as_array().unwrap())
        .find(|a| a["label"] == "work")
        .unwrap();
    assert_eq!(w["state"], "cooling");
    assert_eq!(w["cooling_until"], far);
    assert_eq!(w["last_reason"], "rate_limit");
    assert_eq!(w["successes"], 1);
}

#[test]
fn import_reports_warns_and_moves() {
    let home = Home::new();
    let codex = home.path().join("codex-auth.json");
    let original = r#"{"OPENAI_API_KEY":null,"tokens":{"id_token":"not-a-jwt","access_token":"codex-access-1","refresh_token":"codex-refresh-1","account_id":"org-acct-123"},"last_refresh":"2025-06-01T00:00:00Z"}"#;
    std::fs::write(&codex, original).unwrap();
    let path = codex.to_str().unwrap();

    let out = home.run(&["auth", "import", "codex", "--path", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout, "added codex/org-acct-123 (oauth, from codex)\n");
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: 1 imported OAuth login(s) share a single-use refresh token with codex"
        ),
        "{err}"
    );
    assert!(err.contains("--move"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&codex).unwrap(),
        original,
        "the source is read-only without --move"
    );

    // Importing again updates the same account.
    let again = home.ok(&["auth", "import", "codex", "--path", path], "");
    assert_eq!(again, "updated codex/org-acct-123 (oauth, from codex)\n");
    assert_eq!(list_json(&home).len(), 1);
    assert_eq!(list_json(&home)[0]["source"], "import:codex");

    // --move takes the credential out of the source and marathon owns it.
    let out = home.run(&["auth", "import", "codex", "--path", path, "--move"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("moved: removed 1 credential(s)"));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&codex).unwrap()).unwrap();
    assert!(
        source.get("tokens").is_none_or(serde_json::Value::is_null),
        "{source}"
    );
    assert_eq!(list_json(&home)[0]["source"], serde_json::Value::Null);
}

#[test]
fn import_errors_say_what_to_do() {
    let home = Home::new();
    let out = home.run(&["auth", "import", "gemini"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no gemini credentials at"), "{err}");
    assert!(err.contains("user-home/.gemini/oauth_creds.json"), "{err}");
    assert!(
        err.contains("hint: log in with gemini first, or point at the file with --path"),
        "{err}"
    );

    let bad = home.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"access_token": 42, "refresh_token": "1//0secret-refresh"}"#,
    )
    .unwrap();
    let out = home.run(&["auth", "import", "gemini", "--path", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("access_token"), "{err}");
    assert!(!err.contains("1//0secret-refresh"), "{err}");
}

#[test]
fn every_command_has_useful_help() {
    let home = Home::new();
    let commands: &[&[&str]] = &[
        &[],
        &["auth"],
        &["auth", "add"],
        &["auth", "list"],
        &["auth", "remove"],
        &["auth", "rename"],
        &["auth", "disable"],
        &["auth", "enable"],
        &["auth", "priority"],
        &["auth", "import"],
        &["status"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = home.ok(&args, "");
        assert!(out.contains("Usage: marathon"), "{cmd:?}: {out}");
        assert!(out.contains("Example"), "{cmd:?} has examples: {out}");
        assert!(
            out.contains("--home <DIR>"),
            "{cmd:?} documents --home: {out}"
        );
    }
    let add = home.ok(&["auth", "add", "--help"], "");
    assert!(add.contains("never taken from the command line"), "{add}");
    let import = home.ok(&["auth", "import", "--help"], "");
    for name in ["opencode", "claude-code", "codex", "gemini", "single-use"] {
        assert!(import.contains(name), "{name}: {import}");
    }
}

#[test]
fn eight_processes_adding_25_accounts_each_through_the_cli() {
    let home = Home::new();
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let dir = home.path().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let out = Command::new(env!("CARGO_BIN_EXE_marathon"))
                        .args(["auth", "add", "anthropic", "--label", &format!("w{w}-{i}")])
                        .env("MARATHON_HOME", &dir)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .and_then(|mut c| {
                            c.stdin
                                .take()
                                .unwrap()
                                .write_all(format!("sk-ant-w{w}-{i}").as_bytes())?;
                            c.wait_with_output()
                        })
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let json = list_json(&home);
    assert_eq!(json.len(), 200);
    let mut labels: Vec<&str> = json.iter().map(|a| a["label"].as_str().unwrap()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), 200);
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.accounts_file()).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
}

/// `auth add` used to read at most 64 KiB from stdin and store what it got,
/// silently cutting a mistaken pipe of a large file into a "key"; and a key
/// with a non-ASCII paste artefact (a zero-width space) was stored as given,
/// to fail at the provider later. Both are refused now, saying why without
/// quoting the key, and nothing is stored.
#[test]
fn an_over_long_or_unprintable_key_is_refused_and_nothing_is_stored() {
    let home = Home::new();
    let long = format!("sk-LONGKEY{}", "x".repeat(70 * 1024));
    let out = home.run_with_stdin(&["auth", "add", "openai", "--label", "x"], &long);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("longer than 16 KiB"), "{err}");
    assert!(!err.contains("LONGKEY"), "{err}");

    for (key, says) in [
        ("sk-proj-\u{1b}[31mkey", "a control character"),
        ("sk-proj-zero\u{200b}width", "not plain ASCII"),
        ("sk-proj-\u{7f}del", "a control character"),
    ] {
        let out = home.run_with_stdin(&["auth", "add", "openai", "--label", "x"], key);
        assert_eq!(out.status.code(), Some(2), "{key:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{key:?}: {err}");
        assert!(!err.contains("sk-proj"), "the key is quoted: {err}");
    }
    assert!(
        !home.accounts_file().exists() || list_json(&home).is_empty(),
        "nothing stored"
    );

    // A long JWT-style token is still a key; the newline `echo` adds is not part of it.
    let jwt = format!("eyJ{}.eyJ{}.sig", "a".repeat(6000), "b".repeat(6000));
    home.add_key("openai", "jwt", &format!("{jwt}\n"));
    let stored = std::fs::read_to_string(home.accounts_file()).unwrap();
    assert!(stored.contains(&format!("\"{jwt}\"")));
}

/// Adding a key that is already stored updates that account (and says so)
/// instead of adding a second account with the same key. (This held before
/// the change too; it guards the dedupe the import fix reworked.)
#[test]
fn re_adding_the_same_key_keeps_one_account() {
    let home = Home::new();
    home.add_key("openai", "work", "sk-proj-same");
    let again = home.ok(&["auth", "add", "openai"], "sk-proj-same\n");
    assert!(again.starts_with("updated openai/work"), "{again}");
    assert_eq!(list_json(&home).len(), 1);
}

/// A store copied with `cp` or written under a 022 umask by an older build
/// was used as it was: any local user could read the keys. Every command now
/// makes it private first and says so on stderr; the contents do not change.
#[test]
fn a_loose_store_is_made_private_with_a_warning() {
    let home = Home::new();
    home.add_key("anthropic", "work", "sk-ant-1");
    let before = std::fs::read(home.accounts_file()).unwrap();
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    set(&home.accounts_file(), 0o644).unwrap();
    set(&home.data(), 0o755).unwrap();

    let out = home.run(&["auth", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let file = home.accounts_file().display().to_string();
    assert!(
        err.contains(&format!(
            "warning: {file} was open to other users (mode 0644); it is now 0600"
        )),
        "{err}"
    );
    assert!(err.contains("mode 0755); it is now 0700"), "{err}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.accounts_file()), 0o600);
    assert_eq!(mode(&home.data()), 0o700);
    assert_eq!(std::fs::read(home.accounts_file()).unwrap(), before);
    // Once private, nothing more is said.
    assert_eq!(stderr(&home.run(&["auth", "list"])), "");
}

/// Under a umask of 000 a new store is still private: every file is created
/// 0600 (the temporary file before its first byte) and the directory 0700.
/// (This held before the change; it guards the creation path.)
#[test]
fn a_new_store_is_private_under_any_umask() {
    let home = Home::new();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" auth add anthropic --label work")
        .arg(env!("CARGO_BIN_EXE_marathon"))
        .env("MARATHON_HOME", home.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"sk-ant-1").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.data()), 0o700);
    assert_eq!(mode(&home.accounts_file()), 0o600);
    assert_eq!(mode(&home.data().join("accounts.lock")), 0o600);
}

/// `marathon auth list --json | head -1`: the reader is gone before marathon
/// writes. `println!` panicked ("failed printing to stdout: Broken pipe",
/// exit 101); now every command ends quietly with 0, like ripgrep. The pipe's
/// read end is closed before the process starts, so the write always fails.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let home = Home::new();
    home.add_key("anthropic", "work", "sk-ant-1");
    home.add_key("openai", "work", "sk-proj-1");
    let commands: &[&[&str]] = &[
        &["auth", "list", "--json"],
        &["auth", "list"],
        &["status", "--offline"],
        &["status", "--offline", "--json"],
        &["auth", "rename", "openai", "work", "main"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_marathon"))
            .args(*args)
            .env("MARATHON_HOME", home.path())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}: nothing on stderr");
    }
}

fn claude_credentials(access: &str, refresh: &str, expires_at: u64) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"{access}","refreshToken":"{refresh}","expiresAt":{expires_at},"scopes":["user:inference"],"subscriptionType":"max"}}}}"#
    )
}

/// The OAuth tokens stored for a provider: `(label, access, refresh)`.
fn stored_tokens(home: &Home, provider: &str) -> Vec<(String, String, String)> {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.accounts_file()).unwrap()).unwrap();
    file["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["provider"] == provider)
        .map(|a| {
            let c = &a["credential"];
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (s(&a["label"]), s(&c["access"]), s(&c["refresh"]))
        })
        .collect()
}

/// Re-importing Claude Code's login used to add a second account holding the
/// same single-use refresh token (the file names no identity): the two raced
/// on the next refresh and one was logged out. Now the same refresh token,
/// or the identity from Claude Code's profile (~/.claude.json), finds the
/// account, which is updated; a stored login newer than the file's is kept.
#[test]
fn reimporting_claude_code_updates_the_one_account() {
    let home = Home::new();
    let user = home.path().join("user-home");
    std::fs::create_dir_all(user.join(".claude")).unwrap();
    let creds = user.join(".claude").join(".credentials.json");
    let import = || home.ok(&["auth", "import", "claude-code"], "");

    std::fs::write(
        &creds,
        claude_credentials("at-1", "rt-1", 1_750_000_000_000),
    )
    .unwrap();
    assert_eq!(
        import(),
        "added anthropic/anthropic-1 (oauth, from claude-code)\n"
    );
    assert_eq!(
        import(),
        "updated anthropic/anthropic-1 (oauth, from claude-code)\n"
    );
    assert_eq!(stored_tokens(&home, "anthropic").len(), 1);

    // Claude Code got a new access token (same refresh token); its profile
    // now says who it is, which the account learns.
    std::fs::write(
        &creds,
        claude_credentials("at-2", "rt-1", 1_750_003_600_000),
    )
    .unwrap();
    std::fs::write(
        user.join(".claude.json"),
        r#"{"oauthAccount":{"accountUuid":"u-1","emailAddress":"ana@example.com"}}"#,
    )
    .unwrap();
    assert!(import().starts_with("updated anthropic/anthropic-1"));
    assert_eq!(
        stored_tokens(&home, "anthropic"),
        [("anthropic-1".into(), "at-2".into(), "rt-1".into())]
    );

    // Claude Code refreshed: both tokens are new; the identity finds the account.
    std::fs::write(
        &creds,
        claude_credentials("at-3", "rt-3", 1_750_007_200_000),
    )
    .unwrap();
    assert!(import().starts_with("updated anthropic/anthropic-1"));
    assert_eq!(
        stored_tokens(&home, "anthropic"),
        [("anthropic-1".into(), "at-3".into(), "rt-3".into())]
    );

    // A file older than what marathon holds (marathon refreshed since) is
    // not allowed to swap live tokens for spent ones.
    std::fs::write(
        &creds,
        claude_credentials("at-0", "rt-0", 1_749_000_000_000),
    )
    .unwrap();
    let out = import();
    assert!(
        out.starts_with("kept anthropic/anthropic-1: the stored login is newer"),
        "{out}"
    );
    assert_eq!(
        stored_tokens(&home, "anthropic"),
        [("anthropic-1".into(), "at-3".into(), "rt-3".into())]
    );
}

/// `import opencode --move` used to remove every imported entry, API keys
/// included, though only OAuth refresh tokens are single-use: opencode lost
/// keys it could have kept. Now --move takes the logins and says which keys
/// it left; --move-all takes those too. Re-importing the keys is an update.
#[test]
fn import_opencode_move_takes_only_the_single_use_logins() {
    let home = Home::new();
    let auth = home.path().join("opencode-auth.json");
    std::fs::write(
        &auth,
        r#"{
  "anthropic": {"type": "oauth", "refresh": "sk-ant-ort01-r", "access": "sk-ant-oat01-a", "expires": 1750000000000},
  "openai": {"type": "api", "key": "sk-proj-opencode"},
  "google": {"type": "api", "key": "AIza-opencode"}
}"#,
    )
    .unwrap();
    let path = auth.to_str().unwrap();
    let out = home.ok(
        &["auth", "import", "opencode", "--path", path, "--move"],
        "",
    );
    assert!(out.contains("moved: removed 1 credential(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "left in {path}: openai, google (not single-use, so safe to share; --move-all moves them too)"
        )),
        "{out}"
    );
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&auth).unwrap()).unwrap();
    assert!(source.get("anthropic").is_none(), "{source}");
    assert_eq!(source["openai"]["key"], "sk-proj-opencode");
    assert_eq!(source["google"]["key"], "AIza-opencode");
    let json = list_json(&home);
    assert_eq!(json.len(), 3);
    let anthropic = json.iter().find(|a| a["provider"] == "anthropic").unwrap();
    assert_eq!(
        anthropic["source"],
        serde_json::Value::Null,
        "marathon owns it"
    );

    // --move-all: the keys go too, and are the accounts already stored.
    let out = home.ok(
        &["auth", "import", "opencode", "--path", path, "--move-all"],
        "",
    );
    assert!(out.contains("updated openai/openai-1"), "{out}");
    assert!(out.contains("moved: removed 2 credential(s)"), "{out}");
    assert!(!out.contains("left in"), "{out}");
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&auth).unwrap()).unwrap();
    assert_eq!(source, serde_json::json!({}));
    assert_eq!(list_json(&home).len(), 3);
}
