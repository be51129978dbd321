//! The catalogue.

use sqlx::PgConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
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
    sqlx::query_as(
        "SELECT id, name, price, stock, category FROM products
         WHERE ($1::text IS NULL OR category = $1) AND ($2::bigint IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(category)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn find(conn: &mut PgConnection, id: i64) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, price, stock, category FROM products WHERE id = $1")
        .bind(id)
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
    sqlx::query_as(
        "INSERT INTO products (name, price, stock, stock_total, category) VALUES ($1, $2, $3, $3, $4)
         RETURNING id, name, price, stock, category",
    )
    .bind(name)
    .bind(price)
    .bind(stock)
    .bind(category)
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
    sqlx::query_as(
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
    )
    .bind(id)
    .bind(name)
    .bind(price)
    .bind(stock)
    .bind(category)
    .fetch_optional(conn)
    .await
}
