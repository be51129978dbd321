//! Catalogue reads are shared: identical product pages, listings and
//! top-seller rankings asked for together are answered by one read and one
//! JSON body. A sale is the same few requests thousands of times a second;
//! each would otherwise cost a pooled connection, a round trip and a
//! serialization.
//!
//! Reads of one key take turns: while one runs, the identical requests that
//! arrive gather behind it and are answered together by the next. A request
//! joins only a read that has not been sent yet, so every answer comes from
//! a read that began after its request arrived — as fresh as a query of its
//! own: a buyer who ordered and then reloads the product sees the stock
//! their order took. Written by hand: the single-flight crates share a read
//! already running, which would answer from before the request.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;
use utoipa::ToSchema;

use super::pagination::PageRequest;
use crate::error::AppError;
use crate::storage::Db;
use crate::storage::products::{self, ProductRow};
use crate::top_sellers::TopSellers;

#[derive(Serialize, ToSchema)]
pub struct Product {
    id: i64,
    #[schema(example = "아메리카노")]
    name: String,
    /// Won.
    #[schema(example = 3000)]
    price: i64,
    stock: i64,
    #[schema(example = "음료")]
    category: String,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self { id: row.id, name: row.name, price: row.price, stock: row.stock, category: row.category }
    }
}

/// One read of the catalogue, and the key identical reads share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CatalogueRead {
    Page { category: Option<String>, limit: i64, after: Option<i64> },
    Product(i64),
    TopSellers { days: u32, limit: usize },
}

/// The JSON body of a read; `None`: no such product. The error is shared by
/// every request of the read.
type Answer = Result<Option<Bytes>, Arc<AppError>>;

#[derive(Clone)]
pub struct Catalogue {
    db: Db,
    top_sellers: TopSellers,
    /// Reads not yet sent, by what they read.
    waiting: Arc<Mutex<HashMap<CatalogueRead, Shared<BoxFuture<'static, Answer>>>>>,
    /// Whose turn it is to read, by key hash: striped, so that the locks
    /// are a fixed few whatever the keys (unrelated keys that share a
    /// stripe only take turns).
    turns: Arc<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Catalogue::turns`]: well above the connections that can read at once.
const TURN_STRIPES: usize = 64;

impl Catalogue {
    pub fn new(db: Db, top_sellers: TopSellers) -> Self {
        let turns = (0..TURN_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self { db, top_sellers, waiting: Arc::default(), turns }
    }

    /// The body of `read`, shared with the identical requests that arrive
    /// before its query is sent.
    pub async fn read(&self, read: CatalogueRead) -> Result<Option<Bytes>, AppError> {
        let shared = {
            let mut waiting = self.waiting.lock().expect("no panics while the map is held");
            waiting.entry(read.clone()).or_insert_with(|| self.start(read).boxed().shared()).clone()
        };
        shared.await.map_err(|error| each_its_own(&error))
    }

    fn start(&self, read: CatalogueRead) -> impl Future<Output = Answer> + Send + 'static {
        let catalogue = self.clone();
        async move { catalogue.load(&read).await.map_err(Arc::new) }
    }

    async fn load(&self, read: &CatalogueRead) -> Result<Option<Bytes>, AppError> {
        // Identical requests gather behind the read of this key in flight.
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(read) as usize % TURN_STRIPES;
        let _turn = self.turns[stripe].lock().await;
        let body = match read {
            CatalogueRead::Page { category, limit, after } => {
                let mut conn = self.sending(read, self.db.read().await)?;
                let page = PageRequest { limit: *limit, after: *after };
                let rows = products::page(&mut conn, category.as_deref(), page.after, page.fetch()).await?;
                serde_json::to_vec(&page.page(rows, |row| row.id, Product::from))
            }
            CatalogueRead::Product(id) => {
                let mut conn = self.sending(read, self.db.read().await)?;
                match products::find(&mut conn, *id).await? {
                    Some(row) => serde_json::to_vec(&Product::from(row)),
                    None => return Ok(None),
                }
            }
            CatalogueRead::TopSellers { days, limit } => {
                self.sending(read, Ok(()))?;
                serde_json::to_vec(&self.top_sellers.top(&self.db, *days, *limit).await?)
            }
        };
        Ok(Some(body.expect("catalogue answers serialize").into()))
    }

    /// Called as the read is about to be sent (with what it waited for):
    /// from now on, an identical request starts the next read.
    fn sending<T>(&self, read: &CatalogueRead, ready: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.waiting.lock().expect("no panics while the map is held").remove(read);
        ready
    }
}

/// A shared read's error, for one of the requests that shared it: a
/// dependency that failed stays a 503 for each of them.
fn each_its_own(error: &AppError) -> AppError {
    match error {
        AppError::Unavailable(why) => AppError::Unavailable(why),
        AppError::ConcurrencyConflict(why) => AppError::ConcurrencyConflict(why),
        AppError::Internal(cause) => AppError::internal(anyhow::anyhow!("{cause:#}")),
        other => AppError::internal(anyhow::anyhow!("{other}")),
    }
}
