//! HTTP tests against a real server on real PostgreSQL and Redis; each test
//! has its own database and Redis prefix.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod authorization;
mod cluster;
mod concurrency;
mod coupons;
mod events;
mod faults;
mod front_door;
mod health;
mod history;
mod idempotency;
mod memory;
mod operations;
mod orders;
mod outages;
mod payments;
mod points;
mod products;
mod redis_failover;
mod requests;
mod sessions;
mod startup;
mod takeover;
