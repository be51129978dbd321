//! `shop`: an e-commerce backend (points, products, coupons, orders,
//! payments) built to stay correct when thousands of requests contend for
//! the same balance, stock or coupon, across many server instances.
//!
//! - [`config`]: the command line and its environment fallbacks.
//! - [`startup`]: reaching PostgreSQL and Redis, migrating, serving.
//! - [`error`]: the one error type every layer returns.
//! - [`http`]: the router, one module per resource; errors become
//!   problem+json in `http::error` only.
//! - [`domain`]: pure rules and the newtypes that carry them.
//! - [`strategy`]: the concurrency strategies, chosen by config.
//! - [`lock`]: Redis lease locks with fencing tokens.
//! - [`idempotency`]: `Idempotency-Key` replay, shared by every state-changing POST.
//! - [`storage`]: SQL, one module per table family.
//! - [`auth`]: password hashes and tokens.
//! - [`batcher`]: requests that arrive together, written together (the `batch` strategies).
//! - [`seed`]: the admin account and demo data.
//! - [`coupon_types`]: campaigns by code, cached.
//! - [`orders`], [`payments`]: placing, paying, cancelling and expiring orders.
//! - [`invariants`]: the shop's invariants as queries, for tests and load runs.
//! - [`top_sellers`]: the best sellers of recent days, from Redis, rebuilt from PostgreSQL.

mod auth;
mod backoff;
mod batcher;
pub mod config;
mod coupon_types;
mod domain;
pub mod error;
mod http;
mod idempotency;
pub mod invariants;
mod lock;
mod orders;
mod payments;
mod seed;
pub mod startup;
mod storage;
mod strategy;
mod top_sellers;

// What the load generator and the tests use besides the modules above:
// tokens minted for a role, and the coupon gate's script run alone.
pub use auth::{Caller, Tokens};
pub use domain::user::Role;
pub use strategy::coupons::GRANT_LUA;
