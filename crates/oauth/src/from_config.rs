//! From configuration to OAuth: the one place a provider's OAuth preset is
//! worked out from config, the [`Refresher`] every configured provider
//! refreshes with, and the `Refresher` as the token source both faces take
//! (`marathon_core::tokens::TokenSource`): the proxy and the client
//! middleware ask for tokens, the refresher refreshes them safely
//! (single-flight, cross-process lock, rotated tokens written first).

use std::sync::Arc;

use marathon_config::{Config, OAuthConfig, ProviderConfig};
use marathon_core::tokens::{BoxFuture, TokenError, TokenSource};
use marathon_core::{AccountId, Secret, SystemClock};
use marathon_store::Store;

use crate::http::{HttpClient, HyperHttpClient};
use crate::preset::{
    DiscoveryError, FlowKind, GenericProvider, IdentitySource, Loopback, OAuthPreset, discover,
};
use crate::refresh::{RefreshError, Refresher, RefresherConfig};

/// A provider's OAuth server could not be set up from its config.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: cannot set up its OAuth login{issuer}")]
pub struct PresetError {
    /// The provider.
    pub provider: String,
    /// ` (issuer <url>)` when an issuer was configured, else empty.
    issuer: String,
    /// What went wrong.
    #[source]
    pub source: Box<DiscoveryError>,
}

/// The OAuth client of a config could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A provider's OAuth server.
    #[error(transparent)]
    Preset(#[from] PresetError),
    /// `server.extra_ca_file` holds no usable certificate.
    #[error(transparent)]
    Ca(#[from] crate::egress::BadCa),
}

/// The OAuth preset a configured provider logs in and refreshes with, if any:
/// the built-in preset its `oauth.preset` (or its kind) names, with the
/// `[providers.<name>.oauth]` overrides applied; or, for a provider without a
/// built-in preset, the generic server that section describes. An `issuer`
/// is discovered now (network), so errors name the provider and the URL.
pub async fn preset_for(
    p: &ProviderConfig,
    http: &dyn HttpClient,
) -> Result<Option<OAuthPreset>, PresetError> {
    let builtin = p.oauth_preset().and_then(OAuthPreset::builtin);
    let Some(o) = &p.oauth else {
        return Ok(builtin);
    };
    let resolved = match builtin {
        Some(preset) => override_preset(preset, o, http).await,
        None => generic(&p.name, o).resolve(http).await,
    };
    resolved.map(Some).map_err(|source| PresetError {
        provider: p.name.clone(),
        issuer: o
            .issuer
            .as_deref()
            .map(|i| format!(" (issuer {i})"))
            .unwrap_or_default(),
        source: Box::new(source),
    })
}

fn loopback(port: Option<u16>) -> Loopback {
    Loopback {
        host: "127.0.0.1".into(),
        port,
        path: "/callback".into(),
    }
}

/// A provider described entirely by its `oauth` section (config checked it
/// is complete: a client id and enough endpoints).
fn generic(name: &str, o: &OAuthConfig) -> GenericProvider {
    GenericProvider {
        name: name.to_string(),
        issuer: o.issuer.clone(),
        authorize_url: o.authorize_url.clone(),
        token_url: o.token_url.clone(),
        device_url: o.device_url.clone(),
        userinfo_url: o.userinfo_url.clone(),
        client_id: o.client_id.clone().unwrap_or_default(),
        client_secret: None,
        scopes: o.scopes.clone(),
        extra_authorize_params: o.extra_authorize_params.clone(),
        loopback: o.redirect_port.map(|port| loopback(Some(port))),
        paste_redirect_uri: None,
        token_format: Default::default(),
    }
}

/// A built-in preset with the section's overrides: explicit endpoints win
/// over the issuer's discovered ones, which win over the preset's.
async fn override_preset(
    mut preset: OAuthPreset,
    o: &OAuthConfig,
    http: &dyn HttpClient,
) -> Result<OAuthPreset, DiscoveryError> {
    let mut authorize_url = o.authorize_url.clone();
    let mut token_url = o.token_url.clone();
    let mut device_url = o.device_url.clone();
    let mut userinfo_url = o.userinfo_url.clone();
    if let Some(issuer) = &o.issuer {
        let doc = discover(http, issuer).await?;
        authorize_url = authorize_url.or(doc.authorization_endpoint);
        token_url = token_url.or(doc.token_endpoint);
        device_url = device_url.or(doc.device_authorization_endpoint);
        userinfo_url = userinfo_url.or(doc.userinfo_endpoint);
    }
    if let Some(u) = authorize_url {
        preset.authorize_url = Some(u);
    }
    if let Some(u) = token_url {
        preset.token_url = u;
    }
    if let Some(u) = device_url {
        preset.device_url = Some(u);
        if !preset.supports(FlowKind::Device) {
            preset.flows.push(FlowKind::Device);
        }
    }
    if let Some(u) = userinfo_url {
        for source in preset.identity.iter_mut() {
            if let IdentitySource::Userinfo { url, .. } = source {
                *url = u.clone();
            }
        }
    }
    if let Some(id) = &o.client_id {
        preset.client_id = id.clone();
    }
    if let Some(scopes) = &o.scopes {
        preset.scopes = scopes.clone();
    }
    for (k, v) in &o.extra_authorize_params {
        match preset
            .extra_authorize_params
            .iter_mut()
            .find(|(n, _)| n == k)
        {
            Some(slot) => slot.1 = v.clone(),
            None => preset.extra_authorize_params.push((k.clone(), v.clone())),
        }
    }
    if let Some(port) = o.redirect_port {
        let mut lb = preset.loopback.take().unwrap_or_else(|| loopback(None));
        lb.port = Some(port);
        preset.loopback = Some(lb);
    }
    Ok(preset)
}

/// The HTTP client OAuth uses under `config`: its connections leave as the
/// proxy's upstream traffic does (`server.upstream_proxy`, the environment's
/// `HTTPS_PROXY`/`NO_PROXY`, `server.extra_ca_file`, the OS roots).
pub fn http_client(config: &Config) -> Result<HyperHttpClient, crate::egress::BadCa> {
    let egress = crate::egress::Egress::from_config(&config.server)?;
    Ok(HyperHttpClient::with_egress(HTTP_TIMEOUT, &egress))
}

/// The OAuth client's per-request timeout.
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A refresher for every configured provider that has an OAuth preset,
/// resolved now (issuer discovery included): a provider whose OAuth server
/// cannot be set up stops the start, naming the provider and the URL.
/// Refreshes go out as [`http_client`] says; an account with its own egress
/// proxy (`account_proxies`) refreshes through it.
pub async fn refresher(
    config: &Config,
    store: Arc<dyn Store>,
) -> Result<Arc<Refresher>, SetupError> {
    let lead = config
        .providers
        .values()
        .map(|p| p.refresh_lead)
        .min()
        .unwrap_or(RefresherConfig::default().refresh_lead);
    let egress = crate::egress::Egress::from_config(&config.server)?;
    let http = Arc::new(HyperHttpClient::with_egress(HTTP_TIMEOUT, &egress));
    let refresher = Refresher::new(
        store,
        http.clone(),
        Arc::new(SystemClock),
        RefresherConfig {
            refresh_lead: lead,
            ..RefresherConfig::default()
        },
    );
    for (name, p) in &config.providers {
        if let Some(preset) = preset_for(p, http.as_ref()).await? {
            refresher.set_preset(name.clone(), preset);
        }
        for (label, proxy) in &p.account_proxies {
            let own = HyperHttpClient::with_egress(HTTP_TIMEOUT, &egress.through(proxy));
            refresher.set_account_client(name.clone(), label.clone(), Arc::new(own));
        }
    }
    Ok(Arc::new(refresher))
}

/// The faces put the reason in events and the status view next to the
/// account's label, so it carries the cause (`invalid_grant`), not the
/// account id the refresher's own message names; a needs-login event and
/// the status view already say what to do.
fn map(e: RefreshError) -> TokenError {
    if e.is_permanent() {
        TokenError::Permanent(e.reason())
    } else {
        TokenError::Transient(e.reason())
    }
}

/// The refresher is the token source of the proxy and of the client middleware.
impl TokenSource for Refresher {
    fn access_token<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, Result<Secret, TokenError>> {
        Box::pin(async move { Refresher::access_token(self, account).await.map_err(map) })
    }

    fn force_refresh<'a>(
        &'a self,
        account: &'a AccountId,
        rejected: &'a Secret,
    ) -> BoxFuture<'a, Result<Secret, TokenError>> {
        Box::pin(async move {
            Refresher::force_refresh(self, account, rejected)
                .await
                .map_err(map)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use crate::http::BoxFuture as HttpFuture;
    use crate::{HttpError, HttpRequest, HttpResponse, TokenFormat};

    use super::*;

    /// Answers discovery for one issuer; records the URLs asked for.
    struct Discovery {
        issuer: &'static str,
        status: u16,
        asked: Mutex<Vec<String>>,
    }

    impl Discovery {
        fn new(issuer: &'static str, status: u16) -> Self {
            Discovery {
                issuer,
                status,
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl HttpClient for Discovery {
        fn send(&self, req: HttpRequest) -> HttpFuture<'_, Result<HttpResponse, HttpError>> {
            self.asked.lock().unwrap().push(req.url.clone());
            let i = self.issuer;
            let body = serde_json::json!({
                "issuer": i,
                "authorization_endpoint": format!("{i}/auth"),
                "token_endpoint": format!("{i}/token"),
                "device_authorization_endpoint": format!("{i}/device/auth"),
                "userinfo_endpoint": format!("{i}/me"),
            });
            let resp = HttpResponse::json(self.status, body);
            Box::pin(async move { Ok(resp) })
        }
    }

    fn config(src: &str) -> Config {
        marathon_config::load_str(src, Path::new("config.toml")).unwrap()
    }

    fn resolve(
        c: &Config,
        name: &str,
        http: &dyn HttpClient,
    ) -> Result<Option<OAuthPreset>, PresetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(preset_for(&c.providers[name], http))
    }

    #[test]
    fn token_errors_carry_the_cause_not_the_account_id() {
        let id = AccountId("acc_0123".into());
        let TokenError::Permanent(p) = map(RefreshError::Permanent {
            account: id.clone(),
            reason: "invalid_grant".into(),
        }) else {
            panic!("permanent must stay permanent")
        };
        assert_eq!(p, "invalid_grant");
        let TokenError::Transient(t) = map(RefreshError::Transient {
            account: id.clone(),
            reason: "http_503".into(),
        }) else {
            panic!("transient must stay transient")
        };
        assert_eq!(t, "http_503");
        assert!(matches!(
            map(RefreshError::UnknownAccount(id)),
            TokenError::Transient(_)
        ));
    }

    #[test]
    fn builtin_providers_get_their_builtin_preset_without_network() {
        let c = config("");
        let http = Discovery::new("https://unused.example", 500);
        let names: Vec<(String, Option<String>)> = c
            .providers
            .keys()
            .map(|n| (n.clone(), resolve(&c, n, &http).unwrap().map(|p| p.name)))
            .collect();
        assert_eq!(
            names,
            [
                ("anthropic".to_string(), Some("anthropic".to_string())),
                ("codex".into(), Some("openai-chatgpt".into())),
                ("copilot".into(), Some("github-copilot".into())),
                ("google".into(), Some("google-gemini".into())),
                ("openai".into(), None),
            ]
        );
        assert!(http.asked.lock().unwrap().is_empty());
    }

    #[test]
    fn overrides_change_only_what_they_name() {
        let c = config(
            "[providers.anthropic.oauth]\nclient_id = \"my-client\"\nscopes = [\"user:inference\"]\n\
             redirect_port = 8123\nextra_authorize_params = { prompt = \"login\" }\n\
             [providers.google.oauth]\nextra_authorize_params = { prompt = \"select_account\" }\n",
        );
        let http = Discovery::new("https://unused.example", 500);
        let a = resolve(&c, "anthropic", &http).unwrap().unwrap();
        let builtin = OAuthPreset::anthropic();
        assert_eq!(a.client_id, "my-client");
        assert_eq!(a.scopes, ["user:inference"]);
        assert_eq!(a.loopback.as_ref().unwrap().port, Some(8123));
        assert_eq!(a.loopback.as_ref().unwrap().path, "/callback");
        assert_eq!(
            a.extra_authorize_params,
            [("prompt".into(), "login".into())]
        );
        assert_eq!(a.token_url, builtin.token_url);
        assert_eq!(a.token_format, TokenFormat::Json);
        assert_eq!(a.flows, builtin.flows);
        // A parameter the preset already sends is replaced, not doubled.
        let g = resolve(&c, "google", &http).unwrap().unwrap();
        assert_eq!(
            g.extra_authorize_params,
            [
                ("access_type".to_string(), "offline".to_string()),
                ("prompt".into(), "select_account".into())
            ]
        );
    }

    #[test]
    fn a_generic_provider_is_discovered_and_explicit_endpoints_win() {
        let c = config(
            "[providers.corp]\nkind = \"openai-compatible\"\nupstream = \"http://127.0.0.1:9\"\n\
             [providers.corp.oauth]\nissuer = \"https://id.example.com\"\nclient_id = \"marathon\"\n\
             token_url = \"https://id.example.com/oauth/v2/token\"\n",
        );
        let http = Discovery::new("https://id.example.com", 200);
        let p = resolve(&c, "corp", &http).unwrap().unwrap();
        assert_eq!(
            http.asked.lock().unwrap().as_slice(),
            ["https://id.example.com/.well-known/openid-configuration"]
        );
        assert_eq!(p.name, "corp");
        assert_eq!(p.client_id, "marathon");
        assert_eq!(
            p.authorize_url.as_deref(),
            Some("https://id.example.com/auth")
        );
        assert_eq!(p.token_url, "https://id.example.com/oauth/v2/token");
        assert_eq!(
            p.device_url.as_deref(),
            Some("https://id.example.com/device/auth")
        );
        assert_eq!(
            p.flows,
            [FlowKind::Loopback, FlowKind::Paste, FlowKind::Device]
        );
    }

    #[test]
    fn a_builtin_pointed_at_another_server_takes_its_endpoints() {
        let c = config("[providers.anthropic.oauth]\nissuer = \"https://id.example.com\"\n");
        let http = Discovery::new("https://id.example.com", 200);
        let p = resolve(&c, "anthropic", &http).unwrap().unwrap();
        assert_eq!(
            p.authorize_url.as_deref(),
            Some("https://id.example.com/auth")
        );
        assert_eq!(p.token_url, "https://id.example.com/token");
        assert!(p.supports(FlowKind::Device));
        assert_eq!(p.client_id, OAuthPreset::anthropic().client_id);
    }

    #[test]
    fn a_failed_discovery_names_the_provider_and_the_issuer() {
        let c = config(
            "[providers.corp]\nkind = \"openai\"\n[providers.corp.oauth]\n\
             issuer = \"https://id.example.com\"\nclient_id = \"m\"\n",
        );
        let http = Discovery::new("https://id.example.com", 404);
        let err = resolve(&c, "corp", &http).unwrap_err();
        let chain = [err.to_string(), err.source.to_string()];
        assert_eq!(
            chain[0],
            "provider corp: cannot set up its OAuth login (issuer https://id.example.com)"
        );
        assert_eq!(
            chain[1],
            "the OpenID configuration at https://id.example.com/.well-known/openid-configuration is not usable: HTTP 404"
        );
    }
}
