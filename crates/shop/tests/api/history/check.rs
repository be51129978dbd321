//! Checking a history: every answer against the database, unknown ones
//! both ways, and at the end that every unit in stock can still be sold.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{COUPON_CODES, COUPON_TOTALS, Event, Outcome, Run};
use crate::support::cluster::Cluster;
use crate::support::{User, invariants};

/// Done and unknown counts of one kind of effect: the database must hold at
/// least the done ones and at most all of them.
#[derive(Default, Debug)]
struct Bounds {
    done: i64,
    unknown: i64,
}

impl Bounds {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::Unknown => self.unknown += 1,
            Outcome::Refused => {}
        }
    }

    fn check(&self, what: &str, stored: i64) {
        assert!(
            (self.done..=self.done + self.unknown).contains(&stored),
            "{what}: {stored} stored, {} answered done and {} unknown",
            self.done,
            self.unknown
        );
    }
}

/// Every answer against the database.
pub async fn answers(cluster: &Cluster, events: &[Event]) {
    let db = &cluster.db;
    let mut charges: HashMap<(i64, i64), Outcome> = HashMap::new();
    let (mut coupons, mut orders, mut payments) = (Bounds::default(), Bounds::default(), Bounds::default());
    let mut orders_of: HashMap<i64, Bounds> = HashMap::new();
    let mut sold_out = HashSet::new();
    let mut held = HashSet::new();
    let mut unknown = 0;
    for event in events {
        match event {
            Event::SignedUp { email, user_id, outcome } => {
                let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_all(db)
                    .await
                    .unwrap();
                assert!(ids.len() <= 1, "{email} signed up twice");
                if let Some(id) = user_id {
                    assert_eq!(ids, vec![*id], "{email}'s account is the one answered");
                }
                if *outcome == Outcome::Unknown {
                    unknown += 1;
                }
            }
            Event::Charged { user_id, amount, outcome } => {
                assert!(charges.insert((*user_id, *amount), *outcome).is_none(), "one charge per amount and user");
            }
            Event::Issued { user_id, code, coupon_id, outcome, refusal } => {
                coupons.add(*outcome);
                if let Some(id) = coupon_id {
                    let holder: (i64, String) = sqlx::query_as(
                        "SELECT c.user_id, t.code FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE c.id = $1",
                    )
                    .bind(id)
                    .fetch_one(db)
                    .await
                    .unwrap();
                    assert_eq!(holder, (*user_id, (*code).to_owned()));
                }
                match refusal.as_deref() {
                    Some("COUPON_SOLD_OUT") => {
                        sold_out.insert(*code);
                    }
                    Some("COUPON_ALREADY_ISSUED") => {
                        held.insert((*user_id, *code));
                    }
                    _ => {}
                }
            }
            Event::Placed { user_id, order_id, final_amount, outcome } => {
                orders.add(*outcome);
                orders_of.entry(*user_id).or_default().add(*outcome);
                if let Some(id) = order_id {
                    let row: (i64, i64) = sqlx::query_as("SELECT user_id, final_amount FROM orders WHERE id = $1")
                        .bind(id)
                        .fetch_one(db)
                        .await
                        .unwrap();
                    assert_eq!(row, (*user_id, *final_amount));
                }
            }
            Event::Paid { user_id, order_id, payment_id, amount, outcome } => {
                payments.add(*outcome);
                if let Some(id) = payment_id {
                    let row: (i64, i64, i64) =
                        sqlx::query_as("SELECT order_id, user_id, amount FROM payments WHERE id = $1")
                            .bind(id)
                            .fetch_one(db)
                            .await
                            .unwrap();
                    assert_eq!(row, (*order_id, *user_id, *amount));
                }
            }
            Event::Cancelled { order_id, outcome: Outcome::Done } => {
                let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                    .bind(order_id)
                    .fetch_one(db)
                    .await
                    .unwrap();
                assert_eq!(status, "CANCELLED");
            }
            Event::Cancelled { .. } => {}
        }
    }
    // Charges, exactly: every ledger row is one request's, made once; a
    // charge answered done is there, one refused is not.
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT user_id, amount, count(*) FROM point_ledger WHERE kind = 'CHARGE' GROUP BY user_id, amount",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let stored: HashMap<(i64, i64), i64> = rows.into_iter().map(|(user, amount, n)| ((user, amount), n)).collect();
    for ((user_id, amount), outcome) in &charges {
        let n = stored.get(&(*user_id, *amount)).copied().unwrap_or(0);
        match outcome {
            Outcome::Done => assert_eq!(n, 1, "user {user_id}'s charge of {amount}, answered done"),
            Outcome::Refused => assert_eq!(n, 0, "user {user_id}'s charge of {amount}, refused"),
            Outcome::Unknown => assert!(n <= 1, "user {user_id}'s charge of {amount}, unknown, made {n} times"),
        }
        unknown += i64::from(*outcome == Outcome::Unknown);
    }
    for key in stored.keys() {
        assert!(charges.contains_key(key), "a charge of {} to user {} nobody asked for", key.1, key.0);
    }
    let counted: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM coupons), (SELECT count(*) FROM orders), (SELECT count(*) FROM payments)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    coupons.check("coupons", counted.0);
    orders.check("orders", counted.1);
    payments.check("payments", counted.2);
    for (user_id, bounds) in &orders_of {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(db)
            .await
            .unwrap();
        bounds.check(&format!("user {user_id}'s orders"), stored);
    }
    // A refusal is final: sold out means every unit issued, already issued
    // means held.
    for (code, total) in COUPON_CODES.iter().zip(COUPON_TOTALS) {
        if sold_out.contains(code) {
            let issued: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE t.code = $1",
            )
            .bind(code)
            .fetch_one(db)
            .await
            .unwrap();
            assert_eq!(issued, total, "{code} was answered sold out");
        }
    }
    for (user_id, code) in &held {
        let holds: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id
                            WHERE c.user_id = $1 AND t.code = $2)",
        )
        .bind(user_id)
        .bind(code)
        .fetch_one(db)
        .await
        .unwrap();
        assert!(holds, "user {user_id} was answered already issued {code}");
    }
    unknown += coupons.unknown + orders.unknown + payments.unknown;
    eprintln!(
        "history: {} events ({unknown} unknown), {} charges, {} coupons, {} orders, {} payments checked",
        events.len(),
        stored.values().sum::<i64>(),
        counted.0,
        counted.1,
        counted.2
    );
}

/// Whatever the faults left behind, every unit PostgreSQL holds can be sold
/// (a stock gate may hold too many units for a while, never too few for
/// good): each product is bought out, ten units at a time.
pub async fn every_unit_in_stock_sells(run: &Run, buyer: &User) {
    for product in &run.products {
        for _ in 0..200 {
            let stock: i64 = sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
                .bind(product)
                .fetch_one(&run.cluster.db)
                .await
                .unwrap();
            if stock == 0 {
                break;
            }
            let body = json!({"items": [{"productId": product, "quantity": stock.min(10)}]});
            let request = run.cluster.client.post(run.cluster.url(0, "/api/orders")).bearer_auth(&buyer.token);
            let status = request.json(&body).send().await.unwrap().status();
            if status != StatusCode::CREATED {
                // A change not yet passed on to the gate: the reconciler will.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let stock: i64 = sqlx::query_scalar("SELECT stock FROM products WHERE id = $1")
            .bind(product)
            .fetch_one(&run.cluster.db)
            .await
            .unwrap();
        assert_eq!(stock, 0, "product {product}'s last units could not be sold");
    }
    invariants::all(&run.cluster.db).await;
}
