//! Test support of this crate's own: a fake HTTP client for request-shape
//! tests, fake JWTs, example binaries. The real authorization server and the
//! scripted browser come from marathon-testkit (shared with the CLI's tests).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use marathon_oauth::{HttpClient, HttpError, HttpRequest, HttpResponse, http::BoxFuture};

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
