//! One scenario table, both faces: every row runs through the proxy (real
//! sockets on 127.0.0.1, a plain reqwest client) and through the
//! middleware (reqwest in-process), against marathon-sim, from the same
//! config and the same kind of store, and the two must see the same thing:
//! the statuses the program gets, which account answered, the
//! `retry-after` and message of marathon's own answers, which accounts the
//! simulator saw called and how often, how many token refreshes happened,
//! and every account's state afterwards.
//!
//! What this guards: the two faces drifting apart. Each drives the one
//! rotation machine (`marathon_core::rotation`), but each does its own I/O
//! (credentials, classification input, error bodies, streams, waits,
//! refreshes); a driver that reads less of an error body, loses a header,
//! forgets the stream watch or skips a refresh fails its rows here, against
//! the row's stated expectation and against the other face.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marathon_client::Marathon;
use marathon_core::{AccountKind, Secret};
use marathon_proxy::{ProxySettings, StartOptions};
use marathon_sim::{Account, ErrorKind, QuotaStyle, Scenario, StreamErrorKind};
use marathon_store::{Credential, MemoryStore, NewAccount, Store};
use tokio::net::TcpListener;

// ------------------------------------------------------------------ the table

/// Which API a row speaks.
#[derive(Clone, Copy, Debug)]
enum Api {
    Anthropic,
    Openai,
}

impl Api {
    fn provider(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::Openai => "openai",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Api::Anthropic => "/v1/messages",
            Api::Openai => "/v1/chat/completions",
        }
    }

    fn body(self, stream: bool) -> String {
        match self {
            Api::Anthropic => format!(
                r#"{{"model":"claude-sonnet-4-5","max_tokens":32,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
            Api::Openai => format!(
                r#"{{"model":"gpt-4.1","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
        }
    }
}

/// An account stored as an OAuth login: its stored access token, and what
/// the token endpoint answers to its refresh token.
#[derive(Clone, Debug)]
struct OAuth {
    label: &'static str,
    stored_access: &'static str,
    /// `Some(token)`: the refresh gives this access token; `None`:
    /// `invalid_grant` (the login is gone).
    refreshed: Option<&'static str>,
}

/// One request of a row.
#[derive(Clone, Copy, Debug)]
struct Call {
    stream: bool,
}

const PLAIN: Call = Call { stream: false };
const STREAM: Call = Call { stream: true };

/// What both faces must see.
#[derive(Clone, Debug, Default)]
struct Expect {
    /// Per request: the status and the `x-marathon-account` the program gets.
    answers: Vec<(u16, Option<&'static str>)>,
    /// Requests per simulated account (accounts not named: none).
    calls: Vec<(&'static str, u64)>,
    /// Every account's state afterwards.
    states: Vec<(&'static str, &'static str)>,
    /// The last answer has a `retry-after`.
    retry_after: bool,
    /// Text the last answer's body contains.
    body_has: Vec<&'static str>,
    /// Refresh requests the token endpoint saw.
    refreshes: u64,
}

/// A row: the world, the requests, the outcome.
#[derive(Clone, Debug)]
struct Row {
    api: Api,
    accounts: Vec<Account>,
    oauth: Vec<OAuth>,
    /// Extra TOML under `[providers.<provider>]`.
    provider_toml: &'static str,
    /// The upstream is a closed port (connect refused), not the simulator.
    dead_upstream: bool,
    calls: Vec<Call>,
    expect: Expect,
}

fn row(accounts: impl IntoIterator<Item = Account>) -> Row {
    Row {
        api: Api::Anthropic,
        accounts: accounts.into_iter().collect(),
        oauth: Vec::new(),
        provider_toml: "",
        dead_upstream: false,
        calls: vec![PLAIN],
        expect: Expect::default(),
    }
}

fn acct(name: &str) -> Account {
    Account::ok(name, format!("sk-{name}"))
}

const HOUR: Duration = Duration::from_secs(3600);

macro_rules! table {
    ($($test:ident => $row:expr,)*) => {
        /// The whole table, in one place.
        fn table() -> Vec<(&'static str, Row)> {
            vec![$((stringify!($test), $row)),*]
        }

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (_, row) = table()
                    .into_iter()
                    .find(|(name, _)| *name == stringify!($test))
                    .expect("the row is in the table");
                check(stringify!($test), row).await;
            }
        )*
    };
}

table! {
    success_2xx => Row {
        expect: Expect {
            answers: vec![(200, Some("a1"))],
            calls: vec![("a1", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1"), acct("a2")])
    },
    rate_limit_429_with_reset_hint_rotates => Row {
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "cooling"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").quota(0, HOUR, QuotaStyle::AnthropicApi), acct("a2")])
    },
    insufficient_quota_429_rests_long_and_rotates => Row {
        api: Api::Openai,
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "cooling"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").error(ErrorKind::InsufficientQuota), acct("a2")])
    },
    billing_402_rests_long_and_rotates => Row {
        api: Api::Openai,
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "cooling"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").error(ErrorKind::DeactivatedWorkspace), acct("a2")])
    },
    oauth_401_refreshes_and_retries_the_same_account => Row {
        oauth: vec![OAuth { label: "a1", stored_access: "stale-a1", refreshed: Some("fresh-a1") }],
        expect: Expect {
            answers: vec![(200, Some("a1"))],
            calls: vec![("a1", 2)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            refreshes: 1,
            ..Expect::default()
        },
        // The first request is refused as expired; the refreshed token works.
        ..row([Account::ok("a1", "stale-a1").key("fresh-a1").expired().fail_first(1), acct("a2")])
    },
    oauth_401_after_a_refresh_needs_login_and_rotates => Row {
        oauth: vec![OAuth { label: "a1", stored_access: "stale-a1", refreshed: Some("fresh-a1") }],
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 2), ("a2", 1)],
            states: vec![("a1", "needs_login"), ("a2", "ready")],
            refreshes: 1,
            ..Expect::default()
        },
        ..row([Account::ok("a1", "stale-a1").key("fresh-a1").expired(), acct("a2")])
    },
    oauth_refresh_refused_needs_login_and_rotates => Row {
        oauth: vec![OAuth { label: "a1", stored_access: "stale-a1", refreshed: None }],
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "needs_login"), ("a2", "ready")],
            refreshes: 1,
            ..Expect::default()
        },
        ..row([Account::ok("a1", "stale-a1").expired(), acct("a2")])
    },
    forbidden_403_rotates_and_rests => Row {
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "cooling"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").error(ErrorKind::Permission), acct("a2")])
    },
    overloaded_529_is_retried_then_moves_once => Row {
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 3), ("a2", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").status(529), acct("a2")])
    },
    server_error_500_everywhere_passes_through => Row {
        expect: Expect {
            answers: vec![(500, Some("a2"))],
            calls: vec![("a1", 3), ("a2", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            body_has: vec!["api_error"],
            ..Expect::default()
        },
        ..row([acct("a1").status(500), acct("a2").status(500)])
    },
    connection_reset_retries_once_then_rotates => Row {
        expect: Expect {
            answers: vec![(200, Some("a2"))],
            calls: vec![("a1", 2), ("a2", 1)],
            // A transport failure is a short penalty, not a cooldown.
            states: vec![("a1", "ready"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").reset(), acct("a2")])
    },
    connect_refused_everywhere_is_a_502 => Row {
        dead_upstream: true,
        expect: Expect {
            answers: vec![(502, None)],
            calls: vec![],
            states: vec![("a1", "ready"), ("a2", "ready")],
            body_has: vec!["could not reach the anthropic upstream"],
            ..Expect::default()
        },
        ..row([acct("a1"), acct("a2")])
    },
    bad_request_400_passes_through => Row {
        expect: Expect {
            answers: vec![(400, Some("a1"))],
            calls: vec![("a1", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            body_has: vec!["invalid_request_error"],
            ..Expect::default()
        },
        ..row([acct("a1").error(ErrorKind::InvalidRequest), acct("a2")])
    },
    not_found_404_passes_through => Row {
        expect: Expect {
            answers: vec![(404, Some("a1"))],
            calls: vec![("a1", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").error(ErrorKind::NotFound), acct("a2")])
    },
    too_large_413_passes_through => Row {
        expect: Expect {
            answers: vec![(413, Some("a1"))],
            calls: vec![("a1", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").status(413), acct("a2")])
    },
    unprocessable_422_passes_through => Row {
        api: Api::Openai,
        expect: Expect {
            answers: vec![(422, Some("a1"))],
            calls: vec![("a1", 1)],
            states: vec![("a1", "ready"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").status(422), acct("a2")])
    },
    every_account_cooling_is_the_exhaustion_answer => Row {
        expect: Expect {
            answers: vec![(429, None)],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "cooling"), ("a2", "cooling")],
            retry_after: true,
            body_has: vec![
                "all 2 anthropic accounts are unavailable",
                "a1 cooling for",
                "a2 cooling for",
                "rate_limit_error",
            ],
            ..Expect::default()
        },
        ..row([
            acct("a1").quota(0, HOUR, QuotaStyle::AnthropicApi),
            acct("a2").quota(0, HOUR, QuotaStyle::AnthropicApi),
        ])
    },
    max_wait_waits_for_the_account_to_recover => Row {
        provider_toml: "max_wait = \"5s\"\n",
        calls: vec![PLAIN, PLAIN],
        expect: Expect {
            answers: vec![(200, Some("a1")), (200, Some("a1"))],
            // The second request: a 429, a wait for the window's end, a 200.
            calls: vec![("a1", 3)],
            states: vec![("a1", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").quota(1, Duration::from_secs(1), QuotaStyle::AnthropicApi)])
    },
    mid_stream_error_benches_the_account_for_the_next_request => Row {
        calls: vec![STREAM, PLAIN],
        expect: Expect {
            // The stream's head was a 200: the error event reaches the
            // program inside it; the next request starts elsewhere.
            answers: vec![(200, Some("a1")), (200, Some("a2"))],
            calls: vec![("a1", 1), ("a2", 1)],
            states: vec![("a1", "cooling"), ("a2", "ready")],
            ..Expect::default()
        },
        ..row([acct("a1").stream_error_after(2, StreamErrorKind::Overloaded), acct("a2")])
    },
}

// ------------------------------------------------------------------ running

/// What one face saw of a row.
#[derive(Debug, PartialEq)]
struct Seen {
    answers: Vec<(u16, Option<String>)>,
    retry_after: bool,
    last_body: String,
    calls: BTreeMap<String, u64>,
    states: BTreeMap<String, String>,
    /// Per account: state, last class and reason, counters, and how long
    /// it rests, coarsely (see [`detail`]).
    details: BTreeMap<String, String>,
    refreshes: u64,
}

/// Everything but the last body's exact text (ids and durations differ).
type Comparable = (
    Vec<(u16, Option<String>)>,
    bool,
    BTreeMap<String, u64>,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    u64,
);

impl Seen {
    fn comparable(&self) -> Comparable {
        (
            self.answers.clone(),
            self.retry_after,
            self.calls.clone(),
            self.states.clone(),
            self.details.clone(),
            self.refreshes,
        )
    }

    /// Records an account's status (the proxy's `/_marathon/status` entry,
    /// or the middleware's `AccountReport`: one schema).
    fn account(&mut self, a: &serde_json::Value) {
        let label = a["label"].as_str().expect("label").to_string();
        let state = a["state"].as_str().expect("state").to_string();
        self.details.insert(label.clone(), detail(a));
        self.states.insert(label, state);
    }

    fn assert_matches(&self, face: &str, name: &str, e: &Expect) {
        let want_answers: Vec<(u16, Option<String>)> = e
            .answers
            .iter()
            .map(|(s, a)| (*s, a.map(str::to_string)))
            .collect();
        let ctx = format!("{name} through the {face}: {self:#?}");
        assert_eq!(self.answers, want_answers, "{ctx}");
        let want_calls: BTreeMap<String, u64> =
            e.calls.iter().map(|(a, n)| (a.to_string(), *n)).collect();
        assert_eq!(self.calls, want_calls, "{ctx}");
        let want_states: BTreeMap<String, String> = e
            .states
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect();
        assert_eq!(self.states, want_states, "{ctx}");
        assert_eq!(self.retry_after, e.retry_after, "{ctx}");
        assert_eq!(self.refreshes, e.refreshes, "{ctx}");
        for text in &e.body_has {
            assert!(self.last_body.contains(text), "{text:?} missing; {ctx}");
        }
    }
}

async fn check(name: &str, row: Row) {
    let proxy = run(&row, Face::Proxy).await;
    proxy.assert_matches("proxy", name, &row.expect);
    let middleware = run(&row, Face::Middleware).await;
    middleware.assert_matches("middleware", name, &row.expect);
    assert_eq!(
        proxy.comparable(),
        middleware.comparable(),
        "{name}: the faces differ"
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Face {
    Proxy,
    Middleware,
}

/// Runs a row's requests through one face, in a world of its own.
async fn run(row: &Row, face: Face) -> Seen {
    let sim = marathon_sim::start(Scenario::new(row.accounts.clone()))
        .await
        .expect("simulator starts");
    let tokens = TokenEndpoint::start(&row.oauth).await;
    let upstream = if row.dead_upstream {
        closed_port_url().await
    } else {
        sim.url()
    };
    let provider = row.api.provider();
    let mut toml = format!(
        "[providers.{provider}]\nupstream = \"{upstream}\"\n{}\n",
        row.provider_toml
    );
    if !row.oauth.is_empty() {
        // The built-in preset, refreshing at the row's token endpoint.
        toml.push_str(&format!(
            "[providers.{provider}.oauth]\ntoken_url = \"{}/token\"\n",
            tokens.url()
        ));
    }
    let config = marathon_config::load_str(&toml, Path::new("scenario.toml")).expect("config");
    let store = Arc::new(MemoryStore::new());
    for a in &row.accounts {
        store
            .add(stored_account(provider, a, &row.oauth))
            .expect("account stored");
    }
    let client = reqwest::Client::new();
    let mut seen = Seen {
        answers: Vec::new(),
        retry_after: false,
        last_body: String::new(),
        calls: BTreeMap::new(),
        states: BTreeMap::new(),
        details: BTreeMap::new(),
        refreshes: 0,
    };
    match face {
        Face::Proxy => {
            let mut settings = ProxySettings::from_config(&config).expect("servable");
            settings.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let mut opts = StartOptions::new(store.clone());
            opts.tokens = Some(
                marathon_oauth::from_config::refresher(&config, store.clone())
                    .await
                    .expect("refresher"),
            );
            let proxy = marathon_proxy::start(settings, opts).await.expect("proxy");
            let url = format!("{}/{provider}{}", proxy.url(), row.api.path());
            for call in &row.calls {
                let req = client.post(&url);
                answer(&mut seen, send(req, row.api, *call).await).await;
            }
            let status = proxy.status();
            for p in status["providers"].as_array().expect("providers") {
                if p["name"] != provider {
                    continue;
                }
                for a in p["accounts"].as_array().expect("accounts") {
                    seen.account(a);
                }
            }
            proxy.shutdown(Duration::from_secs(1)).await;
        }
        Face::Middleware => {
            let marathon = Marathon::from_config(&config, store.clone())
                .await
                .expect("marathon");
            let with = reqwest_middleware::ClientBuilder::new(client)
                .with(marathon.middleware(provider).expect("provider"))
                .build();
            let url = format!("{upstream}{}", row.api.path());
            for call in &row.calls {
                let req = with.post(&url);
                answer(&mut seen, send_mw(req, row.api, *call).await).await;
            }
            for a in marathon.accounts(provider).expect("provider") {
                seen.account(&serde_json::to_value(&a).expect("status serialises"));
            }
        }
    }
    seen.calls = sim.counts().into_iter().filter(|(_, n)| *n > 0).collect();
    seen.refreshes = tokens.calls();
    seen
}

async fn send(req: reqwest::RequestBuilder, api: Api, call: Call) -> reqwest::Response {
    req.header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(api.body(call.stream))
        .send()
        .await
        .expect("the proxy answers")
}

async fn send_mw(
    req: reqwest_middleware::RequestBuilder,
    api: Api,
    call: Call,
) -> reqwest::Response {
    req.header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(api.body(call.stream))
        .send()
        .await
        .expect("the middleware answers")
}

/// Records one answer, its body read to the end (a stream's watch runs as
/// the program reads).
async fn answer(seen: &mut Seen, resp: reqwest::Response) {
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let account = header("x-marathon-account");
    seen.retry_after = header("retry-after").is_some();
    seen.answers.push((resp.status().as_u16(), account));
    seen.last_body = resp.text().await.expect("the body reads to the end");
}

/// An account's status in a few words: state, last class and reason,
/// counters, and its rest rounded to a bucket (the two faces ran at
/// slightly different instants).
fn detail(a: &serde_json::Value) -> String {
    let rest = match a["retry_in_ms"].as_u64() {
        None => "-",
        Some(ms) if ms < 15_000 => "<15s",
        Some(ms) if ms < 300_000 => "<5m",
        Some(ms) if ms < 7_200_000 => "<2h",
        Some(_) => "long",
    };
    format!(
        "{} class={} reason={} ok={} failed={} rest={rest}",
        a["state"], a["last_class"], a["last_reason"], a["successes"], a["failures"]
    )
}

/// The store entry for a simulated account: an API key (its first key), or
/// an OAuth login when the row says so.
fn stored_account(provider: &str, a: &Account, oauth: &[OAuth]) -> NewAccount {
    let key = a.keys.first().expect("an account with a key").expose();
    let mut account = NewAccount::api_key(provider, Some(a.name.clone()), Secret::new(key));
    if let Some(o) = oauth.iter().find(|o| o.label == a.name) {
        account.kind = AccountKind::Oauth;
        account.credential = Credential::Oauth {
            access: Secret::new(o.stored_access),
            refresh: Some(Secret::new(refresh_token(o.label))),
            expires_at: None,
            id_token: None,
            scopes: Vec::new(),
        };
    }
    account
}

fn refresh_token(label: &str) -> String {
    format!("rt-{label}")
}

/// A URL on 127.0.0.1 where nothing listens.
async fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A token endpoint on 127.0.0.1 for the refresher: answers each row
/// account's refresh token as the row says, and counts the requests.
struct TokenEndpoint {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenEndpoint {
    async fn start(oauth: &[OAuth]) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let answers: Arc<Vec<(String, Option<&'static str>)>> = Arc::new(
            oauth
                .iter()
                .map(|o| (refresh_token(o.label), o.refreshed))
                .collect(),
        );
        let counter = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answers, counter) = (answers.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (answers, counter) = (answers.clone(), counter.clone());
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            let found = answers.iter().find(|(rt, _)| body.contains(rt.as_str()));
                            let (status, json) = match found {
                                Some((rt, Some(access))) => (
                                    200,
                                    format!(
                                        r#"{{"access_token":"{access}","refresh_token":"{rt}","token_type":"Bearer","expires_in":3600}}"#
                                    ),
                                ),
                                _ => (
                                    400,
                                    r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#
                                        .to_string(),
                                ),
                            };
                            let resp = hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(json)))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TokenEndpoint { addr, calls, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The table is one list: every row has a name of its own (a duplicate
/// would run one row twice and hide the other).
#[test]
fn every_row_has_its_own_name() {
    let names: Vec<&str> = table().into_iter().map(|(n, _)| n).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(names.len(), unique.len());
    assert!(names.len() >= 19, "{names:?}");
}
