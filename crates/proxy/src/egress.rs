//! How upstream connections leave this machine (corporate networks): which
//! forward proxy an origin is reached through, and which CAs TLS trusts.
//!
//! Proxies: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` (curl's
//! rules, hyper-util's matcher) unless `server.upstream_proxy` says
//! otherwise, and an account's own proxy (`providers.<name>.account_proxies`).
//! An `https://` origin is reached through a `CONNECT` tunnel (TLS end to
//! end, the proxy sees only the host name); an `http://` origin gets
//! absolute-form requests sent to the proxy. Proxy credentials come from the
//! proxy URL's `user:password@`, go only to the proxy (`Proxy-Authorization`)
//! and are never shown: a route prints as its proxy's host and port.
//!
//! Trust: the bundled Mozilla roots, the OS certificate store
//! (`rustls-native-certs`: `/etc/ssl/certs` and friends, `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`), and `server.extra_ca_file` (a TLS-inspecting gateway's CA).

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use marathon_config::UpstreamProxy;
use marathon_core::Secret;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// What `ProxySettings::egress` holds: the proxy rules and extra CAs.
#[derive(Clone, Debug, Default)]
pub struct EgressSettings {
    /// Where upstream connections go first (environment, none, one proxy).
    pub proxy: UpstreamProxy,
    /// CA certificates trusted beside the OS store and the bundled roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// Why the egress settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadEgress {
    /// `server.extra_ca_file` holds no usable certificate.
    #[error("server.extra_ca_file: {path}: {why}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

impl EgressSettings {
    /// From the config (the CA file was read by the config loader).
    pub fn from_config(server: &marathon_config::ServerConfig) -> Result<Self, BadEgress> {
        let mut extra_roots = Vec::new();
        if let Some(ca) = &server.extra_ca {
            let bad = |why: String| BadEgress::ExtraCa {
                path: ca.path.display().to_string(),
                why,
            };
            for cert in CertificateDer::pem_slice_iter(&ca.pem) {
                extra_roots.push(cert.map_err(|e| bad(format!("not a PEM certificate ({e})")))?);
            }
            // Parse each now, so a bad file stops `serve` instead of
            // failing every TLS connection later.
            let mut probe = RootCertStore::empty();
            for c in &extra_roots {
                probe
                    .add(c.clone())
                    .map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
            }
        }
        Ok(EgressSettings {
            proxy: server.upstream_proxy.clone(),
            extra_roots,
        })
    }
}

/// The roots upstream TLS trusts: bundled, the OS store, the extra CAs.
pub(crate) fn root_store(extra: &[CertificateDer<'static>]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        // Not fatal: the bundled roots still serve the public providers.
        tracing::warn!(
            "some OS certificates could not be read: {}",
            native.errors[0]
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("trusting {added} OS certificates ({ignored} unusable ones skipped)");
    for c in extra {
        // Checked by `EgressSettings::from_config`.
        let _ = roots.add(c.clone());
    }
    roots
}

/// The forward-proxy rules one set of origins follows.
#[derive(Clone, Default)]
pub(crate) struct ProxyRules(Option<Arc<Matcher>>);

impl ProxyRules {
    /// The proxy-wide rules (`server.upstream_proxy`).
    pub(crate) fn new(setting: &UpstreamProxy) -> Self {
        match setting {
            UpstreamProxy::Off => ProxyRules(None),
            UpstreamProxy::Env => ProxyRules(Some(Arc::new(Matcher::from_env()))),
            UpstreamProxy::Url(url) => {
                let no_proxy = ["NO_PROXY", "no_proxy"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok())
                    .unwrap_or_default();
                ProxyRules(Some(Arc::new(
                    Matcher::builder()
                        .all(url.expose().to_owned())
                        .no(no_proxy)
                        .build(),
                )))
            }
        }
    }

    /// One account's own proxy: every origin through it.
    pub(crate) fn only(url: &Secret) -> Self {
        ProxyRules(Some(Arc::new(
            Matcher::builder().all(url.expose().to_owned()).build(),
        )))
    }

    /// How to reach `scheme://authority`.
    pub(crate) fn route(&self, scheme: &Scheme, authority: &Authority) -> Route {
        let Some(matcher) = &self.0 else {
            return Route::Direct;
        };
        let Ok(dst) = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
        else {
            return Route::Direct;
        };
        let Some(intercept) = matcher.intercept(&dst) else {
            return Route::Direct;
        };
        let via = Via {
            proxy: intercept.uri().clone(),
            auth: intercept.basic_auth().cloned(),
        };
        if via.proxy.scheme() != Some(&Scheme::HTTP) {
            return Route::Unsupported(via.shown());
        }
        if *scheme == Scheme::HTTPS {
            Route::Tunnel(via)
        } else {
            Route::Forward(via)
        }
    }
}

/// A forward proxy: its address (no credentials) and its `Proxy-Authorization`.
#[derive(Clone)]
pub(crate) struct Via {
    pub proxy: Uri,
    pub auth: Option<HeaderValue>,
}

impl Via {
    /// `host:port` of the proxy: what messages may show.
    pub(crate) fn shown(&self) -> String {
        self.proxy
            .authority()
            .map_or_else(String::new, |a| a.to_string())
    }
}

/// How one upstream origin is reached, decided once per endpoint.
#[derive(Clone)]
pub(crate) enum Route {
    /// Straight to the origin.
    Direct,
    /// An `https://` origin, through a `CONNECT` tunnel.
    Tunnel(Via),
    /// An `http://` origin: absolute-form requests to the proxy.
    Forward(Via),
    /// A proxy scheme marathon does not speak (`https://`, `socks5://`):
    /// connections fail with a message rather than bypass the proxy.
    Unsupported(String),
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct => f.write_str("direct"),
            Route::Tunnel(v) => write!(f, "CONNECT via {}", v.shown()),
            Route::Forward(v) => write!(f, "via {}", v.shown()),
            Route::Unsupported(p) => write!(f, "unsupported proxy {p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rules: &ProxyRules, url: &str) -> Route {
        let uri: Uri = url.parse().unwrap();
        rules.route(uri.scheme().unwrap(), uri.authority().unwrap())
    }

    #[test]
    fn an_account_proxy_tunnels_https_and_forwards_http_with_its_credentials() {
        let rules = ProxyRules::only(&Secret::new("http://alice:pw-7c1e@egress.corp:3128"));
        match route(&rules, "https://api.anthropic.com") {
            Route::Tunnel(v) => {
                assert_eq!(v.proxy.to_string(), "http://egress.corp:3128/");
                // Basic base64("alice:pw-7c1e").
                assert_eq!(v.auth.unwrap(), "Basic YWxpY2U6cHctN2MxZQ==");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route(&rules, "http://10.0.0.5:8080"),
            Route::Forward(_)
        ));
        // What a message may show: host and port, no password.
        let shown = format!("{:?}", route(&rules, "https://api.openai.com"));
        assert_eq!(shown, "CONNECT via egress.corp:3128");
    }

    #[test]
    fn off_is_direct_and_unsupported_schemes_do_not_bypass() {
        let off = ProxyRules::new(&UpstreamProxy::Off);
        assert!(matches!(
            route(&off, "https://api.anthropic.com"),
            Route::Direct
        ));
        let socks = ProxyRules::only(&Secret::new("socks5://h:1080"));
        assert!(matches!(
            route(&socks, "https://api.anthropic.com"),
            Route::Unsupported(_)
        ));
    }
}
