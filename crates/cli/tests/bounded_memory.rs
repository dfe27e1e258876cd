//! The memory a client can make `marathon serve` hold, measured on the real
//! binary in its own process: distinct session ids, each as long as the
//! proxy accepts, must not accumulate (300 KB ids once drove it to 1.7 GB).
//! Linux only: the measure is the process's peak RSS from /proc.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Distinct session ids sent, as in the report.
const SESSIONS: usize = 10_000;
/// Each id's length: the largest that fits, with the rest of an ordinary
/// request, in the proxy's 64 KiB request head limit.
const SESSION_ID_BYTES: usize = 60 * 1024;
/// Connections the requests are spread over (sent quickly, kept alive).
const CONNECTIONS: usize = 4;
/// The bound on the proxy's peak resident memory.
const PEAK_RSS_LIMIT_KB: u64 = 64 * 1024;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The proxy process, stopped however the test ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `marathon serve` on `port`, in front of `upstream`, with `x-session-id`
/// as the session header; returns once it listens.
fn serve(home: &std::path::Path, port: u16, upstream: u16) -> Proxy {
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[providers.anthropic]\n\
             upstream = \"http://127.0.0.1:{upstream}\"\nsession_header = \"x-session-id\"\n"
        ),
    )
    .unwrap();
    let mut add = Command::new(env!("CARGO_BIN_EXE_marathon"))
        .args(["auth", "add", "anthropic", "--label", "work"])
        .env("MARATHON_HOME", home)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"sk-bounded-account")
        .unwrap();
    assert!(add.wait().unwrap().success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_marathon"))
        .arg("serve")
        .env("MARATHON_HOME", home)
        .env("NO_COLOR", "1")
        .env_remove("MARATHON_LOG")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("dashboard") {
            break;
        }
    }
    // Keep draining the log so the proxy never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Proxy(child)
}

/// One response on a kept-alive connection: its status, body read to the end.
fn read_response(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"));
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    if !chunked {
        r.read_exact(&mut vec![0; length]).unwrap();
        return status;
    }
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
        r.read_exact(&mut vec![0; size + 2]).unwrap();
        if size == 0 {
            return status;
        }
    }
}

/// `count` requests on one connection, each with its own session id of
/// [`SESSION_ID_BYTES`]: the first bytes are the request's number.
fn send_sessions(port: u16, first: usize, count: usize) {
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-session-id: ",
        body.len()
    );
    let mut request = head.into_bytes();
    let id_at = request.len();
    request.extend(std::iter::repeat_n(b's', SESSION_ID_BYTES));
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body.as_bytes());
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    // A stuck proxy fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for n in first..first + count {
        request[id_at..id_at + 10].copy_from_slice(format!("{n:010}").as_bytes());
        writer.write_all(&request).unwrap();
        assert_eq!(read_response(&mut reader), 200, "request {n}");
    }
}

/// A field of /proc/<pid>/status, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Guards against unbounded memory per client input: the affinity map kept
/// every distinct session id whole (10,000 × 300 KB ≈ 3 GB), and heads of
/// any size up to hyper's 400 KB were accepted. Now ids are hashed to a
/// fixed-size key and heads past 64 KiB get 431.
#[test]
fn distinct_large_session_ids_keep_the_proxy_under_64_mb() {
    let home = tempfile::tempdir().unwrap();
    let (port, sim_port) = (free_port(), free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(marathon_sim::start_with(
            marathon_sim::Scenario::new([marathon_sim::Account::ok("work", "sk-bounded-account")]),
            marathon_sim::Options {
                addr: format!("127.0.0.1:{sim_port}").parse().unwrap(),
                ..Default::default()
            },
        ))
        .unwrap();
    let proxy = serve(home.path(), port, sim_port);
    let pid = proxy.0.id();

    let per_connection = SESSIONS / CONNECTIONS;
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || send_sessions(port, c * per_connection, per_connection))
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(sim.count("work"), SESSIONS as u64, "every request served");
    let peak = proc_kb(pid, "VmHWM:");
    let now = proc_kb(pid, "VmRSS:");
    eprintln!(
        "marathon serve after {SESSIONS} session ids of {SESSION_ID_BYTES} bytes: peak RSS {peak} kB, now {now} kB"
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KB,
        "peak RSS {peak} kB, over {PEAK_RSS_LIMIT_KB} kB"
    );

    // A head past the limit is refused whole, with a clean 431.
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let huge = format!(
            "POST /anthropic/v1/messages HTTP/1.1\r\nhost: localhost\r\nx-session-id: {}\r\ncontent-length: 0\r\n\r\n",
            "s".repeat(300 * 1024)
        );
        let _ = writer.write_all(huge.as_bytes());
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    sender.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(sim.count("work"), SESSIONS as u64, "nothing more upstream");

    drop(proxy);
    drop(sim);
}
