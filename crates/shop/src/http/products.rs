//! The catalogue: public reads, admin writes.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::catalogue::{CatalogueRead, Product};
use super::error::Problem;
use super::extract::{Json, PathId, Query};
use super::pagination::{Page, PageRequest, bounded};
use crate::auth::Caller;
use crate::domain::product::{Category, Price, ProductName, Stock};
use crate::error::AppError;
use crate::storage::Tx;
use crate::storage::products::{self, StockChange};
use crate::top_sellers::TopSeller;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductListQuery {
    /// Only products of this category.
    category: Option<String>,
    /// 1 to 100, default 50.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct NewProduct {
    /// 1 to 100 characters after trimming.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Won.
    #[schema(minimum = 1, maximum = 100000000)]
    price: i64,
    #[schema(minimum = 0, maximum = 1000000000)]
    stock: i64,
    /// 1 to 50 characters after trimming.
    #[schema(min_length = 1, max_length = 50)]
    category: String,
}

/// Fields to change; at least one. A new `stock` is the level in stock now.
#[derive(Deserialize, ToSchema)]
#[schema(min_properties = 1)]
pub struct ProductPatch {
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    #[schema(minimum = 1, maximum = 100000000)]
    price: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000000)]
    stock: Option<i64>,
    #[schema(min_length = 1, max_length = 50)]
    category: Option<String>,
}

/// Products by ascending id.
#[utoipa::path(get, path = "/api/products", operation_id = "listProducts", tag = "products", params(ProductListQuery),
    responses((status = 200, body = Page<Product>), (status = 400, description = "VALIDATION_FAILED", body = Problem)))]
pub async fn list(State(state): State<AppState>, Query(query): Query<ProductListQuery>) -> Result<Response, AppError> {
    let page = PageRequest::parse(query.limit.as_deref(), query.cursor.as_deref(), 50)?;
    let category = query.category.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
    let read = CatalogueRead::Page { category, limit: page.limit, after: page.after };
    let body = state.catalogue.read(read).await?.expect("a page is always found");
    Ok(json_body(body))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopSellersQuery {
    /// Calendar days to count, today included: 1 to 30, default 3.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 30)]
    days: Option<String>,
    /// 1 to 100, default 5.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// The best sellers of the last `days` calendar days (today included), by
/// quantity of paid orders, cancellations after payment subtracted; ties by
/// lower product id. A payment shows within 5 seconds.
#[utoipa::path(get, path = "/api/products/top-sellers", operation_id = "listTopSellers", tag = "products", params(TopSellersQuery),
    responses((status = 200, body = Vec<TopSeller>), (status = 400, description = "VALIDATION_FAILED", body = Problem)))]
pub async fn top_sellers(
    State(state): State<AppState>,
    Query(query): Query<TopSellersQuery>,
) -> Result<Response, AppError> {
    let days = bounded(query.days.as_deref(), "days", 3, 30)?;
    let limit = bounded(query.limit.as_deref(), "limit", 5, 100)?;
    let read = CatalogueRead::TopSellers { days: days as u32, limit: limit as usize };
    Ok(json_body(state.catalogue.read(read).await?.expect("a ranking is always found")))
}

/// One product.
#[utoipa::path(get, path = "/api/products/{id}", operation_id = "getProduct", tag = "products", params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = Product),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn detail(State(state): State<AppState>, PathId(id): PathId) -> Result<Response, AppError> {
    let body = state.catalogue.read(CatalogueRead::Product(id)).await?;
    Ok(json_body(body.ok_or_else(|| AppError::not_found("product not found"))?))
}

/// A JSON body serialized beforehand (and shared by the requests of one read).
fn json_body(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Adds a product (admin).
#[utoipa::path(post, path = "/api/admin/products", operation_id = "createProduct", tag = "admin", security(("bearer" = [])), request_body = NewProduct,
    responses(
        (status = 201, body = Product),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewProduct>,
) -> Result<(StatusCode, Json<Product>), AppError> {
    let name = ProductName::parse(&new.name)?;
    let price = Price::parse(new.price)?;
    let stock = Stock::parse(new.stock)?;
    let category = Category::parse(&new.category)?;
    caller.require_admin()?;
    let mut tx = Tx::begin(&state.db).await?;
    let row = products::insert(&mut tx, name.as_str(), price.won(), stock.units(), category.as_str()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Changes a product (admin).
#[utoipa::path(patch, path = "/api/admin/products/{id}", operation_id = "updateProduct", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)), request_body = ProductPatch,
    responses(
        (status = 200, body = Product),
        (status = 400, description = "VALIDATION_FAILED", body = Problem),
        (status = 403, description = "FORBIDDEN", body = Problem),
        (status = 404, description = "NOT_FOUND", body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Json(patch): Json<ProductPatch>,
) -> Result<Json<Product>, AppError> {
    let name = patch.name.as_deref().map(ProductName::parse).transpose()?;
    let price = patch.price.map(Price::parse).transpose()?;
    let stock = patch.stock.map(Stock::parse).transpose()?;
    let category = patch.category.as_deref().map(Category::parse).transpose()?;
    if name.is_none() && price.is_none() && stock.is_none() && category.is_none() {
        return Err(AppError::Validation("body: give at least one of name, price, stock, category".into()));
    }
    caller.require_admin()?;
    let mut tx = Tx::begin(&state.db).await?;
    let before = products::lock_stock(&mut tx, &[id]).await?;
    let before = before.first().ok_or_else(|| AppError::not_found("product not found"))?;
    let row = products::update(
        &mut tx,
        id,
        name.as_ref().map(ProductName::as_str),
        price.map(Price::won),
        stock.map(Stock::units),
        category.as_ref().map(Category::as_str),
    )
    .await?
    .ok_or_else(|| AppError::not_found("product not found"))?;
    // The row was locked, so this update made the version after `before`'s.
    let change = StockChange { product_id: id, delta: row.stock - before.stock, version: before.version + 1 };
    let changes = if change.delta == 0 { Vec::new() } else { vec![change] };
    let recorded = state.stock.record_changes(&mut tx, changes).await?;
    tx.commit().await?;
    state.stock.changed(&state.db, recorded).await;
    Ok(Json(row.into()))
}
