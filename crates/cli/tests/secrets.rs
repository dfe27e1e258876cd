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

// ---------------------------------------------------------------------------
// A running proxy between an upstream and a token endpoint that echo
// ---------------------------------------------------------------------------

mod adversarial {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::{Duration, Instant};

    use marathon_core::{AccountKind, Secret, UnixMillis};
    use marathon_store::{Credential, FileStore, NewAccount, Store};
    use marathon_testkit::echo::{
        EchoingTokenEndpoint, EchoingUpstream, ID_HEADER, Recorder, SCRIPT_HEADER,
    };

    /// The proxy's access key.
    const ACCESS: &str = "mk-SECRET-access-key-9f3c2d1e";
    /// API-key accounts, in priority order. `words` is shaped like an error
    /// code, so only the check against the secrets marathon holds stops it.
    const KEYS: [(&str, &str); 3] = [
        ("prefixed", "sk-ant-api03-SECRET-echoed-Zq81xYw0aa"),
        ("words", "plain-words-SECRET-credential"),
        ("third", "sk-ant-api03-SECRET-third-Kp29vQ7m"),
    ];
    /// OAuth accounts (label, access, refresh, what the token endpoint
    /// answers their refresh), after the API keys; every access token has
    /// expired, so using one means refreshing it.
    const OAUTH: [(&str, &str, &str, u16); 3] = [
        (
            "oa-rejected",
            "sk-ant-oat01-SECRET-access-rej-4f2a9c",
            "sk-ant-ort01-SECRET-refresh-rej-8b1c7d",
            400,
        ),
        (
            "oa-dead",
            "access-SECRET-dead-token",
            "refresh-SECRET-dead-grant",
            401,
        ),
        (
            "oa-flaky",
            "sk-ant-oat01-SECRET-access-flaky-77aa",
            "sk-ant-ort01-SECRET-refresh-flaky-9d0e",
            503,
        ),
    ];

    fn secrets() -> Vec<String> {
        let mut all = vec![ACCESS.to_string()];
        all.extend(KEYS.iter().map(|(_, k)| k.to_string()));
        for (_, access, refresh, _) in OAUTH {
            all.push(access.to_string());
            all.push(refresh.to_string());
        }
        all
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// One request, `connection: close`, read to the end: the status line,
    /// every header, and the body (de-chunked, so a secret split by the
    /// chunk framing is still found).
    fn call(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\nx-marathon-key: {ACCESS}\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw[split..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        format!("{head}{}", String::from_utf8_lossy(&body))
    }

    fn dechunk(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&b[i + 2..i + 2 + size]);
            b = &b[(i + 4 + size).min(b.len())..];
        }
        out
    }

    fn status_of(reply: &str) -> u16 {
        reply.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Reads a stream into a shared string until it ends.
    fn drain(
        mut r: impl Read + Send + 'static,
        sink: Arc<Mutex<String>>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    }

    /// Waits for a condition that becomes true as the proxy works (events
    /// reaching a sink, the store being re-read): checked after each change
    /// it could depend on, with a deadline so a bug fails instead of hanging.
    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn marathon(home: &Path, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_marathon"))
            .args(args)
            .env("MARATHON_HOME", home)
            .env("HOME", home.join("user-home"))
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .env_remove("MARATHON_LOG")
            .output()
            .unwrap();
        format!(
            "$ marathon {}\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn store_accounts(home: &Path) {
        let store = FileStore::open(&home.join("data")).unwrap();
        for (priority, (label, key)) in KEYS.iter().enumerate() {
            let mut a =
                NewAccount::api_key("anthropic", Some(label.to_string()), Secret::new(*key));
            a.priority = priority as i32;
            store.add(a).unwrap();
        }
        for (i, (label, access, refresh, _)) in OAUTH.iter().enumerate() {
            store
                .add(NewAccount {
                    provider: "anthropic".into(),
                    label: Some(label.to_string()),
                    kind: AccountKind::Oauth,
                    priority: 10 + i as i32,
                    identity: Some(format!("{label}@example.com")),
                    credential: Credential::Oauth {
                        access: Secret::new(*access),
                        refresh: Some(Secret::new(*refresh)),
                        expires_at: Some(UnixMillis(1_000)),
                        id_token: None,
                        scopes: Vec::new(),
                    },
                    extras: Default::default(),
                    source: None,
                })
                .unwrap();
        }
    }

    // Guards the whole chain against an upstream and a token endpoint that
    // echo the credentials they receive (and every other secret they were
    // told) in every field they control: status reason text, headers
    // (`x-error`, retry-after's neighbours, usage headers, one named after
    // the key), JSON error fields, stream error events (first and mid-stream),
    // and the token endpoint's `error`, `error_description`, `error.code` and
    // `detail.code`. On main the echoed key became a reason, and so reached
    // events, log lines, the status answer, the "all accounts unavailable"
    // body and the CLI; a passed-through answer carried it to the client.
    // Every output is searched: the serve log at trace level, the events
    // stream, status, metrics and dashboard, every answer to a client (status
    // line, headers, de-chunked body), the webhook and command-hook payloads,
    // `marathon status` / `auth list` (and --json, live and offline), and
    // every file under MARATHON_HOME but the credential store.
    #[test]
    fn echoing_peers_leak_no_secret_into_any_output() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let upstream = rt.block_on(EchoingUpstream::start(secrets()));
        let answers = OAUTH
            .iter()
            .map(|(_, _, r, s)| (r.to_string(), *s))
            .collect();
        let tokens = rt.block_on(EchoingTokenEndpoint::start(answers, secrets()));
        let hook = rt.block_on(Recorder::start());

        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let hook_file = tmp.path().join("hook-events.jsonl");
        let port = free_port();
        std::fs::write(
            home.join("config.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\naccess_keys = [\"{ACCESS}\"]\n\n\
                 [events]\nwebhook = \"{}\"\ncommand = \"cat >> '{}'\"\n\n\
                 [providers.anthropic]\nupstream = \"{}\"\nstrategy = \"priority\"\n\n\
                 [providers.anthropic.oauth]\ntoken_url = \"{}\"\n",
                hook.url(),
                hook_file.display(),
                upstream.url(),
                tokens.token_url(),
            ),
        )
        .unwrap();
        store_accounts(&home);

        let mut serve = Command::new(env!("CARGO_BIN_EXE_marathon"))
            .arg("serve")
            .env("MARATHON_HOME", &home)
            .env("HOME", home.join("user-home"))
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .env_remove("MARATHON_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stdout_reader = drain(serve.stdout.take().unwrap(), log.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = serve.stderr.take().unwrap();
        let sink = log.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("dashboard") {
                    let _ = ready_tx.send(());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("serve did not start:\n{}", log.lock().unwrap()));

        // The events stream, for the whole run.
        let events = Arc::new(Mutex::new(String::new()));
        let mut sse = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sse.write_all(
            format!(
                "GET /_marathon/events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-marathon-key: {ACCESS}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let sse_reader = drain(sse.try_clone().unwrap(), events.clone());
        wait_until("the events stream", || {
            events.lock().unwrap().contains("marathon events")
        });

        let mut seen = String::new();
        let mut statuses = Vec::new();
        let body = r#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let request = |script: &str, id: &str| {
            call(
                port,
                "POST",
                "/anthropic/v1/messages",
                &[
                    ("content-type", "application/json"),
                    ("anthropic-version", "2023-06-01"),
                    (SCRIPT_HEADER, script),
                    (ID_HEADER, id),
                ],
                body,
            )
        };
        // A 200 and a 400 passed through; a 401 (API key: needs login) then a
        // 200; a 200 stream whose first event is an error, and a 503, each
        // retried; a stream broken by an error event in the middle (passed
        // on, account benched); 429s and refreshes that fail three ways.
        for (i, script) in [
            "ok",
            "400",
            "401,ok",
            "sse-first,ok",
            "503,ok",
            "sse-mid",
            "429",
        ]
        .into_iter()
        .enumerate()
        {
            let reply = request(script, &format!("r{i}"));
            statuses.push((script, status_of(&reply)));
            seen.push_str(&reply);
        }
        assert_eq!(statuses[0].1, 200, "{seen}");
        assert_eq!(statuses[1].1, 400, "{seen}");
        assert!(
            seen.contains("event: error"),
            "the mid-stream error passed on"
        );

        // With the refreshing accounts switched off, every account is out:
        // marathon's own "all accounts unavailable" answer, with each
        // account's last error.
        seen.push_str(&marathon(
            &home,
            &["auth", "disable", "anthropic", "oa-rejected"],
        ));
        seen.push_str(&marathon(
            &home,
            &["auth", "disable", "anthropic", "oa-flaky"],
        ));
        let status_path = "/_marathon/status";
        wait_until("the proxy to see the disabled accounts", || {
            call(port, "GET", status_path, &[], "")
                .matches("\"disabled\"")
                .count()
                >= 2
        });
        let reply = request("429", "r-last");
        statuses.push(("429 (all out)", status_of(&reply)));
        assert!(
            reply.contains("all 6 anthropic accounts are unavailable"),
            "{reply}"
        );
        seen.push_str(&reply);

        // What it served, as it served it.
        for (mode, key) in upstream.served() {
            assert!(
                secrets().contains(&key),
                "{mode} answered an unknown credential"
            );
        }
        let modes: Vec<String> = upstream.served().into_iter().map(|(m, _)| m).collect();
        for mode in ["ok", "400", "401", "sse-first", "503", "sse-mid", "429"] {
            assert!(
                modes.iter().any(|m| m == mode),
                "no {mode} answer served: {modes:?}"
            );
        }
        let hits = tokens.hits();
        for (_, _, refresh, status) in OAUTH {
            assert!(hits.contains(&(refresh.to_string(), status)), "{hits:?}");
        }

        for path in ["status", "metrics", "dashboard", "health"] {
            seen.push_str(&call(port, "GET", &format!("/_marathon/{path}"), &[], ""));
        }
        for args in [
            &["status"][..],
            &["status", "--json"],
            &["auth", "list"],
            &["auth", "list", "--json"],
        ] {
            let out = marathon(&home, args);
            assert!(out.contains("oa-dead"), "{out}");
            seen.push_str(&out);
        }

        // Every kind of event reached the stream, the webhook and the hook.
        let kinds = [
            "failover",
            "cooldown",
            "needs_login",
            "refresh_failed",
            "exhausted",
        ];
        wait_until("every kind of event in every sink", || {
            let hooked = std::fs::read_to_string(&hook_file).unwrap_or_default();
            let posted = hook.bodies().join("\n");
            let streamed = events.lock().unwrap().clone();
            kinds.iter().all(|k| {
                let tag = format!("\"type\":\"{k}\"");
                hooked.contains(&tag) && posted.contains(&tag) && streamed.contains(&tag)
            })
        });
        sse.shutdown(Shutdown::Both).unwrap();
        sse_reader.join().unwrap();

        // Ctrl-C: the proxy saves its hot state on the way out.
        let killed = Command::new("kill")
            .args(["-INT", &serve.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert!(serve.wait().unwrap().success());
        stderr_reader.join().unwrap();
        stdout_reader.join().unwrap();
        for args in [
            &["status", "--offline"][..],
            &["status", "--offline", "--json"],
        ] {
            seen.push_str(&marathon(&home, args));
        }

        let log = log.lock().unwrap().clone();
        // The capture is a trace-level log of this very run.
        assert!(
            log.contains("marathon::request") && log.contains("TRACE"),
            "{log}"
        );
        assert!(log.contains("token refresh failed"), "{log}");
        seen.push_str(&log);
        seen.push_str(&events.lock().unwrap());
        seen.push_str(&hook.bodies().join("\n"));
        seen.push_str(&std::fs::read_to_string(&hook_file).unwrap());
        let mut files = Vec::new();
        super::files_under(&home, &mut files);
        assert!(files.iter().any(|f| f.ends_with("hot.json")), "{files:?}");
        for f in files {
            let name = f.file_name().unwrap().to_str().unwrap();
            // The credential store, and the config the test wrote the
            // access key into: where those secrets belong.
            if name == "accounts.json"
                || name.starts_with("accounts.json.bak-v")
                || name == "config.toml"
            {
                continue;
            }
            seen.push_str(&String::from_utf8_lossy(&std::fs::read(&f).unwrap()));
        }

        let folded = seen.to_ascii_lowercase();
        let around = |at: usize| {
            let from = seen.floor_char_boundary(at.saturating_sub(600));
            let to = seen.ceil_char_boundary((at + 300).min(seen.len()));
            seen[from..to].to_string()
        };
        for secret in secrets() {
            // Whole, lower-cased (a header name), and a distinctive tail.
            let tail = &secret[secret.len() - 12..];
            let found = folded
                .find(&secret.to_ascii_lowercase())
                .or_else(|| seen.find(tail));
            assert!(
                found.is_none(),
                "secret {tail:?} leaked (statuses {statuses:?}):\n{}",
                around(found.unwrap_or(0))
            );
        }
        let found = seen.find(super::MARKER);
        assert!(
            found.is_none(),
            "a secret leaked:\n{}",
            around(found.unwrap_or(0))
        );
    }
}
