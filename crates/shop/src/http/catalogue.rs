//! Catalogue reads in flight are shared: identical product pages and
//! listings asked for together are answered by one query and one JSON body.
//! A sale is the same few requests thousands of times a second; each would
//! otherwise cost a pooled connection, a round trip and a serialization.
//!
//! A request joins only a read whose query has not been sent yet. Once the
//! query is on its way, the next identical request starts the next read, so
//! every answer comes from a statement that began after its request
//! arrived — as fresh as a query of its own: a buyer who ordered and then
//! reloads the product sees the stock their order took. Written by hand:
//! the single-flight crates share a read already running, which would answer
//! from before the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use sqlx::{PgConnection, PgPool};

use super::error::AppError;
use super::pagination::PageRequest;
use super::products::Product;
use crate::storage::products;

/// One read of the catalogue, and the key identical reads share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CatalogueRead {
    Page { category: Option<String>, limit: i64, after: Option<i64> },
    Product(i64),
}

/// The JSON body of a read; `None`: no such product. The error is shared by
/// every request of the read, hence its text only.
type Answer = Result<Option<Bytes>, Arc<str>>;

#[derive(Clone)]
pub struct Catalogue {
    db: PgPool,
    /// Reads not yet sent to PostgreSQL, by what they read.
    waiting: Arc<Mutex<HashMap<CatalogueRead, Shared<BoxFuture<'static, Answer>>>>>,
}

impl Catalogue {
    pub fn new(db: PgPool) -> Self {
        Self { db, waiting: Arc::default() }
    }

    /// The body of `read`, shared with the identical requests that arrive
    /// before its query is sent.
    pub async fn read(&self, read: CatalogueRead) -> Result<Option<Bytes>, AppError> {
        let shared = {
            let mut waiting = self.waiting.lock().expect("no panics while the map is held");
            waiting.entry(read.clone()).or_insert_with(|| self.start(read).boxed().shared()).clone()
        };
        shared.await.map_err(|error| AppError::internal(anyhow::anyhow!("{error}")))
    }

    fn start(&self, read: CatalogueRead) -> impl Future<Output = Answer> + Send + 'static {
        let (db, waiting) = (self.db.clone(), self.waiting.clone());
        async move {
            let conn = db.acquire().await;
            // From here on, an identical request starts the next read.
            waiting.lock().expect("no panics while the map is held").remove(&read);
            let loaded = match conn {
                Ok(mut conn) => load(&mut conn, &read).await,
                Err(error) => Err(error),
            };
            loaded.map_err(|error| Arc::from(error.to_string()))
        }
    }
}

async fn load(conn: &mut PgConnection, read: &CatalogueRead) -> Result<Option<Bytes>, sqlx::Error> {
    let body = match read {
        CatalogueRead::Page { category, limit, after } => {
            let page = PageRequest { limit: *limit, after: *after };
            let rows = products::page(conn, category.as_deref(), page.after, page.fetch()).await?;
            serde_json::to_vec(&page.page(rows, |row| row.id, Product::from))
        }
        CatalogueRead::Product(id) => match products::find(conn, *id).await? {
            Some(row) => serde_json::to_vec(&Product::from(row)),
            None => return Ok(None),
        },
    };
    Ok(Some(body.expect("a product serializes").into()))
}
