//! What the middleware adds to a request over plain reqwest.
//!
//!     cargo bench -p marathon-client --bench overhead
//!     ROUNDS=20 REQUESTS=2000 cargo bench -p marathon-client --bench overhead
//!
//! A hyper server on 127.0.0.1 (its own thread and runtime) answers every
//! POST with a small chat-completion JSON at once. One client runtime
//! (current-thread) sends the same small POST with keep-alive, one request
//! at a time, read to the end: through a plain `reqwest::Client`, and
//! through `reqwest_middleware` with marathon's middleware (one API-key
//! account, no background task). The two alternate within each round, and
//! the order flips every round, so a burst of load from elsewhere on the
//! machine hits both. Printed: the p50 and p99 of each, and the median over
//! rounds of (middleware − plain) for each percentile: the time the
//! middleware adds per request.

#![allow(missing_docs)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marathon_client::{Marathon, Options};
use marathon_core::Secret;
use marathon_store::{MemoryStore, NewAccount, Store};

const ANSWER: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
const REQUEST: &str = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fast upstream, on a thread of its own.
fn start_upstream() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(ANSWER)))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

const PLAIN: usize = 0;
const BARE: usize = 1;
const MARATHON: usize = 2;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn main() {
    let rounds = env("ROUNDS", 10);
    let requests = env("REQUESTS", 1000);
    let upstream = start_upstream();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = marathon_config::load_str(
            &format!("[providers.openai]\nupstream = \"{upstream}\"\n"),
            Path::new("bench.toml"),
        )
        .unwrap();
        let store = Arc::new(MemoryStore::new());
        store
            .add(NewAccount::api_key(
                "openai",
                Some("bench".into()),
                Secret::new("sk-bench"),
            ))
            .unwrap();
        let options = Options {
            background: false,
            ..Options::default()
        };
        let marathon = Marathon::with_options(&config, store, options)
            .await
            .unwrap();
        let plain = reqwest::Client::new();
        // reqwest-middleware's own cost, with no middleware in the chain.
        let bare = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
        let with = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(marathon.middleware("openai").unwrap())
            .build();
        let url = format!("{upstream}/v1/chat/completions");
        let one = |which: usize| {
            let (plain, bare, with, url) = (&plain, &bare, &with, &url);
            async move {
                let t = Instant::now();
                let resp = match which {
                    PLAIN => plain.post(url).body(REQUEST).send().await.unwrap(),
                    BARE => bare.post(url).body(REQUEST).send().await.unwrap(),
                    _ => with.post(url).body(REQUEST).send().await.unwrap(),
                };
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await.unwrap();
                t.elapsed().as_secs_f64() * 1e6
            }
        };

        // Warm-up: connections, pools, caches.
        for _ in 0..200 {
            for which in [PLAIN, BARE, MARATHON] {
                one(which).await;
            }
        }
        let mut all: [Vec<f64>; 3] = Default::default();
        // Per round: (marathon − plain) p50 and p99, (bare − plain) p50.
        let mut added: [Vec<f64>; 3] = Default::default();
        for round in 0..rounds {
            let mut times: [Vec<f64>; 3] = Default::default();
            // The order rotates every round.
            for k in 0..3 {
                let which = (round + k) % 3;
                for _ in 0..requests {
                    times[which].push(one(which).await);
                }
            }
            for t in &mut times {
                t.sort_by(f64::total_cmp);
            }
            added[0].push(percentile(&times[MARATHON], 0.5) - percentile(&times[PLAIN], 0.5));
            added[1].push(percentile(&times[MARATHON], 0.99) - percentile(&times[PLAIN], 0.99));
            added[2].push(percentile(&times[BARE], 0.5) - percentile(&times[PLAIN], 0.5));
            for (which, t) in times.into_iter().enumerate() {
                all[which].extend(t);
            }
        }
        for t in &mut all {
            t.sort_by(f64::total_cmp);
        }
        println!("rounds: {rounds} x {requests} requests each way, one at a time, keep-alive");
        println!("| path | p50 µs | p99 µs |");
        println!("|---|---|---|");
        for (name, which) in [
            ("plain reqwest", PLAIN),
            ("reqwest-middleware, empty chain", BARE),
            ("reqwest-middleware + marathon", MARATHON),
        ] {
            let t = &all[which];
            println!("| {name} | {:.1} | {:.1} |", percentile(t, 0.5), percentile(t, 0.99));
        }
        println!(
            "| **added by marathon's middleware over plain reqwest** (median over rounds) | **{:.1}** | {:.1} |",
            median(added[0].clone()),
            median(added[1].clone())
        );
        println!(
            "of which reqwest-middleware itself (empty chain − plain, p50): {:.1} µs",
            median(added[2].clone())
        );
        let per_round: Vec<f64> = added[0].iter().map(|v| (v * 10.0).round() / 10.0).collect();
        println!("per-round added p50: {per_round:?}");
    });
}
