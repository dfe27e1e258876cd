//! # marathon-testkit: what several test suites share
//!
//! - [`OidcServer`]: the real authorization server (`tests/oidc/server.mjs`,
//!   `oidc-provider` from npm) on loopback, installed on first use, killed on
//!   drop, with helpers for introspection, its counters and revocation;
//! - [`Browser`]: a scripted user agent that drives its pages (redirects,
//!   cookies, the hidden-field forms it renders, the login page);
//! - [`echo`]: an upstream and a token endpoint that echo the credentials
//!   they receive in every field they control, and a webhook recorder.
//!
//! Test-only: panics instead of returning errors.
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod echo;
pub mod redis;

use marathon_oauth::{GenericProvider, HttpClient, HttpRequest, HyperHttpClient, OAuthPreset};

/// The repository's root directory.
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
        drain(child.stderr.take().unwrap(), log.clone());
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Keep draining stdout so a stray write never hits a closed pipe.
        drain(out, log.clone());
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("oidc server did not start: {}", log.lock().unwrap());
        }
        let info: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let issuer = info["issuer"].as_str().unwrap().to_string();
        OidcServer {
            child,
            issuer,
            info,
            log,
        }
    }

    /// `[providers.<name>.oauth]` for this server, as a user would write it.
    pub fn oauth_section(&self, provider: &str) -> String {
        format!(
            "[providers.{provider}.oauth]\nissuer = \"{}\"\nclient_id = \"marathon\"\n\
             scopes = [\"openid\", \"email\", \"offline_access\"]\n\
             # oidc-provider grants offline_access only with prompt=consent.\n\
             extra_authorize_params = {{ prompt = \"consent\" }}\n",
            self.issuer
        )
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

    /// What the server wrote (stderr and anything after its ready line).
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

fn drain(mut r: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
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
    });
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
/// server's login page (`/interaction/<uid>?login=<user>`) when told who to be.
pub struct Browser {
    http: HyperHttpClient,
    origin: String,
    user: Option<String>,
    cookies: HashMap<String, String>,
}

impl Browser {
    /// A browser that logs in as whoever the authorize request names
    /// (`login_hint`).
    pub fn new(issuer: &str) -> Browser {
        Browser {
            http: HyperHttpClient::new(),
            origin: issuer.trim_end_matches('/').to_string(),
            user: None,
            cookies: HashMap::new(),
        }
    }

    /// A browser that logs in as `user` on the server's login page.
    pub fn as_user(issuer: &str, user: &str) -> Browser {
        Browser {
            user: Some(user.to_string()),
            ..Browser::new(issuer)
        }
    }

    pub async fn run(&mut self, url: &str) -> BrowserEnd {
        let mut req = HttpRequest::get(url);
        for _ in 0..20 {
            if !req.url.starts_with(&self.origin) {
                return BrowserEnd::Redirect(req.url);
            }
            if let Some(user) = &self.user
                && req.url.contains("/interaction/")
                && !req.url.contains('?')
            {
                req.url = format!("{}?login={user}", req.url);
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
