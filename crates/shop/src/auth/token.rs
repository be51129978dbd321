//! HS256 JWTs. Access and refresh tokens are signed with different keys,
//! each derived from `JWT_SECRET` with HKDF, and carry their kind, so
//! neither can stand in for the other even if one check were forgotten.
//! Both name their login (`sid`); a refresh token also has its own id
//! (`jti`), which the login's row must still hold for it to be good (see
//! `storage::sessions`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::hs256;
use crate::domain::user::Role;

/// How long a refresh token is good for; each refresh starts a new one.
pub const REFRESH_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// Who is calling, as proven by a valid token, and in which login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: i64,
    pub role: Role,
    pub session: Uuid,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    typ: TokenKind,
    sid: Uuid,
    jti: Uuid,
    iat: i64,
    exp: i64,
}

pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
    /// The refresh token's id, which its login's row records.
    pub refresh_id: Uuid,
    pub refresh_expires_at: DateTime<Utc>,
}

struct KeyPair {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl KeyPair {
    fn derive(secret: &[u8], kind: TokenKind) -> anyhow::Result<Self> {
        let info: &[u8] = match kind {
            TokenKind::Access => b"shop access token",
            TokenKind::Refresh => b"shop refresh token",
        };
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(None, secret)
            .expand(info, &mut key)
            .map_err(|_| anyhow::anyhow!("cannot derive a token key"))?;
        Ok(Self { encoding: EncodingKey::from_secret(&key)?, decoding: DecodingKey::from_secret(&key)? })
    }
}

pub struct Tokens {
    access: KeyPair,
    refresh: KeyPair,
    access_ttl: Duration,
    validation: Validation,
}

impl Tokens {
    pub fn new(secret: &[u8], access_ttl: Duration) -> anyhow::Result<Self> {
        hs256::install();
        // HS256 only (an `alg` of `none` or any other is refused), expiry
        // and not-before checked to the second, and every claim required.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Ok(Self {
            access: KeyPair::derive(secret, TokenKind::Access)?,
            refresh: KeyPair::derive(secret, TokenKind::Refresh)?,
            access_ttl,
            validation,
        })
    }

    pub fn issue(&self, caller: Caller) -> anyhow::Result<TokenPair> {
        let now = Utc::now();
        let expires_at = now + self.access_ttl;
        let refresh_expires_at = now + REFRESH_TTL;
        let refresh_id = Uuid::new_v4();
        Ok(TokenPair {
            access_token: self.sign(caller, TokenKind::Access, Uuid::new_v4(), now, expires_at)?,
            refresh_token: self.sign(caller, TokenKind::Refresh, refresh_id, now, refresh_expires_at)?,
            expires_at,
            refresh_id,
            refresh_expires_at,
        })
    }

    /// The caller an access token proves, or `None` for any token that is
    /// malformed, forged, expired, not yet valid or a refresh token.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        self.decode(token, TokenKind::Access).map(|(caller, _)| caller)
    }

    /// The caller and token id a refresh token proves, or `None` as for
    /// [`Tokens::verify`]. Whether its login still holds it is the
    /// database's to say.
    pub fn verify_refresh(&self, token: &str) -> Option<(Caller, Uuid)> {
        self.decode(token, TokenKind::Refresh)
    }

    fn decode(&self, token: &str, kind: TokenKind) -> Option<(Caller, Uuid)> {
        let keys = self.keys(kind);
        let claims = jsonwebtoken::decode::<Claims>(token.as_bytes(), &keys.decoding, &self.validation).ok()?.claims;
        if claims.typ != kind {
            return None;
        }
        let user_id = claims.sub.parse().ok().filter(|id: &i64| *id > 0)?;
        Some((Caller { user_id, role: claims.role, session: claims.sid }, claims.jti))
    }

    fn sign(
        &self,
        caller: Caller,
        kind: TokenKind,
        id: Uuid,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sub: caller.user_id.to_string(),
            role: caller.role,
            typ: kind,
            sid: caller.session,
            jti: id,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.keys(kind).encoding)?)
    }

    fn keys(&self, kind: TokenKind) -> &KeyPair {
        match kind {
            TokenKind::Access => &self.access,
            TokenKind::Refresh => &self.refresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Caller = Caller { user_id: 7, role: Role::User, session: Uuid::from_u128(1) };

    fn tokens(secret: &[u8]) -> Tokens {
        Tokens::new(secret, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn each_token_works_only_as_its_kind() {
        let tokens = tokens(b"a secret of at least thirty-two bytes");
        let pair = tokens.issue(ALICE).unwrap();
        assert_eq!(tokens.verify(&pair.access_token), Some(ALICE));
        assert_eq!(tokens.verify_refresh(&pair.refresh_token), Some((ALICE, pair.refresh_id)));
        assert_eq!(tokens.verify_refresh(&pair.access_token), None);
        assert_eq!(tokens.verify(&pair.refresh_token), None);
    }

    #[test]
    fn rejects_other_secrets_and_garbage() {
        let pair = tokens(b"a secret of at least thirty-two bytes").issue(ALICE).unwrap();
        let other = tokens(b"another secret of thirty-two bytes!");
        assert_eq!(other.verify(&pair.access_token), None);
        assert_eq!(other.verify("not.a.token"), None);
    }
}
