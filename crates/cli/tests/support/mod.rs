//! Test support for the OAuth end-to-end tests: the real authorization server
//! (tests/oidc/server.mjs, oidc-provider on loopback), a scripted "browser"
//! that drives its pages as a chosen user, and `marathon auth login` run as
//! the real binary with a person's part played by the test.
//! (Adapted from crates/oauth/tests/support.)
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use marathon_oauth::{HttpClient, HttpRequest, HyperHttpClient};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Installs tests/oidc's node_modules once (a file lock keeps parallel test
/// processes from installing at the same time).
pub fn ensure_npm_installed() {
    let dir = repo_root().join("tests/oidc");
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let lock = std::fs::File::create(dir.join(".install.lock")).unwrap();
    lock.lock().unwrap();
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .status()
        .expect("npm is needed for the OAuth tests (Node 20+); install Node.js");
    assert!(status.success(), "npm ci in tests/oidc failed");
}

/// A running oidc-provider. Killed on drop.
pub struct OidcServer {
    child: Child,
    pub issuer: String,
    log: Arc<Mutex<String>>,
}

impl OidcServer {
    /// Starts the server with the given access-token lifetime (seconds).
    pub fn start(access_ttl: u64) -> OidcServer {
        ensure_npm_installed();
        let dir = repo_root().join("tests/oidc");
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("0")
            .current_dir(&dir)
            .env("MARATHON_OIDC_ACCESS_TTL", access_ttl.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node is needed for the OAuth tests");
        let log = Arc::new(Mutex::new(String::new()));
        let _ = drain(child.stderr.take().unwrap(), log.clone());
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let _ = drain(out, log.clone());
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("oidc server did not start: {}", log.lock().unwrap());
        }
        let info: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let issuer = info["issuer"].as_str().unwrap().to_string();
        OidcServer { child, issuer, log }
    }

    /// `[providers.<name>.oauth]` for this server.
    pub fn oauth_section(&self, provider: &str) -> String {
        format!(
            "[providers.{provider}.oauth]\nissuer = \"{}\"\nclient_id = \"marathon\"\n\
             scopes = [\"openid\", \"email\", \"offline_access\"]\n\
             # oidc-provider grants offline_access only with prompt=consent.\n\
             extra_authorize_params = {{ prompt = \"consent\" }}\n",
            self.issuer
        )
    }

    /// RFC 7662 introspection as the resource server.
    pub fn introspect(&self, token: &str) -> serde_json::Value {
        let req = HttpRequest::form(
            format!("{}/token/introspection", self.issuer),
            [("token", token)],
        )
        // resource-server:rs-secret
        .header(
            "authorization",
            "Basic cmVzb3VyY2Utc2VydmVyOnJzLXNlY3JldA==",
        );
        let resp = block_on(HyperHttpClient::new().send(req)).unwrap();
        assert_eq!(resp.status, 200, "introspection failed");
        serde_json::from_slice(&resp.body).unwrap()
    }

    /// The server's counters: refreshes, grant errors, revocations.
    pub fn stats(&self) -> serde_json::Value {
        let resp = block_on(
            HyperHttpClient::new().send(HttpRequest::get(format!("{}/test/stats", self.issuer))),
        )
        .unwrap();
        serde_json::from_slice(&resp.body).unwrap()
    }

    /// Destroys every grant of a user (an admin revoking the login).
    pub fn revoke_user(&self, user: &str) -> u64 {
        let req = HttpRequest::form(format!("{}/test/revoke?user={user}", self.issuer), []);
        let resp = block_on(HyperHttpClient::new().send(req)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        v["revoked"].as_u64().unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Where a browser run stopped.
#[derive(Debug)]
pub enum BrowserEnd {
    /// A redirect leaving the authorization server (the client's callback).
    Redirect(String),
    /// A page with nothing more to do.
    Page { status: u16, body: String },
}

/// A scripted user agent: follows redirects, keeps cookies, submits the
/// hidden-field forms oidc-provider renders, and logs in as `user` on the
/// server's login page (`/interaction/<uid>?login=<user>`).
pub struct Browser {
    http: HyperHttpClient,
    origin: String,
    user: String,
    cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new(issuer: &str, user: &str) -> Browser {
        Browser {
            http: HyperHttpClient::new(),
            origin: issuer.trim_end_matches('/').to_string(),
            user: user.to_string(),
            cookies: HashMap::new(),
        }
    }

    pub async fn run(&mut self, url: &str) -> BrowserEnd {
        let mut req = HttpRequest::get(url);
        for _ in 0..20 {
            if !req.url.starts_with(&self.origin) {
                return BrowserEnd::Redirect(req.url);
            }
            if req.url.contains("/interaction/") && !req.url.contains('?') {
                req.url = format!("{}?login={}", req.url, self.user);
            }
            if !self.cookies.is_empty() {
                let jar: Vec<String> = self
                    .cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                req = req.header("cookie", jar.join("; "));
            }
            let resp = self.http.send(req.clone()).await.unwrap();
            for set in resp.header_all("set-cookie") {
                let pair = set.split(';').next().unwrap_or_default();
                if let Some((k, v)) = pair.split_once('=') {
                    if v.is_empty() {
                        self.cookies.remove(k.trim());
                    } else {
                        self.cookies.insert(k.trim().to_string(), v.to_string());
                    }
                }
            }
            if (300..400).contains(&resp.status) {
                let loc = resp.header("location").unwrap().to_string();
                let next = if loc.starts_with('/') {
                    format!("{}{loc}", self.origin)
                } else {
                    loc
                };
                req = HttpRequest::get(next);
                continue;
            }
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            match parse_form(&body) {
                Some((action, fields)) if resp.status == 200 => {
                    let pairs: Vec<(&str, &str)> = fields
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let action = if action.starts_with('/') {
                        format!("{}{action}", self.origin)
                    } else {
                        action
                    };
                    req = HttpRequest::form(action, pairs);
                }
                _ => {
                    return BrowserEnd::Page {
                        status: resp.status,
                        body,
                    };
                }
            }
        }
        panic!("too many steps");
    }
}

/// The first `<form method="post" action=...>` and its hidden inputs.
fn parse_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let rest = &html[start..];
    let end = rest.find("</form>")?;
    let form = &rest[..end];
    let action = attr(form, "action")?;
    let mut fields = Vec::new();
    let mut cur = form;
    while let Some(i) = cur.find("<input") {
        cur = &cur[i + 6..];
        let tag_end = cur.find('>').unwrap_or(cur.len());
        let tag = &cur[..tag_end];
        if attr(tag, "type").as_deref() == Some("hidden")
            && let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value"))
        {
            fields.push((n, v));
        }
    }
    Some((action.replace("&amp;", "&"), fields))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')?;
    Some(tag[i..i + j].to_string())
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
        use marathon_store::Store as _;
        let store = marathon_store::FileStore::open(&self.path().join("data")).unwrap();
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
    let end = block_on(async move { Browser::new(&issuer, user).run(&url).await });
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
