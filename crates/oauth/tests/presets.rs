//! Every preset's requests (URLs, parameters, headers) and response handling,
//! checked against an injected fake HTTP client. Time is tokio's paused clock,
//! so device-flow intervals are asserted exactly without waiting.

mod support;

use std::sync::Arc;
use std::time::Duration;

use marathon_core::{Clock, ManualClock, Secret, UnixMillis};
use marathon_oauth::{
    FlowKind, GenericProvider, HttpError, HttpRequest, HttpResponse, LoginError, OAuthClient,
    OAuthPreset, RefreshError, Refresher, RefresherConfig, build_authorize_url,
};
use marathon_store::{AccountState, Credential, MemoryStore, NewAccount, Store};
use serde_json::json;
use support::{FakeHttp, fake_jwt};

const NOW: UnixMillis = UnixMillis(1_764_300_000_000);

fn client(http: Arc<FakeHttp>) -> OAuthClient {
    OAuthClient::new(http, Arc::new(ManualClock::new(NOW)))
}

fn query(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').unwrap().1;
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn oauth(c: &Credential) -> (&Secret, Option<&Secret>, Option<UnixMillis>) {
    match c {
        Credential::Oauth {
            access,
            refresh,
            expires_at,
            ..
        } => (access, refresh.as_ref(), *expires_at),
        Credential::ApiKey { .. } => panic!("not oauth"),
    }
}

#[tokio::test]
async fn anthropic_paste_flow_builds_claude_requests() {
    let preset = OAuthPreset::anthropic();
    let http = FakeHttp::scripted(vec![HttpResponse::json(
        200,
        json!({"token_type":"Bearer","access_token":"sk-ant-oat01-a","refresh_token":"sk-ant-ort01-r","expires_in":28800,
               "scope":"user:inference user:profile","account":{"uuid":"acc-1","email_address":"max@example.com"},
               "organization":{"uuid":"org-1"}}),
    )]);
    let login = client(http.clone()).start_paste(&preset, &[]).unwrap();
    let url = login.authorize_url().to_string();
    assert!(
        url.starts_with("https://claude.ai/oauth/authorize?code=true&"),
        "{url}"
    );
    let q = query(&url);
    assert_eq!(
        param(&q, "client_id"),
        Some("9d1c250a-e61b-44d9-88ed-5944d1962f5e")
    );
    assert_eq!(param(&q, "response_type"), Some("code"));
    assert_eq!(
        param(&q, "redirect_uri"),
        Some("https://console.anthropic.com/oauth/code/callback")
    );
    assert_eq!(
        param(&q, "scope"),
        Some("org:create_api_key user:profile user:inference")
    );
    assert_eq!(param(&q, "code_challenge_method"), Some("S256"));
    assert_eq!(param(&q, "code_challenge").unwrap().len(), 43);
    assert!(
        url.contains("scope=org%3Acreate_api_key%20user%3Aprofile"),
        "spaces as %20: {url}"
    );
    let state = param(&q, "state").unwrap().to_string();

    let result = login.finish(&format!("the-code#{state}")).await.unwrap();
    let sent = http.sent();
    assert_eq!(sent.len(), 1);
    let req = &sent[0];
    assert_eq!(req.url, "https://console.anthropic.com/v1/oauth/token");
    assert_eq!(req.header_value("content-type"), Some("application/json"));
    let body = req.json_body().unwrap();
    assert_eq!(body["grant_type"], "authorization_code");
    assert_eq!(body["code"], "the-code");
    assert_eq!(body["state"], state.as_str());
    assert_eq!(body["client_id"], "9d1c250a-e61b-44d9-88ed-5944d1962f5e");
    assert_eq!(
        body["redirect_uri"],
        "https://console.anthropic.com/oauth/code/callback"
    );
    assert_eq!(body["code_verifier"].as_str().unwrap().len(), 43);

    assert_eq!(result.identity.as_deref(), Some("max@example.com"));
    assert_eq!(result.extras["account_uuid"], "acc-1");
    assert_eq!(result.extras["organization_uuid"], "org-1");
    let (access, refresh, exp) = oauth(&result.credential);
    assert_eq!(access.expose(), "sk-ant-oat01-a");
    assert_eq!(refresh.unwrap().expose(), "sk-ant-ort01-r");
    assert_eq!(exp, Some(NOW.plus(Duration::from_secs(28800))));

    assert_eq!(
        preset.api_headers.set,
        vec![("anthropic-beta".to_string(), "oauth-2025-04-20".to_string())]
    );
    assert_eq!(preset.api_headers.drop, vec!["x-api-key".to_string()]);
}

#[tokio::test]
async fn anthropic_paste_with_another_logins_state_is_refused_without_a_request() {
    let http = FakeHttp::scripted(vec![]);
    let login = client(http.clone())
        .start_paste(&OAuthPreset::anthropic(), &[])
        .unwrap();
    assert!(matches!(
        login.finish("code#not-our-state").await,
        Err(LoginError::StateMismatch)
    ));
    assert!(http.sent().is_empty());
}

#[tokio::test]
async fn openai_chatgpt_authorize_url_token_exchange_and_account_id() {
    let preset = OAuthPreset::openai_chatgpt();
    let url = build_authorize_url(
        &preset,
        "http://localhost:1455/auth/callback",
        "chal",
        "st",
        &[],
        &[],
    );
    assert!(url.starts_with("https://auth.openai.com/oauth/authorize?"));
    let q = query(&url);
    assert_eq!(param(&q, "client_id"), Some("app_EMoamEEZ73f0CkXaXp7hrann"));
    assert_eq!(
        param(&q, "scope"),
        Some("openid profile email offline_access")
    );
    assert_eq!(
        param(&q, "redirect_uri"),
        Some("http://localhost:1455/auth/callback")
    );
    assert_eq!(param(&q, "id_token_add_organizations"), Some("true"));
    assert_eq!(param(&q, "codex_cli_simplified_flow"), Some("true"));
    assert_eq!(param(&q, "code_challenge"), Some("chal"));
    let lb = preset.loopback.as_ref().unwrap();
    assert_eq!(
        (lb.host.as_str(), lb.port, lb.path.as_str()),
        ("localhost", Some(1455), "/auth/callback")
    );
    assert_eq!(
        preset.api_headers.from_extras,
        vec![(
            "chatgpt-account-id".to_string(),
            "chatgpt_account_id".to_string()
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn openai_codex_device_variant_exchanges_the_servers_code() {
    let id_token = fake_jwt(json!({"email":"dev@example.com",
        "https://api.openai.com/auth":{"chatgpt_account_id":"acct-123","chatgpt_plan_type":"plus"}}));
    let id_token2 = id_token.clone();
    let polls = std::sync::atomic::AtomicU32::new(0);
    let http = FakeHttp::new(move |req| {
        Ok(match req.url.as_str() {
            "https://auth.openai.com/api/accounts/deviceauth/usercode" => HttpResponse::json(
                200,
                json!({"device_auth_id":"dev-auth-1","user_code":"ABCD-1234","interval":"5"}),
            ),
            "https://auth.openai.com/api/accounts/deviceauth/token" => {
                if polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                    HttpResponse::json(
                        403,
                        json!({"error":{"code":"deviceauth_authorization_pending"}}),
                    )
                } else {
                    HttpResponse::json(
                        200,
                        json!({"authorization_code":"srv-code","code_challenge":"x","code_verifier":"srv-verifier"}),
                    )
                }
            }
            "https://auth.openai.com/oauth/token" => HttpResponse::json(
                200,
                json!({"access_token":"at","refresh_token":"rt","id_token":id_token2,"expires_in":864000}),
            ),
            other => panic!("unexpected {other}"),
        })
    });
    let login = client(http.clone())
        .start_device(&OAuthPreset::openai_chatgpt(), &[])
        .await
        .unwrap();
    assert_eq!(login.user_code, "ABCD-1234");
    assert_eq!(
        login.verification_uri,
        "https://auth.openai.com/codex/device"
    );
    assert_eq!(login.interval, Duration::from_secs(5));
    let result = login.wait().await.unwrap();

    let sent = http.sent();
    assert_eq!(
        sent[0].json_body().unwrap(),
        json!({"client_id":"app_EMoamEEZ73f0CkXaXp7hrann"})
    );
    assert_eq!(
        sent[1].json_body().unwrap(),
        json!({"device_auth_id":"dev-auth-1","user_code":"ABCD-1234"})
    );
    let exchange = sent.last().unwrap();
    assert_eq!(
        exchange.header_value("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = exchange.form_params();
    assert_eq!(param(&form, "grant_type"), Some("authorization_code"));
    assert_eq!(param(&form, "code"), Some("srv-code"));
    assert_eq!(param(&form, "code_verifier"), Some("srv-verifier"));
    assert_eq!(
        param(&form, "redirect_uri"),
        Some("https://auth.openai.com/deviceauth/callback")
    );
    assert_eq!(
        param(&form, "client_id"),
        Some("app_EMoamEEZ73f0CkXaXp7hrann")
    );
    assert_eq!(result.identity.as_deref(), Some("dev@example.com"));
    assert_eq!(result.extras["chatgpt_account_id"], "acct-123");
    match &result.credential {
        Credential::Oauth {
            id_token: Some(t), ..
        } => assert_eq!(t.expose(), id_token),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn github_copilot_device_flow_handles_200_pending_and_slow_down_then_exchanges() {
    let preset = OAuthPreset::github_copilot();
    let polls = std::sync::atomic::AtomicU32::new(0);
    let http = FakeHttp::new(move |req| {
        Ok(match req.url.as_str() {
            "https://github.com/login/device/code" => HttpResponse::json(
                200,
                json!({"device_code":"dc-1","user_code":"WDJB-MJHT","verification_uri":"https://github.com/login/device","expires_in":899,"interval":5}),
            ),
            "https://github.com/login/oauth/access_token" => {
                match polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => HttpResponse::json(200, json!({"error":"authorization_pending"})),
                    1 => HttpResponse::json(200, json!({"error":"slow_down","interval":10})),
                    2 => HttpResponse::json(200, json!({"error":"authorization_pending"})),
                    _ => HttpResponse::json(
                        200,
                        json!({"access_token":"gho_abc","token_type":"bearer","scope":"read:user"}),
                    ),
                }
            }
            "https://api.github.com/user" => {
                HttpResponse::json(200, json!({"login":"octocat","id":1}))
            }
            "https://api.github.com/copilot_internal/v2/token" => HttpResponse::json(
                200,
                json!({"token":"tid=abc;exp=1764330000;proxy-ep=proxy.individual.githubcopilot.com;","expires_at":1764330000,"refresh_in":1500}),
            ),
            other => panic!("unexpected {other}"),
        })
    });
    let login = client(http.clone())
        .start_device(&preset, &[])
        .await
        .unwrap();
    assert_eq!(login.user_code, "WDJB-MJHT");
    assert_eq!(login.verification_uri, "https://github.com/login/device");
    let result = login.wait().await.unwrap();

    let sent = http.sent();
    let form = sent[0].form_params();
    assert_eq!(param(&form, "client_id"), Some("Iv1.b507a08c87ecfe98"));
    assert_eq!(param(&form, "scope"), Some("read:user"));
    assert_eq!(sent[0].header_value("accept"), Some("application/json"));
    let poll = sent[1].form_params();
    assert_eq!(
        param(&poll, "grant_type"),
        Some("urn:ietf:params:oauth:grant-type:device_code")
    );
    assert_eq!(param(&poll, "device_code"), Some("dc-1"));
    // Intervals: 5 s, 5 s, then slow_down: +5 s and at least GitHub's 10 s.
    let t = http.times();
    let gaps: Vec<u64> = t
        .windows(2)
        .take(4)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, vec![5, 5, 10, 10]);
    let user = sent
        .iter()
        .find(|r| r.url == "https://api.github.com/user")
        .unwrap();
    assert_eq!(user.header_value("authorization"), Some("Bearer gho_abc"));
    let exchange = sent.last().unwrap();
    assert_eq!(
        exchange.url,
        "https://api.github.com/copilot_internal/v2/token"
    );
    assert_eq!(
        exchange.header_value("authorization"),
        Some("token gho_abc")
    );

    assert_eq!(result.identity.as_deref(), Some("octocat"));
    let (access, refresh, exp) = oauth(&result.credential);
    assert!(access.expose().starts_with("tid=abc;"));
    assert_eq!(refresh.unwrap().expose(), "gho_abc");
    assert_eq!(exp, Some(UnixMillis::from_secs(1_764_330_000)));
}

#[tokio::test(start_paused = true)]
async fn rfc8628_slow_down_adds_five_seconds_and_expired_token_ends_the_login() {
    let preset = GenericProvider {
        name: "corp".into(),
        token_url: Some("https://id.example/token".into()),
        device_url: Some("https://id.example/device/auth".into()),
        client_id: "marathon".into(),
        ..GenericProvider::default()
    }
    .resolve(FakeHttp::scripted(vec![]).as_ref())
    .await
    .unwrap();
    assert_eq!(preset.flows, vec![FlowKind::Device]);
    let http = FakeHttp::scripted(vec![
        HttpResponse::json(
            200,
            json!({"device_code":"d","user_code":"U","verification_uri":"https://id.example/device","expires_in":600}),
        ),
        HttpResponse::json(400, json!({"error":"authorization_pending"})),
        HttpResponse::json(400, json!({"error":"slow_down"})),
        HttpResponse::json(400, json!({"error":"authorization_pending"})),
        HttpResponse::json(400, json!({"error":"expired_token"})),
    ]);
    let login = client(http.clone())
        .start_device(&preset, &[("login_hint".into(), "alice".into())])
        .await
        .unwrap();
    assert_eq!(login.interval, Duration::from_secs(5), "RFC 8628 default");
    assert!(matches!(login.wait().await, Err(LoginError::DeviceExpired)));
    let gaps: Vec<u64> = http
        .times()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, vec![5, 5, 10, 10]);
    assert_eq!(
        param(&http.sent()[0].form_params(), "login_hint"),
        Some("alice")
    );
}

#[tokio::test(start_paused = true)]
async fn device_login_gives_up_when_the_server_stays_unreachable() {
    let preset = OAuthPreset::github_copilot();
    let first = std::sync::atomic::AtomicBool::new(true);
    let http = FakeHttp::new(move |req| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(HttpResponse::json(
                200,
                json!({"device_code":"d","user_code":"U","verification_uri":"https://github.com/login/device","interval":5}),
            ));
        }
        Err(HttpError::Network {
            url: req.url.clone(),
            reason: "connection refused".into(),
        })
    });
    let login = client(http.clone())
        .start_device(&preset, &[])
        .await
        .unwrap();
    assert!(matches!(login.wait().await, Err(LoginError::Http(_))));
    assert_eq!(http.sent().len(), 1 + 5);
}

#[tokio::test]
async fn google_gemini_sends_offline_access_and_client_secret() {
    let preset = OAuthPreset::google_gemini();
    let url = build_authorize_url(
        &preset,
        "http://localhost:8085/oauth2callback",
        "c",
        "s",
        &[],
        &[],
    );
    let q = query(&url);
    assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"));
    assert_eq!(param(&q, "access_type"), Some("offline"));
    assert_eq!(param(&q, "prompt"), Some("consent"));
    assert_eq!(
        param(&q, "client_id"),
        Some("681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com")
    );
    assert!(
        param(&q, "scope")
            .unwrap()
            .contains("https://www.googleapis.com/auth/cloud-platform")
    );
    let req = marathon_oauth::token::refresh_request(&preset, &Secret::new("1//rt"));
    assert_eq!(req.url, "https://oauth2.googleapis.com/token");
    let form = req.form_params();
    assert_eq!(param(&form, "grant_type"), Some("refresh_token"));
    assert_eq!(param(&form, "refresh_token"), Some("1//rt"));
    assert!(
        param(&form, "client_secret")
            .unwrap()
            .starts_with("GOCSPX-")
    );
}

#[tokio::test]
async fn generic_provider_discovers_endpoints_and_checks_the_issuer() {
    let doc = json!({"issuer":"https://id.example","authorization_endpoint":"https://id.example/auth",
        "token_endpoint":"https://id.example/token","device_authorization_endpoint":"https://id.example/device/auth",
        "userinfo_endpoint":"https://id.example/me"});
    let http = FakeHttp::scripted(vec![HttpResponse::json(200, doc)]);
    let g = GenericProvider {
        name: "corp".into(),
        issuer: Some("https://id.example/".into()),
        client_id: "marathon".into(),
        token_url: Some("https://override.example/token".into()),
        ..GenericProvider::default()
    };
    let p = g.resolve(http.as_ref()).await.unwrap();
    assert_eq!(
        http.sent()[0].url,
        "https://id.example/.well-known/openid-configuration"
    );
    assert_eq!(p.authorize_url.as_deref(), Some("https://id.example/auth"));
    assert_eq!(
        p.token_url, "https://override.example/token",
        "explicit endpoints win"
    );
    assert_eq!(
        p.device_url.as_deref(),
        Some("https://id.example/device/auth")
    );
    assert_eq!(
        p.flows,
        vec![FlowKind::Loopback, FlowKind::Paste, FlowKind::Device]
    );

    let wrong = FakeHttp::scripted(vec![HttpResponse::json(
        200,
        json!({"issuer":"https://evil.example"}),
    )]);
    let err = g.resolve(wrong.as_ref()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("names issuer https://evil.example"),
        "{err}"
    );
    let none = GenericProvider {
        name: "x".into(),
        client_id: "c".into(),
        ..GenericProvider::default()
    };
    let err = none
        .resolve(FakeHttp::scripted(vec![]).as_ref())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("set `issuer`"), "{err}");
}

#[tokio::test]
async fn unsupported_flow_is_a_clear_error() {
    let err = client(FakeHttp::scripted(vec![]))
        .start_paste(&OAuthPreset::github_copilot(), &[])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("github-copilot does not support the Paste login flow"),
        "{err}"
    );
}

// ---- Refresher with a fake token endpoint ----

fn account(
    provider: &str,
    access: &str,
    refresh: Option<&str>,
    expires_at: UnixMillis,
) -> NewAccount {
    NewAccount {
        provider: provider.into(),
        label: Some("a".into()),
        kind: marathon_core::AccountKind::Oauth,
        priority: 0,
        identity: Some("a@example.com".into()),
        credential: Credential::Oauth {
            access: Secret::new(access),
            refresh: refresh.map(Secret::new),
            expires_at: Some(expires_at),
            id_token: None,
            scopes: vec!["openid".into()],
        },
        extras: Default::default(),
        source: None,
    }
}

fn setup(
    provider: &str,
    preset: OAuthPreset,
    http: Arc<FakeHttp>,
) -> (
    Arc<dyn Store>,
    Refresher,
    marathon_core::AccountId,
    Arc<ManualClock>,
) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(NOW));
    let id = store
        .add(account(
            provider,
            "old-at",
            Some("old-rt"),
            NOW.plus(Duration::from_secs(3600)),
        ))
        .unwrap()
        .account()
        .id
        .clone();
    let r = Refresher::new(
        store.clone(),
        http,
        clock.clone(),
        RefresherConfig {
            refresh_lead: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            ..RefresherConfig::default()
        },
    )
    .with_preset(provider, preset);
    (store, r, id, clock)
}

fn stored(
    store: &dyn Store,
    id: &marathon_core::AccountId,
) -> (String, Option<String>, Option<UnixMillis>, AccountState) {
    let a = store.get(id).unwrap().unwrap();
    let (access, refresh, exp) = oauth(&a.credential);
    (
        access.expose().into(),
        refresh.map(|r| r.expose().to_string()),
        exp,
        a.state,
    )
}

#[tokio::test]
async fn google_refresh_without_new_refresh_token_keeps_the_old_one() {
    let http = FakeHttp::scripted(vec![HttpResponse::json(
        200,
        json!({"access_token":"ya29.new","expires_in":3599,"scope":"https://www.googleapis.com/auth/cloud-platform","token_type":"Bearer"}),
    )]);
    let (store, r, id, clock) = setup("gemini", OAuthPreset::google_gemini(), http.clone());
    assert_eq!(r.access_token(&id).await.unwrap().expose(), "old-at");
    assert!(http.sent().is_empty(), "fresh token: no request");
    clock.advance(Duration::from_secs(3600 - 59));
    assert_eq!(r.access_token(&id).await.unwrap().expose(), "ya29.new");
    let (access, refresh, exp, state) = stored(store.as_ref(), &id);
    assert_eq!(access, "ya29.new");
    assert_eq!(refresh.as_deref(), Some("old-rt"));
    assert_eq!(exp, Some(clock.now().plus(Duration::from_secs(3599))));
    assert_eq!(state, AccountState::Active);
}

#[tokio::test]
async fn anthropic_refresh_is_json_and_stores_the_rotated_token() {
    let http = FakeHttp::scripted(vec![HttpResponse::json(
        200,
        json!({"access_token":"sk-ant-oat01-new","refresh_token":"sk-ant-ort01-new","expires_in":28800}),
    )]);
    let (store, r, id, clock) = setup("anthropic", OAuthPreset::anthropic(), http.clone());
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        r.access_token(&id).await.unwrap().expose(),
        "sk-ant-oat01-new"
    );
    let req = &http.sent()[0];
    assert_eq!(req.url, "https://console.anthropic.com/v1/oauth/token");
    assert_eq!(
        req.json_body().unwrap(),
        json!({"grant_type":"refresh_token","refresh_token":"old-rt","client_id":"9d1c250a-e61b-44d9-88ed-5944d1962f5e"})
    );
    assert_eq!(
        stored(store.as_ref(), &id).1.as_deref(),
        Some("sk-ant-ort01-new")
    );
}

#[tokio::test]
async fn openai_refresh_token_reused_is_permanent_and_marks_needs_login() {
    let http = FakeHttp::scripted(vec![HttpResponse::json(
        401,
        json!({"error":{"message":"Your refresh token has already been used to generate a new access token. Please try signing in again.","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}),
    )]);
    let (store, r, id, clock) = setup("openai", OAuthPreset::openai_chatgpt(), http.clone());
    clock.advance(Duration::from_secs(3600));
    let err = r.access_token(&id).await.unwrap_err();
    assert_eq!(
        err,
        RefreshError::Permanent {
            account: id.clone(),
            reason: "refresh_token_reused".into()
        }
    );
    assert_eq!(stored(store.as_ref(), &id).3, AccountState::NeedsLogin);
    let form = http.sent()[0].form_params();
    assert_eq!(param(&form, "grant_type"), Some("refresh_token"));
    assert_eq!(
        param(&form, "client_id"),
        Some("app_EMoamEEZ73f0CkXaXp7hrann")
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_then_reported() {
    let http = FakeHttp::scripted(vec![
        HttpResponse::json(
            503,
            json!({"error":{"code":"server_is_overloaded","message":"..."}}),
        ),
        HttpResponse::json(502, json!({})),
        HttpResponse::json(
            200,
            json!({"access_token":"new-at","refresh_token":"new-rt","expires_in":3600}),
        ),
    ]);
    let (store, r, id, clock) = setup("openai", OAuthPreset::openai_chatgpt(), http.clone());
    clock.advance(Duration::from_secs(3600));
    assert_eq!(r.access_token(&id).await.unwrap().expose(), "new-at");
    let gaps: Vec<u128> = http
        .times()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, vec![100, 200]);
    assert_eq!(r.stats().attempts, 3);
    assert_eq!(r.stats().refreshes, 1);
    assert_eq!(stored(store.as_ref(), &id).1.as_deref(), Some("new-rt"));

    let always_down = FakeHttp::new(|req| {
        Err(HttpError::Network {
            url: req.url.clone(),
            reason: "connection reset".into(),
        })
    });
    let (store, r, id, clock) = setup("openai", OAuthPreset::openai_chatgpt(), always_down.clone());
    clock.advance(Duration::from_secs(3600));
    let err = r.access_token(&id).await.unwrap_err();
    assert!(matches!(err, RefreshError::Transient { .. }), "{err:?}");
    assert_eq!(always_down.sent().len(), 3, "bounded retries");
    let (access, refresh, _, state) = stored(store.as_ref(), &id);
    assert_eq!(
        (access.as_str(), refresh.as_deref(), state),
        ("old-at", Some("old-rt"), AccountState::Active)
    );
}

#[tokio::test]
async fn copilot_refresh_exchanges_the_github_token_again() {
    let http = FakeHttp::scripted(vec![HttpResponse::json(
        200,
        json!({"token":"tid=new;exp=1764340000","expires_at":1764340000u64,"refresh_in":1500}),
    )]);
    let (store, r, id, clock) = setup("copilot", OAuthPreset::github_copilot(), http.clone());
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        r.access_token(&id).await.unwrap().expose(),
        "tid=new;exp=1764340000"
    );
    let req = &http.sent()[0];
    assert_eq!(req.method, http::Method::GET);
    assert_eq!(req.header_value("authorization"), Some("token old-rt"));
    let (_, refresh, exp, _) = stored(store.as_ref(), &id);
    assert_eq!(refresh.as_deref(), Some("old-rt"), "the GitHub token stays");
    assert_eq!(exp, Some(UnixMillis::from_secs(1_764_340_000)));
}

#[tokio::test]
async fn no_refresh_token_or_unknown_preset_are_clear_errors() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let id = store
        .add(account("corp", "at", None, NOW))
        .unwrap()
        .account()
        .id
        .clone();
    let http = FakeHttp::scripted(vec![]);
    let r = Refresher::new(
        store.clone(),
        http,
        Arc::new(ManualClock::new(NOW)),
        RefresherConfig::default(),
    );
    assert!(r.access_token(&id).await.unwrap_err().is_permanent());
    assert_eq!(
        store.get(&id).unwrap().unwrap().state,
        AccountState::NeedsLogin
    );

    let id2 = store
        .add(NewAccount {
            identity: Some("b".into()),
            label: Some("b".into()),
            ..account("other", "at", Some("rt"), NOW)
        })
        .unwrap()
        .account()
        .id
        .clone();
    let err = r.access_token(&id2).await.unwrap_err();
    assert!(matches!(err, RefreshError::NoPreset { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("no OAuth preset is configured for provider other")
    );
    let unknown = marathon_core::AccountId("nope".into());
    assert_eq!(
        r.access_token(&unknown).await.unwrap_err(),
        RefreshError::UnknownAccount(unknown)
    );
}

#[tokio::test]
async fn api_key_accounts_return_their_key() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let id = store
        .add(NewAccount::api_key(
            "openai",
            None,
            Secret::new("sk-proj-1"),
        ))
        .unwrap()
        .account()
        .id
        .clone();
    let r = Refresher::new(
        store,
        FakeHttp::scripted(vec![]),
        Arc::new(ManualClock::new(NOW)),
        RefresherConfig::default(),
    );
    assert_eq!(r.access_token(&id).await.unwrap().expose(), "sk-proj-1");
}

#[test]
fn requests_never_print_their_secrets() {
    let req = marathon_oauth::token::refresh_request(
        &OAuthPreset::anthropic(),
        &Secret::new("sk-ant-ort01-secret"),
    );
    assert!(!format!("{req:?}").contains("sk-ant-ort01-secret"));
    let req = HttpRequest::get("https://api.github.com/copilot_internal/v2/token")
        .header("authorization", "token gho_x");
    assert!(!format!("{req:?}").contains("gho_x"));
}

/// A store whose server is down: every call fails as a Redis outage would.
struct DownStore(Arc<dyn Store>, std::sync::atomic::AtomicBool);

impl DownStore {
    fn check(&self) -> Result<(), marathon_store::StoreError> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(marathon_store::StoreError::Unavailable {
                backend: "redis at redis://127.0.0.1:1/0".into(),
                detail: "cannot connect".into(),
            });
        }
        Ok(())
    }
}

impl Store for DownStore {
    fn list(&self) -> Result<Vec<marathon_store::StoredAccount>, marathon_store::StoreError> {
        self.check()?;
        self.0.list()
    }
    fn get(
        &self,
        id: &marathon_core::AccountId,
    ) -> Result<Option<marathon_store::StoredAccount>, marathon_store::StoreError> {
        self.check()?;
        self.0.get(id)
    }
    fn find(
        &self,
        p: &str,
        l: &str,
    ) -> Result<Option<marathon_store::StoredAccount>, marathon_store::StoreError> {
        self.check()?;
        self.0.find(p, l)
    }
    fn add(&self, a: NewAccount) -> Result<marathon_store::AddResult, marathon_store::StoreError> {
        self.check()?;
        self.0.add(a)
    }
    fn update(
        &self,
        id: &marathon_core::AccountId,
        f: &mut dyn FnMut(&mut marathon_store::StoredAccount),
    ) -> Result<marathon_store::StoredAccount, marathon_store::StoreError> {
        self.check()?;
        self.0.update(id, f)
    }
    fn remove(&self, id: &marathon_core::AccountId) -> Result<(), marathon_store::StoreError> {
        self.check()?;
        self.0.remove(id)
    }
    fn lock_account(
        &self,
        id: &marathon_core::AccountId,
        wait: Duration,
    ) -> Result<marathon_store::AccountLock, marathon_store::StoreError> {
        self.check()?;
        self.0.lock_account(id, wait)
    }
    fn load_hot(&self) -> Result<marathon_store::HotState, marathon_store::StoreError> {
        self.check()?;
        self.0.load_hot()
    }
    fn save_hot(&self, h: &marathon_store::HotState) -> Result<(), marathon_store::StoreError> {
        self.check()?;
        self.0.save_hot(h)
    }
}

/// Guards issue 12's "Redis down": a refresh never runs without the
/// store's lock (another instance may be spending the same single-use
/// refresh token), and the current access token keeps serving until it
/// really expires instead of failing requests inside the refresh lead.
#[tokio::test]
async fn without_the_store_no_refresh_runs_and_the_current_token_serves_until_expiry() {
    let http = FakeHttp::scripted(vec![]);
    let (inner, _, id, clock) = setup("anthropic", OAuthPreset::anthropic(), http.clone());
    let store = Arc::new(DownStore(inner, false.into()));
    let r = Refresher::new(
        store.clone(),
        http.clone(),
        clock.clone(),
        RefresherConfig {
            refresh_lead: Duration::from_secs(60),
            ..RefresherConfig::default()
        },
    )
    .with_preset("anthropic", OAuthPreset::anthropic());
    assert_eq!(r.access_token(&id).await.unwrap().expose(), "old-at");
    store.1.store(true, std::sync::atomic::Ordering::SeqCst);
    // Inside the refresh lead, not expired: no refresh, the token serves.
    clock.advance(Duration::from_secs(3600 - 30));
    assert_eq!(r.access_token(&id).await.unwrap().expose(), "old-at");
    assert!(http.sent().is_empty(), "no refresh without the lock");
    // Expired: an error, still no refresh.
    clock.advance(Duration::from_secs(31));
    assert!(r.access_token(&id).await.is_err());
    assert!(http.sent().is_empty());
}
