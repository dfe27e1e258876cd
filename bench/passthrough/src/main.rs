//! `bench-passthrough LISTEN_PORT UPSTREAM_PORT`: forwards every request to
//! 127.0.0.1:UPSTREAM_PORT with the same path, bodies streamed both ways,
//! TCP_NODELAY on both sides, pooled keep-alive upstream connections.
//! Nothing else: no routing, no header rewriting beyond `host`.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::{Authority, Scheme, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

// One event-loop thread, as `marathon serve` runs by default.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: u16 = args.next().ok_or("listen port")?.parse()?;
    let upstream: u16 = args.next().ok_or("upstream port")?.parse()?;
    let authority: Authority = format!("127.0.0.1:{upstream}").parse()?;
    let host = http::HeaderValue::from_str(authority.as_str())?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], listen))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, authority, host) = (client.clone(), authority.clone(), host.clone());
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let (client, authority, host) = (client.clone(), authority.clone(), host.clone());
            async move {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(authority);
                *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
                req.headers_mut().insert(http::header::HOST, host);
                let resp = match client.request(req).await {
                    Ok(resp) => resp.map(Either::Upstream),
                    Err(_) => Response::builder()
                        .status(502)
                        .body(Either::Empty)
                        .unwrap_or_default(),
                };
                Ok::<_, Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The upstream's body, or nothing (a 502).
#[derive(Default)]
enum Either {
    Upstream(Incoming),
    #[default]
    Empty,
}

impl hyper::body::Body for Either {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Either::Upstream(b) => std::pin::Pin::new(b).poll_frame(cx),
            Either::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Either::Upstream(b) => b.is_end_stream(),
            Either::Empty => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Either::Upstream(b) => b.size_hint(),
            Either::Empty => hyper::body::SizeHint::with_exact(0),
        }
    }
}
