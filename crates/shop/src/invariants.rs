//! The shop's invariants, read from the database: balance = Σ ledger ≥ 0;
//! stock + units held by live orders = units made available; coupons within
//! their total and one per user and type; one live order per coupon; one
//! payment per order, and none marked paid without one; Σ USE and Σ REFUND
//! equal the final amounts of paid and refunded orders. Any test or load run
//! may check them at any time; each query returns the rows that break one.

use sqlx::PgPool;

/// Every broken invariant, described; empty when all hold.
pub async fn violations(db: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut found = Vec::new();
    let balances: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT w.user_id, w.balance, COALESCE(SUM(l.amount), 0)::bigint
         FROM point_wallets w LEFT JOIN point_ledger l ON l.user_id = w.user_id
         GROUP BY w.user_id, w.balance
         HAVING w.balance <> COALESCE(SUM(l.amount), 0) OR w.balance < 0",
    )
    .fetch_all(db)
    .await?;
    found
        .extend(balances.iter().map(|(user, balance, sum)| format!("user {user}: balance {balance} ≠ Σ ledger {sum}")));

    let stock: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, p.stock, p.stock_total, COALESCE(SUM(i.quantity) FILTER (
             WHERE o.status NOT IN ('CANCELLED', 'EXPIRED')), 0)::bigint
         FROM products p LEFT JOIN order_items i ON i.product_id = p.id LEFT JOIN orders o ON o.id = i.order_id
         GROUP BY p.id
         HAVING p.stock < 0 OR p.stock + COALESCE(SUM(i.quantity) FILTER (
             WHERE o.status NOT IN ('CANCELLED', 'EXPIRED')), 0) <> p.stock_total",
    )
    .fetch_all(db)
    .await?;
    found.extend(stock.iter().map(|(product, stock, total, held)| {
        format!("product {product}: stock {stock} + {held} held by orders ≠ {total} made available")
    }));

    let coupons: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT t.code, t.total_quantity, t.issued_quantity, count(c.id)
         FROM coupon_types t LEFT JOIN coupons c ON c.coupon_type_id = t.id
         GROUP BY t.id HAVING count(c.id) > t.total_quantity OR count(c.id) <> t.issued_quantity",
    )
    .fetch_all(db)
    .await?;
    found.extend(coupons.iter().map(|(code, total, counted, rows)| {
        format!("coupon type {code}: {rows} coupons, counted {counted}, total {total}")
    }));

    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT
           (SELECT count(*) FROM (SELECT 1 FROM coupons GROUP BY user_id, coupon_type_id HAVING count(*) > 1) d),
           (SELECT count(*) FROM (SELECT 1 FROM payments GROUP BY order_id HAVING count(*) > 1) d),
           (SELECT count(*) FROM (SELECT 1 FROM orders WHERE coupon_id IS NOT NULL
                AND status NOT IN ('CANCELLED', 'EXPIRED') GROUP BY coupon_id HAVING count(*) > 1) d),
           (SELECT count(*) FROM orders o WHERE o.status IN ('PAID', 'SHIPPED', 'DELIVERED', 'COMPLETED')
                AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id))",
    )
    .fetch_one(db)
    .await?;
    let (doubled_coupons, doubled_payments, shared_coupons, unpaid) = counts;
    for (count, what) in [
        (doubled_coupons, "users hold two coupons of one type"),
        (doubled_payments, "orders are paid twice"),
        (shared_coupons, "coupons are held by two live orders"),
        (unpaid, "orders are marked paid without a payment"),
    ] {
        if count > 0 {
            found.push(format!("{count} {what}"));
        }
    }

    let (used, paid, refunded, refunds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(-SUM(amount), 0)::bigint FROM point_ledger WHERE kind = 'USE'),
                (SELECT COALESCE(SUM(o.final_amount), 0)::bigint FROM payments p JOIN orders o ON o.id = p.order_id),
                (SELECT COALESCE(SUM(amount), 0)::bigint FROM point_ledger WHERE kind = 'REFUND'),
                (SELECT COALESCE(SUM(o.final_amount), 0)::bigint FROM payments p JOIN orders o ON o.id = p.order_id
                 WHERE p.status = 'REFUNDED')",
    )
    .fetch_one(db)
    .await?;
    if used != paid {
        found.push(format!("Σ USE {used} ≠ Σ finalAmount of paid orders {paid}"));
    }
    if refunded != refunds {
        found.push(format!("Σ REFUND {refunded} ≠ Σ finalAmount of refunded orders {refunds}"));
    }
    Ok(found)
}
