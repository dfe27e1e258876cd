//! No secret reaches a command's output or error, or any file but the store.
//!
//! Every secret below contains the marker `SECRET`; every command marathon has
//! is run, on success and error paths, and its stdout and stderr are searched
//! for the marker, as is every file under MARATHON_HOME except the accounts
//! file itself (and its migration backups), which is where secrets belong.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MARKER: &str = "SECRET";

/// A JWT whose signature is secret (the whole token is a credential).
fn jwt(email: &str) -> String {
    let b64 = |s: &str| {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    format!(
        "{}.{}.SECRETSIGNATURE",
        b64(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"email":"{email}","https://api.openai.com/auth":{{"chatgpt_account_id":"acct-9f8e"}}}}"#
        ))
    )
}

struct Run {
    home: PathBuf,
    outputs: Vec<(String, String)>,
}

impl Run {
    fn cmd(&mut self, args: &[&str], stdin: &str) -> bool {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marathon"))
            .args(args)
            .env("MARATHON_HOME", &self.home)
            .env("HOME", self.home.join("user-home"))
            .env("RUST_LOG", "trace")
            .env_remove("XDG_DATA_HOME")
            .env_remove("CODEX_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.outputs.push((args.join(" "), text));
        out.status.success()
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_secret_in_any_output_error_or_non_store_file() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // Import sources live outside MARATHON_HOME: they hold secrets by nature.
    let sources = tmp.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let src = |name: &str, contents: String| {
        let p = sources.join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_string()
    };
    let claude = src(
        "claude.json",
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-SECRET-access-C","refreshToken":"sk-ant-ort01-SECRET-refresh-D","expiresAt":1750000000000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}"#.into(),
    );
    let codex = src(
        "codex.json",
        format!(
            r#"{{"OPENAI_API_KEY":"sk-proj-SECRET-codexkey-E","tokens":{{"id_token":"{}","access_token":"SECRET-codex-access-F","refresh_token":"SECRET-codex-refresh-G","account_id":"acct-9f8e"}},"last_refresh":"2025-06-01T00:00:00Z"}}"#,
            jwt("dev@example.com")
        ),
    );
    let opencode = src(
        "opencode.json",
        r#"{"anthropic":{"type":"api","key":"sk-ant-api03-SECRET-opencode-H"},"openai":{"type":"oauth","access":"SECRET-oc-access-I","refresh":"SECRET-oc-refresh-J","expires":1750000000000},"mystery":{"type":"api","key":"SECRET-unknown-provider-K"},"weird":{"type":"wellknown","token":"SECRET-weird-L"}}"#.into(),
    );
    let gemini = src(
        "gemini.json",
        r#"{"access_token":"ya29.SECRET-gemini-M","refresh_token":"1//SECRET-gemini-refresh-N","expiry_date":1750000000000,"scope":"https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer"}"#.into(),
    );
    let bad_import = src(
        "bad.json",
        r#"{"access_token":["SECRET-in-wrong-type-O"],"refresh_token":"SECRET-P"}"#.into(),
    );
    let truncated = src(
        "truncated.json",
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-SECRET-trunc-Q"#.into(),
    );

    let mut r = Run {
        home: home.clone(),
        outputs: Vec::new(),
    };
    // Success paths: every command.
    assert!(r.cmd(
        &["auth", "add", "anthropic", "--label", "work"],
        "sk-ant-api03-SECRET-key-A\n"
    ));
    assert!(r.cmd(
        &[
            "auth",
            "add",
            "openai",
            "--label",
            "team",
            "--priority",
            "2"
        ],
        "sk-proj-SECRET-key-B"
    ));
    assert!(
        r.cmd(
            &["auth", "add", "openai", "--label", "team-again"],
            "sk-proj-SECRET-key-B"
        ),
        "same key: update"
    );
    assert!(r.cmd(&["auth", "import", "claude-code", "--path", &claude], ""));
    assert!(r.cmd(&["auth", "import", "codex", "--path", &codex], ""));
    assert!(r.cmd(&["auth", "import", "opencode", "--path", &opencode], ""));
    assert!(r.cmd(&["auth", "import", "gemini", "--path", &gemini], ""));
    assert!(r.cmd(
        &["auth", "import", "gemini", "--path", &gemini, "--move"],
        ""
    ));
    assert!(r.cmd(&["auth", "list"], ""));
    assert!(r.cmd(&["auth", "list", "--json"], ""));
    assert!(r.cmd(&["auth", "list", "--provider", "openai"], ""));
    assert!(r.cmd(&["status"], ""));
    assert!(r.cmd(&["status", "--json"], ""));
    assert!(r.cmd(&["auth", "rename", "anthropic", "work", "main"], ""));
    assert!(r.cmd(&["auth", "disable", "anthropic", "main"], ""));
    assert!(r.cmd(&["auth", "enable", "anthropic", "main"], ""));
    assert!(r.cmd(&["auth", "priority", "openai", "team", "7"], ""));
    assert!(r.cmd(&["auth", "remove", "openai", "team"], ""));

    // Error paths, each handed a secret it could echo.
    assert!(!r.cmd(
        &["auth", "add", "anthropc", "--label", "x"],
        "sk-ant-api03-SECRET-typo-R"
    ));
    assert!(!r.cmd(
        &["auth", "add", "anthropic", "--label", "main"],
        "sk-ant-api03-SECRET-clash-S"
    ));
    assert!(!r.cmd(
        &["auth", "add", "anthropic", "--label", "two"],
        "SECRET-line-1\nSECRET-line-2\n"
    ));
    assert!(!r.cmd(
        &["auth", "add", "anthropic", "--label", "bad\u{7}"],
        "sk-ant-api03-SECRET-badlabel-T"
    ));
    assert!(!r.cmd(
        &["auth", "add", "anthropic", "sk-ant-api03-SECRET-argv-U"],
        ""
    ));
    assert!(!r.cmd(&["auth", "import", "gemini", "--path", &bad_import], ""));
    assert!(!r.cmd(&["auth", "import", "claude-code", "--path", &truncated], ""));
    assert!(!r.cmd(&["auth", "rename", "anthropic", "main", ""], ""));
    assert!(!r.cmd(&["auth", "remove", "anthropic", "nope"], ""));

    // A store damaged so that a secret sits where a number belongs.
    let data = home.join("data");
    let accounts = data.join("accounts.json");
    let good = std::fs::read(&accounts).unwrap();
    let as_text = String::from_utf8(good.clone()).unwrap();
    assert!(
        as_text.contains("sk-ant-api03-SECRET-key-A"),
        "the store does hold the secrets"
    );
    assert!(as_text.contains("SECRET-codex-refresh-G"));
    let damaged = as_text.replacen(
        "\"priority\": 0",
        "\"priority\": \"sk-ant-SECRET-in-store-V\"",
        1,
    );
    assert_ne!(damaged, as_text);
    std::fs::write(&accounts, &damaged).unwrap();
    for args in [
        &["auth", "list"][..],
        &["status"],
        &["auth", "list", "--json"],
        &["auth", "remove", "anthropic", "main"],
    ] {
        assert!(!r.cmd(args, ""), "{args:?} refuses the damaged store");
    }
    assert!(!r.cmd(
        &["auth", "add", "anthropic", "--label", "z"],
        "sk-ant-SECRET-into-damaged-W"
    ));
    assert_eq!(std::fs::read_to_string(&accounts).unwrap(), damaged);
    std::fs::write(&accounts, &good).unwrap();

    for (cmd, text) in &r.outputs {
        assert!(
            !text.contains(MARKER),
            "`marathon {cmd}` printed a secret:\n{text}"
        );
        assert!(
            !text.contains("SIGNATURE"),
            "`marathon {cmd}` printed a token:\n{text}"
        );
    }

    let mut files = Vec::new();
    files_under(&home, &mut files);
    assert!(files.iter().any(|f| f.ends_with("accounts.lock")));
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name == "accounts.json" || name.starts_with("accounts.json.bak-v") {
            continue;
        }
        let contents = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!contents.contains(MARKER), "{} holds a secret", f.display());
    }
}
