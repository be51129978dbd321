//! What `/metrics` says besides the counters the code increments where
//! things happen: a `# HELP` line for every metric, and the gauges read
//! when scraped — the database pool and the process itself (memory, CPU,
//! open files, threads, from `metrics-process`).

use crate::storage::Db;
use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Describes every metric the shop records, once per process.
pub fn describe() {
    describe_counter!("http_requests_total", "HTTP requests answered, by method, route and status");
    describe_histogram!("http_request_duration_seconds", "time to answer an HTTP request, by method, route and status");
    describe_histogram!("shop_lock_wait_seconds", "time spent waiting for a lock, by strategy");
    describe_counter!("shop_lock_timeouts_total", "lock waits that gave up (answered 409 CONCURRENCY_CONFLICT)");
    describe_counter!("shop_optimistic_retries_total", "optimistic-lock retries after a version conflict");
    describe_counter!("shop_fence_rejections_total", "writes refused because their lease's fencing token was stale");
    describe_histogram!("shop_batch_size", "requests written together in one batch transaction");
    describe_counter!(
        "shop_adaptive_writes_total",
        "writes the adaptive strategies sent alone or to the batch, by route"
    );
    describe_counter!("shop_commit_replies_lost_total", "COMMITs whose reply never came, looked up afterwards");
    describe_counter!("shop_commit_outcomes_total", "what those lookups found, by outcome");
    describe_counter!("shop_coupon_gate_total", "coupon gate answers, by outcome");
    describe_counter!("shop_coupon_gate_loads_total", "coupon gates loaded from PostgreSQL");
    describe_counter!(
        "shop_coupon_gate_remembered_total",
        "coupon requests refused from a campaign known sold out for good, without asking Redis"
    );
    describe_counter!(
        "shop_coupon_gate_holders_reads_total",
        "reads of a sold-out campaign's holders, by outcome: sold_out, units_left, failed"
    );
    describe_counter!(
        "shop_coupon_gate_reconciled_total",
        "pending coupon grants settled by the reconciler, by action"
    );
    describe_counter!("shop_stock_gate_total", "stock gate answers, by outcome");
    describe_counter!("shop_stock_gate_loads_total", "stock counters loaded from PostgreSQL");
    describe_counter!("shop_stock_gate_reconciled_total", "pending stock reservations settled by the reconciler");
    describe_counter!("shop_stock_gate_changes_left_behind_total", "stock changes the gate missed, passed on later");
    describe_counter!("shop_top_sellers_rebuilds_total", "top-seller days rebuilt from PostgreSQL");
    describe_counter!("shop_async_issue_accepted_total", "asynchronous coupon requests accepted (202)");
    describe_counter!("shop_async_issue_processed_total", "asynchronous coupon requests finished, by outcome");
    describe_counter!("shop_async_issue_requeued_total", "pending coupon requests queued again by the sweep");
    describe_gauge!("shop_async_issue_pending", "asynchronous coupon requests still pending");
    describe_gauge!("shop_outbox_backlog", "events not yet delivered to every sink");
    describe_gauge!("shop_outbox_oldest_undelivered_seconds", "age of the oldest undelivered event");
    describe_counter!("shop_outbox_deliveries_total", "event deliveries, by sink and outcome");
    describe_counter!("shop_logins_throttled_total", "logins refused with 429 for too many failures");
    describe_counter!(
        "shop_password_hashes_refused_total",
        "logins and sign-ups refused with 503: hashing at its bound"
    );
    describe_gauge!("shop_password_hashes_running", "password hashes being computed now");
    describe_gauge!("shop_password_hashes_waiting", "logins and sign-ups waiting for their turn to hash");
    describe_counter!(
        "shop_order_batches_decided_again_total",
        "order batches that lost their stock or coupon between their read and their take, decided again under locks"
    );
    describe_counter!(
        "shop_redis_cluster_reconnects_total",
        "times the Redis Cluster connection was made anew after a node stopped answering"
    );
    describe_gauge!("shop_db_pool_connections", "connections in this instance's PostgreSQL pool, by state");
    describe_gauge!("shop_db_pool_max_connections", "the most connections this instance's pool may open");
    process().describe();
}

/// Reads the gauges that are only true when looked at.
pub fn collect(db: &Db) {
    let (size, idle) = db.pool_usage();
    metrics::gauge!("shop_db_pool_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("shop_db_pool_connections", "state" => "busy").set(f64::from(size.saturating_sub(idle)));
    metrics::gauge!("shop_db_pool_max_connections").set(f64::from(db.max_connections()));
    process().collect();
}

fn process() -> metrics_process::Collector {
    metrics_process::Collector::default()
}
