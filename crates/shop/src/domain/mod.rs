//! Pure rules of the shop and the newtypes that carry them: no I/O, no async.
//! A value of one of these types has passed its rule, so code past the HTTP
//! handlers never sees invalid input.

pub mod coupon;
pub mod order;
pub mod points;
pub mod product;
pub mod user;

/// Input that breaks a rule; always a client error naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: &'static str,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// Length in characters, not bytes, as the API's limits count.
fn char_len(value: &str) -> usize {
    value.chars().count()
}
