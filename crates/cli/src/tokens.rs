//! The glue between the proxy's `TokenSource` seam and the OAuth crate's
//! `Refresher`: the proxy asks for tokens, the refresher refreshes them
//! safely (single-flight, cross-process lock, rotated tokens written first).

use std::sync::Arc;

use marathon_config::{Config, ProviderKind};
use marathon_core::{AccountId, Secret, SystemClock};
use marathon_oauth::{HyperHttpClient, OAuthPreset, RefreshError, Refresher, RefresherConfig};
use marathon_proxy::{BoxFuture, TokenError, TokenSource};
use marathon_store::Store;

/// The OAuth preset a configured provider refreshes with, if any.
pub(crate) fn preset_for(kind: ProviderKind) -> Option<OAuthPreset> {
    match kind {
        ProviderKind::Anthropic => Some(OAuthPreset::anthropic()),
        ProviderKind::Codex => Some(OAuthPreset::openai_chatgpt()),
        ProviderKind::Copilot => Some(OAuthPreset::github_copilot()),
        ProviderKind::Google => Some(OAuthPreset::google_gemini()),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => None,
    }
}

/// A refresher for every configured provider that has an OAuth preset.
pub(crate) fn refresher(config: &Config, store: Arc<dyn Store>) -> Arc<Refresher> {
    let lead = config
        .providers
        .values()
        .map(|p| p.refresh_lead)
        .min()
        .unwrap_or(RefresherConfig::default().refresh_lead);
    let refresher = Refresher::new(
        store,
        Arc::new(HyperHttpClient::new()),
        Arc::new(SystemClock),
        RefresherConfig {
            refresh_lead: lead,
            ..RefresherConfig::default()
        },
    );
    for (name, p) in &config.providers {
        if let Some(preset) = preset_for(p.kind) {
            refresher.set_preset(name.clone(), preset);
        }
    }
    Arc::new(refresher)
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
