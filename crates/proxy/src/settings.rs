//! From configuration to proxy settings.

use marathon_config::Config;

use crate::EventSinks;
use crate::state::{ProviderSettings, ProxySettings};
use crate::upstream::UpstreamBase;
use marathon_wire::CredentialStyle;

/// Why the configuration cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A provider's upstream URL is unusable.
    #[error("providers.{provider}.upstream: {source}")]
    Upstream {
        /// The provider.
        provider: String,
        /// What is wrong.
        source: crate::BadUpstream,
    },
    /// A provider's auth headers are unusable.
    #[error("providers.{provider}.auth: {source}")]
    Auth {
        /// The provider.
        provider: String,
        /// What is wrong.
        source: crate::BadAuthStyle,
    },
    /// The egress settings (extra CA file) are unusable.
    #[error(transparent)]
    Egress(#[from] crate::BadEgress),
    /// A session header is not a valid header name.
    #[error("providers.{0}.session_headers: not a valid header name")]
    SessionHeader(String),
}

impl ProxySettings {
    /// Settings for every configured provider.
    pub fn from_config(config: &Config) -> Result<Self, SettingsError> {
        let mut providers = Vec::new();
        for (name, p) in &config.providers {
            let upstream =
                UpstreamBase::parse(&p.upstream).map_err(|source| SettingsError::Upstream {
                    provider: name.clone(),
                    source,
                })?;
            let credentials =
                CredentialStyle::from_config(&p.auth).map_err(|source| SettingsError::Auth {
                    provider: name.clone(),
                    source,
                })?;
            let session_headers = p
                .session_headers
                .iter()
                .map(|h| {
                    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                        .map_err(|_| SettingsError::SessionHeader(name.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            providers.push(ProviderSettings {
                name: name.clone(),
                flavor: p.kind.flavor(),
                upstream,
                pool: p.pool_config(),
                retry: p.retry_policy(),
                max_wait: p.max_wait,
                short_wait: p.short_wait,
                session_headers,
                credentials,
                usage: p.usage_poll.and_then(|interval| {
                    Some(crate::usage::UsagePollSettings {
                        endpoint: marathon_config::presets::usage_endpoint(p.kind)?,
                        url: p.usage_url.clone(),
                        interval,
                    })
                }),
                account_proxies: p
                    .account_proxies
                    .iter()
                    .map(|(label, url)| (label.clone(), url.clone()))
                    .collect(),
            });
        }
        Ok(ProxySettings {
            listen: config.server.listen,
            access_keys: config.server.access_keys.clone(),
            max_body: usize::try_from(config.server.max_body).unwrap_or(usize::MAX),
            peek_first_event: config.server.peek_first_event,
            upstream_timeout: config.server.upstream_timeout,
            providers,
            sinks: EventSinks {
                webhook: config.events.webhook.clone(),
                command: config.events.command.clone(),
            },
            allowed_hosts: config.server.allowed_hosts.clone(),
            allowed_origins: config.server.allowed_origins.clone(),
            limits: crate::ConnectionLimits {
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
                max_connections: config
                    .server
                    .max_connections
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            },
            error_body_timeout: config.server.error_body_timeout,
            egress: crate::EgressSettings::from_config(&config.server)?,
        })
    }

    /// The settings of one provider, to adjust before starting.
    pub fn provider_mut(&mut self, name: &str) -> Option<&mut ProviderSettings> {
        self.providers.iter_mut().find(|p| p.name == name)
    }
}
