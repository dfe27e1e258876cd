//! The glue between the proxy's `TokenSource` seam and the OAuth crate's
//! `Refresher`: the proxy asks for tokens, the refresher refreshes them
//! safely (single-flight, cross-process lock, rotated tokens written first).
//! Also the one place a provider's OAuth preset is worked out from config.

use std::sync::Arc;

use anyhow::Context as _;
use marathon_config::{Config, OAuthConfig, ProviderConfig};
use marathon_core::{AccountId, Secret, SystemClock};
use marathon_oauth::{
    FlowKind, GenericProvider, HttpClient, HyperHttpClient, IdentitySource, Loopback, OAuthPreset,
    RefreshError, Refresher, RefresherConfig, discover,
};
use marathon_proxy::{BoxFuture, TokenError, TokenSource};
use marathon_store::Store;

/// The OAuth preset a configured provider logs in and refreshes with, if any:
/// the built-in preset its `oauth.preset` (or its kind) names, with the
/// `[providers.<name>.oauth]` overrides applied; or, for a provider without a
/// built-in preset, the generic server that section describes. An `issuer`
/// is discovered now (network), so errors name the provider and the URL.
pub(crate) async fn preset_for(
    p: &ProviderConfig,
    http: &dyn HttpClient,
) -> anyhow::Result<Option<OAuthPreset>> {
    let builtin = p.oauth_preset().and_then(OAuthPreset::builtin);
    let Some(o) = &p.oauth else {
        return Ok(builtin);
    };
    let resolved = match builtin {
        Some(preset) => override_preset(preset, o, http).await,
        None => generic(&p.name, o).resolve(http).await,
    };
    resolved.map(Some).with_context(|| {
        format!(
            "provider {}: cannot set up its OAuth login{}",
            p.name,
            o.issuer
                .as_deref()
                .map(|i| format!(" (issuer {i})"))
                .unwrap_or_default()
        )
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
) -> Result<OAuthPreset, marathon_oauth::DiscoveryError> {
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

/// A refresher for every configured provider that has an OAuth preset,
/// resolved now (issuer discovery included): a provider whose OAuth server
/// cannot be set up stops the start, naming the provider and the URL.
pub(crate) async fn refresher(
    config: &Config,
    store: Arc<dyn Store>,
) -> anyhow::Result<Arc<Refresher>> {
    let lead = config
        .providers
        .values()
        .map(|p| p.refresh_lead)
        .min()
        .unwrap_or(RefresherConfig::default().refresh_lead);
    let http = Arc::new(HyperHttpClient::new());
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
    }
    Ok(Arc::new(refresher))
}

/// [`Refresher`] as the proxy's token source.
pub(crate) struct OAuthTokens(pub(crate) Arc<Refresher>);

fn map(e: RefreshError) -> TokenError {
    if e.is_permanent() {
        TokenError::Permanent(e.to_string())
    } else {
        TokenError::Transient(e.to_string())
    }
}

impl TokenSource for OAuthTokens {
    fn access_token<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, Result<Secret, TokenError>> {
        Box::pin(async move { self.0.access_token(account).await.map_err(map) })
    }

    fn force_refresh<'a>(
        &'a self,
        account: &'a AccountId,
        rejected: &'a Secret,
    ) -> BoxFuture<'a, Result<Secret, TokenError>> {
        Box::pin(async move { self.0.force_refresh(account, rejected).await.map_err(map) })
    }
}
