//! SQL, one module per table family. Functions take `&mut PgConnection` and
//! never begin or commit: the caller owns the transaction.

pub mod coupons;
pub mod ledger;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod products;
pub mod users;
pub mod wallets;
