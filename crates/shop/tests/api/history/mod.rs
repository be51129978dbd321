//! A randomized history checker in the spirit of Jepsen's bank test: clients
//! run a seeded random mix of sign-ups, charges, coupon issues, orders,
//! payments and cancellations (orders also expire) against three instances,
//! with random pauses, and record every answer. Afterwards every invariant of
//! the shop is checked, and every answer against the database: each success
//! left exactly its record, each refusal left nothing.
//!
//! The second run adds faults: COMMIT replies lost on their way back,
//! connections cut mid-transaction or all at once, slow replies, clients
//! that give up mid-request, instances killed and restarted. An answer the
//! client never got (or a 503) is *unknown*, and is checked both ways: the
//! effect happened once or not at all — never twice, and nothing answered
//! as done is missing. A request with an Idempotency-Key is retried with it
//! until its answer is known, as the contract asks of clients. No answer is
//! ever 500.
//!
//! The third run takes whole dependencies away in turn while the clients go
//! on: PostgreSQL unreachable (packets dropped), Redis restarted empty,
//! Redis answering two seconds late, an instance killed mid-run; the same
//! verdict must hold.
//!
//! The fourth runs in the topology of `scripts/cluster`: the clients reach
//! the instances through HAProxy, the instances reach PostgreSQL through a
//! PgBouncer in transaction pooling mode, and an instance is killed
//! mid-run (a request it had is a 502 from HAProxy: unknown).
//!
//! The seed (and the strategies it picks) is printed; to replay a run or go
//! longer:
//!
//! ```sh
//! SHOP_HISTORY_SEED=42 SHOP_HISTORY_OPERATIONS=20000 \
//!   cargo nextest run --all-features -E 'test(random_history)' --no-capture
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::{CouponStrategyKind, PointsStrategyKind, StockStrategyKind, value_names};
use tokio::sync::Mutex;

use crate::support::cluster::Cluster;
use crate::support::front_door::FrontDoor;
use crate::support::own_redis::OwnRedis;
use crate::support::pg_proxy::{PgProxy, Statement};
use crate::support::pgbouncer::PgBouncer;
use crate::support::redis_proxy::RedisProxy;
use crate::support::{User, admin_of, bulk_users, invariants};

mod check;

const CLIENTS: u64 = 8;
const COUPON_CODES: [&str; 2] = ["SCARCE", "PLENTY"];
const COUPON_TOTALS: [i64; 2] = [5, 50];
/// Each user's first charge; every later one has an amount of its own.
const FUNDING: i64 = 500_000;

/// What a client knows of a request's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Refused,
    /// No answer, or a 503: it may have happened, once at most.
    Unknown,
}

/// What one request claims happened.
#[derive(Debug)]
enum Event {
    SignedUp { email: String, user_id: Option<i64>, outcome: Outcome },
    Charged { user_id: i64, amount: i64, outcome: Outcome },
    Issued { user_id: i64, code: &'static str, coupon_id: Option<i64>, outcome: Outcome, refusal: Option<String> },
    Placed { user_id: i64, order_id: Option<i64>, final_amount: i64, outcome: Outcome },
    Paid { user_id: i64, order_id: i64, payment_id: Option<i64>, amount: i64, outcome: Outcome },
    Cancelled { order_id: i64, outcome: Outcome },
}

/// What clients learn as they go and share: who exists, what they hold,
/// and each user's next charge amount (unique per user, so every ledger
/// row names the request that made it).
#[derive(Default)]
struct Known {
    users: Vec<User>,
    coupons: HashMap<i64, Vec<i64>>,
    orders: Vec<(User, i64)>,
    charges: HashMap<i64, i64>,
}

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_across_instances_is_consistent() {
    random_history(Faults::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_with_lost_replies_dropped_requests_and_killed_instances_is_consistent() {
    random_history(Faults::Network).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_through_postgres_and_redis_outages_is_consistent() {
    random_history(Faults::Outages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_through_haproxy_and_pgbouncer_with_an_instance_killed_is_consistent() {
    random_history(Faults::FrontDoor).await;
}

/// What goes wrong during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Faults {
    None,
    /// Every few hundred milliseconds: a COMMIT reply lost, a connection
    /// cut or slowed, every connection reset, an instance killed; and
    /// clients that give up early.
    Network,
    /// Each dependency taken away in turn for seconds (see [`inject_outages`]).
    Outages,
    /// Through HAProxy and PgBouncer, an instance killed mid-run; clients
    /// that give up early.
    FrontDoor,
}

/// The clients' side of a run.
struct Run {
    cluster: Cluster,
    /// HAProxy before the instances, when the clients go through it.
    door: Option<FrontDoor>,
    known: Mutex<Known>,
    products: Vec<i64>,
    faults: Faults,
    /// Clients go on past their share of operations while this holds.
    outages_running: AtomicBool,
    /// Answers that were 503, or never came.
    unanswered: AtomicUsize,
}

/// The longest a request runs under outages before its 503.
const OUTAGE_REQUEST_TIMEOUT_MS: &str = "2000";

async fn random_history(faults: Faults) {
    let seed = setting("SHOP_HISTORY_SEED").unwrap_or_else(rand::random);
    let operations = setting("SHOP_HISTORY_OPERATIONS").unwrap_or(400);
    let mut rng = StdRng::seed_from_u64(seed);
    let points = value_names::<PointsStrategyKind>().choose(&mut rng).unwrap().clone();
    let stock = value_names::<StockStrategyKind>().choose(&mut rng).unwrap().clone();
    let coupons = value_names::<CouponStrategyKind>().choose(&mut rng).unwrap().clone();
    eprintln!(
        "history ({faults:?} faults): seed {seed}, {operations} operations, points {points}, stock {stock}, \
         coupons {coupons} (replay with SHOP_HISTORY_SEED={seed})"
    );
    let proxy = PgProxy::start().await;
    // Under outages, a Redis of the run's own, to restart, behind a proxy
    // that can hold its replies back.
    let redis = match faults {
        Faults::Outages => {
            let redis = OwnRedis::start().await;
            let delaying = RedisProxy::start_to(redis.port).await;
            Some((redis, delaying))
        }
        Faults::None | Faults::Network | Faults::FrontDoor => None,
    };
    let mut environment = vec![
        ("POINTS_STRATEGY", points.as_str()),
        ("STOCK_STRATEGY", stock.as_str()),
        ("COUPON_STRATEGY", coupons.as_str()),
        ("POINTS_DAILY_CHARGE_LIMIT", "5"),
        ("ORDER_PAYMENT_TIMEOUT_SECS", "2"),
        ("DATABASE_MAX_CONNECTIONS", "5"),
        // Grants left by a killed instance come back within the run.
        ("GATE_RECONCILE_AFTER_MS", "1500"),
    ];
    let redis_url = redis.as_ref().map(|(_, delaying)| delaying.url());
    if let Some(url) = &redis_url {
        environment.extend([("REDIS_URL", url.as_str()), ("REQUEST_TIMEOUT_MS", OUTAGE_REQUEST_TIMEOUT_MS)]);
    }
    let bouncer = match faults {
        Faults::FrontDoor => Some(PgBouncer::start().await),
        Faults::None | Faults::Network | Faults::Outages => None,
    };
    let cluster = match &bouncer {
        Some(bouncer) => Cluster::start_pooled(&bouncer.url(), 3, &environment, |_| Vec::new()).await,
        None => {
            let behind = (faults != Faults::None).then_some(&proxy);
            Cluster::start_behind(behind, 3, &environment, |_| Vec::new()).await
        }
    };
    let door = match faults {
        Faults::FrontDoor => Some(FrontDoor::start(&cluster).await),
        Faults::None | Faults::Network | Faults::Outages => None,
    };
    let admin = admin_of(&cluster.db).await;
    let mut products = Vec::new();
    for (name, price, stock) in [("a", 3000, 30), ("b", 8000, 15), ("c", 15000, 5)] {
        let body = json!({"name": name, "price": price, "stock": stock, "category": "history"});
        let created = setup(&cluster, "/api/admin/products", &admin.token, body).await;
        products.push(created["id"].as_i64().unwrap());
    }
    for (code, total) in COUPON_CODES.iter().zip(COUPON_TOTALS) {
        let body = json!({"code": code, "kind": "PERCENT", "value": 10, "minOrderAmount": 5000, "totalQuantity": total, "validDays": 7});
        setup(&cluster, "/api/admin/coupon-types", &admin.token, body).await;
    }
    let users = bulk_users(&cluster.db, 20).await;
    let mut events = Vec::new();
    for user in &users {
        // Enough to pay for a few orders, so payments are a real part of the mix.
        setup(&cluster, &format!("/api/users/{}/points", user.id), &user.token, json!({"amount": FUNDING})).await;
        events.push(Event::Charged { user_id: user.id, amount: FUNDING, outcome: Outcome::Done });
    }
    let run = Arc::new(Run {
        cluster,
        door,
        known: Mutex::new(Known { users, ..Known::default() }),
        products,
        faults,
        outages_running: AtomicBool::new(faults == Faults::Outages),
        unanswered: AtomicUsize::new(0),
    });

    let running = Arc::new(AtomicBool::new(true));
    let injector = (faults == Faults::Network)
        .then(|| tokio::spawn(inject_faults(run.clone(), proxy.clone(), running.clone(), seed)));
    let outages =
        redis.map(|(redis, delaying)| tokio::spawn(inject_outages(run.clone(), proxy.clone(), redis, delaying)));
    // Instance 1 killed once the clients are well under way; HAProxy sends
    // the rest to the other two.
    let kill = (faults == Faults::FrontDoor).then(|| {
        let run = run.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            run.cluster.kill(1);
        })
    });
    let clients = (0..CLIENTS).map(|client| {
        let run = run.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client + 1));
            let mut events = Vec::new();
            let mut step = 0;
            while step < operations / CLIENTS || run.outages_running.load(Ordering::SeqCst) {
                let instance = (client + step) as usize;
                events.push(random_operation(&mut rng, &run, instance).await);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
                step += 1;
            }
            events
        })
    });
    for client in clients {
        events.extend(client.await.unwrap());
    }
    running.store(false, Ordering::SeqCst);
    if let Some(injector) = injector {
        injector.await.unwrap();
    }
    if let Some(kill) = kill {
        kill.await.unwrap();
    }
    // Kept running until the checks are over: the instances use it.
    let _redis = match outages {
        Some(outages) => Some(outages.await.unwrap()),
        None => None,
    };
    proxy.heal();
    let unanswered = run.unanswered.load(Ordering::SeqCst);
    eprintln!("history: {unanswered} requests answered 503 or not at all");
    // One kill may meet no request in flight; the other faults are felt.
    assert!(matches!(faults, Faults::None | Faults::FrontDoor) || unanswered > 0, "the faults were felt");
    // Requests whose clients gave up finish on their servers meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check::answers(&run.cluster, &events).await;
    invariants::all(&run.cluster.db).await;
    check::every_unit_in_stock_sells(&run, &admin).await;
}

/// Set-up requests, made before any fault: they must succeed.
async fn setup(cluster: &Cluster, path: &str, token: &str, body: Value) -> Value {
    let response = cluster.client.post(cluster.url(0, path)).bearer_auth(token).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{path} answered {}", response.status());
    response.json().await.unwrap()
}

/// Breaks something every few hundred milliseconds until the clients are done.
async fn inject_faults(run: Arc<Run>, proxy: PgProxy, running: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut killed = 0;
    while running.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        match rng.random_range(0..100) {
            0..40 => drop(proxy.lose_reply_to(Statement::Commit, 1)),
            40..55 => drop(proxy.cut_before(Statement::Containing("INSERT INTO".into()), 1)),
            55..70 => drop(proxy.delay_reply_to(Statement::Commit, Duration::from_millis(300), 2)),
            70..85 => proxy.reset_all(),
            _ => {
                let instance = killed % run.cluster.len();
                killed += 1;
                run.cluster.kill(instance);
                tokio::time::sleep(Duration::from_millis(200)).await;
                run.cluster.restart(instance).await;
            }
        }
    }
    eprintln!("history: {} faults fired, {killed} instances killed", proxy.fired());
}

/// Takes each dependency away in turn while the clients go on, each for
/// longer than a request may run, then lets the clients finish. The Redis
/// is returned to be kept running.
async fn inject_outages(run: Arc<Run>, proxy: PgProxy, mut redis: OwnRedis, delaying: RedisProxy) -> OwnRedis {
    let between = || tokio::time::sleep(Duration::from_millis(700));
    between().await;
    // Packets dropped, not refused: requests hang until their deadline.
    proxy.blackhole(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.blackhole(false);
    between().await;
    redis.restart_empty().await;
    between().await;
    delaying.delay_replies(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    delaying.delay_replies(Duration::ZERO);
    between().await;
    run.cluster.kill(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    run.cluster.restart(1).await;
    between().await;
    run.outages_running.store(false, Ordering::SeqCst);
    eprintln!("history: PostgreSQL unreachable 3 s, Redis restarted empty, Redis 2 s late for 3 s, an instance killed");
    redis
}

/// The answer to a request as a client sees it: its outcome and body.
struct Answer {
    outcome: Outcome,
    body: Value,
    /// It never reached a server (a killed instance refused the connection).
    unsent: bool,
}

/// Sends a POST; under faults, some clients give up early, and a request
/// with an Idempotency-Key whose outcome is unknown is retried with it
/// until it is known (or the retries run out).
async fn post(run: &Run, rng: &mut StdRng, instance: usize, path: &str, token: &str, body: Value) -> Answer {
    let faults = run.faults != Faults::None;
    let key = (faults && rng.random_bool(0.5)).then(|| uuid::Uuid::new_v4().to_string());
    let impatient = faults && rng.random_bool(0.1);
    let mut answer = send(run, instance, path, token, &body, key.as_deref(), impatient).await;
    let Some(key) = key else { return answer };
    for attempt in 1..=10 {
        if answer.outcome != Outcome::Unknown {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        let retried = send(run, instance + attempt as usize, path, token, &body, Some(&key), false).await;
        // A retry that reached no server says nothing of the first try.
        if !retried.unsent {
            answer = retried;
        }
    }
    answer
}

async fn send(
    run: &Run,
    instance: usize,
    path: &str,
    token: &str,
    body: &Value,
    key: Option<&str>,
    impatient: bool,
) -> Answer {
    let url = match &run.door {
        Some(door) => door.url(path),
        None => run.cluster.url(instance, path),
    };
    let mut request = run.cluster.client.post(url).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    if impatient {
        request = request.timeout(Duration::from_millis(30));
    }
    let started = std::time::Instant::now();
    let response = match request.send().await {
        // It never reached the server (a killed instance).
        Err(error) if error.is_connect() => {
            return Answer { outcome: Outcome::Refused, body: Value::Null, unsent: true };
        }
        Err(_) => {
            run.unanswered.fetch_add(1, Ordering::SeqCst);
            return Answer { outcome: Outcome::Unknown, body: Value::Null, unsent: false };
        }
        Ok(response) => response,
    };
    if run.faults == Faults::Outages {
        // Whatever is down, an answer within the deadline (and a margin for a busy machine).
        let deadline = Duration::from_millis(OUTAGE_REQUEST_TIMEOUT_MS.parse().unwrap()) + Duration::from_millis(1500);
        assert!(started.elapsed() < deadline, "{path} answered after {:?}", started.elapsed());
    }
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path} answered 500: {body}");
    assert!(run.faults != Faults::None || !status.is_server_error(), "{path} answered {status} without faults: {body}");
    // A 502 is HAProxy's: the instance died before it answered.
    let unanswered = matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY);
    if unanswered {
        run.unanswered.fetch_add(1, Ordering::SeqCst);
    }
    let outcome = if status.is_success() {
        Outcome::Done
    } else if unanswered || body["code"] == "IDEMPOTENCY_KEY_IN_USE" {
        Outcome::Unknown
    } else {
        Outcome::Refused
    };
    Answer { outcome, body, unsent: false }
}

async fn random_operation(rng: &mut StdRng, run: &Run, instance: usize) -> Event {
    let user = run.known.lock().await.users.choose(rng).unwrap().clone();
    match rng.random_range(0..100) {
        0..10 => {
            // Often an email someone else may be signing up at the same moment.
            let email = format!("history-{}@example.com", rng.random_range(0..40));
            let body = json!({"email": email, "password": "password123", "name": "History"});
            let answer = post(run, rng, instance, "/api/auth/register", "", body).await;
            let user_id = (answer.outcome == Outcome::Done).then(|| answer.body["userId"].as_i64().unwrap());
            if let Some(id) = user_id {
                let token = answer.body["accessToken"].as_str().unwrap().to_owned();
                let user = User { id, email: email.clone(), token, refresh_token: String::new() };
                run.known.lock().await.users.push(user);
            }
            Event::SignedUp { email, user_id, outcome: answer.outcome }
        }
        10..35 => {
            let amount = {
                let mut known = run.known.lock().await;
                let next = known.charges.entry(user.id).or_insert(1000);
                *next += if *next + 1000 == FUNDING { 2000 } else { 1000 };
                *next
            };
            let path = format!("/api/users/{}/points", user.id);
            let answer = post(run, rng, instance, &path, &user.token, json!({"amount": amount})).await;
            Event::Charged { user_id: user.id, amount, outcome: answer.outcome }
        }
        35..50 => {
            let code = *COUPON_CODES.choose(rng).unwrap();
            let answer = post(run, rng, instance, "/api/coupons/issue", &user.token, json!({"couponType": code})).await;
            let coupon_id = (answer.outcome == Outcome::Done).then(|| answer.body["couponId"].as_i64().unwrap());
            if let Some(id) = coupon_id {
                run.known.lock().await.coupons.entry(user.id).or_default().push(id);
            }
            let refusal =
                (answer.outcome == Outcome::Refused).then(|| answer.body["code"].as_str().unwrap_or("").to_owned());
            Event::Issued { user_id: user.id, code, coupon_id, outcome: answer.outcome, refusal }
        }
        50..75 => {
            let count = rng.random_range(1..=run.products.len());
            let chosen: Vec<i64> = run.products.sample(rng, count).copied().collect();
            let lines: Vec<Value> =
                chosen.iter().map(|id| json!({"productId": id, "quantity": rng.random_range(1..=3)})).collect();
            let coupon = run.known.lock().await.coupons.get(&user.id).and_then(|held| held.choose(rng).copied());
            let coupon = coupon.filter(|_| rng.random_bool(0.5));
            let body = json!({"items": lines, "couponId": coupon});
            let answer = post(run, rng, instance, "/api/orders", &user.token, body).await;
            let order_id = (answer.outcome == Outcome::Done).then(|| answer.body["orderId"].as_i64().unwrap());
            if let Some(id) = order_id {
                run.known.lock().await.orders.push((user.clone(), id));
            }
            let final_amount = answer.body["finalAmount"].as_i64().unwrap_or(0);
            Event::Placed { user_id: user.id, order_id, final_amount, outcome: answer.outcome }
        }
        75..92 => {
            let Some((owner, order_id)) = run.known.lock().await.orders.choose(rng).cloned() else {
                return Event::Cancelled { order_id: 0, outcome: Outcome::Refused };
            };
            let answer = post(run, rng, instance, "/api/payments", &owner.token, json!({"orderId": order_id})).await;
            let payment_id = (answer.outcome == Outcome::Done).then(|| answer.body["paymentId"].as_i64().unwrap());
            let amount = answer.body["finalAmount"].as_i64().unwrap_or(0);
            Event::Paid { user_id: owner.id, order_id, payment_id, amount, outcome: answer.outcome }
        }
        _ => {
            let Some((owner, order_id)) = run.known.lock().await.orders.choose(rng).cloned() else {
                return Event::Cancelled { order_id: 0, outcome: Outcome::Refused };
            };
            let path = format!("/api/orders/{order_id}/cancel");
            let answer = post(run, rng, instance, &path, &owner.token, json!({})).await;
            Event::Cancelled { order_id, outcome: answer.outcome }
        }
    }
}
