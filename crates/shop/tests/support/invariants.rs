//! The shop's invariants (`shop::invariants`), asserted.

use sqlx::PgPool;

/// Every invariant holds.
pub async fn all(db: &PgPool) {
    let broken = shop::invariants::violations(db).await.unwrap();
    assert!(broken.is_empty(), "invariants broken: {broken:#?}");
}
