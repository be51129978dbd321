//! The invariants of API.md, read from the database; any test may check
//! them at any time.

use sqlx::PgPool;

/// Invariants of API.md that hold at any moment, checked for every user.
pub async fn points(db: &PgPool) {
    let broken: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT w.user_id, w.balance, COALESCE(SUM(l.amount), 0)::bigint
         FROM point_wallets w LEFT JOIN point_ledger l ON l.user_id = w.user_id
         GROUP BY w.user_id, w.balance
         HAVING w.balance <> COALESCE(SUM(l.amount), 0) OR w.balance < 0",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert!(broken.is_empty(), "balance ≠ Σ ledger (user, balance, sum): {broken:?}");
}

/// Stock invariants of API.md: per product, stock + units in orders that
/// are not CANCELLED or EXPIRED = initial stock + admin changes.
pub async fn stock(db: &PgPool) {
    let broken: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, p.stock, p.stock_total, COALESCE(SUM(i.quantity) FILTER (
             WHERE o.status NOT IN ('CANCELLED', 'EXPIRED')), 0)::bigint
         FROM products p LEFT JOIN order_items i ON i.product_id = p.id LEFT JOIN orders o ON o.id = i.order_id
         GROUP BY p.id
         HAVING p.stock < 0 OR p.stock + COALESCE(SUM(i.quantity) FILTER (
             WHERE o.status NOT IN ('CANCELLED', 'EXPIRED')), 0) <> p.stock_total",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert!(broken.is_empty(), "(product, stock, total, held by orders): {broken:?}");
}

/// Coupon invariants of API.md: issued ≤ total and equal to the rows,
/// at most one per user and type.
pub async fn coupons(db: &PgPool) {
    let broken: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT t.code, t.total_quantity, t.issued_quantity, count(c.id)
         FROM coupon_types t LEFT JOIN coupons c ON c.coupon_type_id = t.id
         GROUP BY t.id HAVING count(c.id) > t.total_quantity OR count(c.id) <> t.issued_quantity",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert!(broken.is_empty(), "(code, total, counted, rows): {broken:?}");
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM coupons GROUP BY user_id, coupon_type_id HAVING count(*) > 1) d",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "a user holds two coupons of one type");
}

/// Order and payment invariants of API.md: at most one payment per
/// order; a coupon held by at most one live order; Σ USE = Σ finalAmount
/// of paid orders, Σ REFUND = Σ finalAmount of refunded ones.
pub async fn payments(db: &PgPool) {
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY order_id HAVING count(*) > 1) d",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "an order paid twice");
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT coupon_id FROM orders WHERE coupon_id IS NOT NULL
         AND status NOT IN ('CANCELLED', 'EXPIRED') GROUP BY coupon_id HAVING count(*) > 1) d",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(shared, 0, "a coupon held by two live orders");
    let (used, paid, refunded, refunds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(-SUM(amount), 0)::bigint FROM point_ledger WHERE kind = 'USE'),
                (SELECT COALESCE(SUM(o.final_amount), 0)::bigint FROM payments p JOIN orders o ON o.id = p.order_id),
                (SELECT COALESCE(SUM(amount), 0)::bigint FROM point_ledger WHERE kind = 'REFUND'),
                (SELECT COALESCE(SUM(o.final_amount), 0)::bigint FROM payments p JOIN orders o ON o.id = p.order_id
                 WHERE p.status = 'REFUNDED')",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(used, paid, "Σ USE = Σ finalAmount of paid orders");
    assert_eq!(refunded, refunds, "Σ REFUND = Σ finalAmount of refunded orders");
    let unpaid_paid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.status IN ('PAID', 'SHIPPED', 'DELIVERED', 'COMPLETED')
         AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(unpaid_paid, 0, "an order marked paid without a payment");
}

/// Every invariant of API.md at once.
pub async fn all(db: &PgPool) {
    points(db).await;
    stock(db).await;
    coupons(db).await;
    payments(db).await;
}
