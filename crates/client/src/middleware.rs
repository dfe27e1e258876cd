//! The middleware: the second driver of the rotation machine (the proxy's
//! `forward` is the first). It carries out the machine's actions with
//! reqwest — send with an account's credential, refresh its token, wait —
//! and holds no rotation rule of its own.

use std::collections::VecDeque;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Extensions, StatusCode};
use http_body_util::BodyExt;
use marathon_core::accounting::{Framing, Tally};
use marathon_core::classify::classify;
use marathon_core::decision::AttemptTrace;
use marathon_core::pool::SessionKey;
use marathon_core::rotation::{
    self, Action, Answer, Picked, RefreshFailure, Refusal, RefusalKind, RequestFacts, Rotation,
    Unusable,
};
use marathon_core::sse::ErrorScanner;
use marathon_core::tokens::TokenError;
use marathon_core::{
    AccountId, AccountKind, Class, Classification, Outcome, Reason, Secret, TransportFailure,
    UnixMillis,
};
use marathon_wire::{
    self as wire, ACCOUNT_HEADER, ATTEMPTS_HEADER, OwnAnswer, REPLAYABLE_HEADER, add_trace_headers,
    is_event_stream,
};
use reqwest::{Request, Response, ResponseBuilderExt as _, Url};
use reqwest_middleware::{Middleware, Next};

use crate::body::{PassBody, RequestBody, StreamWatch};
use crate::provider::{Cred, Env, Provider};
use crate::{Error, Inner};

/// How much of an error body is read to classify it (as in the proxy).
const ERROR_BODY_PEEK: usize = 64 * 1024;
/// How long to wait for a success stream's first event (as in the proxy;
/// an error body has `[server] error_body_timeout` in all).
const PEEK_TIMEOUT: Duration = Duration::from_secs(30);

/// Rotates one provider's accounts for the requests of a
/// [`reqwest_middleware::ClientWithMiddleware`]. Made by
/// [`crate::Marathon::middleware`] or [`MarathonMiddleware::new`]; see the
/// crate docs for what it does with a request.
#[derive(Clone)]
pub struct MarathonMiddleware {
    inner: Arc<Inner>,
    provider: Arc<Provider>,
    /// Requests under this base are sent to the provider's upstream instead.
    rewrite: Option<String>,
}

impl std::fmt::Debug for MarathonMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarathonMiddleware")
            .field("provider", &self.provider.name)
            .field("upstream", &self.provider.upstream)
            .field("rewrite", &self.rewrite)
            .finish()
    }
}

impl MarathonMiddleware {
    /// The middleware of `provider`, set up from `config` and `store` as
    /// [`crate::Marathon::from_config`] does. Several providers (or several
    /// clients of one) should share one [`crate::Marathon`] instead, so
    /// that they share its pools.
    pub async fn new(
        provider: &str,
        config: &marathon_config::Config,
        store: Arc<dyn marathon_store::Store>,
    ) -> Result<Self, Error> {
        crate::Marathon::from_config(config, store)
            .await?
            .middleware(provider)
    }

    pub(crate) fn for_provider(inner: Arc<Inner>, provider: Arc<Provider>) -> Self {
        MarathonMiddleware {
            inner,
            provider,
            rewrite: None,
        }
    }

    /// Requests whose URL starts with `base` (e.g. a placeholder such as
    /// `http://anthropic.marathon`, or the provider's public URL while the
    /// config points elsewhere) go to the provider's configured upstream
    /// instead, the rest of their path and query kept.
    pub fn rewrite_base(mut self, base: &str) -> Result<Self, Error> {
        let url = Url::parse(base).map_err(|_| Error::Base(base.to_string()))?;
        self.rewrite = Some(url.as_str().trim_end_matches('/').to_string());
        Ok(self)
    }

    /// Whether a request is one to rotate: under the upstream, after
    /// rewriting its URL if it is under the rewrite base. `false`: not this
    /// provider's; sent untouched.
    fn target(&self, url: &mut Url) -> bool {
        let upstream = &self.provider.upstream;
        if let Some(base) = &self.rewrite
            && let Some(rest) = under(url.as_str(), base)
        {
            return match Url::parse(&format!("{upstream}{rest}")) {
                Ok(rewritten) => {
                    *url = rewritten;
                    true
                }
                Err(_) => false,
            };
        }
        under(url.as_str(), upstream).is_some()
    }
}

/// The rest of `url` after `base`, if `url` is `base` or below it.
fn under<'u>(url: &'u str, base: &str) -> Option<&'u str> {
    let rest = url.strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then_some(rest)
}

#[async_trait::async_trait]
impl Middleware for MarathonMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if !self.target(req.url_mut()) {
            return next.run(req, extensions).await;
        }
        self.inner.client_headers.remove_from(req.headers_mut());
        let session = self
            .provider
            .session_headers
            .iter()
            .find_map(|h| req.headers().get(h))
            .map(|v| SessionKey(self.inner.session_keys.hash_one(v.as_bytes())));
        // What `Request::try_clone` checks, without cloning.
        let replayable = req.body().is_none_or(|b| b.as_bytes().is_some());
        if !replayable {
            tracing::info!(provider = %self.provider.name, "request body cannot be cloned (a stream): sending it once; it will not be retried on another account");
        }
        let env = Env {
            inner: self.inner.clone(),
            provider: self.provider.clone(),
        };
        let started = self.inner.clock.now();
        let facts = RequestFacts {
            replayable,
            session,
            now: started,
        };
        let mut rotation = Rotation::new(env.clone(), &self.provider.rotation, facts);
        let mut exchange = Exchange {
            env: &env,
            request: Some(req),
            replayable,
            cred: None,
            token: None,
            next,
            extensions,
        };
        let resp = exchange.drive(&mut rotation).await;
        log_request(&env, &resp, rotation.trace(), started);
        Ok(resp)
    }
}

/// One attempt's result: an answer with what was read of its body (and the
/// in-stream error data if its first event was an error), or how the
/// transport failed.
type Attempted = Result<(Upstream, Option<Vec<u8>>), TransportFailure>;

/// An answer's head with the part of its body read ahead.
struct Upstream {
    head: http::response::Parts,
    url: Url,
    prefix: VecDeque<Bytes>,
    /// The rest of the body (`None`: all of it is in `prefix`).
    rest: Option<reqwest::Body>,
    /// The answer untouched, when nothing was read of it (the common case).
    untouched: Option<Response>,
    scanner: Option<ErrorScanner>,
}

/// The I/O half of one request.
struct Exchange<'a, 'n> {
    env: &'a Env,
    /// The request as the program sent it, credentials removed; taken by
    /// the only attempt when it cannot be cloned.
    request: Option<Request>,
    replayable: bool,
    cred: Option<Arc<Cred>>,
    /// The refresher's access token, when it is not the stored one.
    token: Option<Secret>,
    next: Next<'n>,
    extensions: &'a mut Extensions,
}

impl Exchange<'_, '_> {
    fn now(&self) -> UnixMillis {
        self.env.inner.clock.now()
    }

    /// Carries out the machine's actions until it answers.
    async fn drive(&mut self, rotation: &mut Rotation<'_, Env>) -> Response {
        let mut action = rotation.start();
        loop {
            action = match action {
                Action::Send { picked, .. } => match self.attempt(rotation, picked).await {
                    Ok(resp) => return resp,
                    Err(next) => next,
                },
                Action::Refresh => self.refresh(rotation).await,
                Action::Wait { until } => {
                    tokio::time::sleep(self.now().until(until)).await;
                    rotation.on_timer(self.now())
                }
                Action::Respond(Answer::Refuse(refusal)) => {
                    return self.refuse(&refusal, rotation.trace());
                }
                // A pass-through only ever answers `on_response` (handled in
                // `attempt`), and `Done` only `client_gone` (never called here).
                Action::Respond(Answer::PassThrough) | Action::Done => {
                    return self.own_error(
                        StatusCode::BAD_GATEWAY,
                        "internal error: the rotation ended without an answer",
                    );
                }
            };
        }
    }

    /// One attempt: the account's credential, the send, the classified
    /// outcome. `Ok` with the answer when the machine passes it on.
    async fn attempt(
        &mut self,
        rotation: &mut Rotation<'_, Env>,
        picked: bool,
    ) -> Result<Response, Action> {
        let Some(account) = rotation.account().cloned() else {
            return Err(rotation.on_unusable(Unusable::NoCredential, self.now()));
        };
        if picked && let Err(e) = self.use_account(&account).await {
            let now = self.now();
            return Err(match &e {
                Some(e) => rotation.on_unusable(Unusable::Token(e.as_failure()), now),
                None => rotation.on_unusable(Unusable::NoCredential, now),
            });
        }
        let Some(request) = self.request(&account) else {
            return Err(rotation.on_unusable(Unusable::NoCredential, self.now()));
        };
        let attempted = self.send(request).await;
        let now = self.now();
        let c = classify_attempt(self.env.provider.flavor, &attempted, now);
        match rotation.on_response(c, now) {
            Action::Respond(Answer::PassThrough) => match attempted {
                Ok((up, _)) => Ok(self.pass_through(up, &account, rotation)),
                // The machine passes on only answers.
                Err(_) => Ok(self.own_error(
                    StatusCode::BAD_GATEWAY,
                    "internal error: no response to pass on",
                )),
            },
            next => Err(next),
        }
    }

    /// Takes a newly picked account's credential (and, for OAuth, a current
    /// access token). `Err(None)`: it has none; `Err(Some(_))`: no token.
    async fn use_account(&mut self, account: &Picked) -> Result<(), Option<TokenError>> {
        self.token = None;
        self.cred = self.env.provider.cred(&account.id);
        let cred = self.cred.as_ref().ok_or(None)?;
        if let (AccountKind::Oauth, Some(tokens)) = (cred.kind, &self.env.inner.tokens) {
            let token = tokens.access_token(&account.id).await.map_err(Some)?;
            if !token.same_as(cred.stored_secret()) {
                self.token = Some(token);
            }
        }
        Ok(())
    }

    /// This attempt's request with the account's credential; `None` if the
    /// credential cannot be a header value, or the request (not clonable)
    /// was sent already.
    fn request(&mut self, account: &Picked) -> Option<Request> {
        let cred = self.cred.as_ref()?;
        let style = &self.env.provider.credentials;
        let fresh;
        let rendered = match (&self.token, &cred.rendered) {
            (None, Some(r)) => r,
            (token, _) => {
                let secret = token.as_ref().unwrap_or_else(|| cred.stored_secret());
                fresh = style.render(cred.kind, secret, &cred.extras).ok();
                let Some(r) = fresh.as_ref() else {
                    tracing::error!(provider = %self.env.provider.name, account = %account.label, "stored credential is not a valid header value; skipping the account");
                    return None;
                };
                r
            }
        };
        let mut request = if self.replayable {
            self.request.as_ref()?.try_clone()?
        } else {
            self.request.take()?
        };
        style.apply_rendered(request.headers_mut(), rendered);
        Some(request)
    }

    /// Sends one attempt and reads what classification needs of the answer.
    async fn send(&mut self, request: Request) -> Attempted {
        let resp = match self.next.clone().run(request, self.extensions).await {
            Ok(resp) => resp,
            Err(e) => return Err(transport_failure(&e)),
        };
        let sse = is_event_stream(resp.headers());
        if resp.status().is_success() && !(sse && self.env.inner.peek_first_event) {
            return Ok((untouched(resp, sse), None));
        }
        Ok(read_head(resp, sse, self.env.inner.error_body_timeout).await)
    }

    /// Refreshes the current account's token after a 401 and tells the machine.
    async fn refresh(&mut self, rotation: &mut Rotation<'_, Env>) -> Action {
        let (Some(account), Some(cred)) = (rotation.account(), self.cred.as_ref()) else {
            let failure = RefreshFailure {
                permanent: false,
                reason: &Reason::fixed("no account"),
            };
            return rotation.on_refresh(Err(failure), self.now());
        };
        let rejected = self.token.as_ref().unwrap_or_else(|| cred.stored_secret());
        let refreshed = match &self.env.inner.tokens {
            Some(tokens) => tokens.force_refresh(&account.id, rejected).await,
            None => Err(TokenError::Permanent(
                "no OAuth refresher is configured".into(),
            )),
        };
        let now = self.now();
        match refreshed {
            Ok(token) => {
                self.token = Some(token);
                rotation.on_refresh(Ok(()), now)
            }
            Err(e) => rotation.on_refresh(Err(e.as_failure()), now),
        }
    }

    /// The program gets the upstream's answer, with the trace headers; a
    /// success's body is counted (token accounting) as it passes.
    fn pass_through(
        &mut self,
        mut up: Upstream,
        account: &Picked,
        rotation: &Rotation<'_, Env>,
    ) -> Response {
        let status = up
            .untouched
            .as_ref()
            .map_or(up.head.status, Response::status);
        let tally = status
            .is_success()
            .then(|| self.tally(&up, account.id.clone()));
        let on_error = up
            .scanner
            .is_some()
            .then(|| self.stream_error_handler(account));
        let watch = (on_error.is_some() || tally.is_some()).then(|| StreamWatch {
            scanner: up.scanner.take().unwrap_or_default(),
            on_error,
            tally,
        });
        let mut resp = match (up.untouched.take(), watch) {
            (Some(resp), None) => resp,
            (untouched, watch) => {
                if let Some(resp) = untouched {
                    // Its head, headers included, and its whole body.
                    let (head, body) = http::Response::<reqwest::Body>::from(resp).into_parts();
                    up.head = head;
                    up.rest = Some(body);
                }
                let body = PassBody {
                    prefix: up.prefix,
                    rest: up.rest,
                    watch,
                };
                let mut built = http::Response::builder()
                    .url(up.url)
                    .body(reqwest::Body::wrap(body))
                    .expect("a builder with only a URL set is valid");
                let (parts, body) = built.into_parts();
                let mut head = up.head;
                head.extensions = parts.extensions;
                built = http::Response::from_parts(head, body);
                Response::from(built)
            }
        };
        let trace = rotation.trace();
        match self.cred.as_ref().and_then(|c| c.first_try_ok.as_ref()) {
            // The common case, with the header values built when the account loaded.
            Some((label, ok))
                if trace.entries.len() == 1
                    && trace.entries[0].status == Some(200)
                    && trace.entries[0].class == Class::Success
                    && trace.entries[0].note.is_none()
                    && trace.entries[0].label == account.label =>
            {
                let h = resp.headers_mut();
                h.insert(ACCOUNT_HEADER.clone(), label.clone());
                h.insert(ATTEMPTS_HEADER.clone(), ok.clone());
            }
            _ => add_trace_headers(resp.headers_mut(), Some(&account.label), trace),
        }
        if !rotation.replayable() {
            resp.headers_mut()
                .insert(REPLAYABLE_HEADER.clone(), HeaderValue::from_static("false"));
        }
        resp
    }

    /// Token accounting for a successful answer of `account`, fed what was
    /// read ahead of it; the request's body goes with it (its `model`, for
    /// answers that name none): the program has its answer now.
    fn tally(&mut self, up: &Upstream, account: AccountId) -> Tally<RequestBody> {
        let framing = if up.scanner.is_some() {
            Framing::EventStream
        } else {
            Framing::Json
        };
        let request = self
            .request
            .take()
            .and_then(|mut r| r.body_mut().take())
            .filter(|b| b.as_bytes().is_some_and(|b| !b.is_empty()))
            .map(RequestBody);
        let mut t = Tally::new(
            self.env.provider.tokens.clone(),
            account,
            framing,
            up.url.path(),
            request,
        );
        for chunk in &up.prefix {
            t.feed(chunk);
        }
        t
    }

    /// What to do with an error event inside a passed-on stream: the
    /// machine's rule for it benches the account for the next request.
    fn stream_error_handler(&self, account: &Picked) -> crate::body::OnStreamError {
        let (env, id, label) = (self.env.clone(), account.id.clone(), account.label.clone());
        Box::new(move |data: &[u8]| {
            let now = env.inner.clock.now();
            let c = classify(env.provider.flavor, &Outcome::StreamError { data }, now);
            tracing::warn!(provider = %env.provider.name, account = %label, reason = %c.reason, "error event inside the stream; passed to the program, account benched for the next request");
            rotation::stream_error(&env, &id, &c, now);
        })
    }

    /// marathon's own answer, in the provider's format.
    fn refuse(&self, refusal: &Refusal, trace: &AttemptTrace) -> Response {
        let p = &self.env.provider;
        if matches!(refusal.kind, RefusalKind::Exhausted | RefusalKind::Spent) {
            let soonest = refusal.accounts.as_ref().and_then(|ex| ex.soonest);
            self.env.announce_exhausted(self.now(), soonest);
        }
        let audience = self
            .request
            .as_ref()
            .map_or_else(wire::Audience::default, |r| {
                wire::Audience::of(r.url().path(), r.headers())
            });
        self.own(wire::refusal_answer(
            p.flavor, &p.name, refusal, trace, audience,
        ))
    }

    fn own_error(&self, status: StatusCode, message: &str) -> Response {
        self.own(wire::own_error(self.env.provider.flavor, status, message))
    }

    fn own(&self, answer: OwnAnswer) -> Response {
        let mut builder = http::Response::builder().status(answer.status);
        if let Some(url) = self.request.as_ref().map(|r| r.url().clone()) {
            builder = builder.url(url);
        }
        let mut resp = builder
            .body(answer.body)
            .expect("a status and a URL make a valid response");
        *resp.headers_mut() = answer.headers;
        Response::from(resp)
    }
}

/// How a send failed, in the classifier's words.
fn transport_failure(e: &reqwest_middleware::Error) -> TransportFailure {
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() => TransportFailure::Connect,
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => TransportFailure::Timeout,
        _ => TransportFailure::ResetBeforeResponse,
    }
}

/// An answer whose body classification does not need.
fn untouched(resp: Response, sse: bool) -> Upstream {
    let mut head = http::Response::builder()
        .status(resp.status())
        .body(())
        .expect("a status makes a valid response")
        .into_parts()
        .0;
    head.headers = HeaderMap::new();
    Upstream {
        head,
        url: resp.url().clone(),
        prefix: VecDeque::new(),
        rest: None,
        untouched: Some(resp),
        scanner: sse.then(ErrorScanner::new),
    }
}

/// Reads what classification needs of an answer: an error body's first
/// bytes, or a success stream's first event. Returns the in-stream error
/// data if the first event is an error.
async fn read_head(
    resp: Response,
    sse: bool,
    error_body_timeout: Duration,
) -> (Upstream, Option<Vec<u8>>) {
    let url = resp.url().clone();
    let (head, mut body) = http::Response::<reqwest::Body>::from(resp).into_parts();
    let mut prefix = VecDeque::new();
    let mut scanner = sse.then(ErrorScanner::new);
    let mut error_data = None;
    let mut ended = false;
    let mut read = 0usize;
    // One deadline for the whole read, not one per chunk.
    let wait = if head.status.is_success() {
        PEEK_TIMEOUT
    } else {
        error_body_timeout
    };
    let deadline = tokio::time::Instant::now() + wait;
    while read <= ERROR_BODY_PEEK {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => {
                ended = true;
                break;
            }
            _ => break,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read += data.len();
        if head.status.is_success()
            && let Some(sc) = scanner.as_mut()
        {
            error_data = sc.feed(&data);
            prefix.push_back(data);
            if error_data.is_some() || sc.events_seen() >= 1 {
                break;
            }
            continue;
        }
        prefix.push_back(data);
    }
    let up = Upstream {
        head,
        url,
        prefix,
        rest: (!ended).then_some(body),
        untouched: None,
        scanner,
    };
    (up, error_data)
}

/// Classifies one attempt's result at `now`.
fn classify_attempt(
    flavor: marathon_core::ApiFlavor,
    attempted: &Attempted,
    now: UnixMillis,
) -> Classification {
    match attempted {
        Err(t) => classify(flavor, &Outcome::Transport(*t), now),
        Ok((_, Some(error_data))) => {
            classify(flavor, &Outcome::StreamError { data: error_data }, now)
        }
        Ok((up, None)) => {
            let headers = match &up.untouched {
                Some(resp) => resp.headers(),
                None => &up.head.headers,
            };
            marathon_wire::classify_answer(flavor, up.head.status, headers, &up.prefix, now)
        }
    }
}

/// One line per request: debug for a plain first-try success, info for
/// anything that retried, rotated or failed (as the proxy logs).
fn log_request(env: &Env, resp: &Response, trace: &AttemptTrace, started: UnixMillis) {
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "marathon::request",
                provider = %env.provider.name,
                status = resp.status().as_u16(),
                attempts = %trace,
                ms = env.inner.clock.now().0.saturating_sub(started.0),
            )
        };
    }
    if resp.status().is_success() && trace.len() <= 1 {
        line!(debug);
    } else {
        line!(info);
    }
}
