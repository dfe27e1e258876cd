//! Test support: the real authorization server (tests/oidc/server.mjs,
//! oidc-provider on loopback), a minimal scripted "browser" that drives its
//! pages, and a fake HTTP client for request-shape tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marathon_oauth::{
    GenericProvider, HttpClient, HttpError, HttpRequest, HttpResponse, HyperHttpClient,
    OAuthPreset, http::BoxFuture,
};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Installs tests/oidc's node_modules once (idempotent; a file lock keeps
/// parallel test processes from installing twice at the same time).
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
    pub info: serde_json::Value,
    stderr: Arc<Mutex<String>>,
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
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = err_pipe.read_to_string(&mut buf);
            sink.lock().unwrap().push_str(&buf);
        });
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep draining stdout so a stray write never hits a closed pipe.
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("oidc server did not start: {}", stderr.lock().unwrap());
        }
        let info: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let issuer = info["issuer"].as_str().unwrap().to_string();
        OidcServer {
            child,
            issuer,
            info,
            stderr,
        }
    }

    /// The generic preset for this server, as config would describe it.
    pub fn provider(&self) -> GenericProvider {
        GenericProvider {
            name: "corp".into(),
            issuer: Some(self.issuer.clone()),
            client_id: "marathon".into(),
            scopes: Some(vec![
                "openid".into(),
                "email".into(),
                "offline_access".into(),
            ]),
            // oidc-provider grants offline_access only with prompt=consent.
            extra_authorize_params: vec![("prompt".into(), "consent".into())],
            ..GenericProvider::default()
        }
    }

    pub async fn preset(&self) -> OAuthPreset {
        self.provider()
            .resolve(&HyperHttpClient::new())
            .await
            .unwrap()
    }

    /// RFC 7662 introspection as the resource server.
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        let req = HttpRequest::form(
            format!("{}/token/introspection", self.issuer),
            [("token", token)],
        )
        .header(
            "authorization",
            "Basic cmVzb3VyY2Utc2VydmVyOnJzLXNlY3JldA==",
        ); // resource-server:rs-secret
        let resp = HyperHttpClient::new().send(req).await.unwrap();
        assert_eq!(resp.status, 200, "introspection failed");
        serde_json::from_slice(&resp.body).unwrap()
    }

    pub async fn stats(&self) -> serde_json::Value {
        let resp = HyperHttpClient::new()
            .send(HttpRequest::get(format!("{}/test/stats", self.issuer)))
            .await
            .unwrap();
        serde_json::from_slice(&resp.body).unwrap()
    }

    /// Destroys every grant of a user (an admin revoking the login).
    pub async fn revoke_user(&self, user: &str) -> u64 {
        let mut req = HttpRequest::form(format!("{}/test/revoke?user={user}", self.issuer), []);
        req.method = http::Method::POST;
        let resp = HyperHttpClient::new().send(req).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        v["revoked"].as_u64().unwrap()
    }

    /// RFC 7009 revocation of a refresh token (revokes its grant).
    pub async fn revoke_token(&self, token: &str) {
        let req = HttpRequest::form(
            format!("{}/token/revocation", self.issuer),
            [
                ("token", token),
                ("token_type_hint", "refresh_token"),
                ("client_id", "marathon"),
            ],
        );
        let resp = HyperHttpClient::new().send(req).await.unwrap();
        assert_eq!(resp.status, 200);
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
/// hidden-field forms oidc-provider renders (form_post, device confirm).
pub struct Browser {
    http: HyperHttpClient,
    origin: String,
    cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new(issuer: &str) -> Browser {
        Browser {
            http: HyperHttpClient::new(),
            origin: issuer.trim_end_matches('/').to_string(),
            cookies: HashMap::new(),
        }
    }

    pub async fn run(&mut self, url: &str) -> BrowserEnd {
        let mut req = HttpRequest::get(url);
        for _ in 0..20 {
            if !req.url.starts_with(&self.origin) {
                return BrowserEnd::Redirect(req.url);
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

/// A fake HTTP client: a handler answers, every request is recorded with the
/// (tokio) time it was sent.
type Handler = Box<dyn Fn(&HttpRequest) -> Result<HttpResponse, HttpError> + Send + Sync>;

pub struct FakeHttp {
    handler: Handler,
    pub requests: Mutex<Vec<(tokio::time::Instant, HttpRequest)>>,
}

impl FakeHttp {
    pub fn new(
        handler: impl Fn(&HttpRequest) -> Result<HttpResponse, HttpError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(FakeHttp {
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// Answers requests from a script, in order.
    pub fn scripted(responses: Vec<HttpResponse>) -> Arc<Self> {
        let queue = Mutex::new(VecDeque::from(responses));
        Self::new(move |req| {
            Ok(queue
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected request {req:?}")))
        })
    }

    pub fn sent(&self) -> Vec<HttpRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn times(&self) -> Vec<tokio::time::Instant> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }
}

impl HttpClient for FakeHttp {
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, HttpError>> {
        self.requests
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), req.clone()));
        let result = (self.handler)(&req);
        Box::pin(async move { result })
    }
}

/// A JWT with the given claims (unsigned; marathon reads claims only).
pub fn fake_jwt(claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        enc.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc.encode(serde_json::to_vec(&claims).unwrap())
    )
}

/// The path of one of this crate's examples, (re)built now: `cargo test
/// --test x` does not build examples, and a stale one would test old code.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = profile_dir.join("examples").join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "marathon-oauth", "--example", name]);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building example {name} failed");
    assert!(path.exists(), "example binary {} not found", path.display());
    path
}
