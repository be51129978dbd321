//! The scenarios: what each request is, how a run is prepared, and what must
//! hold in the database afterwards.

use std::sync::Arc;
use std::time::Instant;

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
    /// The same race through the asynchronous issue: accepted at once,
    /// issued behind the queue (reports how long requests took to settle).
    CouponRushAsync,
    /// One user's balance charged by every connection at once.
    ChargeStorm,
    /// One product bought by many users (set `--stock` for ample or scarce).
    OrderRush,
    /// A shop's day: mostly reads, with charges, orders and payments.
    Mixed,
    /// Payments of orders placed beforehand, each an event for the data
    /// platform: their backlog built while the receiver refuses, then
    /// drained (reports delivered events per second).
    Events,
    /// `GET /health/live` alone: no database, no Redis, no JSON read. The
    /// most any request can do here, the ceiling others are a share of.
    Health,
}

/// How long accepted asynchronous requests took to become final.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settlement {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Still pending a minute after the run.
    pub still_pending: i64,
}

/// What the run needs to build requests and to check its result.
pub struct Prepared {
    pub next: Arc<dyn Fn(u64) -> Request + Send + Sync>,
    check: Check,
}

enum Check {
    Coupons { code: String, total: i64, users: usize },
    QueuedCoupons { code: String, total: i64 },
    Charges { user_ids: Vec<i64> },
    Stock { product_ids: Vec<i64>, initial: i64 },
    AllOk,
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
    /// Whether three in four charges or orders go to one wallet or product,
    /// another each second.
    pub moving_hot_spot: bool,
}

fn round_robin(urls: &[String], n: u64, path: &str) -> String {
    format!("{}{path}", urls[n as usize % urls.len()])
}

/// Which of `rows` wallets or products request `n` goes to: each in turn,
/// or, with a hot spot moving since `moving`, three in four to the row of
/// the current second.
fn row_of(n: u64, rows: usize, moving: Option<Instant>) -> usize {
    match moving {
        Some(since) if !n.is_multiple_of(4) => since.elapsed().as_secs() as usize % rows,
        _ => n as usize % rows,
    }
}

impl Scenario {
    /// Whether the run loads one row: a wallet (`charge-storm`) or a
    /// product with ample stock (`order-rush`).
    pub fn on_one_row(self, args: &crate::RunArgs) -> bool {
        match self {
            Scenario::ChargeStorm => args.wallets == 1,
            Scenario::OrderRush => args.products == 1 && args.stock.is_none(),
            _ => false,
        }
    }

    pub async fn prepare(self, setup: Setup<'_>) -> anyhow::Result<Prepared> {
        let urls: Arc<[String]> = setup.urls.into();
        let moving = setup.moving_hot_spot.then(Instant::now);
        match self {
            Scenario::CouponRush | Scenario::CouponRushAsync => {
                let total = setup.stock.unwrap_or(100);
                let code = format!("BENCH_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
                let campaign =
                    json!({"code": code, "kind": "FIXED", "value": 1000, "totalQuantity": total, "validDays": 7});
                setup.api.post("/api/admin/coupon-types", Some(&setup.admin.token), campaign).await?;
                let users = tokens(setup.api.register_users(setup.users).await?);
                let body = json!({"couponType": code});
                let (path, check) = match self {
                    Scenario::CouponRushAsync => {
                        ("/api/coupons/issue-async", Check::QueuedCoupons { code: code.clone(), total })
                    }
                    _ => ("/api/coupons/issue", Check::Coupons { code, total, users: setup.users }),
                };
                let next = move |n: u64| Request {
                    method: Method::POST,
                    url: round_robin(&urls, n, path),
                    token: Some(users[n as usize % users.len()].clone()),
                    body: Some(body.clone()),
                };
                Ok(Prepared { next: Arc::new(next), check })
            }
            Scenario::ChargeStorm => {
                let wallets = setup.api.register_users(setup.wallets.max(1)).await?;
                let user_ids: Vec<i64> = wallets.iter().map(|wallet| wallet.user_id).collect();
                let wallets: Arc<[(String, String)]> = wallets
                    .into_iter()
                    .map(|wallet| (format!("/api/users/{}/points", wallet.user_id), wallet.token))
                    .collect();
                let next = move |n: u64| {
                    let (path, token) = &wallets[row_of(n, wallets.len(), moving)];
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
                    body: Some(bodies[row_of(n, bodies.len(), moving)].clone()),
                };
                Ok(Prepared { next: Arc::new(next), check: Check::Stock { product_ids, initial } })
            }
            Scenario::Mixed => mixed(setup, urls).await,
            Scenario::Events => payments(setup, urls).await,
            Scenario::Health => {
                let next = move |n: u64| Request {
                    method: Method::GET,
                    url: round_robin(&urls, n, "/health/live"),
                    token: None,
                    body: None,
                };
                Ok(Prepared { next: Arc::new(next), check: Check::AllOk })
            }
        }
    }

    /// For the asynchronous scenario: waits until every accepted request
    /// is final (up to a minute), then how long they took from acceptance
    /// to their outcome.
    pub async fn settlement(prepared: &Prepared, db: &PgPool) -> anyhow::Result<Option<Settlement>> {
        let Check::QueuedCoupons { code, .. } = &prepared.check else { return Ok(None) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM coupon_issue_requests r JOIN coupon_types t ON t.id = r.coupon_type_id
                 WHERE t.code = $1 AND r.status = 'PENDING'",
            )
            .bind(code)
            .fetch_one(db)
            .await?;
            if pending == 0 || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let (p50_ms, p99_ms, max_ms, pending): (f64, f64, f64, i64) = sqlx::query_as(
            "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0),
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0),
                    coalesce(max(ms), 0), count(*) FILTER (WHERE ms IS NULL)
             FROM (SELECT extract(epoch FROM r.processed_at - r.requested_at)::float8 * 1000 AS ms
                   FROM coupon_issue_requests r JOIN coupon_types t ON t.id = r.coupon_type_id
                   WHERE t.code = $1) AS settled",
        )
        .bind(code)
        .fetch_one(db)
        .await?;
        Ok(Some(Settlement { p50_ms, p99_ms, max_ms, still_pending: pending }))
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
            Check::QueuedCoupons { code, total } => {
                let (issued, accepted): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE r.status = 'ISSUED'), count(*)
                     FROM coupon_issue_requests r JOIN coupon_types t ON t.id = r.coupon_type_id WHERE t.code = $1",
                )
                .bind(code)
                .fetch_one(db)
                .await?;
                if issued != accepted.min(*total) {
                    broken.push(format!("{issued} requests issued, expected min({accepted} accepted, {total})"));
                }
                if accepted != outcome.count("202") as i64 {
                    broken.push(format!("{accepted} requests written down but {} answered 202", outcome.count("202")));
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
            Check::AllOk => {
                let others = outcome.requests - outcome.count("200");
                if others > 0 {
                    broken.push(format!("{others} of {} answers were not 200", outcome.requests));
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

/// Unpaid orders the events scenario prepares per user: each payment pays
/// one, and records one event.
const EVENT_ORDERS_PER_USER: usize = 10;

/// Charges each user and places `per_user` unpaid orders of one of
/// `products` (the i-th user's is `products[i % len]`), for payments to pay:
/// (the owner's token, the order id).
async fn unpaid_orders(
    api: &Api,
    users: &[Session],
    products: &[i64],
    per_user: usize,
) -> anyhow::Result<Arc<[(String, i64)]>> {
    let prepared = futures::stream::iter(users.iter().enumerate())
        .map(|(i, user)| {
            let product = products[i % products.len()];
            async move {
                let path = format!("/api/users/{}/points", user.user_id);
                api.post(&path, Some(&user.token), json!({"amount": 1_000_000})).await?;
                let mut orders = Vec::with_capacity(per_user);
                for _ in 0..per_user {
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
    Ok(unpaid.into())
}

/// Every request pays an order placed beforehand, once each.
async fn payments(setup: Setup<'_>, urls: Arc<[String]>) -> anyhow::Result<Prepared> {
    let product = setup.api.create_product(setup.admin, "bench event", 1000, 1_000_000_000).await?;
    let users = setup.api.register_users(setup.users).await?;
    let unpaid = unpaid_orders(setup.api, &users, &[product], EVENT_ORDERS_PER_USER).await?;
    let next = move |n: u64| {
        let (owner, order) = &unpaid[n as usize % unpaid.len()];
        Request {
            method: Method::POST,
            url: round_robin(&urls, n, "/api/payments"),
            token: Some(owner.clone()),
            body: Some(json!({"orderId": order})),
        }
    };
    Ok(Prepared { next: Arc::new(next), check: Check::Nothing })
}

/// Reads dominate: product list and detail, top sellers, balances; a fifth
/// of the requests charge, order or pay for an order placed beforehand.
async fn mixed(setup: Setup<'_>, urls: Arc<[String]>) -> anyhow::Result<Prepared> {
    let mut products = Vec::new();
    for i in 0..5 {
        products
            .push(setup.api.create_product(setup.admin, &format!("bench {i}"), 1000 * (i + 1), 1_000_000_000).await?);
    }
    let users = setup.api.register_users(setup.users).await?;
    let unpaid = unpaid_orders(setup.api, &users, &products, UNPAID_PER_USER).await?;
    let users: Arc<[(i64, String)]> = users.into_iter().map(|user| (user.user_id, user.token)).collect();
    let products: Arc<[i64]> = products.into();
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
