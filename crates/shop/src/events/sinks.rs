//! Where events go: a webhook (Standard Webhooks headers and signature)
//! and NATS JetStream (stream `SHOP_EVENTS`, de-duplicated by
//! `Nats-Msg-Id`). Each sink answers per event whether it took it; the
//! relay retries the others.

use std::time::Duration;

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
    /// Created (or found) on the first publish, so that a NATS server
    /// still starting does not stop the shop from starting.
    stream: tokio::sync::OnceCell<()>,
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
                Some(JetStream { context: async_nats::jetstream::new(client), max_age, stream: Default::default() })
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

impl JetStream {
    async fn send(&self, event: &DueEvent) -> Result<(), String> {
        self.stream
            .get_or_try_init(|| async {
                let config = async_nats::jetstream::stream::Config {
                    name: STREAM.to_owned(),
                    subjects: vec!["shop.events.>".to_owned()],
                    max_age: self.max_age,
                    ..Default::default()
                };
                self.context.get_or_create_stream(config).await.map(drop)
            })
            .await
            .map_err(|error| format!("cannot reach stream {STREAM}: {error}"))?;
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
        published.await.map(drop).map_err(|error| format!("the stream did not acknowledge: {error}"))
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
