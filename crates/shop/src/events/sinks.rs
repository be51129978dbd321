//! Where events go: a webhook (Standard Webhooks headers and signature)
//! and NATS JetStream (stream `SHOP_EVENTS`, de-duplicated by
//! `Nats-Msg-Id`). Each sink answers per event whether it took it; the
//! relay retries the others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::EventsConfig;
use crate::storage::outbox::DueEvent;

/// The configured sinks.
pub struct Sinks {
    webhook: Option<Webhook>,
    jetstream: Option<JetStream>,
}

/// The stream every event is published to, on `shop.events.<type>`.
const STREAM: &str = "SHOP_EVENTS";

struct JetStream {
    context: async_nats::jetstream::Context,
    /// How long the stream keeps a message: as long as delivered events are kept.
    max_age: Duration,
    /// How long the stream remembers a message id (see [`duplicate_window`]).
    duplicate_window: Duration,
    /// Whether the stream is known to exist: looked for (and created if
    /// missing) on the first publish, so that a NATS server still starting
    /// does not stop the shop from starting, and again whenever a publish
    /// finds no stream (deleted, or a server back with an empty store).
    stream_ready: AtomicBool,
}

struct Webhook {
    client: reqwest::Client,
    url: String,
    key: Option<Vec<u8>>,
}

impl Sinks {
    pub async fn new(config: &EventsConfig) -> anyhow::Result<Self> {
        let webhook = match &config.data_platform_url {
            Some(url) => Some(Webhook {
                url: checked_url(url)?,
                client: reqwest::Client::builder()
                    .timeout(Duration::from_millis(config.data_platform_timeout_ms))
                    .build()?,
                key: config.data_platform_secret.as_deref().map(signing_key).transpose()?,
            }),
            None => None,
        };
        let jetstream = match &config.events_nats_url {
            Some(url) => {
                // Connects in the background, and again whenever the
                // connection drops; publishes fail (and are retried) meanwhile.
                let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url).await?;
                let max_age = Duration::from_secs(u64::from(config.event_retention_days) * 86_400);
                Some(JetStream {
                    context: async_nats::jetstream::new(client),
                    max_age,
                    duplicate_window: duplicate_window(Duration::from_millis(config.event_retry_max_ms), max_age),
                    stream_ready: AtomicBool::new(false),
                })
            }
            None => None,
        };
        Ok(Self { webhook, jetstream })
    }

    /// Whether any sink is configured: without one, events stay recorded.
    pub fn any(&self) -> bool {
        self.webhook.is_some() || self.jetstream.is_some()
    }

    /// The names of the configured sinks: an event is delivered once each
    /// has taken it.
    pub fn names(&self) -> Vec<String> {
        let webhook = self.webhook.iter().map(|_| "webhook".to_owned());
        webhook.chain(self.jetstream.iter().map(|_| "jetstream".to_owned())).collect()
    }

    /// Sends the event to `sink`; why it was not taken, if it was not.
    pub async fn send(&self, sink: &str, event: &DueEvent) -> Result<(), String> {
        let outcome = match (sink, &self.webhook, &self.jetstream) {
            ("webhook", Some(webhook), _) => webhook.send(event).await,
            ("jetstream", _, Some(jetstream)) => jetstream.send(event).await,
            _ => Err(format!("no sink named {sink}")),
        };
        let label = if outcome.is_ok() { "delivered" } else { "failed" };
        metrics::counter!("shop_outbox_deliveries_total", "sink" => sink.to_owned(), "outcome" => label).increment(1);
        outcome
    }
}

impl Webhook {
    async fn send(&self, event: &DueEvent) -> Result<(), String> {
        let id = event.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("idempotency-key", &id)
            .header("webhook-id", &id)
            .header("webhook-timestamp", &timestamp);
        if let Some(key) = &self.key {
            request = request.header("webhook-signature", signature(key, &id, &timestamp, &event.body));
        }
        match request.body(event.body.clone()).send().await {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => Err(format!("the webhook answered {}", answer.status())),
            Err(error) if error.is_timeout() => Err("the webhook did not answer in time".to_owned()),
            Err(error) => Err(format!("the webhook could not be reached: {error}")),
        }
    }
}

/// JetStream stores a message id once within its duplicate window (two
/// minutes unless told). A resend comes at most `EVENT_RETRY_MAX_MS` after
/// the attempt whose acknowledgement was lost, later still if PostgreSQL or
/// NATS was down meanwhile: the window covers twice the longest retry
/// delay, and at least the default, within the stream's retention.
fn duplicate_window(retry_max: Duration, max_age: Duration) -> Duration {
    (retry_max * 2).max(Duration::from_secs(120)).min(max_age)
}

impl JetStream {
    async fn send(&self, event: &DueEvent) -> Result<(), String> {
        if !self.stream_ready.load(Ordering::Acquire) {
            self.ensure_stream().await.map_err(|error| format!("cannot reach stream {STREAM}: {error}"))?;
            self.stream_ready.store(true, Ordering::Release);
        }
        let mut headers = async_nats::HeaderMap::new();
        // JetStream keeps one message per id within its duplicate window:
        // a publish retried after a lost acknowledgement is stored once.
        headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
        let subject = format!("shop.events.{}", event.event_type);
        let published = self
            .context
            .publish_with_headers(subject, headers, event.body.clone().into())
            .await
            .map_err(|error| format!("could not publish: {error}"))?;
        published.await.map(drop).map_err(|error| {
            if error.kind() == PublishErrorKind::StreamNotFound {
                self.stream_ready.store(false, Ordering::Release);
            }
            format!("the stream did not acknowledge: {error}")
        })
    }

    /// Creates the stream if it is missing, and widens its duplicate window
    /// if it is narrower than this shop's retries need (keeping whatever
    /// else an operator set).
    async fn ensure_stream(&self) -> anyhow::Result<()> {
        let config = async_nats::jetstream::stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["shop.events.>".to_owned()],
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        };
        let mut stream = self.context.get_or_create_stream(config).await?;
        let mut config = stream.info().await?.config.clone();
        if config.duplicate_window < self.duplicate_window {
            // JetStream wants the window within the retention, if there is one.
            let retention = if config.max_age.is_zero() { self.duplicate_window } else { config.max_age };
            config.duplicate_window = self.duplicate_window.min(retention);
            self.context.update_stream(config).await?;
        }
        Ok(())
    }
}

/// An `http` or `https` URL, refused at start rather than at every delivery.
fn checked_url(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| anyhow::anyhow!("DATA_PLATFORM_URL {url:?}: {error}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "DATA_PLATFORM_URL {url:?}: must be an http or https URL"
    );
    Ok(url.to_owned())
}

/// A Standard Webhooks secret (`whsec_` and base64) is its decoded key;
/// any other string is its own bytes.
pub(super) fn signing_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => Ok(BASE64.decode(encoded)?),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
pub(super) fn signature(key: &[u8], id: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}
