//! Credentials: password hashing and the JWT access/refresh tokens.

mod password;
mod token;

pub use password::PasswordHasher;
pub use token::{Caller, TokenKind, Tokens};
