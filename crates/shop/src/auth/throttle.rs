//! Failed logins, counted in Redis so every instance sees the same counts:
//! past `LOGIN_MAX_FAILURES` for one email within `LOGIN_WINDOW_SECS`, or
//! ten times that from one client address, further attempts are refused
//! until the window moves on, whatever their password.
//!
//! An attempt is counted before its password is checked and given back if
//! the password was right, so a burst of simultaneous guesses cannot all
//! slip in before the first failure is counted. The window starts with the
//! first failure and is not extended by later ones.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// How many times the per-account limit one client address may fail.
const ADDRESS_FACTOR: u64 = 10;

pub struct LoginThrottle {
    redis: ConnectionManager,
    prefix: String,
    max_failures: u64,
    window_secs: u64,
}

/// An attempt let through, to be given back if it succeeds.
pub struct Admitted {
    keys: [String; 2],
}

impl LoginThrottle {
    pub fn new(redis: ConnectionManager, prefix: &str, max_failures: u32, window_secs: u64) -> Self {
        Self { redis, prefix: prefix.to_owned(), max_failures: u64::from(max_failures), window_secs }
    }

    /// Counts the attempt for the email and the address; 429 if either is
    /// past its limit.
    pub async fn admit(&self, email: &str, address: IpAddr) -> Result<Admitted, AppError> {
        // The email hashed: no address book in Redis.
        let account = format!(
            "{}login-failures:account:{}",
            self.prefix,
            URL_SAFE_NO_PAD.encode(Sha256::digest(email.as_bytes()))
        );
        let client = format!("{}login-failures:address:{address}", self.prefix);
        let mut pipe = redis::pipe();
        for key in [&account, &client] {
            pipe.incr(key, 1).cmd("EXPIRE").arg(key).arg(self.window_secs).arg("NX").ignore().ttl(key);
        }
        let (account_count, account_ttl, client_count, client_ttl): (u64, i64, u64, i64) =
            pipe.query_async(&mut self.redis.clone()).await?;
        let over = [
            (account_count > self.max_failures, account_ttl),
            (client_count > self.max_failures * ADDRESS_FACTOR, client_ttl),
        ];
        if let Some(ttl) = over.iter().filter(|(over, _)| *over).map(|(_, ttl)| *ttl).max() {
            metrics::counter!("shop_logins_throttled_total").increment(1);
            return Err(AppError::RateLimited {
                what: "too many failed logins",
                retry_after_secs: u64::try_from(ttl).unwrap_or(self.window_secs).max(1),
            });
        }
        Ok(Admitted { keys: [account, client] })
    }

    /// The password was right: this attempt was no failure.
    pub async fn succeeded(&self, admitted: Admitted) -> Result<(), AppError> {
        let mut pipe = redis::pipe();
        for key in &admitted.keys {
            pipe.decr(key, 1).ignore();
        }
        Ok(pipe.query_async::<()>(&mut self.redis.clone()).await?)
    }
}
