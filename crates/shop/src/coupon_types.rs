//! Campaigns by code, cached in memory: a campaign never changes once
//! created, so a rush resolves its code without a database round trip.
//! Unknown codes are not cached (a campaign may be created later).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::coupon::CouponType;
use crate::storage::Db;
use crate::storage::coupons;

#[derive(Default)]
pub struct CouponTypes {
    // A std lock: held only to copy an `Arc` in or out, never across an await.
    by_code: RwLock<HashMap<String, Arc<CouponType>>>,
}

impl CouponTypes {
    pub async fn find(&self, db: &Db, code: &str) -> Result<Option<Arc<CouponType>>, sqlx::Error> {
        if let Some(known) = self.by_code.read().expect("not poisoned").get(code) {
            return Ok(Some(known.clone()));
        }
        let Some(found) = coupons::find_type_by_code(&mut *db.read().await?, code).await? else {
            return Ok(None);
        };
        let found = Arc::new(found);
        self.by_code.write().expect("not poisoned").insert(code.to_owned(), found.clone());
        Ok(Some(found))
    }
}
