//! SQL, one module per table family. Functions take `&mut PgConnection` and
//! never begin or commit: the caller owns the transaction, a [`Tx`].

pub mod coupons;
mod db;
pub mod issue_requests;
pub mod ledger;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod products;
pub mod sessions;
mod tx;
pub mod users;
pub mod wallets;

pub use db::Db;
pub use tx::Tx;
