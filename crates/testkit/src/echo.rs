//! Adversarial peers for the secret-hygiene tests: an upstream and a token
//! endpoint that echo the credentials they receive in every field they
//! control — the status line's reason text, headers (a custom `x-error`,
//! `retry-after`'s neighbours, usage headers, a header *named* after the
//! key), JSON error fields, stream events — plus every other secret they
//! were told (a gateway that has seen them all), and a recorder for webhook
//! posts. Raw sockets, so every byte of the answer is the test's choice.
//!
//! Each is a tokio task on 127.0.0.1; start them inside a runtime that keeps
//! running for the test (the CLI suite keeps one for the purpose).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Header a client sets to script an echoing upstream's answers, one mode per
/// attempt of the request (the last repeats): `401,ok`. Modes: `ok` (200
/// JSON), `sse-first` (a 200 stream whose first event is an error), `sse-mid`
/// (a 200 stream with an error event after a normal one, the key split
/// across chunks), or a status (`400`, `401`, `429`, `503`, ...) with a JSON
/// error body.
pub const SCRIPT_HEADER: &str = "x-echo-script";
/// Header naming the request, so its attempts are counted together.
pub const ID_HEADER: &str = "x-echo-id";

/// An upstream that echoes the credential each request carries.
pub struct EchoingUpstream {
    addr: SocketAddr,
    served: Arc<Mutex<Vec<(String, String)>>>,
    task: JoinHandle<()>,
}

impl EchoingUpstream {
    /// Starts on a free port. `known`: more values to echo in every answer.
    pub async fn start(known: Vec<String>) -> EchoingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let log = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (known, log, attempts) = (known.clone(), log.clone(), attempts.clone());
                tokio::spawn(async move {
                    let _ = upstream_conn(stream, &known, &log, &attempts).await;
                });
            }
        });
        EchoingUpstream { addr, served, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every answer given, as (mode, credential received).
    pub fn served(&self) -> Vec<(String, String)> {
        self.served.lock().unwrap().clone()
    }
}

impl Drop for EchoingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A token endpoint (`POST /token`) that refuses every refresh, echoing the
/// refresh token it received in `error`, `error_description` and friends.
pub struct EchoingTokenEndpoint {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<(String, u16)>>>,
    task: JoinHandle<()>,
}

impl EchoingTokenEndpoint {
    /// `answers`: the status each refresh token gets (400 if not listed);
    /// `known`: more values to echo (the access tokens, say).
    pub async fn start(answers: Vec<(String, u16)>, known: Vec<String>) -> EchoingTokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
        let log = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answers, known, log) = (answers.clone(), known.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = token_conn(stream, &answers, &known, &log).await;
                });
            }
        });
        EchoingTokenEndpoint { addr, hits, task }
    }

    /// The token URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every refresh seen, as (refresh token, status answered).
    pub fn hits(&self) -> Vec<(String, u16)> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for EchoingTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records the body of every request (a webhook's posts); answers 204.
pub struct Recorder {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = bodies.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    while let Some(req) = read_request(&mut stream).await {
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&req.body).into_owned());
                        let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Recorder { addr, bodies, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct RawRequest {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head, and a `content-length` or chunked body).
async fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let want: Option<usize> = find("content-length").and_then(|v| v.parse().ok());
    loop {
        let done = match want {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if done {
            break;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawRequest { headers, body })
}

/// The credential a request carries, in whichever header it came.
fn credential(req: &RawRequest) -> String {
    for name in ["x-api-key", "x-goog-api-key", "api-key", "authorization"] {
        if let Some(v) = req.header(name) {
            return v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
                .unwrap_or(v)
                .to_string();
        }
    }
    String::new()
}

async fn upstream_conn(
    mut stream: TcpStream,
    known: &[String],
    log: &Mutex<Vec<(String, String)>>,
    attempts: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await else {
        return Ok(());
    };
    let key = credential(&req);
    let script = req.header(SCRIPT_HEADER).unwrap_or("429").to_string();
    let id = req.header(ID_HEADER).unwrap_or("").to_string();
    let attempt = {
        let mut a = attempts.lock().unwrap();
        let n = a.entry(id).or_insert(0);
        *n += 1;
        *n - 1
    };
    let modes: Vec<&str> = script.split(',').map(str::trim).collect();
    let mode = modes[attempt.min(modes.len() - 1)].to_string();
    log.lock().unwrap().push((mode.clone(), key.clone()));
    let mut all = known.to_vec();
    all.push(key.clone());
    let all = all.join(" ");
    for part in upstream_answer(&mode, &key, &all) {
        stream.write_all(&part).await?;
        stream.flush().await?;
    }
    stream.shutdown().await
}

/// Headers every echoing answer carries: the key in a custom header, in
/// reset and usage headers a proxy reads, in auth challenge and cookie
/// headers, and as a header name.
fn echo_headers(key: &str, all: &str) -> String {
    let mut h = format!(
        "x-error: {key}\r\nx-echo-all: {all}\r\nx-request-id: req_{key}\r\n\
         retry-after-ms: {key}\r\nx-ratelimit-reset-requests: {key}\r\n\
         anthropic-ratelimit-unified-5h-status: {key}\r\n\
         anthropic-ratelimit-unified-5h-utilization: 0.5\r\n\
         anthropic-ratelimit-unified-reset: {key}\r\n\
         www-authenticate: Bearer error=\"invalid_token\", error_description=\"{key}\"\r\n\
         set-cookie: echo={key}; Path=/\r\nconnection: close\r\n"
    );
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        h.push_str(&format!("x-{key}: 1\r\n"));
    }
    h
}

fn upstream_answer(mode: &str, key: &str, all: &str) -> Vec<Vec<u8>> {
    let headers = echo_headers(key, all);
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len()).into_bytes();
    match mode {
        "ok" => {
            let body = format!(
                r#"{{"id":"msg_{key}","type":"message","role":"assistant","content":[{{"type":"text","text":"echo {key} {all}"}}],"usage":{{"input_tokens":1,"output_tokens":1}}}}"#
            );
            vec![format!(
                "HTTP/1.1 200 OK {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
                body.len()
            ).into_bytes()]
        }
        "sse-first" => {
            let event = format!(
                "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{key}\",\"code\":\"{key}\",\"message\":\"{all}\"}}}}\n\n"
            );
            vec![
                format!("HTTP/1.1 200 OK {key}\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{headers}\r\n").into_bytes(),
                chunk(&event),
                b"0\r\n\r\n".to_vec(),
            ]
        }
        "sse-mid" => {
            // The first event holds the key split across two chunks.
            let half = key.len() / 2;
            let start = format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_{}",
                &key[..half]
            );
            let end = format!("{}\",\"note\":\"{all}\"}}}}\n\n", &key[half..]);
            let error = format!(
                "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{key}\",\"code\":\"{key}\",\"message\":\"{all}\"}}}}\n\n"
            );
            vec![
                format!("HTTP/1.1 200 OK {key}\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{headers}\r\n").into_bytes(),
                chunk(&start),
                chunk(&end),
                chunk(&error),
                b"0\r\n\r\n".to_vec(),
            ]
        }
        status => {
            let status: u16 = status.parse().unwrap_or(429);
            let body = format!(
                r#"{{"type":"error","error":{{"type":"{key}","code":"{key}","status":"{key}","param":"{key}","message":"invalid key {key}; seen: {all}"}},"request_id":"{key}"}}"#
            );
            let retry = if status == 429 {
                "retry-after: 1\r\n"
            } else {
                ""
            };
            vec![format!(
                "HTTP/1.1 {status} Echo {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}{headers}\r\n{body}",
                body.len()
            ).into_bytes()]
        }
    }
}

async fn token_conn(
    mut stream: TcpStream,
    answers: &[(String, u16)],
    known: &[String],
    log: &Mutex<Vec<(String, u16)>>,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await else {
        return Ok(());
    };
    // The refresh grant comes as a form or as JSON, by preset.
    let refresh = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| v.get("refresh_token")?.as_str().map(str::to_string))
        .or_else(|| form_field(&req.body, "refresh_token"))
        .unwrap_or_default();
    let status = answers
        .iter()
        .find(|(rt, _)| *rt == refresh)
        .map_or(400, |(_, s)| *s);
    log.lock().unwrap().push((refresh.clone(), status));
    let all = known.join(" ");
    let rt = &refresh;
    let body = match status {
        401 => format!(
            r#"{{"error":{{"code":"{rt}","type":"{rt}","message":"{rt} {all}"}},"error_description":"{all}"}}"#
        ),
        500..=599 => format!(r#"{{"error":"{rt}","detail":{{"code":"{rt}","message":"{all}"}}}}"#),
        _ => format!(
            r#"{{"error":"{rt}","error_description":"refresh token {rt} is not valid; seen {all}"}}"#
        ),
    };
    let answer = format!(
        "HTTP/1.1 {status} Refused {rt}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-error: {rt}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
