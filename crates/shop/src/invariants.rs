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
    let balances = sqlx::query!(
        r#"SELECT w.user_id, w.balance, COALESCE(SUM(l.amount), 0)::bigint AS "ledger!"
           FROM point_wallets w LEFT JOIN point_ledger l ON l.user_id = w.user_id
           GROUP BY w.user_id, w.balance
           HAVING w.balance <> COALESCE(SUM(l.amount), 0) OR w.balance < 0"#,
    )
    .fetch_all(db)
    .await?;
    found.extend(
        balances.iter().map(|row| format!("user {}: balance {} ≠ Σ ledger {}", row.user_id, row.balance, row.ledger)),
    );

    let stock = sqlx::query!(
        r#"SELECT p.id, p.stock, p.stock_total, COALESCE(SUM(i.quantity) FILTER (
               WHERE o.status NOT IN ('CANCELLED', 'EXPIRED')), 0)::bigint AS "held!"
           FROM products p LEFT JOIN order_items i ON i.product_id = p.id LEFT JOIN orders o ON o.id = i.order_id
           GROUP BY p.id
           HAVING p.stock < 0 OR p.stock + COALESCE(SUM(i.quantity) FILTER (
               WHERE o.status NOT IN ('CANCELLED', 'EXPIRED')), 0) <> p.stock_total"#,
    )
    .fetch_all(db)
    .await?;
    found.extend(stock.iter().map(|row| {
        format!(
            "product {}: stock {} + {} held by orders ≠ {} made available",
            row.id, row.stock, row.held, row.stock_total
        )
    }));

    let coupons = sqlx::query!(
        r#"SELECT t.code, t.total_quantity, t.issued_quantity, count(c.id) AS "rows!"
           FROM coupon_types t LEFT JOIN coupons c ON c.coupon_type_id = t.id
           GROUP BY t.id HAVING count(c.id) > t.total_quantity OR count(c.id) <> t.issued_quantity"#,
    )
    .fetch_all(db)
    .await?;
    found.extend(coupons.iter().map(|row| {
        format!(
            "coupon type {}: {} coupons, counted {}, total {}",
            row.code, row.rows, row.issued_quantity, row.total_quantity
        )
    }));

    let counts = sqlx::query!(
        r#"SELECT
             (SELECT count(*) FROM (SELECT 1 FROM coupons GROUP BY user_id, coupon_type_id HAVING count(*) > 1) d)
                 AS "doubled_coupons!",
             (SELECT count(*) FROM (SELECT 1 FROM payments GROUP BY order_id HAVING count(*) > 1) d)
                 AS "doubled_payments!",
             (SELECT count(*) FROM (SELECT 1 FROM orders WHERE coupon_id IS NOT NULL
                  AND status NOT IN ('CANCELLED', 'EXPIRED') GROUP BY coupon_id HAVING count(*) > 1) d)
                 AS "shared_coupons!",
             (SELECT count(*) FROM orders o WHERE o.status IN ('PAID', 'SHIPPED', 'DELIVERED', 'COMPLETED')
                  AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id))
                 AS "unpaid!""#,
    )
    .fetch_one(db)
    .await?;
    for (count, what) in [
        (counts.doubled_coupons, "users hold two coupons of one type"),
        (counts.doubled_payments, "orders are paid twice"),
        (counts.shared_coupons, "coupons are held by two live orders"),
        (counts.unpaid, "orders are marked paid without a payment"),
    ] {
        if count > 0 {
            found.push(format!("{count} {what}"));
        }
    }

    let sums = sqlx::query!(
        r#"SELECT (SELECT COALESCE(-SUM(amount), 0)::bigint FROM point_ledger WHERE kind = 'USE') AS "used!",
                  (SELECT COALESCE(SUM(o.final_amount), 0)::bigint FROM payments p JOIN orders o ON o.id = p.order_id)
                      AS "paid!",
                  (SELECT COALESCE(SUM(amount), 0)::bigint FROM point_ledger WHERE kind = 'REFUND') AS "refunded!",
                  (SELECT COALESCE(SUM(o.final_amount), 0)::bigint FROM payments p JOIN orders o ON o.id = p.order_id
                   WHERE p.status = 'REFUNDED') AS "refunds!""#,
    )
    .fetch_one(db)
    .await?;
    if sums.used != sums.paid {
        found.push(format!("Σ USE {} ≠ Σ finalAmount of paid orders {}", sums.used, sums.paid));
    }
    if sums.refunded != sums.refunds {
        found.push(format!("Σ REFUND {} ≠ Σ finalAmount of refunded orders {}", sums.refunded, sums.refunds));
    }
    Ok(found)
}
