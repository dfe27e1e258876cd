//! How the OAuth client's connections leave this machine: the same egress
//! story as the proxy's upstream traffic (`marathon-proxy`'s `egress`), so a
//! token refresh works wherever requests do.
//!
//! - Forward proxies: `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY` (curl's rules,
//!   hyper-util's matcher) unless `server.upstream_proxy` says otherwise; an
//!   account's own proxy (`providers.<name>.account_proxies`) for that
//!   account's refreshes. An `https://` endpoint is reached through a
//!   `CONNECT` tunnel (TLS end to end), with the proxy URL's `user:password@`
//!   as `Proxy-Authorization`, sent only to the proxy. Plain `http://` OAuth
//!   endpoints are only ever loopback (the client refuses others), and go
//!   straight there.
//! - Trust: the bundled Mozilla roots, the OS store (`rustls-native-certs`)
//!   and `server.extra_ca_file` (a TLS-inspecting gateway's CA).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use http::uri::Scheme;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use marathon_config::{ServerConfig, UpstreamProxy};
use marathon_core::Secret;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the OAuth client's connections go first, and which CAs it trusts.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Egress {
    rules: Rules,
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
}

#[derive(Clone, Default)]
struct Rules(Option<Arc<Matcher>>);

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The matcher holds proxy URLs, which may hold passwords.
        f.write_str(if self.0.is_some() {
            "proxied"
        } else {
            "direct"
        })
    }
}

/// `server.extra_ca_file` holds no usable certificate.
#[derive(Debug, thiserror::Error)]
#[error("server.extra_ca_file: {path}: {why}")]
pub struct BadCa {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

impl Egress {
    /// Straight out, trusting the bundled and OS roots (no proxy at all).
    pub fn direct() -> Self {
        Egress::default()
    }

    /// From `[server]`: `upstream_proxy` (the environment by default) and
    /// `extra_ca_file` (read by the config loader).
    pub fn from_config(server: &ServerConfig) -> Result<Self, BadCa> {
        let mut extra = Vec::new();
        if let Some(ca) = &server.extra_ca {
            let bad = |why: String| BadCa {
                path: ca.path.display().to_string(),
                why,
            };
            for cert in CertificateDer::pem_slice_iter(&ca.pem) {
                extra.push(cert.map_err(|e| bad(format!("not a PEM certificate ({e})")))?);
            }
            let mut probe = RootCertStore::empty();
            for c in &extra {
                probe
                    .add(c.clone())
                    .map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
            }
        }
        let rules = match &server.upstream_proxy {
            UpstreamProxy::Off => Rules(None),
            UpstreamProxy::Env => Rules(Some(Arc::new(Matcher::from_env()))),
            UpstreamProxy::Url(url) => {
                let no_proxy = ["NO_PROXY", "no_proxy"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok())
                    .unwrap_or_default();
                Rules(Some(Arc::new(
                    Matcher::builder()
                        .all(url.expose().to_owned())
                        .no(no_proxy)
                        .build(),
                )))
            }
        };
        Ok(Egress {
            rules,
            extra_roots: Arc::new(extra),
        })
    }

    /// The same trust, every connection through `proxy` (an account's own).
    pub fn through(&self, proxy: &Secret) -> Self {
        Egress {
            rules: Rules(Some(Arc::new(
                Matcher::builder().all(proxy.expose().to_owned()).build(),
            ))),
            extra_roots: self.extra_roots.clone(),
        }
    }

    /// The roots TLS trusts: bundled, the OS store, the extra CAs.
    pub(crate) fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        if let Some(e) = native.errors.first() {
            tracing::debug!("some OS certificates could not be read: {e}");
        }
        let _ = roots.add_parsable_certificates(native.certs);
        for c in self.extra_roots.iter() {
            // Checked by `from_config`.
            let _ = roots.add(c.clone());
        }
        roots
    }

    /// The TCP connector routed by these rules.
    pub(crate) fn connector(&self) -> EgressConnector {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        EgressConnector {
            tcp,
            rules: self.rules.clone(),
        }
    }
}

/// Opens TCP connections: straight to the destination, or a `CONNECT`
/// tunnel through the forward proxy the rules name for an `https://` one.
#[derive(Clone)]
pub(crate) struct EgressConnector {
    tcp: HttpConnector,
    rules: Rules,
}

impl tower_service::Service<Uri> for EgressConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let intercept = match &self.rules.0 {
            Some(m) if dst.scheme() == Some(&Scheme::HTTPS) => m.intercept(&dst),
            _ => None,
        };
        let Some(via) = intercept else {
            let mut tcp = self.tcp.clone();
            return Box::pin(async move { tcp.call(dst).await.map_err(Into::into) });
        };
        if via.uri().scheme() != Some(&Scheme::HTTP) {
            let shown = via
                .uri()
                .authority()
                .map_or_else(String::new, |a| a.to_string());
            // Fail rather than bypass a proxy marathon cannot speak.
            return Box::pin(async move {
                Err(format!(
                    "the proxy {shown} is not an http:// proxy (the only kind marathon speaks)"
                )
                .into())
            });
        }
        let mut tunnel = Tunnel::new(via.uri().clone(), self.tcp.clone());
        if let Some(auth) = via.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_proxy_password() {
        let e = Egress::direct().through(&Secret::new("http://u:pw-3e9d@proxy.corp:3128"));
        let shown = format!("{e:?}");
        assert!(!shown.contains("pw-3e9d"), "{shown}");
        assert!(shown.contains("proxied"), "{shown}");
    }
}
