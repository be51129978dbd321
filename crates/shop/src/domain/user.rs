//! Sign-up input: email, password and display name.

use std::str::FromStr;

use super::{ValidationError, char_len};

/// A syntactically valid address, trimmed and lower-cased: the form on which
/// uniqueness is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let email = raw.trim().to_lowercase();
        if char_len(&email) > Self::MAX_CHARS {
            return Err(ValidationError::new("email", "must be at most 254 characters"));
        }
        // The parser admits Unicode spaces such as U+2028 inside a local part.
        if email.chars().any(char::is_whitespace) {
            return Err(ValidationError::new("email", "must not contain spaces"));
        }
        email_address::EmailAddress::from_str(&email)
            .map_err(|e| ValidationError::new("email", format!("is not a valid address ({e})")))?;
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password of 8–64 characters. Not trimmed: spaces are part of it.
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        match char_len(&raw) {
            8..=64 => Ok(Self(raw)),
            _ => Err(ValidationError::new("password", "must be 8 to 64 characters")),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A display name of 1–50 characters after trimming.
#[derive(Debug, Clone)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let name = raw.trim();
        match char_len(name) {
            1..=50 => Ok(Self(name.to_owned())),
            _ => Err(ValidationError::new("name", "must be 1 to 50 characters after trimming")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    /// Roles as stored by the `users_role_check` constraint.
    pub fn from_stored(value: &str) -> Self {
        match value {
            "admin" => Self::Admin,
            _ => Self::User,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        assert_eq!(Email::parse("  Kim@Example.COM ").unwrap().as_str(), "kim@example.com");
    }

    #[test]
    fn email_rejects_garbage_and_overlong() {
        assert!(Email::parse("not-an-email").is_err());
        assert!(Email::parse("").is_err());
        assert!(Email::parse("a\u{2028}b@example.com").is_err());
        assert!(Email::parse("a b@example.com").is_err());
        let local = "a".repeat(64);
        let long = format!("{local}@{}.com", "b".repeat(190));
        assert!(char_len(&long) > 254);
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn password_counts_characters_not_bytes() {
        assert!(Password::parse("비밀번호비밀번호".into()).is_ok()); // 8 chars, 24 bytes
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("x".repeat(64)).is_ok());
        assert!(Password::parse("x".repeat(65)).is_err());
    }

    #[test]
    fn name_is_trimmed_then_measured() {
        assert_eq!(UserName::parse("  김철수 ").unwrap().as_str(), "김철수");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"가".repeat(50)).is_ok());
        assert!(UserName::parse(&"가".repeat(51)).is_err());
    }
}
