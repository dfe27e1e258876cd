//! Test support for the OAuth end-to-end tests: the real authorization server
//! (tests/oidc/server.mjs, oidc-provider on loopback), a scripted "browser"
//! that drives its pages as a chosen user, and `marathon auth login` run as
//! the real binary with a person's part played by the test.
//! The server and the browser themselves live in marathon-testkit.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use marathon_oauth::{HttpClient, HttpRequest, HyperHttpClient};
use marathon_testkit::{Browser, BrowserEnd};

/// The shared authorization server, with synchronous helpers: these tests
/// drive processes, not futures.
pub struct OidcServer(marathon_testkit::OidcServer);

impl std::ops::Deref for OidcServer {
    type Target = marathon_testkit::OidcServer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl OidcServer {
    /// Starts the server with the given access-token lifetime (seconds).
    pub fn start(access_ttl: u64) -> OidcServer {
        OidcServer(marathon_testkit::OidcServer::start(access_ttl))
    }

    /// RFC 7662 introspection as the resource server.
    pub fn introspect(&self, token: &str) -> serde_json::Value {
        block_on(self.0.introspect(token))
    }

    /// The server's counters: refreshes, grant errors, revocations.
    pub fn stats(&self) -> serde_json::Value {
        block_on(self.0.stats())
    }

    /// Destroys every grant of a user (an admin revoking the login).
    pub fn revoke_user(&self, user: &str) -> u64 {
        block_on(self.0.revoke_user(user))
    }
}

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

/// Runs a future to completion on a small runtime of its own (the tests are
/// synchronous: they drive processes).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A temporary MARATHON_HOME with a config file.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new(config: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Home { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn marathon(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_marathon"));
        cmd.env("MARATHON_HOME", self.path())
            .env("HOME", self.path().join("user-home"))
            .env("NO_COLOR", "1")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("MARATHON_LOG")
            .env_remove("RUST_LOG");
        cmd
    }

    /// The stored accounts of a provider as `(label, identity, access, refresh)`.
    pub fn accounts(&self, provider: &str) -> Vec<StoredTokens> {
        let store = marathon_store::FileStore::open(&self.path().join("data")).unwrap();
        accounts_in(&store, provider)
    }
}

/// The stored OAuth accounts of a provider in any store.
pub fn accounts_in(store: &dyn marathon_store::Store, provider: &str) -> Vec<StoredTokens> {
    {
        let mut out: Vec<StoredTokens> = store
            .list()
            .unwrap()
            .into_iter()
            .filter(|a| a.provider == provider)
            .map(|a| {
                let marathon_store::Credential::Oauth {
                    access,
                    refresh,
                    expires_at,
                    ..
                } = &a.credential
                else {
                    panic!("{} is not an OAuth account", a.label)
                };
                StoredTokens {
                    label: a.label.clone(),
                    identity: a.identity.clone(),
                    state: a.state.as_str().to_string(),
                    access: access.expose().to_string(),
                    refresh: refresh.as_ref().map(|r| r.expose().to_string()),
                    expires_at_ms: expires_at.map(|e| e.0),
                }
            })
            .collect();
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out
    }
}

#[derive(Debug, Clone)]
pub struct StoredTokens {
    pub label: String,
    pub identity: Option<String>,
    pub state: String,
    pub access: String,
    pub refresh: Option<String>,
    pub expires_at_ms: Option<u64>,
}

/// Which flow `login` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Loopback,
    Paste,
    Device,
}

/// Runs `marathon auth login <provider> --no-browser [extra]` and plays the
/// person: follows the printed URL in the scripted browser as `user` (and,
/// for --paste, pastes where the browser ended). Returns the finished process
/// output, stderr included in full.
pub fn login(
    home: &Home,
    server: &OidcServer,
    provider: &str,
    flow: Flow,
    user: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = home.marathon();
    cmd.args(["auth", "login", provider, "--no-browser"]);
    match flow {
        Flow::Loopback => {}
        Flow::Paste => {
            cmd.arg("--paste");
        }
        Flow::Device => {
            cmd.arg("--device");
        }
    }
    let mut child = cmd
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(String::new()));
    let stdout_reader = drain(child.stdout.take().unwrap(), stdout.clone());
    // stderr: watch for the URL line, keep everything.
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<String>();
    let err_pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
            let _ = tx.send(line);
        }
    });
    let want = |line: &str| -> Option<String> {
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))?;
        match flow {
            Flow::Device if !url.contains("user_code=") => None,
            Flow::Loopback | Flow::Paste if !url.contains("code_challenge=") => None,
            _ => Some(url.to_string()),
        }
    };
    let url = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                if let Some(u) = want(&line) {
                    break u;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no login URL printed; stderr:\n{}", stderr.lock().unwrap());
            }
        }
    };
    let issuer = server.issuer.clone();
    let end = block_on(async move { Browser::as_user(&issuer, user).run(&url).await });
    match (flow, end) {
        (Flow::Loopback, BrowserEnd::Redirect(cb)) => {
            assert!(cb.starts_with("http://127.0.0.1:"), "{cb}");
            // The browser lands on marathon's loopback server.
            let resp = block_on(HyperHttpClient::new().send(HttpRequest::get(&cb))).unwrap();
            assert_eq!(resp.status, 200);
            assert!(String::from_utf8_lossy(&resp.body).contains("Login complete"));
        }
        (Flow::Paste, BrowserEnd::Redirect(landed)) => {
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{landed}").unwrap();
        }
        (Flow::Device, BrowserEnd::Page { status, body }) => {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("Sign-in Success"), "{body}");
        }
        (flow, end) => panic!("{flow:?} login: the browser ended with {end:?}"),
    }
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    // Both pipes end when the process exits: read them to the end.
    reader.join().unwrap();
    stdout_reader.join().unwrap();
    Output {
        status,
        stdout: stdout.lock().unwrap().clone().into_bytes(),
        stderr: stderr.lock().unwrap().clone().into_bytes(),
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
