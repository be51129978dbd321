//! Product fields as an admin sets them.

use super::{ValidationError, char_len};

pub const MAX_PRICE: i64 = 100_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;

#[derive(Debug, Clone)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let name = raw.trim();
        match char_len(name) {
            1..=100 => Ok(Self(name.to_owned())),
            _ => Err(ValidationError::new("name", "must be 1 to 100 characters after trimming")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct Category(String);

impl Category {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let category = raw.trim();
        match char_len(category) {
            1..=50 => Ok(Self(category.to_owned())),
            _ => Err(ValidationError::new("category", "must be 1 to 50 characters after trimming")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 1 to 100,000,000 won.
#[derive(Debug, Clone, Copy)]
pub struct Price(i64);

impl Price {
    pub fn parse(won: i64) -> Result<Self, ValidationError> {
        match won {
            1..=MAX_PRICE => Ok(Self(won)),
            _ => Err(ValidationError::new("price", "must be between 1 and 100,000,000 won")),
        }
    }

    pub fn won(self) -> i64 {
        self.0
    }
}

/// 0 to 1,000,000,000 units.
#[derive(Debug, Clone, Copy)]
pub struct Stock(i64);

impl Stock {
    pub fn parse(units: i64) -> Result<Self, ValidationError> {
        match units {
            0..=MAX_STOCK => Ok(Self(units)),
            _ => Err(ValidationError::new("stock", "must be between 0 and 1,000,000,000")),
        }
    }

    pub fn units(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(Price::parse(0).is_err());
        assert!(Price::parse(1).is_ok());
        assert!(Price::parse(MAX_PRICE + 1).is_err());
        assert!(Stock::parse(-1).is_err());
        assert!(Stock::parse(0).is_ok());
        assert!(ProductName::parse("  ").is_err());
        assert_eq!(Category::parse(" 음료 ").unwrap().as_str(), "음료");
    }
}
