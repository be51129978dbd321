//! Orders and their lines.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::order::{Amounts, OrderStatus};

#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: i64,
    pub user_id: i64,
    status: String,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub final_amount: i64,
    pub coupon_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

impl OrderRow {
    pub fn status(&self) -> OrderStatus {
        OrderStatus::from_stored(&self.status)
    }
}

#[derive(Debug, Clone)]
pub struct ItemRow {
    pub order_id: i64,
    pub product_id: i64,
    pub product_name: String,
    pub quantity: i32,
    pub unit_price: i64,
}

pub struct NewOrder<'a> {
    pub user_id: i64,
    pub amounts: Amounts,
    pub coupon_id: Option<i64>,
    pub payment_timeout_secs: i64,
    pub gate_reservation: Option<Uuid>,
    /// By ascending product id.
    pub items: &'a [NewItem],
}

/// An order line at the price of the moment it was ordered.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub product_id: i64,
    pub name: String,
    pub quantity: i32,
    pub unit_price: i64,
}

/// Inserts a PENDING order and its lines, in one statement (one round trip
/// for both). A coupon already held by a live order violates
/// `orders_coupon_live_key`.
pub async fn insert(conn: &mut PgConnection, new: &NewOrder<'_>) -> Result<OrderRow, sqlx::Error> {
    let ids: Vec<i64> = new.items.iter().map(|item| item.product_id).collect();
    let names: Vec<&str> = new.items.iter().map(|item| item.name.as_str()).collect();
    let quantities: Vec<i32> = new.items.iter().map(|item| item.quantity).collect();
    let prices: Vec<i64> = new.items.iter().map(|item| item.unit_price).collect();
    // `as _` skips the macro's check of an argument, which knows text[] only as `&[String]`.
    sqlx::query_as!(
        OrderRow,
        "WITH new_order AS (
             INSERT INTO orders (user_id, total_amount, discount_amount, final_amount, coupon_id, expires_at,
                                 gate_reservation)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
             RETURNING id, user_id, status, total_amount, discount_amount, final_amount, coupon_id, created_at,
                       expires_at, paid_at
         ), lines AS (
             INSERT INTO order_items (order_id, product_id, product_name, quantity, unit_price)
             SELECT new_order.id, line.* FROM new_order,
                    unnest($8::bigint[], $9::text[], $10::int[], $11::bigint[]) AS line
         )
         SELECT * FROM new_order",
        new.user_id,
        new.amounts.total,
        new.amounts.discount,
        new.amounts.final_amount,
        new.coupon_id,
        new.payment_timeout_secs as f64,
        new.gate_reservation,
        &ids,
        &names as _,
        &quantities,
        &prices,
    )
    .fetch_one(conn)
    .await
}

/// Inserts PENDING orders and their lines and takes `take`'s stock, in one
/// statement; returns the orders in the order given, and from how many of
/// `take`'s products it took (each only if it still has the quantity; the
/// caller rolls back unless it took from all). The products are locked in
/// ascending id order first, the order every writer of stock locks them in:
/// the orders wait for the count of what was taken, as PostgreSQL runs a
/// WITH query's parts as their rows are asked for, and an order inserted
/// before the take would hold its coupon's slot in `orders_coupon_live_key`
/// while waiting for a product that an order placed alone (which takes its
/// stock first) holds while waiting for that slot: a deadlock. Ids are drawn
/// first, so that each line finds its order by position. Gate reservations are not
/// recorded: only the batch strategy places orders this way.
pub async fn insert_many(
    conn: &mut PgConnection,
    new: &[NewOrder<'_>],
    take: &StockTake,
) -> Result<(Vec<OrderRow>, i64), sqlx::Error> {
    let mut lines = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, order) in new.iter().enumerate() {
        for item in order.items {
            lines.0.push(n as i64 + 1);
            lines.1.push(item.product_id);
            lines.2.push(item.name.as_str());
            lines.3.push(item.quantity);
            lines.4.push(item.unit_price);
        }
    }
    let timeouts: Vec<f64> = new.iter().map(|order| order.payment_timeout_secs as f64).collect();
    // `as _` skips the macro's check of an argument, which knows arrays only without NULLs (coupon ids)
    // and text[] only as `&[String]` (names).
    let rows = sqlx::query_as!(
        InsertedRow,
        r#"WITH locked AS (
             SELECT id FROM products WHERE id = ANY($12) ORDER BY id FOR NO KEY UPDATE
         ), taken AS (
             UPDATE products p SET stock = p.stock - t.quantity, version = p.version + 1
             FROM unnest($12::bigint[], $13::bigint[]) AS t(id, quantity) JOIN locked USING (id)
             WHERE p.id = t.id AND p.stock >= t.quantity
             RETURNING p.id
         ), input AS (
             SELECT nextval(pg_get_serial_sequence('orders', 'id')) AS id, o.*, took.count AS took
             FROM (SELECT count(*) FROM taken) AS took,
                  unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::float8[])
                  WITH ORDINALITY AS o(user_id, total_amount, discount_amount, final_amount, coupon_id, timeout, n)
         ), new_orders AS (
             INSERT INTO orders (id, user_id, total_amount, discount_amount, final_amount, coupon_id, expires_at)
             OVERRIDING SYSTEM VALUE
             SELECT id, user_id, total_amount, discount_amount, final_amount, coupon_id,
                    now() + make_interval(secs => timeout)
             FROM input ORDER BY n
             RETURNING id, user_id, status, total_amount, discount_amount, final_amount, coupon_id, created_at,
                       expires_at, paid_at
         ), lines AS (
             INSERT INTO order_items (order_id, product_id, product_name, quantity, unit_price)
             SELECT input.id, line.product_id, line.name, line.quantity, line.price
             FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::int[], $11::bigint[])
                  AS line(n, product_id, name, quantity, price)
             JOIN input USING (n)
         )
         SELECT new_orders.*, input.took AS "taken!"
         FROM new_orders JOIN input USING (id) ORDER BY input.n"#,
        &new.iter().map(|order| order.user_id).collect::<Vec<_>>(),
        &new.iter().map(|order| order.amounts.total).collect::<Vec<_>>(),
        &new.iter().map(|order| order.amounts.discount).collect::<Vec<_>>(),
        &new.iter().map(|order| order.amounts.final_amount).collect::<Vec<_>>(),
        &new.iter().map(|order| order.coupon_id).collect::<Vec<_>>() as _,
        &timeouts,
        &lines.0,
        &lines.1,
        &lines.2 as _,
        &lines.3,
        &lines.4,
        &take.product_ids,
        &take.quantities,
    )
    .fetch_all(conn)
    .await?;
    let taken = rows.first().map_or(0, |row| row.taken);
    Ok((rows.into_iter().map(OrderRow::from).collect(), taken))
}

/// Stock an [`insert_many`] takes: `quantities[i]` units of `product_ids[i]`.
#[derive(Debug, Default)]
pub struct StockTake {
    pub product_ids: Vec<i64>,
    pub quantities: Vec<i64>,
}

struct InsertedRow {
    id: i64,
    user_id: i64,
    status: String,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    coupon_id: Option<i64>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    taken: i64,
}

impl From<InsertedRow> for OrderRow {
    fn from(row: InsertedRow) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            status: row.status,
            total_amount: row.total_amount,
            discount_amount: row.discount_amount,
            final_amount: row.final_amount,
            coupon_id: row.coupon_id,
            created_at: row.created_at,
            expires_at: row.expires_at,
            paid_at: row.paid_at,
        }
    }
}

pub async fn find(conn: &mut PgConnection, id: i64) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        "SELECT id, user_id, status, total_amount, discount_amount, final_amount, coupon_id, created_at, expires_at,
                paid_at
         FROM orders WHERE id = $1",
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Reads the order and locks it: payments, cancellations, expiry and admin
/// moves of one order happen one at a time.
pub async fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        "SELECT id, user_id, status, total_amount, discount_amount, final_amount, coupon_id, created_at, expires_at,
                paid_at
         FROM orders WHERE id = $1 FOR UPDATE",
        id,
    )
    .fetch_optional(conn)
    .await
}

pub async fn items(conn: &mut PgConnection, order_ids: &[i64]) -> Result<Vec<ItemRow>, sqlx::Error> {
    sqlx::query_as!(
        ItemRow,
        "SELECT order_id, product_id, product_name, quantity, unit_price FROM order_items
         WHERE order_id = ANY($1) ORDER BY order_id, product_id",
        order_ids,
    )
    .fetch_all(conn)
    .await
}

/// The user's orders, newest first, strictly older than `before_id`.
pub async fn page(
    conn: &mut PgConnection,
    user_id: i64,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        "SELECT id, user_id, status, total_amount, discount_amount, final_amount, coupon_id, created_at, expires_at,
                paid_at
         FROM orders WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        user_id,
        before_id,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Moves the order to `status`, stamping the time it was cancelled. (A
/// payment sets PAID itself: `payments::record`.)
pub async fn set_status(conn: &mut PgConnection, id: i64, status: OrderStatus) -> Result<OrderRow, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        "UPDATE orders SET status = $2, updated_at = now(),
             cancelled_at = CASE WHEN $2 = 'CANCELLED' THEN now() ELSE cancelled_at END
         WHERE id = $1
         RETURNING id, user_id, status, total_amount, discount_amount, final_amount, coupon_id, created_at,
                   expires_at, paid_at",
        id,
        status.as_str(),
    )
    .fetch_one(conn)
    .await
}

/// Moves orders the caller has locked to `status` (expiry: no stamp to set).
pub async fn set_statuses(conn: &mut PgConnection, ids: &[i64], status: OrderStatus) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE orders SET status = $2, updated_at = now() WHERE id = ANY($1)", ids, status.as_str())
        .execute(conn)
        .await
        .map(drop)
}

/// Up to `limit` PENDING orders past their expiry, locked; orders another
/// instance is already expiring are skipped, not waited for.
pub async fn lock_overdue(conn: &mut PgConnection, limit: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM orders WHERE status = 'PENDING' AND expires_at <= now()
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    .fetch_all(conn)
    .await
}

pub async fn placed_under(conn: &mut PgConnection, reservation: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM orders WHERE gate_reservation = $1) AS "placed!""#, reservation)
        .fetch_one(conn)
        .await
}
