//! Pub/sub between the instances on one Redis: each instance publishes its
//! events (cooldowns with the account id) on `<p>:events`, and every other
//! instance feeds them into its pools and its `/_marathon/events` before its
//! next pick. Push, not polling: the delay is one Redis round trip.
//!
//! Publishing never waits: [`Cluster::announce`] queues (bounded; a full
//! queue drops, as the shared hot state carries cooldowns anyway), and a task
//! on the store's runtime sends. While Redis is down messages are dropped and
//! that is said once; the instances reconcile through the hot state when it
//! returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use marathon_core::{AccountId, Reason, UnixMillis};
use marathon_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{Inner, describe, random_token};

/// How many announcements may wait for Redis before new ones are dropped.
const QUEUE: usize = 4096;

/// A cooldown, as it travels between instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCooldown {
    /// Provider (route name).
    pub provider: String,
    /// The account.
    pub account: AccountId,
    /// Benched until.
    pub until: UnixMillis,
    /// Why (re-read through [`Reason`]'s sanitizer on arrival).
    pub reason: Reason,
}

/// One message on the channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerMessage {
    /// The sending instance (its own messages come back; it skips them).
    pub from: String,
    /// The event's JSON, as `/_marathon/events` carries it.
    pub event: String,
    /// Set when the event benched an account.
    #[serde(default)]
    pub cooldown: Option<WireCooldown>,
}

/// This instance's end of the channel.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    id: Arc<str>,
    tx: mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("id", &self.id).finish()
    }
}

impl Cluster {
    pub(crate) fn new(inner: Arc<Inner>) -> Cluster {
        let (tx, rx) = mpsc::channel(QUEUE);
        inner.bridge.spawn(publisher(inner.clone(), rx));
        Cluster {
            inner,
            id: random_token().into(),
            tx,
        }
    }

    /// This instance's id on the channel.
    pub fn instance_id(&self) -> &str {
        &self.id
    }

    /// Queues an event for the other instances. Never blocks.
    pub fn announce(&self, event_json: &str, cooldown: Option<WireCooldown>) {
        let msg = PeerMessage {
            from: self.id.to_string(),
            event: event_json.to_string(),
            cooldown,
        };
        let bytes = serde_json::to_vec(&msg).unwrap_or_default();
        if self.tx.try_send(bytes).is_err() {
            tracing::debug!("peer announcement dropped (queue full or Redis down)");
        }
    }

    /// Delivers every other instance's messages to `deliver` (on the store's
    /// runtime thread: keep it short), resubscribing after Redis comes back.
    /// Returns once subscribed, or with an error if the first subscription
    /// fails (it keeps trying in the background).
    pub fn listen(
        &self,
        deliver: impl Fn(PeerMessage) + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        self.inner.bridge.spawn(subscriber(
            self.inner.clone(),
            self.id.clone(),
            Arc::new(deliver),
            ready_tx,
        ));
        let first = self
            .inner
            .bridge
            .run(async move {
                tokio::time::timeout(Duration::from_secs(3), ready_rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            })
            .flatten();
        match first {
            Some(Ok(())) => Ok(()),
            Some(Err(detail)) => Err(StoreError::Unavailable {
                backend: self.inner.shown.clone(),
                detail,
            }),
            None => Err(StoreError::Unavailable {
                backend: self.inner.shown.clone(),
                detail: "subscribing timed out".into(),
            }),
        }
    }
}

async fn publisher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let down = AtomicBool::new(false);
    let mut conn = inner.conn.clone();
    while let Some(bytes) = rx.recv().await {
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&inner.keys.events)
            .arg(bytes)
            .query_async(&mut conn)
            .await;
        match sent {
            Ok(_) if down.swap(false, Ordering::SeqCst) => {
                tracing::warn!("{}: publishing to the other instances again", inner.shown)
            }
            Ok(_) => {}
            Err(e) if !down.swap(true, Ordering::SeqCst) => tracing::error!(
                "{}: cannot tell the other instances what this one learns ({}); \
                 they catch up through the shared hot state when it returns",
                inner.shown,
                describe(&e)
            ),
            Err(_) => {}
        }
    }
}

type Deliver = Arc<dyn Fn(PeerMessage) + Send + Sync>;

async fn subscriber(
    inner: Arc<Inner>,
    me: Arc<str>,
    deliver: Deliver,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    use futures_util::StreamExt as _;
    let mut ready = Some(ready);
    let mut pause = Duration::from_millis(50);
    let mut lost = false;
    loop {
        let subscribed = async {
            let mut pubsub = inner.client.get_async_pubsub().await?;
            pubsub.subscribe(&inner.keys.events).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(p)) => p,
            failed => {
                let detail = match failed {
                    Ok(Err(e)) => describe(&e),
                    _ => "timed out".into(),
                };
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(detail));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        if lost {
            tracing::warn!("{}: receiving the other instances' news again", inner.shown);
            lost = false;
        }
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                continue;
            };
            let Ok(msg) = serde_json::from_slice::<PeerMessage>(&payload) else {
                continue;
            };
            if *msg.from != *me {
                deliver(msg);
            }
        }
        if !lost {
            tracing::error!(
                "{}: lost the channel to the other instances; reconnecting",
                inner.shown
            );
        }
        lost = true;
    }
}
