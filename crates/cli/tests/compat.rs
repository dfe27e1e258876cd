//! The compatibility suite (issue 11): the real clients people use — Claude
//! Code, Codex, opencode and Gemini CLI, installed from npm at pinned versions
//! by `scripts/test` into `tests/clients/node_modules` — run non-interactively
//! through `marathon serve` with marathon-sim behind it, as a user runs them:
//! `marathon run <client>`, in a temporary HOME, telemetry and updates off.
//!
//! For each client: the answer arrives; with the first account limited the
//! client succeeds and the limited account is called once; a long streamed
//! answer arrives intact; every account spent for an hour makes the client
//! stop within 10 s showing marathon's reason and reset time; a soonest reset
//! of 20 s makes it wait and then succeed. And Codex's built-in provider
//! (WebSocket first) works through marathon without reconnect errors, and
//! Gemini CLI works with the files `connect --write` writes and the lines
//! it prints.
//!
//! A missing client is a failure that says how to install it, never a skip:
//! the suite exists to catch the clients changing under us.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use marathon_sim::{Account, QuotaStyle, Scenario, SimHandle};

/// The simulator's answer text.
const REPLY: &str = "Hello from the marathon simulator.";
const HOUR: Duration = Duration::from_secs(3600);
/// How long a client may take for an answer that should come at once; a
/// client that waits out a cooldown instead shows up as a timeout.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(90);

/// The clients, the marathon provider each one's requests take, and how the
/// simulator writes that provider's quota errors.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    ClaudeCode,
    Codex,
    Opencode,
    GeminiCli,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::ClaudeCode => "claude-code",
            Client::Codex => "codex",
            Client::Opencode => "opencode",
            Client::GeminiCli => "gemini-cli",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Client::ClaudeCode => "claude",
            Client::Codex => "codex",
            Client::Opencode => "opencode",
            Client::GeminiCli => "gemini",
        }
    }

    fn provider(self) -> &'static str {
        match self {
            Client::ClaudeCode | Client::Opencode => "anthropic",
            Client::Codex => "codex",
            Client::GeminiCli => "google",
        }
    }

    fn style(self) -> QuotaStyle {
        match self {
            Client::ClaudeCode | Client::Opencode => QuotaStyle::AnthropicApi,
            Client::Codex => QuotaStyle::Codex,
            Client::GeminiCli => QuotaStyle::GeminiApi,
        }
    }

    /// The client's arguments for one non-interactive prompt.
    fn prompt_args(self, prompt: &str) -> Vec<String> {
        let args: &[&str] = match self {
            Client::ClaudeCode => &["-p"],
            Client::Codex => &["exec", "--skip-git-repo-check"],
            // A model named: opencode and Gemini CLI otherwise ask a router
            // model first, which only makes more requests.
            Client::Opencode => &["run", "-m", "anthropic/claude-sonnet-4-5"],
            Client::GeminiCli => &["-m", "gemini-2.5-flash", "-p"],
        };
        let mut v: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        v.push(prompt.to_owned());
        v
    }
}

/// Where the pinned clients are: `$MARATHON_TEST_CLIENTS` (set by
/// `scripts/test`), else `<repo>/tests/clients/node_modules/.bin`.
fn clients_bin() -> PathBuf {
    std::env::var_os("MARATHON_TEST_CLIENTS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/node_modules/.bin")
        })
}

/// The client's program; never a silent skip when it is missing.
fn require(client: Client) -> PathBuf {
    let path = clients_bin().join(client.program());
    assert!(
        path.exists(),
        "{} is not installed at {}: run `bash scripts/test` (it installs the pinned clients from npm, tests/clients/package.json)",
        client.program(),
        path.display()
    );
    path
}

/// A simulator with `alice` and `bob`, each holding one key per API.
struct Sim {
    _rt: tokio::runtime::Runtime,
    sim: SimHandle,
}

fn key(account: &str) -> String {
    format!("sk-compat-{account}-0123456789abcdef")
}

impl Sim {
    fn start(alice: Account, bob: Account) -> Sim {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let sim = rt
            .block_on(marathon_sim::start(Scenario::new([alice, bob])))
            .unwrap();
        Sim { _rt: rt, sim }
    }

    /// One request straight to the simulator with `alice`'s key, to use up
    /// a quota before the client runs.
    fn spend(&self, client: Client, account: &str) {
        let (path, body) = match client {
            Client::GeminiCli => (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            ),
            Client::Codex => ("/responses", r#"{"model":"gpt-5","input":"hi"}"#),
            _ => (
                "/v1/messages",
                r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
        };
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("authorization: Bearer {}", key(account))])
            .args(["-H", &format!("x-api-key: {}", key(account))])
            .args(["-H", "content-type: application/json", "-d", body])
            .arg(format!("{}{path}", self.sim.url()))
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
}

/// A MARATHON_HOME, a user's HOME and a working directory, all temporary,
/// and `marathon serve` running in them.
struct Marathon {
    dir: tempfile::TempDir,
    serve: Child,
    url: String,
}

impl Marathon {
    fn start(sim: &Sim, client: Client) -> Marathon {
        Marathon::start_for(sim, client.provider())
    }

    fn start_for(sim: &Sim, provider: &str) -> Marathon {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["user", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("config.toml"),
            format!("[providers.{provider}]\nupstream = \"{}\"\n", sim.sim.url()),
        )
        .unwrap();
        let mut m = Marathon {
            dir,
            serve: Command::new("true").spawn().unwrap(),
            url: String::new(),
        };
        for label in ["alice", "bob"] {
            let mut add = m
                .marathon()
                .args(["auth", "add", provider, "--label", label])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = add.stdin.take().unwrap();
            stdin.write_all(key(label).as_bytes()).unwrap();
            drop(stdin);
            assert!(add.wait().unwrap().success());
        }
        let mut serve = m
            .marathon()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                m.url = rest.trim().to_owned();
            }
            if line.contains("dashboard") {
                break;
            }
        }
        assert!(!m.url.is_empty(), "serve prints its address");
        // Keep draining its log so the proxy never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        m.serve = serve;
        m
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment every program here runs in: marathon's home, the
    /// user's temporary HOME, the clients first on PATH, and every client's
    /// telemetry, update checks and non-essential traffic off.
    fn env(&self, cmd: &mut Command) {
        let path = std::env::join_paths(std::iter::once(clients_bin()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .unwrap();
        let work = self.path().join("work");
        // PWD too: opencode takes its project directory from it, and the
        // test's own (this repository) would make it snapshot the repository.
        cmd.current_dir(&work)
            .env("PWD", &work)
            .env("MARATHON_HOME", self.path())
            .env("HOME", self.path().join("user"))
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .env("CI", "1")
            // Claude Code
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            // opencode
            .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
            .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
            .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
            // Its default plugins (installed from npm on first use), the
            // Claude Code and external skills it looks for, sharing.
            .env("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1")
            .env("OPENCODE_DISABLE_CLAUDE_CODE", "1")
            .env("OPENCODE_DISABLE_EXTERNAL_SKILLS", "1")
            .env("OPENCODE_DISABLE_SHARE", "1")
            // Gemini CLI (its settings file turns off the rest)
            .env("GEMINI_CLI_NO_RELAUNCH", "true")
            .env_remove("CODEX_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GEMINI_CLI_SYSTEM_SETTINGS_PATH")
            .env_remove("GEMINI_CLI_HOME")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("GEMINI_API_KEY")
            .env_remove("MARATHON_LOG")
            .env_remove("RUST_LOG");
    }

    fn marathon(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marathon"));
        self.env(&mut cmd);
        cmd
    }

    /// The command that runs `client` against this proxy, the way the
    /// README says to.
    fn client_command(&self, client: Client, args: &[String]) -> Command {
        require(client);
        if client == Client::GeminiCli {
            // `run` keeps them and adds API-key auth in a home of its own.
            self.gemini_user_settings();
        }
        let mut cmd = self.marathon();
        cmd.args(["run", client.name(), "--"]);
        if client == Client::Codex {
            // Codex's own update check and analytics.
            cmd.args(["-c", "check_for_update_on_startup=false"]);
            cmd.args(["-c", "analytics.enabled=false"]);
        }
        cmd.args(args);
        cmd
    }

    /// When marathon first answered that every account is unavailable (its
    /// first `exhausted` event), from `/_marathon/events/recent`.
    fn first_exhausted_answer(&self) -> Option<SystemTime> {
        use std::io::Read as _;
        let addr = self.url.strip_prefix("http://")?;
        let mut tcp = std::net::TcpStream::connect(addr).ok()?;
        write!(
            tcp,
            "GET /_marathon/events/recent HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).ok()?;
        let (_, body) = answer.split_once("\r\n\r\n")?;
        let events: serde_json::Value = serde_json::from_str(body).ok()?;
        let at = events["events"]
            .as_array()?
            .iter()
            .filter(|e| e["type"] == "exhausted")
            .filter_map(|e| e["at"].as_u64())
            .min()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_millis(at))
    }

    /// The user's own Gemini CLI settings: updates and telemetry off.
    fn gemini_user_settings(&self) {
        let settings = self.path().join("user/.gemini/settings.json");
        std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
        std::fs::write(
            &settings,
            r#"{"general":{"disableAutoUpdate":true,"disableUpdateNag":true},"privacy":{"usageStatisticsEnabled":false},"telemetry":{"enabled":false}}"#,
        )
        .unwrap();
    }

    /// Runs `client` with one prompt; its exit, output (stdout and stderr
    /// together) and how long it took. A client still running after
    /// `timeout` is killed and reported as such.
    fn prompt(&self, client: Client, timeout: Duration) -> Run {
        let args = client.prompt_args("say hi");
        self.run_command(self.client_command(client, &args), timeout)
    }

    fn run_command(&self, mut cmd: Command, timeout: Duration) -> Run {
        use std::os::unix::process::CommandExt as _;
        let started = Instant::now();
        // Its own process group, so a timeout ends the client `run` started too.
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("client starts");
        let (tx, rx) = mpsc::channel();
        read_all(child.stdout.take().unwrap(), tx.clone());
        read_all(child.stderr.take().unwrap(), tx);
        let group = rustix::process::Pid::from_child(&child);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        let (status, timed_out) = match done_rx.recv_timeout(timeout) {
            Ok(status) => (Some(status.unwrap()), false),
            Err(_) => {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                (None, true)
            }
        };
        let elapsed = started.elapsed();
        let ended = SystemTime::now();
        // A grandchild that left the group may hold the pipes open: take
        // what arrived rather than wait for it.
        let mut output = String::new();
        for _ in 0..2 {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(part) => output.push_str(&part),
                Err(_) => output.push_str("\n[output still open after the client ended]"),
            }
        }
        Run {
            success: status.is_some_and(|s| s.success()),
            timed_out,
            elapsed,
            ended,
            output,
        }
    }
}

impl Drop for Marathon {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

/// Reads `r` to its end on a thread of its own and sends what it read.
fn read_all(mut r: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        let _ = tx.send(format!("{}\n", text(&b)));
    });
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One client run.
#[derive(Debug)]
struct Run {
    success: bool,
    timed_out: bool,
    elapsed: Duration,
    /// When the client ended (or was killed).
    ended: SystemTime,
    output: String,
}

impl Run {
    fn assert_answered(&self, client: Client, reply: &str) {
        assert!(
            self.success && self.output.contains(reply),
            "{client:?} did not show the answer ({:?}):\n{}",
            self.elapsed,
            self.output
        );
    }
}

// ---- the rows, one function per row, called by one test per client ----

/// The answer arrives.
fn answer_arrives(client: Client) {
    let sim = Sim::start(
        Account::ok("alice", key("alice")),
        Account::ok("bob", key("bob")),
    );
    let m = Marathon::start(&sim, client);
    m.prompt(client, PROMPT_TIMEOUT)
        .assert_answered(client, REPLY);
    assert!(sim.sim.count("alice") >= 1, "{:?}", sim.sim.counts());
}

/// With the first account limited, the client succeeds and the limited
/// account is called once: marathon moved the request, and remembered.
fn first_account_limited(client: Client) {
    let sim = Sim::start(
        Account::ok("alice", key("alice")).quota(0, HOUR, client.style()),
        Account::ok("bob", key("bob")),
    );
    let m = Marathon::start(&sim, client);
    m.prompt(client, PROMPT_TIMEOUT)
        .assert_answered(client, REPLY);
    assert_eq!(sim.sim.count("alice"), 1, "{:?}", sim.sim.counts());
    assert!(sim.sim.count("bob") >= 1, "{:?}", sim.sim.counts());
}

/// A long answer streamed in many small, slow events arrives whole and in order.
fn streaming_intact(client: Client) {
    const EVENTS: u64 = 40;
    let sim = Sim::start(
        Account::ok("alice", key("alice"))
            .stream_events(EVENTS)
            .slow_ms(15),
        Account::ok("bob", key("bob")),
    );
    // The simulator cycles through the reply's words, one per event.
    let words: Vec<&str> = REPLY.split_inclusive(' ').collect();
    let streamed: String = (0..EVENTS as usize)
        .map(|i| words[i % words.len()])
        .collect();
    let m = Marathon::start(&sim, client);
    m.prompt(client, PROMPT_TIMEOUT)
        .assert_answered(client, streamed.trim_end());
}

/// Every account spent for an hour: the client stops within 10 s of
/// marathon's answer and shows marathon's reason and when the first account
/// is back. (Measured from marathon's answer, not from the start: on a busy
/// machine opencode alone takes ~10 s to start and send its first request.)
fn all_spent_for_an_hour(client: Client) {
    let sim = Sim::start(
        Account::ok("alice", key("alice")).quota(0, HOUR, client.style()),
        Account::ok("bob", key("bob")).quota(0, HOUR, client.style()),
    );
    let m = Marathon::start(&sim, client);
    // Long enough to see it end on its own a little late, short enough not
    // to sit out a client that waits for the reset.
    let run = m.prompt(client, Duration::from_secs(60));
    let answered = m
        .first_exhausted_answer()
        .expect("marathon answered that every account is spent");
    let stopped_after = run.ended.duration_since(answered).unwrap_or_default();
    assert!(
        !run.success && !run.timed_out && stopped_after < Duration::from_secs(10),
        "{client:?} should stop at once after marathon's answer ({stopped_after:?} after it, {:?} in all, success {}, upstream calls {:?}):\n{}",
        run.elapsed,
        run.success,
        sim.sim.counts(),
        run.output
    );
    // marathon's words, and the reset time (59m5xs, 1h00m, or a clock time).
    // Codex prints its own line for `usage_limit_reached` ("You've hit your
    // usage limit. Try again at 2:45 AM."): the reset, not marathon's words.
    let reset_shown = ["59m", "1h00m", "1h0m", "Try again at"]
        .iter()
        .any(|t| run.output.contains(t));
    let reason_shown = run.output.contains("marathon")
        || (matches!(client, Client::Codex) && run.output.contains("hit your usage limit"));
    assert!(
        reason_shown && reset_shown,
        "{client:?} did not show marathon's reason and reset time:\n{}",
        run.output
    );
}

/// The soonest account is back in 20 s: the client waits and then succeeds.
fn soonest_reset_in_20s(client: Client) {
    const WINDOW: Duration = Duration::from_secs(20);
    let sim = Sim::start(
        Account::ok("alice", key("alice")).quota(1, WINDOW, client.style()),
        Account::ok("bob", key("bob")).quota(0, HOUR, client.style()),
    );
    sim.spend(client, "alice");
    let spent = Instant::now();
    let m = Marathon::start(&sim, client);
    let run = m.prompt(client, Duration::from_secs(120));
    run.assert_answered(client, REPLY);
    // It really waited for alice's window (rather than being answered by
    // an account that should have been spent).
    assert!(
        spent.elapsed() >= WINDOW,
        "answered after {:?}",
        run.elapsed
    );
    assert!(sim.sim.count("alice") >= 2, "{:?}", sim.sim.counts());
}

/// The rows for one client. A row that depends on work not on main yet
/// carries its `#[ignore = "needs …"]` here, with the reason.
macro_rules! rows {
    ($module:ident, $client:expr $(, spent: #[$spent:meta])?) => {
        mod $module {
            use super::*;

            #[test]
            fn answer_arrives() {
                super::answer_arrives($client);
            }

            #[test]
            fn first_account_limited_is_called_once() {
                super::first_account_limited($client);
            }

            #[test]
            fn streaming_arrives_intact() {
                super::streaming_intact($client);
            }

            #[test]
            $(#[$spent])?
            fn all_spent_for_an_hour_stops_within_10s_with_marathons_reason() {
                super::all_spent_for_an_hour($client);
            }

            #[test]
            fn soonest_reset_in_20s_waits_then_succeeds() {
                super::soonest_reset_in_20s($client);
            }
        }
    };
}

rows!(claude_code, Client::ClaudeCode);
rows!(codex, Client::Codex);
rows!(opencode, Client::Opencode);
rows!(gemini_cli, Client::GeminiCli);

/// Codex's built-in OpenAI provider opens a WebSocket to `{base}/responses`
/// first. Through marathon it must work as it does straight at the provider:
/// no "Reconnecting…" errors, no fallback to HTTPS (which costs ~5 s of
/// retries), so it takes no longer than direct.
#[test]
fn codex_builtin_provider_websocket_through_marathon() {
    let client = Client::Codex;
    let codex = require(client);
    let sim = Sim::start(
        Account::ok("alice", key("alice")),
        Account::ok("bob", key("bob")),
    );
    let m = Marathon::start_for(&sim, "openai");
    let builtin = |base: &str, api_key: &str| {
        let mut cmd = Command::new(&codex);
        m.env(&mut cmd);
        cmd.env("CODEX_API_KEY", api_key)
            .args(["-c", &format!("openai_base_url=\"{base}\"")])
            .args(["-c", "check_for_update_on_startup=false"])
            .args(["-c", "analytics.enabled=false"])
            .args(client.prompt_args("say hi"));
        cmd
    };
    let direct = m.run_command(
        builtin(&format!("{}/v1", sim.sim.url()), &key("alice")),
        PROMPT_TIMEOUT,
    );
    direct.assert_answered(client, REPLY);
    let through = m.run_command(
        builtin(&format!("{}/openai/v1", m.url), "marathon"),
        PROMPT_TIMEOUT,
    );
    through.assert_answered(client, REPLY);
    for bad in ["Reconnecting", "Falling back", "failed to connect"] {
        assert!(
            !through.output.contains(bad),
            "through marathon Codex showed {bad:?}:\n{}",
            through.output
        );
    }
    // The fallback's retries take seconds; a pass-through adds next to nothing.
    assert!(
        through.elapsed <= direct.elapsed + Duration::from_secs(2),
        "direct {:?}, through marathon {:?}",
        direct.elapsed,
        through.elapsed
    );
}

/// `marathon connect gemini-cli --write`, then Gemini CLI started by hand
/// with the lines `connect` prints: the other way the README gives, which
/// must work without a prompt (API-key auth from the settings, the folder
/// trusted by the environment).
#[test]
fn gemini_cli_with_connect_write_and_the_printed_lines() {
    let client = Client::GeminiCli;
    let sim = Sim::start(
        Account::ok("alice", key("alice")),
        Account::ok("bob", key("bob")),
    );
    let m = Marathon::start(&sim, client);
    m.gemini_user_settings();
    let out = m
        .marathon()
        .args(["connect", "gemini-cli", "--write"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(m.path().join("user/.gemini/settings.json")).unwrap();
    assert!(written.contains("gemini-api-key"), "{written}");
    let mut cmd = Command::new(require(client));
    m.env(&mut cmd);
    for line in text(&out.stdout).lines() {
        if let Some((k, v)) = line
            .strip_prefix("export ")
            .and_then(|kv| kv.split_once('='))
        {
            cmd.env(k, v.trim_matches('\''));
        }
    }
    cmd.args(client.prompt_args("say hi"));
    m.run_command(cmd, PROMPT_TIMEOUT)
        .assert_answered(client, REPLY);
    assert!(sim.sim.count("alice") >= 1, "{:?}", sim.sim.counts());
}
