//! The views of the accounts, as a user runs them: `status --json` live and
//! offline (one schema, the README's jq example against both), `status
//! --watch` in a real terminal (tmux), and `statusline` fed the JSON Claude
//! Code gives it.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use marathon_sim::{Account, Options, Scenario, SimHandle};

/// A MARATHON_HOME, temporary.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(config: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Home { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn marathon(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marathon"));
        cmd.env("MARATHON_HOME", self.path())
            .env("HOME", self.path())
            .env("NO_COLOR", "1")
            .env_remove("MARATHON_LOG")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.marathon().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn add_key(&self, provider: &str, label: &str, key: &str, priority: i32) {
        let mut add = self
            .marathon()
            .args(["auth", "add", provider, "--label", label])
            .args(["--priority", &priority.to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        add.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
        assert!(add.wait().unwrap().success());
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `marathon serve` as a child; killed if the test ends early.
struct Serve {
    child: Child,
    addr: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Serve {
    fn start(home: &Home) -> Serve {
        let mut child = home
            .marathon()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.trim().to_owned());
            }
            if line.contains("dashboard") {
                break;
            }
        }
        let log =
            std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        let url = url.expect("serve prints its address");
        Serve {
            child,
            addr: url.trim_start_matches("http://").to_owned(),
            log: Some(log),
        }
    }

    /// One HTTP/1.1 request, the whole answer as text.
    fn request(&self, method: &str, path: &str, headers: &str, body: &str) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn message(&self, headers: &str) -> String {
        self.request(
            "POST",
            "/anthropic/v1/messages",
            &format!("x-api-key: whatever\r\n{headers}"),
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        )
    }

    /// Stops it as a service manager would (SIGTERM): it saves its hot state.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
        self.log.take().unwrap().join().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sim(accounts: Vec<Account>) -> (tokio::runtime::Runtime, SimHandle) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(marathon_sim::start_with(
            Scenario::new(accounts),
            Options::default(),
        ))
        .unwrap();
    (rt, sim)
}

/// Two accounts of a simulated Anthropic: `spare` (preferred) always answers
/// 429 with a retry-after of `retry_after` seconds, `work` answers.
fn two_accounts(retry_after: u64) -> (tokio::runtime::Runtime, SimHandle, Home) {
    let (rt, sim) = sim(vec![
        Account::ok("alice", "sk-views-alice-secret"),
        Account::ok("bob", "sk-views-bob-secret")
            .status(429)
            .retry_after(retry_after),
    ]);
    let home = Home::new(&format!(
        "[providers.anthropic]\nupstream = \"{}\"\nstrategy = \"priority\"\n",
        sim.url()
    ));
    home.add_key("anthropic", "spare", "sk-views-bob-secret", 0);
    home.add_key("anthropic", "work", "sk-views-alice-secret", 1);
    (rt, sim, home)
}

/// The README's jq example, run by a shell as the user would, on `json`.
fn readme_jq(json: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("marathon status --json | jq"))
        .expect("the README shows a jq example");
    let pipeline = line.split_once(" | ").unwrap().1;
    let mut sh = Command::new("sh")
        .args(["-c", pipeline])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    sh.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
    let out = sh.wait_with_output().unwrap();
    assert!(out.status.success(), "{pipeline}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The field names of every account object, sorted.
fn account_fields(report: &serde_json::Value) -> Vec<Vec<String>> {
    report["providers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["accounts"].as_array().unwrap().iter())
        .map(|a| {
            let mut keys: Vec<String> = a.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        })
        .collect()
}

/// Guards the bug of issue 13: `status --json` was an object live and an
/// array offline, with `ready` in one and `active` in the other, so the
/// README's jq example failed against a running proxy; the dashboard's
/// "retry in" read a field the JSON did not have.
#[test]
fn status_json_is_one_schema_live_and_offline() {
    let (_rt, _sim, home) = two_accounts(3600);
    let serve = Serve::start(&home);
    let reply = serve.message("");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let live_text = home.ok(&["status", "--json"]);
    let live: serde_json::Value = serde_json::from_str(&live_text).unwrap();
    assert_eq!(live["schema"], 1, "{live}");
    assert_eq!(live["source"], "live");
    let anthropic = live["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "anthropic")
        .unwrap();
    let spare = &anthropic["accounts"][0];
    assert_eq!(spare["label"], "spare");
    assert_eq!(spare["state"], "cooling", "{spare}");
    let retry = spare["retry_in_ms"].as_u64().expect("retry_in_ms");
    assert!((3_500_000..=3_700_000).contains(&retry), "{retry}");
    assert_eq!(readme_jq(&live_text), "spare cooling\n");

    // Without a proxy: the same document from the store (and the cooldown
    // the proxy saved when it stopped).
    serve.terminate();
    let offline_text = home.ok(&["status", "--json"]);
    let offline: serde_json::Value = serde_json::from_str(&offline_text).unwrap();
    assert_eq!(offline["schema"], 1, "{offline}");
    assert_eq!(offline["source"], "store");
    let spare = &offline["providers"][0]["accounts"][0];
    assert_eq!(spare["state"], "cooling", "{spare}");
    assert!(spare["retry_in_ms"].as_u64().unwrap() <= retry);
    assert_eq!(readme_jq(&offline_text), "spare cooling\n");
    assert_eq!(account_fields(&offline), account_fields(&live));

    // The table says the same, with the countdown.
    let table = home.ok(&["status"]);
    let line = table.lines().find(|l| l.contains("spare")).unwrap();
    assert!(line.contains("cooling"), "{line}");
    assert!(line.contains(" 59m") || line.contains(" 1h00m"), "{line}");
    for t in [&live_text, &offline_text, &table] {
        assert!(!t.contains("sk-views"), "a secret in the status: {t}");
    }
}

/// `marathon statusline` fed `json` on stdin, as Claude Code runs it.
fn statusline(home: &Home, json: &str) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut child = home
        .marathon()
        .arg("statusline")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), started.elapsed())
}

/// Guards the status line showing the wrong account (or none): it must name
/// the account the proxy pinned Claude Code's session to (the session id in
/// the statusLine JSON is the x-claude-code-session-id header's value), with
/// its quota windows; and print something sensible, at once, without a proxy.
#[test]
fn statusline_names_the_account_serving_the_session() {
    let window = Duration::from_secs(5 * 3600);
    let (_rt, _sim) = sim(vec![
        Account::ok("alice", "sk-views-alice-secret").quota(
            100,
            window,
            marathon_sim::QuotaStyle::AnthropicUnified,
        ),
        Account::ok("bob", "sk-views-bob-secret").quota(
            100,
            window,
            marathon_sim::QuotaStyle::AnthropicUnified,
        ),
    ]);
    let home = Home::new(&format!(
        "[providers.anthropic]\nupstream = \"{}\"\nstrategy = \"round-robin\"\n",
        _sim.url()
    ));
    home.add_key("anthropic", "work", "sk-views-alice-secret", 0);
    home.add_key("anthropic", "personal", "sk-views-bob-secret", 0);

    // No proxy: a line, at once.
    let session = r#"{"session_id":"sess-views-1","model":{"display_name":"Opus"},"workspace":{"current_dir":"/tmp"}}"#;
    let (line, took) = statusline(&home, session);
    assert_eq!(line, "marathon: not running\n");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let serve = Serve::start(&home);
    // Before the session's first request: the accounts at a glance.
    let (line, _) = statusline(&home, session);
    assert!(line.starts_with("marathon 2/2 ready"), "{line}");

    // The session's requests stick to one account; the line names it.
    let mut served = Vec::new();
    for _ in 0..3 {
        let reply = serve.message("x-claude-code-session-id: sess-views-1\r\n");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let label = reply
            .lines()
            .find_map(|l| l.strip_prefix("x-marathon-account: "))
            .unwrap()
            .trim()
            .to_owned();
        served.push(label);
    }
    assert!(served.windows(2).all(|w| w[0] == w[1]), "{served:?}");
    let (line, took) = statusline(&home, session);
    assert!(
        line.starts_with(&format!("{} 5h ", served[0])) && line.contains("% · 7d "),
        "{line} (served by {})",
        served[0]
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Another session (round-robin) went to the other account.
    let reply = serve.message("x-claude-code-session-id: sess-views-2\r\n");
    let other = reply
        .lines()
        .find_map(|l| l.strip_prefix("x-marathon-account: "))
        .unwrap()
        .trim()
        .to_owned();
    let (line, _) = statusline(&home, r#"{"session_id":"sess-views-2"}"#);
    assert!(line.starts_with(&format!("{other} ")), "{line}");
    // Not JSON, or no session: still one line.
    let (line, _) = statusline(&home, "not json");
    assert!(line.starts_with("marathon "), "{line}");
    drop(serve);
}

/// A tmux server of the test's own (its own socket), killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(home: &Home, width: u16, args: &str) -> Tmux {
        let socket = format!("marathon-views-{}-{width}", std::process::id());
        let command = format!(
            "env MARATHON_HOME={} HOME={} NO_COLOR=1 {} {args}",
            home.path().display(),
            home.path().display(),
            env!("CARGO_BIN_EXE_marathon")
        );
        let ok = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "watch"])
            .args(["-x", &width.to_string(), "-y", "30", &command])
            .status()
            .expect("tmux is installed (scripts/test installs it)");
        assert!(ok.success());
        Tmux { socket }
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "watch"])
            .output()
            .unwrap();
        text(&out.stdout)
    }

    fn running(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "watch"])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "watch", keys])
            .status()
            .unwrap();
    }

    /// Polls the screen until `pred` holds; the screen then.
    fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let started = std::time::Instant::now();
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < limit,
                "{what} not within {limit:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}

fn line_of<'a>(screen: &'a str, label: &str) -> &'a str {
    screen.lines().find(|l| l.contains(label)).unwrap_or("")
}

/// Guards issue 13's "`status` prints once": `--watch` is a live view in a
/// real terminal whose countdown moves by itself, shows the failover that
/// happened, fits a narrow terminal, and quits on `q` — live and offline.
#[test]
fn status_watch_is_live_in_a_terminal_and_quits_on_q() {
    let (_rt, _sim, home) = two_accounts(120);
    let serve = Serve::start(&home);
    assert!(serve.message("").starts_with("HTTP/1.1 200"));

    for (width, mode) in [(120, "live"), (60, "narrow")] {
        let tmux = Tmux::start(&home, width, "status --watch");
        let first = tmux.wait_for("the cooling account", Duration::from_secs(5), |s| {
            line_of(s, "spare").contains("cooling")
        });
        assert!(first.contains("live from http://"), "{mode}: {first}");
        if mode == "live" {
            assert!(first.contains("failover"), "the event is shown: {first}");
            assert!(line_of(&first, "spare").contains("/1"), "counters: {first}");
        }
        for line in first.lines() {
            assert!(line.chars().count() <= width as usize, "{mode}: {line}");
        }
        let before = line_of(&first, "spare").to_owned();
        let after = tmux.wait_for("the countdown to move", Duration::from_millis(2500), |s| {
            line_of(s, "spare") != before
        });
        assert!(line_of(&after, "spare").contains("cooling"), "{after}");
        tmux.keys("q");
        let started = std::time::Instant::now();
        while tmux.running() {
            assert!(started.elapsed() < Duration::from_secs(3), "q did not quit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Offline: the store and the cooldown the proxy saved.
    serve.terminate();
    let tmux = Tmux::start(&home, 120, "status --watch");
    let first = tmux.wait_for("the stored cooldown", Duration::from_secs(5), |s| {
        line_of(s, "spare").contains("cooling")
    });
    assert!(first.contains("stored accounts"), "{first}");
    let before = line_of(&first, "spare").to_owned();
    tmux.wait_for("the countdown to move", Duration::from_millis(2500), |s| {
        line_of(s, "spare") != before
    });
    tmux.keys("q");
    let started = std::time::Instant::now();
    while tmux.running() {
        assert!(started.elapsed() < Duration::from_secs(3), "q did not quit");
        std::thread::sleep(Duration::from_millis(50));
    }
}
