//! Login flows: authorization code + PKCE with a loopback callback or a
//! pasted code, and the device authorization grant (RFC 8628, GitHub, Codex).
//!
//! Each flow is two steps so the caller (the CLI) owns all user interaction:
//! `start_*` returns what to show (a URL, a user code), the second step waits
//! for the result. Every flow ends in a [`LoginResult`].

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use marathon_core::fmt::HumanDuration;
use marathon_core::{AccountKind, Clock, Reason, Secret, SystemClock};
use marathon_store::{Credential, Map, NewAccount};
use tokio::net::TcpListener;

use crate::http::{HttpClient, HttpError, HttpRequest, HyperHttpClient, strip_query};
use crate::pkce::{PkceVerifier, json_path, json_string, jwt_claims, random_token};
use crate::preset::{DeviceVariant, FlowKind, IdentitySource, Loopback, OAuthPreset, RefreshKind};
use crate::token::{
    ErrorClass, TokenError, TokenResponse, code_exchange_request, copilot_exchange, error_code,
    parse_token_response, send_token_request, server_error, token_request,
};

/// A finished login: the credential to store and who it belongs to.
#[derive(Clone, Debug)]
pub struct LoginResult {
    /// Always [`Credential::Oauth`].
    pub credential: Credential,
    /// The provider's identity for the account (email, subject, account id),
    /// for the default label and for dedupe.
    pub identity: Option<String>,
    /// Provider extras (e.g. `chatgpt_account_id`).
    pub extras: Map,
}

impl LoginResult {
    /// The account to add to the store. Adding the same identity again
    /// updates the existing account instead of duplicating it.
    pub fn into_new_account(
        self,
        provider: impl Into<String>,
        label: Option<String>,
    ) -> NewAccount {
        NewAccount {
            provider: provider.into(),
            label,
            kind: AccountKind::Oauth,
            priority: 0,
            identity: self.identity,
            credential: self.credential,
            extras: self.extras,
            source: None,
        }
    }

    /// The access token.
    pub fn access_token(&self) -> Option<&Secret> {
        match &self.credential {
            Credential::Oauth { access, .. } => Some(access),
            Credential::ApiKey { .. } => None,
        }
    }
}

/// Why a login failed. Never holds a code, verifier or token.
#[derive(thiserror::Error, Debug)]
pub enum LoginError {
    /// The preset cannot do this flow.
    #[error("{preset} does not support the {flow:?} login flow (it supports {supported:?})")]
    Unsupported {
        /// Preset.
        preset: String,
        /// Flow asked for.
        flow: FlowKind,
        /// What it supports.
        supported: Vec<FlowKind>,
    },
    /// The loopback callback server could not listen.
    #[error("could not listen on 127.0.0.1:{port} for the login callback: {source}. {hint}")]
    Bind {
        /// Port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// The callback or pasted input carried another login's `state`.
    #[error(
        "the authorization response belongs to another login attempt (state mismatch); start the login again and use the newest link"
    )]
    StateMismatch,
    /// The authorization server refused (the user denied, or a bad request).
    /// Only its error code is kept, as a safe word: the description is free
    /// text the server wrote.
    #[error("the authorization server refused the login ({error})")]
    Denied {
        /// OAuth error code (`access_denied`), or `refused` when it sent
        /// none that is a safe word.
        error: Reason,
    },
    /// The pasted text is not a code, `code#state`, or a redirect URL with a code.
    #[error("could not find an authorization code in the pasted text: {0}")]
    BadPaste(&'static str),
    /// Nobody completed the login in time.
    #[error("the login was not completed within {}; start it again", HumanDuration(*.0))]
    TimedOut(Duration),
    /// The device code expired before the user approved it.
    #[error("the device code expired before it was approved; start the login again")]
    DeviceExpired,
    /// A token request failed.
    #[error("token request failed: {0}")]
    Token(#[from] TokenError),
    /// A request got no response.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A device or callback answer was not understood.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// Endpoint without query.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

/// Entry point for logins: an HTTP client and a clock.
#[derive(Clone)]
pub struct OAuthClient {
    http: Arc<dyn HttpClient>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthClient")
    }
}

impl OAuthClient {
    /// A client over the given HTTP client and clock.
    pub fn new(http: Arc<dyn HttpClient>, clock: Arc<dyn Clock>) -> Self {
        OAuthClient { http, clock }
    }

    /// The real thing: [`HyperHttpClient`] and the system clock.
    pub fn system() -> Self {
        Self::new(Arc::new(HyperHttpClient::new()), Arc::new(SystemClock))
    }

    /// The HTTP client.
    pub fn http(&self) -> &Arc<dyn HttpClient> {
        &self.http
    }

    fn require(preset: &OAuthPreset, flow: FlowKind) -> Result<(), LoginError> {
        if preset.supports(flow) {
            Ok(())
        } else {
            Err(LoginError::Unsupported {
                preset: preset.name.clone(),
                flow,
                supported: preset.flows.clone(),
            })
        }
    }

    /// Starts an authorization-code login whose browser redirect lands on a
    /// loopback server. `extra_params` are added to the authorization URL
    /// (e.g. `login_hint`). Binds the listener now, so the URL is final.
    pub async fn start_loopback(
        &self,
        preset: &OAuthPreset,
        extra_params: &[(String, String)],
    ) -> Result<LoopbackLogin, LoginError> {
        Self::require(preset, FlowKind::Loopback)?;
        let lb = preset.loopback.clone().unwrap_or(Loopback {
            host: "127.0.0.1".into(),
            port: None,
            path: "/callback".into(),
        });
        let want = lb.port.unwrap_or(0);
        let listener = TcpListener::bind(("127.0.0.1", want)).await.map_err(|source| LoginError::Bind {
            port: want,
            source,
            hint: if want == 0 {
                "check that the loopback interface is up"
            } else {
                "another program (perhaps the provider's own CLI mid-login) holds this port; close it and retry, or log in with --paste / --device"
            },
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(want);
        let redirect_uri = format!("http://{}:{}{}", lb.host, port, lb.path);
        let pending = Pending::new(
            self.clone(),
            preset.clone(),
            redirect_uri,
            extra_params,
            &[],
        );
        Ok(LoopbackLogin {
            pending,
            listener,
            path: lb.path,
        })
    }

    /// Starts an authorization-code login where the user pastes the code
    /// (`code#state`, a bare code, or the whole redirect URL).
    pub fn start_paste(
        &self,
        preset: &OAuthPreset,
        extra_params: &[(String, String)],
    ) -> Result<PasteLogin, LoginError> {
        Self::require(preset, FlowKind::Paste)?;
        let redirect_uri = match (&preset.paste_redirect_uri, &preset.loopback) {
            (Some(uri), _) => uri.clone(),
            // Without a code page, the browser ends on a loopback URL that
            // nothing listens on; the user copies that URL from the address bar.
            (None, Some(lb)) => format!("http://{}:{}{}", lb.host, lb.port.unwrap_or(1), lb.path),
            (None, None) => "http://127.0.0.1:1/callback".to_string(),
        };
        let paste_params = preset.paste_authorize_params.clone();
        Ok(PasteLogin {
            pending: Pending::new(
                self.clone(),
                preset.clone(),
                redirect_uri,
                extra_params,
                &paste_params,
            ),
        })
    }

    /// Starts a device-authorization login. `extra_params` go to the device
    /// authorization request (e.g. `login_hint` on servers that accept it).
    pub async fn start_device(
        &self,
        preset: &OAuthPreset,
        extra_params: &[(String, String)],
    ) -> Result<DeviceLogin, LoginError> {
        Self::require(preset, FlowKind::Device)?;
        let device_url = preset
            .device_url
            .clone()
            .ok_or_else(|| LoginError::Unsupported {
                preset: preset.name.clone(),
                flow: FlowKind::Device,
                supported: preset.flows.clone(),
            })?;
        match preset.device_variant {
            DeviceVariant::Codex => self.start_codex_device(preset, &device_url).await,
            DeviceVariant::Rfc8628 | DeviceVariant::GitHub => {
                let scope = preset.scopes.join(" ");
                let mut params: Vec<(&str, &str)> = vec![("client_id", &preset.client_id)];
                if !scope.is_empty() {
                    params.push(("scope", &scope));
                }
                for (k, v) in extra_params {
                    params.push((k, v));
                }
                let resp = self
                    .http
                    .send(HttpRequest::form(&device_url, params))
                    .await?;
                if !(200..300).contains(&resp.status) {
                    return Err(LoginError::Token(server_error(&device_url, &resp)));
                }
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.body).map_err(|_| LoginError::Protocol {
                        url: strip_query(&device_url).into(),
                        detail: "device authorization answer is not JSON".into(),
                    })?;
                let field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let missing = |what: &str| LoginError::Protocol {
                    url: strip_query(&device_url).into(),
                    detail: format!("device authorization answer has no {what}"),
                };
                let device_code = field("device_code").ok_or_else(|| missing("device_code"))?;
                let user_code = field("user_code").ok_or_else(|| missing("user_code"))?;
                // Google spells it verification_url.
                let verification_uri = field("verification_uri")
                    .or_else(|| field("verification_url"))
                    .or_else(|| preset.device_verification_url.clone())
                    .ok_or_else(|| missing("verification_uri"))?;
                let expires_in = body
                    .get("expires_in")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(900);
                let interval = body.get("interval").and_then(|v| v.as_u64()).unwrap_or(5);
                Ok(DeviceLogin {
                    client: self.clone(),
                    preset: preset.clone(),
                    user_code,
                    verification_uri,
                    verification_uri_complete: field("verification_uri_complete"),
                    expires_in: Duration::from_secs(expires_in),
                    interval: Duration::from_secs(interval),
                    handle: DeviceHandle::Rfc8628 {
                        device_code: Secret::new(device_code),
                    },
                })
            }
        }
    }

    async fn start_codex_device(
        &self,
        preset: &OAuthPreset,
        base: &str,
    ) -> Result<DeviceLogin, LoginError> {
        let url = format!("{}/deviceauth/usercode", base.trim_end_matches('/'));
        let resp = self
            .http
            .send(HttpRequest::json(
                &url,
                &serde_json::json!({ "client_id": preset.client_id }),
            ))
            .await?;
        if resp.status == 404 {
            return Err(LoginError::Protocol {
                url,
                detail: "device code login is not enabled for this account or server; use the browser login".into(),
            });
        }
        if !(200..300).contains(&resp.status) {
            return Err(LoginError::Token(server_error(&url, &resp)));
        }
        let body: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|_| LoginError::Protocol {
                url: url.clone(),
                detail: "user code answer is not JSON".into(),
            })?;
        let s = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let device_auth_id = s("device_auth_id").ok_or_else(|| LoginError::Protocol {
            url: url.clone(),
            detail: "no device_auth_id".into(),
        })?;
        let user_code =
            s("user_code")
                .or_else(|| s("usercode"))
                .ok_or_else(|| LoginError::Protocol {
                    url: url.clone(),
                    detail: "no user_code".into(),
                })?;
        // Codex's server sends the interval as a string.
        let interval = match body.get("interval") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(v)) => v.trim().parse().ok(),
            _ => None,
        }
        .unwrap_or(5);
        let verification_uri = preset
            .device_verification_url
            .clone()
            .unwrap_or_else(|| format!("{}/codex/device", base.trim_end_matches('/')));
        Ok(DeviceLogin {
            client: self.clone(),
            preset: preset.clone(),
            user_code: user_code.clone(),
            verification_uri,
            verification_uri_complete: None,
            expires_in: Duration::from_secs(15 * 60),
            interval: Duration::from_secs(interval),
            handle: DeviceHandle::Codex {
                device_auth_id,
                poll_url: format!("{}/deviceauth/token", base.trim_end_matches('/')),
            },
        })
    }

    /// Turns a token response into a [`LoginResult`]: identity and extras
    /// from the preset's sources; for Copilot, also the first token exchange.
    pub async fn finish_tokens(
        &self,
        preset: &OAuthPreset,
        tokens: TokenResponse,
    ) -> Result<LoginResult, LoginError> {
        let claims = tokens
            .id_token
            .as_ref()
            .and_then(|t| jwt_claims(t.expose()))
            .map(serde_json::Value::Object);
        let mut userinfo_cache: Vec<(String, Option<serde_json::Value>)> = Vec::new();
        let mut lookup = async |source: &IdentitySource| -> Option<String> {
            match source {
                IdentitySource::IdToken { path } => claims
                    .as_ref()
                    .and_then(|c| json_path(c, path))
                    .and_then(json_string),
                IdentitySource::TokenResponse { path } => {
                    json_path(&tokens.other, path).and_then(json_string)
                }
                IdentitySource::Userinfo { url, path } => {
                    if !userinfo_cache.iter().any(|(u, _)| u == url) {
                        let v = self.userinfo(url, &tokens.access).await;
                        userinfo_cache.push((url.clone(), v));
                    }
                    let (_, v) = userinfo_cache.iter().find(|(u, _)| u == url)?;
                    v.as_ref()
                        .and_then(|v| json_path(v, path))
                        .and_then(json_string)
                }
            }
        };
        let mut identity = None;
        for source in &preset.identity {
            if let Some(v) = lookup(source).await {
                identity = Some(v);
                break;
            }
        }
        let mut extras = Map::new();
        for extra in &preset.extras {
            if let Some(v) = lookup(&extra.source).await {
                extras.insert(extra.key.clone(), serde_json::Value::String(v));
            }
        }
        let now = self.clock.now();
        let credential = match &preset.refresh {
            RefreshKind::CopilotExchange { url } => {
                // The GitHub token is the long-lived secret; the Copilot token
                // is what the API takes, renewed by exchanging again.
                let github = tokens.access;
                let copilot = copilot_exchange(self.http.as_ref(), url, &github).await?;
                Credential::Oauth {
                    access: copilot.token,
                    refresh: Some(github),
                    expires_at: copilot.expires_at,
                    id_token: None,
                    scopes: tokens.scopes,
                }
            }
            RefreshKind::RefreshToken { .. } => Credential::Oauth {
                access: tokens.access,
                refresh: tokens.refresh,
                expires_at: tokens.expires_in.map(|s| now.plus(Duration::from_secs(s))),
                id_token: tokens.id_token,
                scopes: tokens.scopes,
            },
        };
        Ok(LoginResult {
            credential,
            identity,
            extras,
        })
    }

    /// GET a userinfo-style endpoint with the token; `None` on any failure
    /// (identity is best effort, the login itself succeeded).
    async fn userinfo(&self, url: &str, access: &Secret) -> Option<serde_json::Value> {
        let req =
            HttpRequest::get(url).header("authorization", format!("Bearer {}", access.expose()));
        match self.http.send(req).await {
            Ok(r) if (200..300).contains(&r.status) => serde_json::from_slice(&r.body).ok(),
            Ok(r) => {
                tracing::warn!(
                    url = strip_query(url),
                    status = r.status,
                    "userinfo request refused; account identity unknown"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "userinfo request failed; account identity unknown");
                None
            }
        }
    }
}

/// The state shared by the two code flows.
struct Pending {
    client: OAuthClient,
    preset: OAuthPreset,
    redirect_uri: String,
    verifier: PkceVerifier,
    state: String,
    authorize_url: String,
}

impl Pending {
    fn new(
        client: OAuthClient,
        preset: OAuthPreset,
        redirect_uri: String,
        extra_params: &[(String, String)],
        flow_params: &[(String, String)],
    ) -> Self {
        let verifier = PkceVerifier::generate();
        let state = random_token(24);
        let authorize_url = build_authorize_url(
            &preset,
            &redirect_uri,
            &verifier.challenge(),
            &state,
            extra_params,
            flow_params,
        );
        Pending {
            client,
            preset,
            redirect_uri,
            verifier,
            state,
            authorize_url,
        }
    }

    async fn exchange(self, code: &str) -> Result<LoginResult, LoginError> {
        let req = code_exchange_request(
            &self.preset,
            code,
            self.verifier.secret(),
            &self.redirect_uri,
            &self.state,
        );
        let tokens = send_token_request(self.client.http.as_ref(), req).await?;
        self.client.finish_tokens(&self.preset, tokens).await
    }
}

/// Builds the authorization URL (RFC 6749 §4.1.1 + PKCE S256).
pub fn build_authorize_url(
    preset: &OAuthPreset,
    redirect_uri: &str,
    challenge: &str,
    state: &str,
    extra_params: &[(String, String)],
    flow_params: &[(String, String)],
) -> String {
    let base = preset.authorize_url.as_deref().unwrap_or_default();
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in flow_params {
        ser.append_pair(k, v);
    }
    ser.append_pair("response_type", "code");
    ser.append_pair("client_id", &preset.client_id);
    ser.append_pair("redirect_uri", redirect_uri);
    ser.append_pair("scope", &preset.scopes.join(" "));
    ser.append_pair("code_challenge", challenge);
    ser.append_pair("code_challenge_method", "S256");
    ser.append_pair("state", state);
    for (k, v) in preset.extra_authorize_params.iter().chain(extra_params) {
        ser.append_pair(k, v);
    }
    // Spaces as %20: some servers (and people reading the URL) dislike `+`.
    let query = ser.finish().replace('+', "%20");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{query}")
}

/// A loopback login in progress.
pub struct LoopbackLogin {
    pending: Pending,
    listener: TcpListener,
    path: String,
}

impl std::fmt::Debug for LoopbackLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackLogin")
            .field("redirect_uri", &self.pending.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl LoopbackLogin {
    /// The URL to open in a browser (show it too: the browser may be elsewhere).
    pub fn authorize_url(&self) -> &str {
        &self.pending.authorize_url
    }

    /// The redirect URI the browser will come back to.
    pub fn redirect_uri(&self) -> &str {
        &self.pending.redirect_uri
    }

    /// Waits for the browser's redirect (up to `timeout`), checks `state`,
    /// exchanges the code.
    pub async fn wait(self, timeout: Duration) -> Result<LoginResult, LoginError> {
        let LoopbackLogin {
            pending,
            listener,
            path,
        } = self;
        let code =
            match tokio::time::timeout(timeout, accept_callback(&listener, &path, &pending.state))
                .await
            {
                Ok(r) => r?,
                Err(_) => return Err(LoginError::TimedOut(timeout)),
            };
        drop(listener);
        pending.exchange(&code).await
    }
}

const PAGE_OK: &str = "<!doctype html><meta charset=utf-8><title>marathon</title><p>Login complete. You can close this tab and return to the terminal.";
const PAGE_FAIL: &str = "<!doctype html><meta charset=utf-8><title>marathon</title><p>Login failed. Return to the terminal for details.";

/// What one request to the callback server decided.
struct Verdict {
    status: StatusCode,
    page: &'static str,
    /// `Some` when the request ends the login (a code, a refusal, another
    /// login's state); `None` for requests that are ignored (favicon, probes).
    result: Option<Result<String, LoginError>>,
}

/// Serves the callback until one request carries a result, one task per
/// connection, so a connection that sends nothing (Chrome opens a speculative
/// second one) cannot hold up the browser's real request. The connection
/// tasks end when this returns (the set is dropped); the one that carried the
/// result reports it only after its page was written, so the browser always
/// sees "Login complete" before the login moves on.
async fn accept_callback(
    listener: &TcpListener,
    path: &str,
    state: &str,
) -> Result<String, LoginError> {
    let expected = Arc::new((path.to_owned(), state.to_owned()));
    let (results, mut result) = tokio::sync::mpsc::channel(1);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // A failed accept (the peer gave up first) only loses that peer.
                let Ok((sock, _)) = accepted else { continue };
                connections.spawn(serve_callback_connection(sock, expected.clone(), results.clone()));
            }
            Some(found) = result.recv() => return found,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: hyper reads its request (or waits, at no one else's
/// cost), answers once, and closes.
async fn serve_callback_connection(
    sock: tokio::net::TcpStream,
    expected: Arc<(String, String)>,
    results: tokio::sync::mpsc::Sender<Result<String, LoginError>>,
) {
    let found = Arc::new(std::sync::Mutex::new(None));
    let service = {
        let found = found.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (path, state) = &*expected;
            let verdict = judge_callback(req.method(), req.uri(), path, state);
            if let Some(result) = verdict.result {
                *found.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            }
            let page = hyper::Response::builder()
                .status(verdict.status)
                .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(http::header::CACHE_CONTROL, "no-store")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    verdict.page.as_bytes(),
                )));
            std::future::ready(page)
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("login callback connection: {e}");
    }
    let result = found.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(result) = result {
        let _ = results.send(result).await;
    }
}

/// What a request to the callback server means for the login.
fn judge_callback(method: &http::Method, uri: &http::Uri, path: &str, state: &str) -> Verdict {
    let ignore = |status, page| Verdict {
        status,
        page,
        result: None,
    };
    let fail = |result| Verdict {
        status: StatusCode::BAD_REQUEST,
        page: PAGE_FAIL,
        result: Some(Err(result)),
    };
    if method != http::Method::GET {
        return ignore(StatusCode::BAD_REQUEST, PAGE_FAIL);
    }
    if uri.path() != path {
        return ignore(StatusCode::NOT_FOUND, "not found");
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Some(error) = get("error") {
        return fail(LoginError::Denied {
            error: Reason::untrusted_or(&error, Reason::fixed("refused")),
        });
    }
    if get("state").as_deref() != Some(state) {
        return fail(LoginError::StateMismatch);
    }
    match get("code").filter(|c| !c.is_empty()) {
        Some(code) => Verdict {
            status: StatusCode::OK,
            page: PAGE_OK,
            result: Some(Ok(code)),
        },
        None => fail(LoginError::Protocol {
            url: path.to_string(),
            detail: "the callback has no code".into(),
        }),
    }
}

/// A paste login in progress.
pub struct PasteLogin {
    pending: Pending,
}

impl std::fmt::Debug for PasteLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasteLogin")
            .field("redirect_uri", &self.pending.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl PasteLogin {
    /// The URL to open in a browser.
    pub fn authorize_url(&self) -> &str {
        &self.pending.authorize_url
    }

    /// Finishes with what the user pasted: `code#state` (Anthropic's code
    /// page), the full redirect URL, or a bare code. A `state` that is present
    /// must match; a bare code is accepted because PKCE still binds it to
    /// this login.
    pub async fn finish(self, pasted: &str) -> Result<LoginResult, LoginError> {
        let (code, state) = parse_pasted(pasted)?;
        if let Some(s) = state
            && s != self.pending.state
        {
            return Err(LoginError::StateMismatch);
        }
        self.pending.exchange(&code).await
    }
}

/// Splits pasted input into (code, state).
pub(crate) fn parse_pasted(pasted: &str) -> Result<(String, Option<String>), LoginError> {
    let text = pasted.trim();
    if text.is_empty() {
        return Err(LoginError::BadPaste("it is empty"));
    }
    if text.contains("://") {
        let after = text
            .split_once('?')
            .map(|(_, q)| q)
            .or_else(|| text.split_once('#').map(|(_, f)| f));
        let Some(query) = after else {
            return Err(LoginError::BadPaste("the URL has no query"));
        };
        let params: Vec<(String, String)> = query
            .split(['&', '#'])
            .flat_map(|part| form_urlencoded::parse(part.as_bytes()).into_owned())
            .collect();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(error) = get("error") {
            return Err(LoginError::Denied {
                error: Reason::untrusted_or(&error, Reason::fixed("refused")),
            });
        }
        let code = get("code")
            .filter(|c| !c.is_empty())
            .ok_or(LoginError::BadPaste("the URL has no code parameter"))?;
        return Ok((code, get("state")));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(LoginError::BadPaste(
            "it contains spaces; paste only the code",
        ));
    }
    match text.split_once('#') {
        Some((code, state)) if !code.is_empty() => Ok((code.to_string(), Some(state.to_string()))),
        Some(_) => Err(LoginError::BadPaste("nothing before '#'")),
        None => Ok((text.to_string(), None)),
    }
}

enum DeviceHandle {
    Rfc8628 {
        device_code: Secret,
    },
    Codex {
        device_auth_id: String,
        poll_url: String,
    },
}

/// Consecutive unanswered device polls before the login gives up.
const MAX_POLL_NETWORK_FAILURES: u32 = 5;

/// A device login in progress: show `user_code` and `verification_uri`, then [`DeviceLogin::wait`].
pub struct DeviceLogin {
    client: OAuthClient,
    preset: OAuthPreset,
    /// The code the user types.
    pub user_code: String,
    /// Where the user types it.
    pub verification_uri: String,
    /// The same with the code filled in, when the server provides it.
    pub verification_uri_complete: Option<String>,
    /// How long the code is valid.
    pub expires_in: Duration,
    /// Polling interval (grows by 5 s on each `slow_down`).
    pub interval: Duration,
    handle: DeviceHandle,
}

impl std::fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogin")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl DeviceLogin {
    /// Polls until the user approves, denies, or the code expires.
    pub async fn wait(self) -> Result<LoginResult, LoginError> {
        let deadline = tokio::time::Instant::now() + self.expires_in;
        let mut interval = self.interval;
        // A dropped poll is not fatal (the code stays valid), but a server
        // that stays unreachable should not keep the user waiting for minutes.
        let mut network_failures = 0u32;
        let http = self.client.http.clone();
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(LoginError::DeviceExpired);
            }
            match &self.handle {
                DeviceHandle::Rfc8628 { device_code } => {
                    let req = token_request(
                        &self.preset,
                        &[
                            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                            ("device_code", device_code.expose()),
                        ],
                    );
                    let url = req.url.clone();
                    let resp = match http.send(req).await {
                        Ok(r) => r,
                        Err(e) => {
                            network_failures += 1;
                            if network_failures >= MAX_POLL_NETWORK_FAILURES {
                                return Err(e.into());
                            }
                            tracing::debug!(error = %e, "device poll failed; retrying");
                            continue;
                        }
                    };
                    network_failures = 0;
                    match parse_token_response(&url, &resp) {
                        Ok(tokens) => return self.client.finish_tokens(&self.preset, tokens).await,
                        Err(err) => match err.code() {
                            Some("authorization_pending") => {}
                            Some("slow_down") => {
                                // RFC 8628 §3.5: add 5 s; GitHub also says what it wants.
                                let body: serde_json::Value = serde_json::from_slice(&resp.body)
                                    .unwrap_or(serde_json::Value::Null);
                                let asked = body
                                    .get("interval")
                                    .and_then(|v| v.as_u64())
                                    .map(Duration::from_secs);
                                interval = (interval + Duration::from_secs(5))
                                    .max(asked.unwrap_or_default());
                            }
                            Some("expired_token") => return Err(LoginError::DeviceExpired),
                            Some("access_denied") => {
                                return Err(LoginError::Denied {
                                    error: Reason::fixed("access_denied"),
                                });
                            }
                            _ if err.class() == ErrorClass::Transient => {}
                            _ => return Err(err.into()),
                        },
                    }
                }
                DeviceHandle::Codex {
                    device_auth_id,
                    poll_url,
                } => {
                    let req = HttpRequest::json(
                        poll_url,
                        &serde_json::json!({ "device_auth_id": device_auth_id, "user_code": self.user_code }),
                    );
                    let resp = match http.send(req).await {
                        Ok(r) => r,
                        Err(e) => {
                            network_failures += 1;
                            if network_failures >= MAX_POLL_NETWORK_FAILURES {
                                return Err(e.into());
                            }
                            tracing::debug!(error = %e, "device poll failed; retrying");
                            continue;
                        }
                    };
                    network_failures = 0;
                    // Codex answers 403/404 while the user has not approved yet.
                    if resp.status == 403 || resp.status == 404 {
                        continue;
                    }
                    if !(200..300).contains(&resp.status) {
                        let err = server_error(poll_url, &resp);
                        if err.class() == ErrorClass::Transient {
                            continue;
                        }
                        return Err(err.into());
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&resp.body).unwrap_or_default();
                    let s = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
                    let (Some(code), Some(verifier)) =
                        (s("authorization_code"), s("code_verifier"))
                    else {
                        return Err(LoginError::Protocol {
                            url: poll_url.clone(),
                            detail: format!(
                                "approval answer lacks authorization_code/code_verifier (error: {})",
                                error_code(&body).unwrap_or(Reason::fixed("none"))
                            ),
                        });
                    };
                    let verifier = PkceVerifier::from_server(verifier);
                    let redirect =
                        self.preset.device_redirect_uri.clone().unwrap_or_else(|| {
                            "https://auth.openai.com/deviceauth/callback".into()
                        });
                    let req = code_exchange_request(
                        &self.preset,
                        &code,
                        verifier.secret(),
                        &redirect,
                        "",
                    );
                    let tokens = send_token_request(http.as_ref(), req).await?;
                    return self.client.finish_tokens(&self.preset, tokens).await;
                }
            }
        }
    }
}

/// Opens `url` in the desktop browser if an opener (`xdg-open`, `open`)
/// exists. Returns whether one was started; always show the URL as well.
pub fn open_browser(url: &str) -> bool {
    for opener in ["xdg-open", "open"] {
        let started = std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if started.is_ok() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_pasted_form() {
        assert_eq!(
            parse_pasted(" abc#st \n").unwrap(),
            ("abc".into(), Some("st".into()))
        );
        assert_eq!(parse_pasted("abc").unwrap(), ("abc".into(), None));
        assert_eq!(
            parse_pasted("http://127.0.0.1:5/callback?code=c%2B1&state=s&iss=x").unwrap(),
            ("c+1".into(), Some("s".into()))
        );
        assert_eq!(
            parse_pasted("https://console.anthropic.com/oauth/code/callback?code=c1&state=s1")
                .unwrap(),
            ("c1".into(), Some("s1".into()))
        );
        assert!(matches!(parse_pasted(""), Err(LoginError::BadPaste(_))));
        assert!(matches!(parse_pasted("#st"), Err(LoginError::BadPaste(_))));
        assert!(matches!(parse_pasted("a b"), Err(LoginError::BadPaste(_))));
        assert!(matches!(
            parse_pasted("http://x/cb?state=s"),
            Err(LoginError::BadPaste(_))
        ));
        assert!(matches!(
            parse_pasted("http://x/cb?error=access_denied&state=s"),
            Err(LoginError::Denied { .. })
        ));
    }
}
