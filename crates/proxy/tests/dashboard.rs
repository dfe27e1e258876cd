//! The dashboard over real sockets: it loads and gets its data when the
//! proxy has access keys (the key in a header, never a URL), its data can
//! never become markup, and the browser is told to run nothing but the
//! proxy's own script.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use marathon_core::Secret;
use marathon_proxy::StartOptions;
use marathon_store::{MemoryStore, NewAccount, Store};
use support::*;

const ACCESS: &str = "mk-access-DASH-41c9";
const HOSTILE_LABEL: &str = "<img src=x onerror=alert(1)>";

async fn proxy_with_access_key() -> (marathon_proxy::ProxyHandle, Http) {
    let store = Arc::new(MemoryStore::new());
    store
        .add(NewAccount::api_key(
            "anthropic",
            Some(HOSTILE_LABEL.to_owned()),
            Secret::new("sk-ant-dash-account"),
        ))
        .unwrap();
    let mut settings = test_settings("http://127.0.0.1:9");
    settings.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))];
    let proxy = marathon_proxy::start(settings, StartOptions::new(store))
        .await
        .unwrap();
    (proxy, http_client())
}

async fn get_with(client: &Http, url: String, key: Option<&str>) -> Resp {
    let mut req = http::Request::get(url);
    if let Some(k) = key {
        req = req.header("x-marathon-key", k);
    }
    send(client, req.body(Default::default()).unwrap()).await
}

/// Guards against a dashboard that cannot be used once access keys are set
/// (every `/_marathon/` path used to need the key, which a browser
/// navigating to the page cannot send): the page and its files load without
/// it; its data needs it, sent as `x-marathon-key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_access_keys_the_page_loads_and_its_data_needs_the_key_header() {
    let (proxy, client) = proxy_with_access_key().await;
    let base = format!("{}/_marathon", proxy.url());
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let r = get_with(&client, format!("{base}{path}"), None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.header("content-type").unwrap().starts_with(content_type));
    }
    for path in ["status", "metrics", "events"] {
        let r = get_with(&client, format!("{base}/{path}"), None).await;
        assert_eq!(r.status, 401, "{path} without the key");
        let r = get_with(&client, format!("{base}/{path}"), Some("wrong")).await;
        assert_eq!(r.status, 401, "{path} with a wrong key");
    }
    let r = get_with(&client, format!("{base}/status"), Some(ACCESS)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["providers"][0]["name"], "anthropic");
    let r = get_with(&client, format!("{base}/metrics"), Some(ACCESS)).await;
    assert_eq!(r.status, 200);
    // The event stream, as the page reads it: fetch with the header.
    let events = client
        .request(
            http::Request::get(format!("{base}/events"))
                .header("x-marathon-key", ACCESS)
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), events.into_body().frame())
        .await
        .expect("the stream starts at once")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(first.starts_with(b": marathon events"));
}

/// Guards against script injection through the page: a script tag in the
/// page's own markup, inline handlers, framing (clickjacking), MIME
/// sniffing, and the page's address leaking in a referrer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_with_a_strict_content_security_policy() {
    let (proxy, client) = proxy_with_access_key().await;
    let page = get_with(&client, format!("{}/_marathon/", proxy.url()), None).await;
    let csp = page.header("content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = page.text();
    assert!(html.contains(r#"<script src="/_marathon/dashboard.js" defer></script>"#));
    assert_eq!(html.matches("<script").count(), 1, "no inline script");

    let js = get_with(
        &client,
        format!("{}/_marathon/dashboard.js", proxy.url()),
        None,
    )
    .await;
    assert_eq!(js.header("x-content-type-options"), Some("nosniff"));
    let js = js.text();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!js.contains(sink), "dashboard.js uses {sink}");
    }
    assert!(js.contains("textContent") || js.contains("createElement"));
}

/// Guards against an account label (chosen by whoever ran `marathon auth
/// add`, or imported from another tool's files) reaching the page as
/// markup: the status JSON carries it with `<` and `>` escaped, as data
/// that no browser sniffs as HTML, and it reads back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_label_comes_back_escaped_in_the_status_json() {
    let (proxy, client) = proxy_with_access_key().await;
    let r = get_with(
        &client,
        format!("{}/_marathon/status", proxy.url()),
        Some(ACCESS),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let text = r.text();
    assert!(!text.contains('<') && !text.contains('>'), "{text}");
    assert!(
        text.contains(r"\u003cimg src=x onerror=alert(1)\u003e"),
        "{text}"
    );
    assert_eq!(
        r.json()["providers"][0]["accounts"][0]["label"],
        HOSTILE_LABEL
    );
}

async fn post(client: &Http, url: String, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut req = http::Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(body.to_owned().into()).unwrap()).await
}

/// Guards the account actions against being a way in: without the key, from
/// another site's page (even one allowed to use the providers), as a "simple"
/// cross-site request (text/plain) or as a GET, nothing changes; with the key
/// from the proxy's own page they change the store and the pool at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_actions_need_the_key_and_the_proxys_own_page() {
    let store = Arc::new(MemoryStore::new());
    let id = store
        .add(NewAccount::api_key(
            "anthropic",
            Some("work".to_owned()),
            Secret::new("sk-ant-dash-actions"),
        ))
        .unwrap()
        .account()
        .id
        .clone();
    let mut settings = test_settings("http://127.0.0.1:9");
    settings.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))];
    settings.allowed_origins = vec!["http://tools.example".to_owned()];
    let proxy = marathon_proxy::start(settings, StartOptions::new(store.clone()))
        .await
        .unwrap();
    let client = http_client();
    let url = format!("{}/_marathon/accounts/{}/disable", proxy.url(), id.as_str());
    let own = format!("http://{}", proxy.local_addr());
    let json = ("content-type", "application/json");
    let refused = [
        (vec![json], 401),
        (vec![json, ("x-marathon-key", "wrong")], 401),
        (
            vec![
                json,
                ("x-marathon-key", ACCESS),
                ("origin", "http://tools.example"),
            ],
            403,
        ),
        (
            vec![
                json,
                ("x-marathon-key", ACCESS),
                ("origin", "http://evil.example"),
            ],
            403,
        ),
        (
            vec![("content-type", "text/plain"), ("x-marathon-key", ACCESS)],
            415,
        ),
    ];
    for (headers, status) in refused {
        let r = post(&client, url.clone(), &headers, "{}").await;
        assert_eq!(r.status, status, "{headers:?}: {}", r.text());
    }
    let r = get_with(&client, url.clone(), Some(ACCESS)).await;
    assert_eq!(r.status, 405);
    assert!(
        store.get(&id).unwrap().unwrap().enabled,
        "nothing changed yet"
    );

    let key = ("x-marathon-key", ACCESS);
    let r = post(&client, url.clone(), &[json, key, ("origin", &own)], "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "disabled");
    assert!(!store.get(&id).unwrap().unwrap().enabled, "saved");
    assert_eq!(
        proxy.status()["providers"][0]["accounts"][0]["state"],
        "disabled"
    );

    let base = format!("{}/_marathon/accounts/{}", proxy.url(), id.as_str());
    let r = post(
        &client,
        format!("{base}/priority"),
        &[json, key],
        r#"{"priority":7}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(store.get(&id).unwrap().unwrap().priority, 7);
    let r = post(
        &client,
        format!("{base}/priority"),
        &[json, key],
        r#"{"priority":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(&client, format!("{base}/enable"), &[json, key], "").await;
    assert_eq!(r.json()["state"], "ready");
    assert!(store.get(&id).unwrap().unwrap().enabled);
    let r = post(
        &client,
        format!("{}/_marathon/accounts/nobody/enable", proxy.url()),
        &[json, key],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
}
