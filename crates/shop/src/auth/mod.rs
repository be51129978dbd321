//! Credentials: password hashing and the JWT access/refresh tokens.

mod hs256;
mod password;
mod token;

pub use password::PasswordHasher;
pub use token::{Caller, TokenPair, Tokens};
