//! The races again, spread round-robin over three real `shop serve`
//! processes on one PostgreSQL and one Redis: what one instance's memory
//! cannot see, the strategies must still hold.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::{CouponStrategyKind, PointsStrategyKind, StockStrategyKind, value_names};

use crate::concurrency::{count, together, together_with_bodies};
use crate::support::cluster::Cluster;
use crate::support::receiver::Receiver;
use crate::support::{User, admin_of, await_issue_requests, bulk_users};

async fn start(strategy_variable: &str, strategy: &str) -> Cluster {
    Cluster::start(
        3,
        &[
            (strategy_variable, strategy),
            ("POINTS_DAILY_CHARGE_LIMIT", "0"),
            ("POINTS_MONTHLY_CHARGE_LIMIT", "0"),
            ("DATABASE_MAX_CONNECTIONS", "5"),
            // A rush queues every request of three instances on one lease;
            // on a busy machine the last waits past the default 3 s, and
            // these tests are about the count, not the wait.
            ("REDIS_LOCK_WAIT_MS", "30000"),
        ],
        |_| Vec::new(),
    )
    .await
}

async fn post(cluster: &Cluster, instance: usize, path: &str, user: &User, body: Value) -> reqwest::Response {
    cluster.client.post(cluster.url(instance, path)).bearer_auth(&user.token).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asynchronous_requests_spread_over_instances_issue_exactly_the_total() {
    for strategy in value_names::<CouponStrategyKind>() {
        let cluster = start("COUPON_STRATEGY", &strategy).await;
        let admin = admin_of(&cluster.db).await;
        let campaign = json!({"code": "QUEUED", "kind": "FIXED", "value": 1000, "totalQuantity": 30, "validDays": 7});
        assert_eq!(post(&cluster, 0, "/api/admin/coupon-types", &admin, campaign).await.status(), StatusCode::CREATED);
        let users = bulk_users(&cluster.db, 300).await;
        let answers = together_with_bodies(
            users
                .iter()
                .enumerate()
                .map(|(i, user)| post(&cluster, i, "/api/coupons/issue-async", user, json!({"couponType": "QUEUED"})))
                .collect(),
        )
        .await;
        let mut accepted = Vec::new();
        for ((status, body), user) in answers.iter().zip(&users) {
            if *status == StatusCode::ACCEPTED {
                accepted.push((body["requestId"].as_str().unwrap().to_owned(), user.token.clone()));
            } else {
                assert_eq!(
                    (*status, body["code"].as_str()),
                    (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT")),
                    "{strategy}"
                );
            }
        }
        let views =
            await_issue_requests(&cluster.client, |path| cluster.url(0, path), &accepted, Duration::from_secs(5)).await;
        let issued = views.iter().filter(|view| view["status"] == "ISSUED").count();
        let rejected = views.iter().filter(|view| view["status"] == "REJECTED" && view["reason"] == "SOLD_OUT").count();
        assert_eq!((issued, rejected), (30, accepted.len() - 30), "{strategy}: every request final within 5 s");
        let (rows, holders): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM coupons")
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        assert_eq!((rows, holders), (30, 30), "{strategy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coupons_are_never_over_issued_across_instances() {
    for strategy in value_names::<CouponStrategyKind>() {
        let cluster = start("COUPON_STRATEGY", &strategy).await;
        let admin = admin_of(&cluster.db).await;
        let campaign = json!({"code": "SPREAD", "kind": "FIXED", "value": 1000, "totalQuantity": 30, "validDays": 7});
        assert_eq!(post(&cluster, 0, "/api/admin/coupon-types", &admin, campaign).await.status(), StatusCode::CREATED);
        let users = bulk_users(&cluster.db, 300).await;
        let outcomes = together(
            users
                .iter()
                .enumerate()
                .map(|(i, user)| post(&cluster, i, "/api/coupons/issue", user, json!({"couponType": "SPREAD"})))
                .collect(),
        )
        .await;
        assert_eq!(count(&outcomes, StatusCode::CREATED), 30, "{strategy}");
        let (rows, holders): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM coupons")
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        assert_eq!((rows, holders), (30, 30), "{strategy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_is_never_oversold_across_instances() {
    for strategy in value_names::<StockStrategyKind>() {
        let cluster = start("STOCK_STRATEGY", &strategy).await;
        let admin = admin_of(&cluster.db).await;
        let product = json!({"name": "hot", "price": 1000, "stock": 20, "category": "test"});
        let product: Value = post(&cluster, 0, "/api/admin/products", &admin, product).await.json().await.unwrap();
        let order = json!({"items": [{"productId": product["id"], "quantity": 1}]});
        let buyers = bulk_users(&cluster.db, 150).await;
        let outcomes = together(
            buyers
                .iter()
                .enumerate()
                .map(|(i, buyer)| post(&cluster, i, "/api/orders", buyer, order.clone()))
                .collect(),
        )
        .await;
        assert_eq!(count(&outcomes, StatusCode::CREATED), 20, "{strategy}");
        let (stock, held): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT stock FROM products), (SELECT COALESCE(SUM(quantity), 0)::bigint FROM order_items)",
        )
        .fetch_one(&cluster.db)
        .await
        .unwrap();
        assert_eq!((stock, held), (0, 20), "{strategy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_and_payments_across_instances_keep_the_ledger() {
    for strategy in value_names::<PointsStrategyKind>() {
        let cluster = start("POINTS_STRATEGY", &strategy).await;
        let admin = admin_of(&cluster.db).await;
        let product = json!({"name": "once", "price": 3000, "stock": 100, "category": "test"});
        let product: Value = post(&cluster, 0, "/api/admin/products", &admin, product).await.json().await.unwrap();
        let user = bulk_users(&cluster.db, 1).await.remove(0);
        let wallet = format!("/api/users/{}/points", user.id);
        assert_eq!(post(&cluster, 0, &wallet, &user, json!({"amount": 10000})).await.status(), StatusCode::OK);
        let order: Value =
            post(&cluster, 1, "/api/orders", &user, json!({"items": [{"productId": product["id"], "quantity": 1}]}))
                .await
                .json()
                .await
                .unwrap();
        let pay = json!({"orderId": order["orderId"]});
        let charges = (0..60).map(|i| {
            Box::pin(post(&cluster, i, &wallet, &user, json!({"amount": 1000})))
                as std::pin::Pin<Box<dyn Future<Output = _>>>
        });
        let payments = (0..15).map(|i| {
            Box::pin(post(&cluster, i, "/api/payments", &user, pay.clone()))
                as std::pin::Pin<Box<dyn Future<Output = _>>>
        });
        let outcomes = together(charges.chain(payments).collect()).await;
        let charged = outcomes[..60].iter().filter(|(status, _)| *status == StatusCode::OK).count() as i64;
        assert_eq!(count(&outcomes[60..], StatusCode::CREATED), 1, "{strategy}: paid once");
        if strategy != "optimistic" {
            assert_eq!(charged, 60, "{strategy} queues charges instead of refusing them");
        }
        let (balance, ledger): (i64, i64) = sqlx::query_as(
            "SELECT balance, (SELECT SUM(amount)::bigint FROM point_ledger WHERE user_id = $1) FROM point_wallets WHERE user_id = $1",
        )
        .bind(user.id)
        .fetch_one(&cluster.db)
        .await
        .unwrap();
        assert_eq!(balance, 10000 + 1000 * charged - 3000, "{strategy}");
        assert_eq!(ledger, balance, "{strategy}");
    }
}

/// Three relays deliver side by side, one of them killed mid-delivery: every
/// event arrives, and no order's event before the one it follows was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_deliver_every_event_in_order_though_one_is_killed() {
    let receiver = Receiver::up().await;
    receiver.delay(Duration::from_millis(1000));
    let cluster = Cluster::start(
        3,
        &[
            ("DATA_PLATFORM_URL", receiver.url.as_str()),
            ("EVENT_RETRY_BASE_MS", "50"),
            ("EVENT_RETRY_MAX_MS", "500"),
            ("POINTS_DAILY_CHARGE_LIMIT", "0"),
            ("DATABASE_MAX_CONNECTIONS", "5"),
        ],
        |_| Vec::new(),
    )
    .await;
    let admin = admin_of(&cluster.db).await;
    let product = json!({"name": "relayed", "price": 1000, "stock": 1000, "category": "test"});
    let product: Value = post(&cluster, 0, "/api/admin/products", &admin, product).await.json().await.unwrap();
    let users = bulk_users(&cluster.db, 10).await;
    let work = users.iter().enumerate().map(|(i, user)| {
        let (cluster, product) = (&cluster, &product);
        async move {
            let wallet = format!("/api/users/{}/points", user.id);
            assert_eq!(post(cluster, i, &wallet, user, json!({"amount": 100_000})).await.status(), StatusCode::OK);
            for n in 0..3 {
                let instance = i + n + 1;
                let order = json!({"items": [{"productId": product["id"], "quantity": 1}]});
                let order: Value = post(cluster, instance, "/api/orders", user, order).await.json().await.unwrap();
                let id = order["orderId"].as_i64().unwrap();
                let paid = post(cluster, instance + 1, "/api/payments", user, json!({"orderId": id})).await;
                assert_eq!(paid.status(), StatusCode::CREATED);
                let cancel = format!("/api/orders/{id}/cancel");
                assert_eq!(post(cluster, instance + 2, &cancel, user, json!({})).await.status(), StatusCode::OK);
            }
        }
    });
    futures::future::join_all(work).await;
    // Deliveries are under way (each takes a second): one relay dies with its batch.
    tokio::time::sleep(Duration::from_millis(150)).await;
    cluster.kill(0);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status <> 'DELIVERED'")
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        if pending == 0 || tokio::time::Instant::now() > deadline {
            assert_eq!(pending, 0, "every event delivered by the relays left");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received();
    let mut delivered: HashMap<i64, i64> = HashMap::new();
    for receipt in &received {
        let body: Value = serde_json::from_str(&receipt.body).unwrap();
        let (order, sequence) = (body["orderId"].as_i64().unwrap(), body["sequence"].as_i64().unwrap());
        let last = delivered.get(&order).copied().unwrap_or(0);
        assert!(sequence <= last + 1, "order {order}: event {sequence} sent before {} was delivered", last + 1);
        delivered.insert(order, last.max(sequence));
    }
    assert_eq!(delivered.len(), 30, "every order's events arrived");
    assert!(delivered.values().all(|last| *last == 2));
}
