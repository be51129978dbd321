//! `shop webhook-listen`: a receiver for people. It prints each delivered
//! event as one line — type, order, sequence, whether its signature
//! verifies — and answers 204, so a developer can watch a shop's events
//! arrive.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;

use super::sinks::{signature, signing_key};

/// Listens on `port` (every path) until Ctrl-C; with `secret`, checks each
/// delivery's `webhook-signature`.
pub async fn listen(port: u16, secret: Option<&str>) -> anyhow::Result<()> {
    let key = secret.map(signing_key).transpose()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(address).await?;
    println!("listening on http://{} — point DATA_PLATFORM_URL here", listener.local_addr()?);
    let receive = move |headers: HeaderMap, body: Bytes| {
        let key = key.clone();
        async move {
            println!("{}", describe(&headers, &body, key.as_deref()));
            StatusCode::NO_CONTENT
        }
    };
    let app = axum::Router::new().route("/", post(receive.clone())).route("/{*path}", post(receive));
    axum::serve(listener, app)
        .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok().unwrap_or(()) })
        .await?;
    Ok(())
}

/// One line: `ORDER_PAID  order 17  #1  signature valid`.
fn describe(headers: &HeaderMap, body: &[u8], key: Option<&[u8]>) -> String {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let body = String::from_utf8_lossy(body);
    let event: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let signed = match key {
        None => "signature not checked (no --secret)",
        Some(key) => {
            let expected = signature(key, header("webhook-id"), header("webhook-timestamp"), &body);
            if header("webhook-signature").split(' ').any(|given| given == expected) {
                "signature valid"
            } else {
                "signature INVALID"
            }
        }
    };
    format!(
        "{:<16} order {:<8} #{:<4} {signed}",
        event["type"].as_str().unwrap_or("(not an event)"),
        event["orderId"].as_i64().map(|id| id.to_string()).unwrap_or_default(),
        event["sequence"].as_i64().map(|n| n.to_string()).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_per_event_says_whether_its_signature_verifies() {
        let body = r#"{"eventId":"e1","type":"ORDER_PAID","orderId":17,"sequence":1,"data":{}}"#;
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "e1".parse().unwrap());
        headers.insert("webhook-timestamp", "1700000000".parse().unwrap());
        headers.insert("webhook-signature", signature(b"key", "e1", "1700000000", body).parse().unwrap());
        let line = describe(&headers, body.as_bytes(), Some(b"key"));
        assert!(line.starts_with("ORDER_PAID") && line.contains("order 17") && line.contains("#1"), "{line}");
        assert!(line.ends_with("signature valid"), "{line}");
        assert!(describe(&headers, body.as_bytes(), Some(b"other")).ends_with("signature INVALID"));
    }
}
