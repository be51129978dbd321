//! Failed logins, counted in Redis so every instance sees the same counts:
//! past `LOGIN_MAX_FAILURES` for one email within `LOGIN_WINDOW_SECS`, or
//! ten times that from one client address, further attempts are refused
//! until the window moves on, whatever their password.
//!
//! An attempt is counted before its password is checked and given back
//! unless it turned out a wrong password (a right one, or a failure of the
//! shop's own such as hashing at its bound), so a burst of simultaneous
//! guesses cannot all slip in before the first failure is counted, and an
//! overloaded shop locks nobody out. The window starts with the first
//! failure and is not extended by later ones. An attempt already over a
//! limit is refused before anything is written, so refused attempts (for
//! ever new emails, say) add no keys.
//!
//! A client address is an IPv4 address or an IPv6 /64 (one host's usual
//! share), IPv4-mapped IPv6 read as IPv4.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::AppError;
use crate::redis_conn::RunScript;
use crate::redis_conn::{Keyspace, RedisConn};

/// How many times the per-account limit one client address may fail.
const ADDRESS_FACTOR: u64 = 10;

pub struct LoginThrottle {
    redis: RedisConn,
    keys: Keyspace,
    max_failures: u64,
    window_secs: u64,
}

/// An attempt let through, to be given back if it succeeds.
pub struct Admitted {
    keys: [String; 2],
}

impl LoginThrottle {
    pub fn new(redis: RedisConn, keys: &Keyspace, max_failures: u32, window_secs: u64) -> Self {
        Self { redis, keys: keys.clone(), max_failures: u64::from(max_failures), window_secs }
    }

    /// Counts the attempt for the email and the address; 429 if either is
    /// past its limit.
    pub async fn admit(&self, email: &str, address: IpAddr) -> Result<Admitted, AppError> {
        // The email hashed: no address book in Redis.
        let account = self.keys.key(
            format_args!("login-account:{}", URL_SAFE_NO_PAD.encode(Sha256::digest(email.as_bytes()))),
            "failures",
        );
        let client = self.keys.key(format_args!("login-address:{}", client_key(address)), "failures");
        // The two counters may live on two cluster nodes: a pipeline each,
        // side by side.
        let look = |key: &str| {
            let mut pipe = redis::pipe();
            pipe.get(key).ttl(key);
            let mut redis = self.redis.clone();
            async move { pipe.query_async::<(Option<u64>, i64)>(&mut redis).await }
        };
        let ((account_seen, account_ttl), (client_seen, client_ttl)) = tokio::try_join!(look(&account), look(&client))?;
        // This attempt would be one more.
        let next = |seen: Option<u64>| Some(seen.unwrap_or(0) + 1);
        self.within_limits((next(account_seen), account_ttl, next(client_seen), client_ttl))?;
        let count = |key: &str| {
            let mut pipe = redis::pipe();
            pipe.incr(key, 1).cmd("EXPIRE").arg(key).arg(self.window_secs).arg("NX").ignore().ttl(key);
            let mut redis = self.redis.clone();
            async move { pipe.query_async::<(u64, i64)>(&mut redis).await }
        };
        let ((account_count, account_ttl), (client_count, client_ttl)) =
            tokio::try_join!(count(&account), count(&client))?;
        // Simultaneous attempts all passed the look: the count decides.
        if let Err(refused) = self.within_limits((Some(account_count), account_ttl, Some(client_count), client_ttl)) {
            self.give_back(Admitted { keys: [account, client] }).await;
            return Err(refused);
        }
        Ok(Admitted { keys: [account, client] })
    }

    fn within_limits(
        &self,
        (account, account_ttl, client, client_ttl): (Option<u64>, i64, Option<u64>, i64),
    ) -> Result<(), AppError> {
        let over = [
            (account.unwrap_or(0) > self.max_failures, account_ttl),
            (client.unwrap_or(0) > self.max_failures * ADDRESS_FACTOR, client_ttl),
        ];
        match over.iter().filter(|(over, _)| *over).map(|(_, ttl)| *ttl).max() {
            Some(ttl) => {
                metrics::counter!("shop_logins_throttled_total").increment(1);
                Err(AppError::RateLimited {
                    what: "too many failed logins",
                    retry_after_secs: u64::try_from(ttl).unwrap_or(self.window_secs).max(1),
                })
            }
            None => Ok(()),
        }
    }

    /// The attempt was no failure (a right password, or the shop could not
    /// tell): it does not count. A counter whose window ended meanwhile is
    /// left alone rather than taken below zero. A counter Redis cannot be
    /// reached for keeps the attempt until its window ends — during a
    /// partial outage right passwords may count, and with them a user may
    /// be refused sooner — but the login's own answer stands: a right
    /// password is not told 503 for it.
    pub async fn give_back(&self, admitted: Admitted) {
        let [account, client] = &admitted.keys;
        let (mut one, mut other) = (self.redis.clone(), self.redis.clone());
        let (account, client) = (GIVE_BACK.key(account), GIVE_BACK.key(client));
        let (account, client) = tokio::join!(account.run::<()>(&mut one), client.run::<()>(&mut other));
        for error in [account.err(), client.err()].into_iter().flatten() {
            tracing::warn!(%error, "could not give back a login attempt; it counts until its window ends");
        }
    }
}

/// Decrements a counter that is still there and above zero.
static GIVE_BACK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local left = tonumber(redis.call('GET', KEYS[1]) or '0')
         if left > 0 then redis.call('DECR', KEYS[1]) end",
    )
});

/// An IPv4 address, or the /64 of an IPv6 one.
fn client_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}
