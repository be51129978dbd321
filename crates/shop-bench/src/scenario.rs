//! The scenarios: what each request is, how a run is prepared, and what must
//! hold in the database afterwards.

use std::sync::Arc;

use clap::ValueEnum;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::load::{Outcome, Request};
use crate::setup::{Api, Session};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Many distinct users race for a limited coupon campaign.
    CouponRush,
    /// One user's balance charged by every connection at once.
    ChargeStorm,
    /// One product bought by many users (set `--stock` for ample or scarce).
    OrderRush,
    /// A shop's day: mostly reads, with charges, orders and payments.
    Mixed,
}

/// What the run needs to build requests and to check its result.
pub struct Prepared {
    pub next: Arc<dyn Fn(u64) -> Request + Send + Sync>,
    check: Check,
}

enum Check {
    Coupons { code: String, total: i64, users: usize },
    Charges { user_ids: Vec<i64> },
    Stock { product_ids: Vec<i64>, initial: i64 },
    Nothing,
}

pub struct Setup<'a> {
    pub api: &'a Api,
    pub admin: &'a Session,
    pub urls: &'a [String],
    pub users: usize,
    pub stock: Option<i64>,
    /// Wallets a charge storm spreads over (1: one hot wallet).
    pub wallets: usize,
    /// Products an order rush spreads over (1: one hot product).
    pub products: usize,
}

fn round_robin(urls: &[String], n: u64, path: &str) -> String {
    format!("{}{path}", urls[n as usize % urls.len()])
}

impl Scenario {
    pub async fn prepare(self, setup: Setup<'_>) -> anyhow::Result<Prepared> {
        let urls: Arc<[String]> = setup.urls.into();
        match self {
            Scenario::CouponRush => {
                let total = setup.stock.unwrap_or(100);
                let code = format!("BENCH_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
                let campaign =
                    json!({"code": code, "kind": "FIXED", "value": 1000, "totalQuantity": total, "validDays": 7});
                setup.api.post("/api/admin/coupon-types", Some(&setup.admin.token), campaign).await?;
                let users = tokens(setup.api.register_users(setup.users).await?);
                let body = json!({"couponType": code});
                let next = move |n: u64| Request {
                    method: Method::POST,
                    url: round_robin(&urls, n, "/api/coupons/issue"),
                    token: Some(users[n as usize % users.len()].clone()),
                    body: Some(body.clone()),
                };
                Ok(Prepared { next: Arc::new(next), check: Check::Coupons { code, total, users: setup.users } })
            }
            Scenario::ChargeStorm => {
                let wallets = setup.api.register_users(setup.wallets.max(1)).await?;
                let user_ids: Vec<i64> = wallets.iter().map(|wallet| wallet.user_id).collect();
                let wallets: Arc<[(String, String)]> = wallets
                    .into_iter()
                    .map(|wallet| (format!("/api/users/{}/points", wallet.user_id), wallet.token))
                    .collect();
                let next = move |n: u64| {
                    let (path, token) = &wallets[n as usize % wallets.len()];
                    Request {
                        method: Method::POST,
                        url: round_robin(&urls, n, path),
                        token: Some(token.clone()),
                        body: Some(json!({"amount": 1000})),
                    }
                };
                Ok(Prepared { next: Arc::new(next), check: Check::Charges { user_ids } })
            }
            Scenario::OrderRush => {
                let initial = setup.stock.unwrap_or(1_000_000_000);
                let mut product_ids = Vec::new();
                for i in 0..setup.products.max(1) {
                    product_ids
                        .push(setup.api.create_product(setup.admin, &format!("bench hot {i}"), 1000, initial).await?);
                }
                let users = tokens(setup.api.register_users(setup.users).await?);
                let bodies: Arc<[serde_json::Value]> =
                    product_ids.iter().map(|id| json!({"items": [{"productId": id, "quantity": 1}]})).collect();
                let next = move |n: u64| Request {
                    method: Method::POST,
                    url: round_robin(&urls, n, "/api/orders"),
                    token: Some(users[n as usize % users.len()].clone()),
                    body: Some(bodies[n as usize % bodies.len()].clone()),
                };
                Ok(Prepared { next: Arc::new(next), check: Check::Stock { product_ids, initial } })
            }
            Scenario::Mixed => mixed(setup, urls).await,
        }
    }

    /// Broken invariants: the scenario's own, then every invariant of the shop (`shop::invariants`).
    pub async fn check(prepared: &Prepared, outcome: &Outcome, db: &PgPool) -> anyhow::Result<Vec<String>> {
        let mut broken = Vec::new();
        match &prepared.check {
            Check::Coupons { code, total, users } => {
                let issued: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE t.code = $1",
                )
                .bind(code)
                .fetch_one(db)
                .await?;
                let asked = (*users as u64).min(outcome.requests) as i64;
                if issued != asked.min(*total) {
                    broken.push(format!("{issued} coupons issued, expected min({asked} users, {total})"));
                }
                if issued != outcome.count("201") as i64 {
                    broken.push(format!("{issued} coupons issued but {} answered 201", outcome.count("201")));
                }
            }
            Check::Charges { user_ids } => {
                let balance: i64 =
                    sqlx::query_scalar("SELECT SUM(balance)::bigint FROM point_wallets WHERE user_id = ANY($1)")
                        .bind(user_ids)
                        .fetch_one(db)
                        .await?;
                let charged = 1000 * outcome.count("200") as i64;
                if balance != charged {
                    broken.push(format!("balance {balance} ≠ 1,000 × {} successful charges", outcome.count("200")));
                }
            }
            Check::Stock { product_ids, initial } => {
                let stock: i64 = sqlx::query_scalar("SELECT SUM(stock)::bigint FROM products WHERE id = ANY($1)")
                    .bind(product_ids)
                    .fetch_one(db)
                    .await?;
                let sold = outcome.count("201") as i64;
                let made = initial * product_ids.len() as i64;
                if stock != made - sold {
                    broken.push(format!("stock {stock} ≠ {made} − {sold} orders placed"));
                }
            }
            Check::Nothing => {}
        }
        broken.extend(shop::invariants::violations(db).await?);
        Ok(broken)
    }
}

fn tokens(sessions: Vec<Session>) -> Arc<[String]> {
    sessions.into_iter().map(|session| session.token).collect()
}

/// Unpaid orders mixed prepares per user, for its payments: enough for
/// 150,000 requests (two payments in fifty) with 2,000 users; a longer run
/// starts paying orders again, and those answer `ORDER_NOT_PAYABLE`.
const UNPAID_PER_USER: usize = 3;

/// Reads dominate: product list and detail, top sellers, balances; a fifth
/// of the requests charge, order or pay for an order placed beforehand.
async fn mixed(setup: Setup<'_>, urls: Arc<[String]>) -> anyhow::Result<Prepared> {
    let mut products = Vec::new();
    for i in 0..5 {
        products
            .push(setup.api.create_product(setup.admin, &format!("bench {i}"), 1000 * (i + 1), 1_000_000_000).await?);
    }
    let users = setup.api.register_users(setup.users).await?;
    let api = setup.api;
    let prepared = futures::stream::iter(users.iter().enumerate())
        .map(|(i, user)| {
            let product = products[i % products.len()];
            async move {
                let path = format!("/api/users/{}/points", user.user_id);
                api.post(&path, Some(&user.token), json!({"amount": 1_000_000})).await?;
                let mut orders = Vec::with_capacity(UNPAID_PER_USER);
                for _ in 0..UNPAID_PER_USER {
                    let order = json!({"items": [{"productId": product, "quantity": 1}]});
                    let placed = api.post("/api/orders", Some(&user.token), order).await?;
                    orders.push((user.token.clone(), placed["orderId"].as_i64().unwrap_or_default()));
                }
                anyhow::Ok(orders)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut unpaid = Vec::new();
    for orders in prepared {
        unpaid.extend(orders?);
    }
    let users: Arc<[(i64, String)]> = users.into_iter().map(|user| (user.user_id, user.token)).collect();
    let products: Arc<[i64]> = products.into();
    let unpaid: Arc<[(String, i64)]> = unpaid.into();
    let next = move |n: u64| {
        let (user_id, token) = &users[n as usize % users.len()];
        let product = products[n as usize % products.len()];
        let (method, path, body, token) = match n % 50 {
            0..=19 => (Method::GET, "/api/products?limit=20".to_owned(), None, None),
            20..=29 => (Method::GET, format!("/api/products/{product}"), None, None),
            30..=34 => (Method::GET, "/api/products/top-sellers".to_owned(), None, None),
            35..=39 => (Method::GET, format!("/api/users/{user_id}/points"), None, Some(token.clone())),
            40..=43 => (
                Method::POST,
                format!("/api/users/{user_id}/points"),
                Some(json!({"amount": 1000})),
                Some(token.clone()),
            ),
            44..=47 => {
                let order = json!({"items": [{"productId": product, "quantity": 1}]});
                (Method::POST, "/api/orders".to_owned(), Some(order), Some(token.clone()))
            }
            _ => {
                // Two payments in every 50 requests, each of its own order.
                let (owner, order) = &unpaid[(n / 50 * 2 + n % 2) as usize % unpaid.len()];
                (Method::POST, "/api/payments".to_owned(), Some(json!({"orderId": order})), Some(owner.clone()))
            }
        };
        Request { method, url: round_robin(&urls, n, &path), token, body }
    };
    Ok(Prepared { next: Arc::new(next), check: Check::Nothing })
}
