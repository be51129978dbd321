//! The catalogue.

use sqlx::PgConnection;

#[derive(Debug, Clone)]
pub struct ProductRow {
    pub id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub category: String,
}

/// Ascending id, strictly after `after_id` when given.
pub async fn page(
    conn: &mut PgConnection,
    category: Option<&str>,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as!(
        ProductRow,
        "SELECT id, name, price, stock, category FROM products
         WHERE ($1::text IS NULL OR category = $1) AND ($2::bigint IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
        category,
        after_id,
        limit,
    )
    .fetch_all(conn)
    .await
}

pub async fn find(conn: &mut PgConnection, id: i64) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as!(ProductRow, "SELECT id, name, price, stock, category FROM products WHERE id = $1", id)
        .fetch_optional(conn)
        .await
}

pub async fn insert(
    conn: &mut PgConnection,
    name: &str,
    price: i64,
    stock: i64,
    category: &str,
) -> Result<ProductRow, sqlx::Error> {
    sqlx::query_as!(
        ProductRow,
        "INSERT INTO products (name, price, stock, stock_total, category) VALUES ($1, $2, $3, $3, $4)
         RETURNING id, name, price, stock, category",
        name,
        price,
        stock,
        category,
    )
    .fetch_one(conn)
    .await
}

/// Changes the given fields. A new stock level moves `stock_total` by the
/// same delta in the same statement, so units held by orders stay accounted
/// for even while orders reserve stock concurrently.
pub async fn update(
    conn: &mut PgConnection,
    id: i64,
    name: Option<&str>,
    price: Option<i64>,
    stock: Option<i64>,
    category: Option<&str>,
) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as!(
        ProductRow,
        "UPDATE products SET
             name = COALESCE($2, name),
             price = COALESCE($3, price),
             stock_total = stock_total + COALESCE($4 - stock, 0),
             stock = COALESCE($4, stock),
             category = COALESCE($5, category),
             version = version + 1,
             updated_at = now()
         WHERE id = $1
         RETURNING id, name, price, stock, category",
        id,
        name,
        price,
        stock,
        category,
    )
    .fetch_optional(conn)
    .await
}

/// Stock levels with the row version, for the stock strategies.
#[derive(Debug, Clone, Copy)]
pub struct StockRow {
    pub id: i64,
    pub stock: i64,
    pub version: i64,
}

/// The products of `ids`, by ascending id (missing ids are left out).
pub async fn by_ids(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as!(
        ProductRow,
        "SELECT id, name, price, stock, category FROM products WHERE id = ANY($1) ORDER BY id",
        ids
    )
    .fetch_all(conn)
    .await
}

pub async fn stock_of(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<StockRow>, sqlx::Error> {
    sqlx::query_as!(StockRow, "SELECT id, stock, version FROM products WHERE id = ANY($1) ORDER BY id", ids)
        .fetch_all(conn)
        .await
}

/// Locks the rows of `ids` in ascending id order, the one order every
/// writer of stock locks them in.
pub async fn lock_stock(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<StockRow>, sqlx::Error> {
    sqlx::query_as!(StockRow, "SELECT id, stock, version FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids)
        .fetch_all(conn)
        .await
}

/// Locks the rows of `ids` in ascending id order and reads them whole: the
/// batch strategy prices and checks a batch of orders under these locks.
pub async fn lock_for_orders(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<ProductRow>, sqlx::Error> {
    sqlx::query_as!(
        ProductRow,
        "SELECT id, name, price, stock, category FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        ids,
    )
    .fetch_all(conn)
    .await
}

/// Takes `quantities[i]` units of `ids[i]`, rows the caller has locked and
/// checked; `products_stock_check` still refuses going below zero.
pub async fn take_stock_many(conn: &mut PgConnection, ids: &[i64], quantities: &[i64]) -> Result<u64, sqlx::Error> {
    let taken = sqlx::query!(
        "UPDATE products p SET stock = p.stock - t.quantity, version = p.version + 1
         FROM unnest($1::bigint[], $2::bigint[]) AS t(id, quantity) WHERE p.id = t.id",
        ids,
        quantities,
    )
    .execute(conn)
    .await?;
    Ok(taken.rows_affected())
}

/// Takes `quantity` units if that many are in stock (and, with
/// `expected_version`, if the row is unchanged since read). `false`: not taken.
pub async fn take_stock(
    conn: &mut PgConnection,
    id: i64,
    quantity: i32,
    expected_version: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query!(
        "UPDATE products SET stock = stock - $2, version = version + 1
         WHERE id = $1 AND stock >= $2 AND ($3::bigint IS NULL OR version = $3)",
        id,
        i64::from(quantity),
        expected_version,
    )
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Stamps the product with a lease holder's fencing token if newer than the
/// last (see `wallets::claim_fence`); `None` for a stale token.
pub async fn claim_fence(conn: &mut PgConnection, id: i64, fence: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!("UPDATE products SET fence = $2 WHERE id = $1 AND fence < $2 RETURNING stock", id, fence)
        .fetch_optional(conn)
        .await
}

pub async fn fence(conn: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!("SELECT fence FROM products WHERE id = $1", id).fetch_one(conn).await
}

/// A change of a product's stock that no order took through a stock
/// strategy: units returned by a cancelled or expired order, an admin's new
/// level. `version` is the row's version once changed, so that a copy of
/// the stock read at some version (the Redis stock gate) can tell whether
/// it already holds the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockChange {
    pub product_id: i64,
    pub delta: i64,
    pub version: i64,
}

/// Writes changes for the stock gate to learn of, in the transaction that
/// makes them; each with its row's id.
pub async fn record_gate_changes(
    conn: &mut PgConnection,
    changes: &[StockChange],
) -> Result<Vec<(i64, StockChange)>, sqlx::Error> {
    let rows = sqlx::query!(
        "INSERT INTO stock_gate_changes (product_id, delta, version)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
         RETURNING id, product_id, delta, version",
        &changes.iter().map(|change| change.product_id).collect::<Vec<_>>(),
        &changes.iter().map(|change| change.delta).collect::<Vec<_>>(),
        &changes.iter().map(|change| change.version).collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?;
    let recorded = rows
        .into_iter()
        .map(|row| (row.id, StockChange { product_id: row.product_id, delta: row.delta, version: row.version }));
    Ok(recorded.collect())
}

/// Deletes gate changes the gate has learnt of.
pub async fn forget_gate_changes(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM stock_gate_changes WHERE id = ANY($1)", ids).execute(conn).await.map(drop)
}

/// Gate changes older than `older_than` (so left behind, not in flight), up
/// to `limit`, locked; those another instance is passing on are skipped.
pub async fn lock_stale_gate_changes(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<(i64, StockChange)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT id, product_id, delta, version FROM stock_gate_changes
         WHERE created_at < now() - make_interval(secs => $1)
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        older_than.as_secs_f64(),
        limit,
    )
    .fetch_all(conn)
    .await?;
    let stale = rows
        .into_iter()
        .map(|row| (row.id, StockChange { product_id: row.product_id, delta: row.delta, version: row.version }));
    Ok(stale.collect())
}

/// Locks the products of these orders, all of them in ascending id order
/// (the one order every writer of stock locks them in), before any is
/// changed: an expiry sweep over several orders must not lock one order's
/// products and then another's lower ones.
pub async fn lock_for_return(conn: &mut PgConnection, order_ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT p.id FROM products p
         WHERE p.id IN (SELECT product_id FROM order_items WHERE order_id = ANY($1))
         ORDER BY p.id FOR UPDATE",
        order_ids,
    )
    .fetch_all(conn)
    .await
    .map(drop)
}

/// Puts the orders' units back in stock; the caller has locked the
/// products ([`lock_for_return`]). One change per product, however many of
/// the orders held it.
pub async fn return_stock(conn: &mut PgConnection, order_ids: &[i64]) -> Result<Vec<StockChange>, sqlx::Error> {
    sqlx::query_as!(
        StockChange,
        r#"UPDATE products p SET stock = p.stock + returned.quantity, version = p.version + 1
           FROM (SELECT product_id, sum(quantity)::bigint AS quantity FROM order_items
                 WHERE order_id = ANY($1) GROUP BY product_id) returned
           WHERE p.id = returned.product_id
           RETURNING p.id AS product_id, returned.quantity AS "delta!", p.version"#,
        order_ids,
    )
    .fetch_all(conn)
    .await
}
