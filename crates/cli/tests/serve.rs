//! `marathon demo`, `marathon serve` and the live `marathon status`, as a
//! user runs them: the real binary, real sockets, the bundled simulator.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn marathon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_marathon"))
}

#[test]
fn demo_shows_failover_cooldown_and_recovery_without_a_failed_request() {
    let out = marathon()
        .args([
            "demo",
            "--window",
            "2s",
            "--quota",
            "3",
            "--interval",
            "150ms",
            "--requests",
            "60",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("failover alice -> bob"), "{stdout}");
    assert!(stdout.contains("alice cooling for"), "{stdout}");
    assert!(stdout.contains("alice recovered"), "{stdout}");
    assert!(stdout.contains("attempts: alice=429(unified"), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    // alice served exactly her quota before the window reset, plus the one
    // 429 that benched her, as the provider saw it.
    let line = stdout
        .lines()
        .find(|l| l.contains("requests the provider saw"))
        .unwrap();
    assert!(line.contains("carol 0"), "{line}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_proxies_and_status_shows_the_live_view() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let sim_port = free_port();
    std::fs::write(
        home.path().join("config.toml"),
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n[providers.anthropic]\nupstream = \"http://127.0.0.1:{sim_port}\"\n"),
    )
    .unwrap();
    // The simulated provider, in this process, on the port the config names.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(marathon_sim::start_with(
            marathon_sim::Scenario::new([marathon_sim::Account::ok(
                "alice",
                "sk-serve-alice-secret",
            )]),
            marathon_sim::Options {
                addr: format!("127.0.0.1:{sim_port}").parse().unwrap(),
                ..Default::default()
            },
        ))
        .unwrap();

    let mut add = marathon()
        .args(["auth", "add", "anthropic", "--label", "work"])
        .env("MARATHON_HOME", home.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    add.stdin
        .take()
        .unwrap()
        .write_all(b"sk-serve-alice-secret")
        .unwrap();
    assert!(add.wait().unwrap().success());

    let mut serve = marathon()
        .arg("serve")
        .env("MARATHON_HOME", home.path())
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serve.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("dashboard") {
            break;
        }
    }
    assert!(
        banner.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{banner}"
    );
    assert!(banner.contains("anthropic  1 account"), "{banner}");
    // Keep draining the log so the proxy never blocks on a full pipe.
    let log =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));

    // One request through the proxy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let r = std::process::Command::new("curl")
            .args([
                "-sS",
                "-i",
                "-X",
                "POST",
                &format!("http://127.0.0.1:{port}/anthropic/v1/messages"),
            ])
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                "x-api-key: whatever",
            ])
            .args([
                "-d",
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&r.stdout).to_string();
        if text.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("x-marathon-account: work"),
        "{reply}"
    );

    let status = marathon()
        .arg("status")
        .env("MARATHON_HOME", home.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("live view from the running proxy"), "{text}");
    assert!(text.contains("work") && text.contains("ready"), "{text}");

    let offline = marathon()
        .args(["status", "--offline"])
        .env("MARATHON_HOME", home.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&offline.stdout).contains("offline view"));

    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_eq!(sim.count("alice"), 1);
    drop(sim);
    let log = log.join().unwrap();
    for text in [&banner, &log, &reply, &text.to_string()] {
        assert!(
            !text.contains("sk-serve-alice-secret"),
            "secret leaked: {text}"
        );
    }
}
