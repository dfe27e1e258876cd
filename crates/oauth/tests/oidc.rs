//! Logins and refresh against a real authorization server: oidc-provider on
//! loopback (tests/oidc/server.mjs) with PKCE required, rotating refresh
//! tokens and reuse detection that revokes the whole grant.

mod support;

use std::sync::Arc;
use std::time::Duration;

use marathon_core::{AccountId, Clock, ManualClock, SystemClock, UnixMillis};
use marathon_oauth::{
    FlowKind, HyperHttpClient, LoginError, LoginResult, OAuthClient, OAuthPreset, RefreshError,
    Refresher, RefresherConfig,
};
use marathon_store::{AccountState, Credential, FileStore, MemoryStore, Store};
use marathon_testkit::{Browser, BrowserEnd, OidcServer};

fn tokens(r: &LoginResult) -> (String, String, Option<UnixMillis>) {
    match &r.credential {
        Credential::Oauth {
            access,
            refresh,
            expires_at,
            ..
        } => (
            access.expose().to_string(),
            refresh
                .as_ref()
                .expect("offline_access must give a refresh token")
                .expose()
                .to_string(),
            *expires_at,
        ),
        Credential::ApiKey { .. } => panic!("not oauth"),
    }
}

fn hint(user: &str) -> Vec<(String, String)> {
    vec![("login_hint".into(), user.into())]
}

async fn login_loopback(server: &OidcServer, preset: &OAuthPreset, user: &str) -> LoginResult {
    let login = OAuthClient::system()
        .start_loopback(preset, &hint(user))
        .await
        .unwrap();
    let url = login.authorize_url().to_string();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let issuer = server.issuer.clone();
    let browser = tokio::spawn(async move {
        let mut b = Browser::new(&issuer);
        match b.run(&url).await {
            BrowserEnd::Redirect(cb) => {
                // The browser lands on marathon's loopback server.
                let resp = HyperHttpClient::new().send_get(&cb).await;
                (cb, resp)
            }
            other => panic!("authorization did not redirect back: {other:?}"),
        }
    });
    let result = login.wait(Duration::from_secs(30)).await.unwrap();
    let (cb, (status, body)) = browser.await.unwrap();
    assert!(cb.starts_with("http://127.0.0.1:"), "{cb}");
    assert_eq!(status, 200);
    assert!(body.contains("Login complete"));
    result
}

trait SendGet {
    async fn send_get(&self, url: &str) -> (u16, String);
}

impl SendGet for HyperHttpClient {
    async fn send_get(&self, url: &str) -> (u16, String) {
        use marathon_oauth::HttpClient as _;
        let r = self
            .send(marathon_oauth::HttpRequest::get(url))
            .await
            .unwrap();
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_pkce_login_gives_active_tokens_and_distinct_identities() {
    let server = OidcServer::start(60);
    let preset = server.preset().await;
    assert_eq!(
        preset.flows,
        vec![FlowKind::Loopback, FlowKind::Paste, FlowKind::Device]
    );

    let before = SystemClock.now();
    let alice = login_loopback(&server, &preset, "alice").await;
    assert_eq!(alice.identity.as_deref(), Some("alice@example.com"));
    let (access, _refresh, expires_at) = tokens(&alice);
    let exp = expires_at.unwrap();
    assert!(
        exp >= before.plus(Duration::from_secs(59))
            && exp <= SystemClock.now().plus(Duration::from_secs(61))
    );
    let intro = server.introspect(&access).await;
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["sub"], "alice");
    assert_eq!(intro["client_id"], "marathon");

    let bob = login_loopback(&server, &preset, "bob").await;
    assert_eq!(bob.identity.as_deref(), Some("bob@example.com"));
    assert_ne!(tokens(&bob).0, access);
    assert_eq!(server.introspect(&tokens(&bob).0).await["sub"], "bob");

    // The same identity added twice updates one account.
    let store = MemoryStore::new();
    let first = store.add(alice.into_new_account("corp", None)).unwrap();
    let again = login_loopback(&server, &preset, "alice").await;
    let second = store.add(again.into_new_account("corp", None)).unwrap();
    assert!(matches!(second, marathon_store::AddResult::Updated(_)));
    assert_eq!(first.account().id, second.account().id);
    assert_eq!(first.account().label, "alice@example.com");
}

/// Guards the bug where the callback server served one connection at a time:
/// a browser's speculative pre-connection (Chrome opens a second connection
/// that sends nothing) was read first, and the real redirect waited behind it
/// until that read timed out, then the idle connection was answered "400".
/// Now every connection has its own task: the login completes through the
/// real one while the idle one is never answered, only closed at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pre_connection_does_not_block_the_loopback_callback() {
    use tokio::io::AsyncReadExt as _;

    let server = OidcServer::start(60);
    let preset = server.preset().await;
    let login = OAuthClient::system()
        .start_loopback(&preset, &hint("carol"))
        .await
        .unwrap();
    let port: u16 = login
        .redirect_uri()
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a loopback redirect URI with a port");
    // The speculative connection: opened first, never sends a byte.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();

    let url = login.authorize_url().to_string();
    let issuer = server.issuer.clone();
    let browser = tokio::spawn(async move {
        match Browser::new(&issuer).run(&url).await {
            BrowserEnd::Redirect(cb) => HyperHttpClient::new().send_get(&cb).await,
            other => panic!("authorization did not redirect back: {other:?}"),
        }
    });
    let result = login.wait(Duration::from_secs(30)).await.unwrap();
    let (status, body) = browser.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("Login complete"), "{body}");
    assert_eq!(result.identity.as_deref(), Some("carol@example.com"));

    // The login is over, so the idle connection is closed: without a word.
    let mut answered = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut answered))
        .await
        .expect("the idle connection is closed once the login ends")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answered),
        "",
        "the idle pre-connection was served before the real callback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasted_redirect_url_completes_login_and_foreign_state_is_refused() {
    let server = OidcServer::start(60);
    let preset = server.preset().await;
    let client = OAuthClient::system();

    let login = client.start_paste(&preset, &hint("carol")).unwrap();
    let BrowserEnd::Redirect(landed) = Browser::new(&server.issuer)
        .run(login.authorize_url())
        .await
    else {
        panic!("no redirect")
    };
    let result = login.finish(&format!("  {landed}\n")).await.unwrap();
    assert_eq!(result.identity.as_deref(), Some("carol@example.com"));
    assert_eq!(server.introspect(&tokens(&result).0).await["active"], true);

    // A redirect from another login attempt is refused before any token request.
    let other = client.start_paste(&preset, &hint("carol")).unwrap();
    let BrowserEnd::Redirect(other_landed) = Browser::new(&server.issuer)
        .run(other.authorize_url())
        .await
    else {
        panic!("no redirect")
    };
    let fresh = client.start_paste(&preset, &hint("carol")).unwrap();
    assert!(matches!(
        fresh.finish(&other_landed).await,
        Err(LoginError::StateMismatch)
    ));
    let stats = server.stats().await;
    assert_eq!(stats["authorization_code_grants"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_login_polls_until_approved() {
    let server = OidcServer::start(60);
    let preset = server.preset().await;
    let mut login = OAuthClient::system()
        .start_device(&preset, &hint("bob"))
        .await
        .unwrap();
    assert!(login.verification_uri.starts_with(&server.issuer));
    assert!(!login.user_code.is_empty());
    // oidc-provider never answers slow_down; poll fast so the test is quick.
    login.interval = Duration::from_millis(200);
    let complete = login.verification_uri_complete.clone().unwrap();
    let issuer = server.issuer.clone();
    let approve = tokio::spawn(async move {
        // Let a few polls see authorization_pending first.
        tokio::time::sleep(Duration::from_millis(700)).await;
        Browser::new(&issuer).run(&complete).await
    });
    let result = tokio::time::timeout(Duration::from_secs(30), login.wait()).await;
    let approved = approve.await.unwrap();
    let result = match result {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("device login not finished after the browser approved: {approved:?}"),
    };
    match approved {
        BrowserEnd::Page { status, body } => {
            assert_eq!(status, 200);
            assert!(body.contains("Sign-in Success"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(result.identity.as_deref(), Some("bob@example.com"));
    let (access, _, _) = tokens(&result);
    assert_eq!(server.introspect(&access).await["active"], true);
    assert_eq!(server.stats().await["device_code_grants"], 1);
}

fn refresher(store: Arc<dyn Store>, clock: Arc<ManualClock>, preset: OAuthPreset) -> Refresher {
    Refresher::new(
        store,
        Arc::new(HyperHttpClient::new()),
        clock,
        RefresherConfig {
            refresh_lead: Duration::from_secs(30),
            ..RefresherConfig::default()
        },
    )
    .with_preset("corp", preset)
}

fn stored_tokens(store: &dyn Store, id: &AccountId) -> (String, String) {
    match store.get(id).unwrap().unwrap().credential {
        Credential::Oauth {
            access, refresh, ..
        } => (
            access.expose().to_string(),
            refresh.unwrap().expose().to_string(),
        ),
        Credential::ApiKey { .. } => panic!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_stores_the_new_refresh_token_before_use() {
    let server = OidcServer::start(3600);
    let preset = server.preset().await;
    let login = login_loopback(&server, &preset, "alice").await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let id = store
        .add(login.into_new_account("corp", None))
        .unwrap()
        .account()
        .id
        .clone();
    let (access0, refresh0) = stored_tokens(store.as_ref(), &id);

    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let r = refresher(store.clone(), clock.clone(), preset);
    // Every refresh is reported, routine or forced (issue 13: routine ones
    // were invisible), by label.
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = notices.clone();
    r.on_refresh(Arc::new(move |n: &marathon_oauth::RefreshNotice| {
        seen.lock().unwrap().push((n.label.clone(), n.routine));
    }));
    // Fresh: no refresh, the stored token.
    assert_eq!(r.access_token(&id).await.unwrap().expose(), access0);
    assert_eq!(r.stats().refreshes, 0);

    clock.advance(Duration::from_secs(3600 - 10)); // inside the 30 s lead
    let access1 = r.access_token(&id).await.unwrap();
    assert_ne!(access1.expose(), access0);
    let (stored_access, refresh1) = stored_tokens(store.as_ref(), &id);
    assert_eq!(stored_access, access1.expose());
    assert_ne!(
        refresh1, refresh0,
        "rotation must store the new refresh token"
    );
    assert_eq!(server.introspect(access1.expose()).await["active"], true);
    assert_eq!(r.stats().refreshes, 1);

    // force_refresh with a token that is no longer current: no network call.
    let again = r
        .force_refresh(&id, &marathon_core::Secret::new(access0.clone()))
        .await
        .unwrap();
    assert_eq!(again.expose(), access1.expose());
    assert_eq!(r.stats().attempts, 1);
    // force_refresh with the current one: rotates again.
    let access2 = r.force_refresh(&id, &access1).await.unwrap();
    assert_ne!(access2.expose(), access1.expose());
    assert_eq!(r.stats().refreshes, 2);
    let label = store.get(&id).unwrap().unwrap().label;
    assert_eq!(
        *notices.lock().unwrap(),
        [(label.clone(), true), (label, false)]
    );

    let stats = server.stats().await;
    assert_eq!(stats["refreshes"], 2);
    assert_eq!(stats["invalid_grant_errors"], 0);
    assert_eq!(stats["grants_revoked"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_across_expiries_refresh_exactly_once_each() {
    let server = OidcServer::start(3600);
    let preset = server.preset().await;
    let login = login_loopback(&server, &preset, "alice").await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let id = store
        .add(login.into_new_account("corp", None))
        .unwrap()
        .account()
        .id
        .clone();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let r = Arc::new(refresher(store.clone(), clock.clone(), preset));

    const EXPIRIES: u64 = 6;
    for round in 0..EXPIRIES {
        // Past the previous token's expiry.
        clock.advance(Duration::from_secs(3601));
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (r, id, barrier) = (r.clone(), id.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let calls = (0..50).map(|_| r.access_token(&id));
                let out = futures_join_all(calls).await;
                out.into_iter()
                    .map(|t| t.unwrap().expose().to_string())
                    .collect::<Vec<_>>()
            }));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in tasks {
            seen.extend(t.await.unwrap());
        }
        assert_eq!(
            seen.len(),
            1,
            "round {round}: every caller got the same new token"
        );
        assert_eq!(r.stats().refreshes, round + 1);
    }
    let stats = server.stats().await;
    assert_eq!(stats["refreshes"], EXPIRIES);
    assert_eq!(stats["invalid_grant_errors"], 0, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    let (access, _) = stored_tokens(store.as_ref(), &id);
    assert_eq!(server.introspect(&access).await["active"], true);
}

/// Runs futures concurrently on the current task (a tiny join_all).
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_file_store_refresh_once_per_expiry() {
    let server = OidcServer::start(3600);
    let preset = server.preset().await;
    let login = login_loopback(&server, &preset, "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let id = store
        .add(login.into_new_account("corp", None))
        .unwrap()
        .account()
        .id
        .clone();
    drop(store);

    const ROUNDS: u64 = 5;
    const WORKERS: usize = 4;
    let bin = support::example_binary("refresh_race");
    let base = SystemClock.now().plus(Duration::from_secs(86_400)).0;
    // Every worker starts each round at the same instant (after all have started).
    let start = SystemClock.now().plus(Duration::from_millis(2500)).0;
    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            std::process::Command::new(&bin)
                .arg(dir.path())
                .arg(id.as_str())
                .arg(&server.issuer)
                .arg(ROUNDS.to_string())
                .arg(base.to_string())
                .arg(start.to_string())
                .arg("400")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total_refreshes = 0;
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["errors"], 0, "{v}");
        total_refreshes += v["refreshes"].as_u64().unwrap();
    }
    assert_eq!(
        total_refreshes, ROUNDS,
        "one refresh per expiry across all processes"
    );
    let stats = server.stats().await;
    assert_eq!(stats["refreshes"], ROUNDS, "{stats}");
    assert_eq!(stats["invalid_grant_errors"], 0, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    let store = FileStore::open(dir.path()).unwrap();
    let (access, _) = stored_tokens(&store, &id);
    assert_eq!(server.introspect(&access).await["active"], true);
    assert_eq!(store.get(&id).unwrap().unwrap().state, AccountState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grant_marks_needs_login_and_stops_calling_the_server() {
    let server = OidcServer::start(3600);
    let preset = server.preset().await;
    let alice = login_loopback(&server, &preset, "alice").await;
    let bob = login_loopback(&server, &preset, "bob").await;
    let (_, bob_refresh, _) = tokens(&bob);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let alice_id = store
        .add(alice.into_new_account("corp", None))
        .unwrap()
        .account()
        .id
        .clone();
    let bob_id = store
        .add(bob.into_new_account("corp", None))
        .unwrap()
        .account()
        .id
        .clone();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let r = refresher(store.clone(), clock.clone(), preset);

    // An admin revokes alice's grant; bob revokes his refresh token (RFC 7009).
    assert!(server.revoke_user("alice").await >= 1);
    server.revoke_token(&bob_refresh).await;
    clock.advance(Duration::from_secs(3601));

    for id in [&alice_id, &bob_id] {
        let err = r.access_token(id).await.unwrap_err();
        assert!(
            matches!(&err, RefreshError::Permanent { reason, .. } if reason == "invalid_grant"),
            "{err:?}"
        );
        assert_eq!(
            store.get(id).unwrap().unwrap().state,
            AccountState::NeedsLogin
        );
        assert!(!err.to_string().contains(&bob_refresh));
    }
    let attempts = r.stats().attempts;
    assert_eq!(attempts, 2);
    // Dead accounts do not hit the token endpoint again.
    assert!(r.access_token(&alice_id).await.unwrap_err().is_permanent());
    assert_eq!(r.stats().attempts, attempts);
    assert_eq!(r.stats().permanent_failures, 2);
}

/// The harness itself: reusing a rotated refresh token revokes the whole
/// grant, so any double refresh in the race tests above would fail loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_revokes_the_grant_when_a_rotated_refresh_token_is_reused() {
    use marathon_oauth::HttpClient as _;
    let server = OidcServer::start(60);
    let preset = server.preset().await;
    let login = login_loopback(&server, &preset, "alice").await;
    let (_, refresh0, _) = tokens(&login);
    let http = HyperHttpClient::new();
    let refresh = |rt: String| {
        let req = marathon_oauth::token::refresh_request(&preset, &marathon_core::Secret::new(rt));
        http.send(req)
    };
    let first = refresh(refresh0.clone()).await.unwrap();
    assert_eq!(first.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let refresh1 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh0, "refresh tokens rotate");

    let reused = refresh(refresh0).await.unwrap();
    assert_eq!(reused.status, 400);
    let err: serde_json::Value = serde_json::from_slice(&reused.body).unwrap();
    assert_eq!(err["error"], "invalid_grant");
    // ...and the legitimate new token died with the grant.
    let after = refresh(refresh1).await.unwrap();
    assert_eq!(after.status, 400);
    let stats = server.stats().await;
    assert_eq!(stats["grants_revoked"], 1, "{stats}");
    assert_eq!(stats["invalid_grant_errors"], 2, "{stats}");
}
