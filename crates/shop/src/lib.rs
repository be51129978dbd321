//! `shop`: an e-commerce backend (points, products, coupons, orders,
//! payments) built to stay correct when thousands of requests contend for
//! the same balance, stock or coupon, across many server instances.
//!
//! The modules form layers; each uses only those below it:
//!
//! - [`startup`]: reaching PostgreSQL and Redis, migrating, wiring, serving.
//! - `http`: the router, one module per resource; errors become
//!   problem+json in `http::error` only.
//! - `orders`, `payments`, `issuance`, `top_sellers`, `coupon_types`,
//!   `seed`: placing, paying, cancelling and expiring orders; coupons
//!   issued asynchronously through a Redis stream; the best sellers of
//!   recent days; campaigns by code; the admin account and demo data.
//! - `strategy`: the concurrency strategies, a trait per family, chosen by
//!   config.
//! - `storage` (SQL, one module per table family), `idempotency`
//!   (`Idempotency-Key` replay), `instances` (which instances are alive),
//!   `lock` (Redis lease locks with fencing
//!   tokens), `batcher` (requests that arrive together, written together),
//!   `auth` (password hashes and tokens), [`invariants`] (the shop's
//!   invariants as queries, for tests and load runs).
//! - `domain` (pure rules and the newtypes that carry them), [`error`] (the
//!   one error type every layer returns), [`config`] (the command line),
//!   `backoff`.

mod auth;
mod backoff;
mod batcher;
pub mod config;
mod coupon_types;
mod domain;
pub mod error;
mod events;
mod http;
mod idempotency;
mod instances;
pub mod invariants;
mod issuance;
mod lock;
mod orders;
mod payments;
pub mod redis_conn;
mod seed;
pub mod startup;
mod storage;
mod strategy;
mod telemetry;
mod top_sellers;

// What the load generator and the tests use besides the modules above:
// tokens minted for a role, and the coupon gate's script run alone.
pub use auth::{Caller, Tokens};
pub use domain::user::Role;
pub use events::{listen as webhook_listen, manage_sinks};
pub use seed::create_admin;
pub use strategy::coupons::GRANT_LUA;
