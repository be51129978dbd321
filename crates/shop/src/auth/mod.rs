//! Credentials: password hashing, throttled logins and the JWT
//! access/refresh tokens.

mod hs256;
mod password;
mod throttle;
mod token;

pub use password::PasswordHasher;
pub use throttle::LoginThrottle;
pub use token::{Caller, TokenPair, Tokens};
