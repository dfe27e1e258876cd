//! The clients people use, end to end, as a user runs marathon: `serve` on a
//! random port found by `status` and `connect`; `connect --write/--undo` on a
//! home directory that already holds the user's settings; `run` starting
//! real programs (stand-ins for claude, codex, opencode, gemini that record
//! what they were given and call the proxy with curl); the README's
//! "Use it with …" section kept equal to what `connect` prints.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use marathon_sim::{Account, Options, Scenario, SimHandle};

/// A MARATHON_HOME and a user's HOME, both temporary.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(config: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("user")).unwrap();
        Home { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The user's home directory.
    fn user(&self) -> PathBuf {
        self.path().join("user")
    }

    fn marathon(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marathon"));
        cmd.env("MARATHON_HOME", self.path())
            .env("HOME", self.user())
            .env("NO_COLOR", "1")
            .env_remove("CODEX_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GEMINI_CLI_SYSTEM_SETTINGS_PATH")
            .env_remove("GEMINI_CLI_HOME")
            .env_remove("MARATHON_LOG")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.marathon().args(args).output().unwrap()
    }

    fn add_key(&self, provider: &str, label: &str, key: &str) {
        let mut add = self
            .marathon()
            .args(["auth", "add", provider, "--label", label])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        add.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
        assert!(add.wait().unwrap().success());
    }

    fn record(&self) -> PathBuf {
        self.path().join("data").join("serve.json")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `marathon serve` as a child; killed if the test ends early.
struct Serve {
    child: Child,
    url: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Serve {
    fn start(home: &Home, args: &[&str]) -> Serve {
        let mut child = home
            .marathon()
            .arg("serve")
            .args(args)
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
        // Keep draining the log so the proxy never blocks on a full pipe.
        let log =
            std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        Serve {
            child,
            url: url.expect("serve prints its address"),
            log: Some(log),
        }
    }

    /// Stops it as a service manager would (SIGTERM) and waits.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve ended with {status}");
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

/// Guards `status`/`connect` missing a proxy that is not on the configured
/// port (`serve --listen 127.0.0.1:0`), a stale record being trusted, and an
/// invalid config being passed off as "no proxy running".
#[test]
fn serve_records_where_it_listens_and_status_and_connect_find_it() {
    let (_rt, sim) = sim(vec![Account::ok("alice", "sk-clients-alice-secret")]);
    let home = Home::new(&format!(
        "[providers.anthropic]\nupstream = \"{}\"\n",
        sim.url()
    ));
    home.add_key("anthropic", "work", "sk-clients-alice-secret");

    // A record left by a proxy that died without cleaning up is ignored.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(
        home.record(),
        format!("{{\"pid\":{dead_pid},\"addr\":\"127.0.0.1:9\"}}"),
    )
    .unwrap();
    let out = home.run(&["status"]);
    assert!(
        text(&out.stdout).contains("offline view: no marathon proxy is running"),
        "{}",
        text(&out.stdout)
    );

    let serve = Serve::start(&home, &["--listen", "127.0.0.1:0"]);
    assert!(
        !serve.url.ends_with(":0") && !serve.url.ends_with(":8787"),
        "{}",
        serve.url
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.record()).unwrap()).unwrap();
    assert_eq!(record["url"], serve.url.as_str());
    assert_eq!(record["pid"], serve.child.id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(home.record())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = home.run(&["status"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("live view from the running proxy"),
        "{stdout}"
    );
    assert!(stdout.contains("work"), "{stdout}");

    let out = home.run(&["connect", "claude-code"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!(
            "export ANTHROPIC_BASE_URL={}/anthropic\nexport ANTHROPIC_API_KEY=marathon\n",
            serve.url
        )
    );
    assert!(
        text(&out.stderr).contains("not the configured 8787"),
        "{}",
        text(&out.stderr)
    );

    // A config broken while the proxy runs: said, and the live view still shown.
    let config = home.path().join("config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, "[providers.anthropic]\nstrategy = \"fastest\"\n").unwrap();
    let out = home.run(&["status"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("the config is invalid"), "{stderr}");
    assert!(
        stderr.contains("config.toml:2:12: providers.anthropic.strategy"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("live view from the running proxy"));
    std::fs::write(&config, good).unwrap();

    let log = serve.terminate();
    assert!(!home.record().exists(), "a clean stop removes the record");
    let out = home.run(&["status"]);
    assert!(text(&out.stdout).contains("offline view: no marathon proxy is running"));
    for t in [&log, &stdout] {
        assert!(!t.contains("sk-clients-alice-secret"), "secret leaked: {t}");
    }
}

const CODEX_CONFIG: &str = "# my codex\nmodel = \"o3\" # the fast one\nmodel_provider = \"openai\"\n\n[profiles.deep]\nmodel = \"o3-pro\"\n";
const GEMINI_SETTINGS: &str = "{\n  \"ui\": {\"theme\": \"GitHub\"},\n  \"security\": {\"auth\": {\"selectedType\": \"oauth-personal\"}, \"folderTrust\": {\"enabled\": true}}\n}\n";
const OPENCODE_CONFIG: &str = "{\"$schema\": \"https://opencode.ai/config.json\", \"model\": \"anthropic/claude-sonnet-4-5\", \"provider\": {\"anthropic\": {\"options\": {\"timeout\": 60000}}}}";

/// Guards `--write` clobbering the user's own settings (or their comments),
/// a second `--write` overwriting the backup of the original, and `--undo`
/// leaving anything of marathon's behind.
#[test]
fn connect_write_merges_into_the_users_files_and_undo_restores_them() {
    let home = Home::new("");
    let user = home.user();
    let codex = user.join(".codex/config.toml");
    let gemini = user.join(".gemini/settings.json");
    let opencode = user.join(".config/opencode/opencode.json");
    for (path, body) in [
        (&codex, CODEX_CONFIG),
        (&gemini, GEMINI_SETTINGS),
        (&opencode, OPENCODE_CONFIG),
    ] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    let out = home.run(&["connect", "codex", "--write"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "export MARATHON_API_KEY=marathon\n");
    let after = std::fs::read_to_string(&codex).unwrap();
    assert!(
        after.starts_with(
            "# my codex\nmodel = \"o3\" # the fast one\nmodel_provider = \"marathon\"\n"
        ),
        "{after}"
    );
    assert!(
        after.contains("[profiles.deep]\nmodel = \"o3-pro\"\n"),
        "{after}"
    );
    let parsed: toml_edit::DocumentMut = after.parse().unwrap();
    assert_eq!(
        parsed["model_providers"]["marathon"]["base_url"].as_str(),
        Some("http://127.0.0.1:8787/codex")
    );
    assert_eq!(
        parsed["model_providers"]["marathon"]["wire_api"].as_str(),
        Some("responses")
    );
    let backup = user.join(".codex/config.toml.marathon-backup");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), CODEX_CONFIG);

    // Again (say, for a proxy on another port): the backup still holds the original.
    std::fs::write(
        home.path().join("config.toml"),
        "[server]\nlisten = \"127.0.0.1:9999\"\n",
    )
    .unwrap();
    assert!(home.run(&["connect", "codex", "--write"]).status.success());
    assert!(
        std::fs::read_to_string(&codex)
            .unwrap()
            .contains("http://127.0.0.1:9999/codex")
    );
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), CODEX_CONFIG);

    assert!(
        home.run(&["connect", "gemini-cli", "--write"])
            .status
            .success()
    );
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gemini).unwrap()).unwrap();
    assert_eq!(g["security"]["auth"]["selectedType"], "gemini-api-key");
    assert_eq!(g["security"]["folderTrust"]["enabled"], true);
    assert_eq!(g["ui"]["theme"], "GitHub");

    assert!(
        home.run(&["connect", "opencode", "--write"])
            .status
            .success()
    );
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&opencode).unwrap()).unwrap();
    assert_eq!(o["model"], "anthropic/claude-sonnet-4-5");
    assert_eq!(o["provider"]["anthropic"]["options"]["timeout"], 60000);
    assert_eq!(
        o["provider"]["anthropic"]["options"]["baseURL"],
        "http://127.0.0.1:9999/anthropic/v1"
    );

    for (client, path, body) in [
        ("codex", &codex, CODEX_CONFIG),
        ("gemini-cli", &gemini, GEMINI_SETTINGS),
        ("opencode", &opencode, OPENCODE_CONFIG),
    ] {
        let out = home.run(&["connect", client, "--undo"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(path).unwrap(), body, "{client}");
        let mut backup = path.as_os_str().to_owned();
        backup.push(".marathon-backup");
        assert!(!Path::new(&backup).exists(), "{client}");
    }
    let out = home.run(&["connect", "codex", "--undo"]);
    assert!(
        text(&out.stderr).contains("nothing to undo"),
        "{}",
        text(&out.stderr)
    );

    // A file marathon creates is removed again by --undo.
    std::fs::remove_file(&codex).unwrap();
    assert!(home.run(&["connect", "codex", "--write"]).status.success());
    assert!(codex.exists());
    assert!(home.run(&["connect", "codex", "--undo"]).status.success());
    assert!(!codex.exists());

    // A file it cannot read (JSON with comments) is left alone.
    let commented = "{\n  // mine\n  \"ui\": {}\n}\n";
    std::fs::write(&gemini, commented).unwrap();
    let out = home.run(&["connect", "gemini-cli", "--write"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nothing was changed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&gemini).unwrap(), commented);
    assert!(!user.join(".gemini/settings.json.marathon-backup").exists());

    // Clients configured by their environment alone have no file to write.
    let out = home.run(&["connect", "claude-code", "--write"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A stand-in for a client: records its arguments, environment and (for
/// Gemini CLI) its settings layer, calls the proxy like the client would,
/// and exits with the code in `FAKE_EXIT`.
fn fake_client(bin: &Path, name: &str, request: &str) {
    let script = format!(
        "#!/bin/sh\n\
         out=\"$FAKE_OUT/{name}\"\n\
         printf '%s\\n' \"$@\" > \"$out.args\"\n\
         env > \"$out.env\"\n\
         [ -n \"$GEMINI_CLI_HOME\" ] && cat \"$GEMINI_CLI_HOME/.gemini/settings.json\" > \"$out.settings\" && cat \"$GEMINI_CLI_HOME/.gemini/GEMINI.md\" > \"$out.memory\"\n\
         {request} > \"$out.reply\"\n\
         exit \"${{FAKE_EXIT:-0}}\"\n"
    );
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn env_of(out: &Path, name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(out.join(format!("{name}.env")))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn var(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Guards `run` losing the client's exit code, starting the client without
/// the settings (or without a proxy behind them), and changing the user's
/// own files to do it.
#[test]
fn run_starts_each_client_with_its_settings_and_passes_its_exit_code_through() {
    let (_rt, sim) = sim(vec![Account::ok("alice", "sk-run-alice-secret")]);
    let home = Home::new(&format!(
        "[providers.anthropic]\nupstream = \"{}\"\n",
        sim.url()
    ));
    home.add_key("anthropic", "work", "sk-run-alice-secret");
    let bin = home.path().join("bin");
    let out = home.path().join("out");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let anthropic_call = "curl -s -w ' %{http_code}' \"$ANTHROPIC_BASE_URL/v1/messages\" -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'content-type: application/json' -d '{\"model\":\"m\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'";
    fake_client(&bin, "claude", anthropic_call);
    for name in ["codex", "opencode", "gemini"] {
        fake_client(&bin, name, "true");
    }
    let codex_config = home.user().join(".codex/config.toml");
    std::fs::create_dir_all(codex_config.parent().unwrap()).unwrap();
    std::fs::write(&codex_config, CODEX_CONFIG).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |args: &[&str], exit: &str| {
        home.marathon()
            .args(["run"])
            .args(args)
            .env("PATH", &path)
            .env("FAKE_OUT", &out)
            .env("FAKE_EXIT", exit)
            .output()
            .unwrap()
    };

    // No proxy running: one is started for the run, on a port of its own.
    let o = run(&["claude-code", "--print", "two words"], "42");
    assert_eq!(o.status.code(), Some(42), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("serving this run at http://127.0.0.1:"),
        "{}",
        text(&o.stderr)
    );
    let args = std::fs::read_to_string(out.join("claude.args")).unwrap();
    assert_eq!(args, "--print\ntwo words\n");
    let env = env_of(&out, "claude");
    assert_eq!(var(&env, "ANTHROPIC_API_KEY").as_deref(), Some("marathon"));
    let base = var(&env, "ANTHROPIC_BASE_URL").unwrap();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/anthropic"),
        "{base}"
    );
    let reply = std::fs::read_to_string(out.join("claude.reply")).unwrap();
    assert!(reply.ends_with(" 200"), "{reply}");
    assert_eq!(sim.count("alice"), 1);

    // With `serve` running, runs use it.
    let serve = Serve::start(&home, &["--listen", "127.0.0.1:0"]);
    let o = run(&["claude-code"], "0");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("serving this run"));
    let env = env_of(&out, "claude");
    assert_eq!(
        var(&env, "ANTHROPIC_BASE_URL"),
        Some(format!("{}/anthropic", serve.url))
    );
    assert_eq!(sim.count("alice"), 2);

    // Codex: `-c` overrides, the user's config.toml untouched.
    let o = run(&["codex", "exec", "fix it"], "0");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let args: Vec<String> = std::fs::read_to_string(out.join("codex.args"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected_base = format!("model_providers.marathon.base_url=\"{}/codex\"", serve.url);
    for o in [
        "model_provider=\"marathon\"",
        expected_base.as_str(),
        "model_providers.marathon.env_key=\"MARATHON_API_KEY\"",
        "model_providers.marathon.wire_api=\"responses\"",
    ] {
        let at = args
            .iter()
            .position(|a| a == o)
            .unwrap_or_else(|| panic!("no {o} in {args:?}"));
        assert_eq!(args[at - 1], "-c");
    }
    assert_eq!(&args[args.len() - 2..], ["exec", "fix it"]);
    assert_eq!(
        var(&env_of(&out, "codex"), "MARATHON_API_KEY").as_deref(),
        Some("marathon")
    );
    assert_eq!(
        std::fs::read_to_string(&codex_config).unwrap(),
        CODEX_CONFIG
    );

    // opencode: the provider blocks as inline config.
    assert!(run(&["opencode"], "0").status.success());
    let content = var(&env_of(&out, "opencode"), "OPENCODE_CONFIG_CONTENT").unwrap();
    let v: serde_json::Value = serde_json::from_str(&content).unwrap();
    // Only the API marathon has accounts for.
    assert_eq!(
        v["provider"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["anthropic"]
    );
    assert_eq!(
        v["provider"]["anthropic"]["options"]["baseURL"],
        format!("{}/anthropic/v1", serve.url)
    );
    assert!(!home.user().join(".config/opencode").exists());

    // Gemini CLI: a home of its own whose `.gemini` is the user's with
    // API-key auth merged into the settings.
    let gemini_dir = home.user().join(".gemini");
    std::fs::create_dir_all(&gemini_dir).unwrap();
    std::fs::write(gemini_dir.join("settings.json"), GEMINI_SETTINGS).unwrap();
    std::fs::write(gemini_dir.join("GEMINI.md"), "remember this\n").unwrap();
    assert!(run(&["gemini-cli", "-p", "hi"], "0").status.success());
    let env = env_of(&out, "gemini");
    assert_eq!(
        var(&env, "GOOGLE_GEMINI_BASE_URL"),
        Some(format!("{}/google", serve.url))
    );
    assert_eq!(
        var(&env, "GEMINI_CLI_TRUST_WORKSPACE").as_deref(),
        Some("true")
    );
    let layer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gemini.settings")).unwrap())
            .unwrap();
    assert_eq!(layer["security"]["auth"]["selectedType"], "gemini-api-key");
    // The user's own settings and files are there too.
    assert_eq!(layer["ui"]["theme"], "GitHub");
    assert_eq!(
        std::fs::read_to_string(out.join("gemini.memory")).unwrap(),
        "remember this\n"
    );
    let run_home = var(&env, "GEMINI_CLI_HOME").unwrap();
    assert!(
        !Path::new(&run_home).exists(),
        "the run's home is removed after the run"
    );
    assert_eq!(
        std::fs::read_to_string(gemini_dir.join("settings.json")).unwrap(),
        GEMINI_SETTINGS
    );
    assert_eq!(std::fs::read_dir(&gemini_dir).unwrap().count(), 2);

    // An SDK program is given as the command; a missing program is said plainly.
    let o = run(&["anthropic-sdk", "--", "claude", "x"], "3");
    assert_eq!(o.status.code(), Some(3));
    let o = run(&["openai-sdk", "--", "no-such-program-here"], "0");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no-such-program-here was not found on PATH"),
        "{}",
        text(&o.stderr)
    );
    drop(serve);
}

/// The clients `connect` knows, from its own `--help`.
fn clients() -> Vec<String> {
    let help = text(
        &Command::new(env!("CARGO_BIN_EXE_marathon"))
            .args(["connect", "--help"])
            .output()
            .unwrap()
            .stdout,
    );
    let mut names = Vec::new();
    let mut in_list = false;
    for line in help.lines() {
        let t = line.trim();
        if t.starts_with("Possible values:") {
            in_list = true;
            continue;
        }
        if in_list {
            match t.strip_prefix("- ") {
                Some(item) => names.push(item.split(':').next().unwrap().trim().to_owned()),
                None => break,
            }
        }
    }
    assert!(names.len() >= 7, "{help}");
    names
}

fn title(client: &str) -> &'static str {
    match client {
        "claude-code" => "Claude Code",
        "codex" => "Codex",
        "opencode" => "opencode",
        "gemini-cli" => "Gemini CLI",
        "openai-sdk" => "the OpenAI SDKs",
        "anthropic-sdk" => "the Anthropic SDKs",
        "curl" => "curl",
        other => panic!("add a README title for the new client {other}"),
    }
}

const BEGIN: &str = "<!-- connect:begin (generated: MARATHON_BLESS_README=1 cargo test -p marathon --test clients readme) -->\n";
const END: &str = "<!-- connect:end -->\n";

/// Guards the README telling users to set something other than what
/// `connect` prints. The section is generated from `connect`'s output (for
/// the default address, no access key, no accounts yet); run with
/// MARATHON_BLESS_README=1 to rewrite it.
#[test]
fn readme_shows_what_connect_prints() {
    let home = Home::new("");
    let mut section = String::new();
    for client in clients() {
        let out = home.run(&["connect", &client]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        section.push_str(&format!(
            "### Use it with {}\n\n```\n$ marathon connect {client}\n{}```\n\n",
            title(&client),
            text(&out.stdout)
        ));
    }
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("README has the connect:begin marker")
        + BEGIN.len();
    let end = readme.find(END).expect("README has the connect:end marker");
    if readme[start..end] == section {
        return;
    }
    if std::env::var_os("MARATHON_BLESS_README").is_some() {
        let updated = format!("{}{section}{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, updated).unwrap();
        return;
    }
    panic!(
        "README.md's \"Use it with\" section differs from what `marathon connect` prints; \
         regenerate it with MARATHON_BLESS_README=1 cargo test -p marathon --test clients readme\n\
         expected:\n{section}"
    );
}
