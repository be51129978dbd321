//! Preparing a run through the public API: the admin's token, products,
//! campaigns, and many users registered concurrently (a spawned shop hashes
//! passwords cheaply; against another shop, lower `ARGON2_*` first).

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

pub struct Session {
    pub user_id: i64,
    pub token: String,
}

pub struct Api {
    pub client: reqwest::Client,
    pub url: String,
}

impl Api {
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut request = self.client.post(format!("{}{path}", self.url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        Ok(body)
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let body = self.post("/api/auth/login", None, json!({"email": email, "password": password})).await?;
        Ok(session(&body))
    }

    /// Registers `count` users, 32 at a time.
    pub async fn register_users(&self, count: usize) -> anyhow::Result<Vec<Session>> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let registrations = futures::stream::iter(0..count)
            .map(|i| {
                let body = json!({"email": format!("bench-{run}-{i}@example.com"), "password": "password123", "name": "Bench"});
                async move { self.post("/api/auth/register", None, body).await.map(|answer| session(&answer)) }
            })
            .buffer_unordered(32);
        registrations.collect::<Vec<_>>().await.into_iter().collect()
    }

    pub async fn create_product(&self, admin: &Session, name: &str, price: i64, stock: i64) -> anyhow::Result<i64> {
        let body = json!({"name": name, "price": price, "stock": stock, "category": "bench"});
        let created = self.post("/api/admin/products", Some(&admin.token), body).await?;
        created["id"].as_i64().context("product id")
    }
}

fn session(body: &Value) -> Session {
    Session {
        user_id: body["userId"].as_i64().unwrap_or_default(),
        token: body["accessToken"].as_str().unwrap_or_default().to_owned(),
    }
}
