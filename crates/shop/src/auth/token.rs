//! HS256 JWTs. Access and refresh tokens are signed with different keys
//! derived from the one secret, and carry their kind, so neither can stand in
//! for the other even if one check were forgotten.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::user::Role;

const REFRESH_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// Who is calling, as proven by a valid access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: i64,
    pub role: Role,
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
    iat: i64,
    exp: i64,
}

pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
}

struct KeyPair {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl KeyPair {
    fn derive(secret: &[u8], kind: TokenKind) -> Self {
        let label: &[u8] = match kind {
            TokenKind::Access => b"shop access token\0",
            TokenKind::Refresh => b"shop refresh token\0",
        };
        let key = Sha256::new().chain_update(label).chain_update(secret).finalize();
        Self { encoding: EncodingKey::from_secret(&key), decoding: DecodingKey::from_secret(&key) }
    }
}

pub struct Tokens {
    access: KeyPair,
    refresh: KeyPair,
    access_ttl: Duration,
    validation: Validation,
}

impl Tokens {
    pub fn new(secret: &[u8], access_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            access: KeyPair::derive(secret, TokenKind::Access),
            refresh: KeyPair::derive(secret, TokenKind::Refresh),
            access_ttl,
            validation,
        }
    }

    pub fn issue(&self, caller: Caller) -> anyhow::Result<TokenPair> {
        let now = Utc::now();
        let expires_at = now + self.access_ttl;
        Ok(TokenPair {
            access_token: self.sign(caller, TokenKind::Access, now, expires_at)?,
            refresh_token: self.sign(caller, TokenKind::Refresh, now, now + REFRESH_TTL)?,
            expires_at,
        })
    }

    /// The caller a token of `kind` proves, or `None` for any token that is
    /// malformed, forged, expired or of the other kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Option<Caller> {
        let keys = self.keys(kind);
        let claims = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &self.validation).ok()?.claims;
        if claims.typ != kind {
            return None;
        }
        let user_id = claims.sub.parse().ok().filter(|id: &i64| *id > 0)?;
        Some(Caller { user_id, role: claims.role })
    }

    fn sign(
        &self,
        caller: Caller,
        kind: TokenKind,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sub: caller.user_id.to_string(),
            role: caller.role,
            typ: kind,
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

    const ALICE: Caller = Caller { user_id: 7, role: Role::User };

    #[test]
    fn each_token_works_only_as_its_kind() {
        let tokens = Tokens::new(b"secret", Duration::from_secs(60));
        let pair = tokens.issue(ALICE).unwrap();
        assert_eq!(tokens.verify(&pair.access_token, TokenKind::Access), Some(ALICE));
        assert_eq!(tokens.verify(&pair.refresh_token, TokenKind::Refresh), Some(ALICE));
        assert_eq!(tokens.verify(&pair.access_token, TokenKind::Refresh), None);
        assert_eq!(tokens.verify(&pair.refresh_token, TokenKind::Access), None);
    }

    #[test]
    fn rejects_other_secrets_and_garbage() {
        let pair = Tokens::new(b"secret", Duration::from_secs(60)).issue(ALICE).unwrap();
        let other = Tokens::new(b"another secret", Duration::from_secs(60));
        assert_eq!(other.verify(&pair.access_token, TokenKind::Access), None);
        assert_eq!(other.verify("not.a.token", TokenKind::Access), None);
    }
}
