//! Cursor pagination: `limit` and an opaque `cursor`, answered as
//! `{items, nextCursor}`. The cursor encodes the id of the last item shown;
//! keyset pagination stays correct while rows are added.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::AppError;

const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    /// Id of the last item of the previous page.
    pub after: Option<i64>,
}

impl PageRequest {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>, default_limit: i64) -> Result<Self, AppError> {
        let limit = bounded(limit, "limit", default_limit, MAX_LIMIT)?;
        let after = cursor.map(decode_cursor).transpose()?;
        Ok(Self { limit, after })
    }

    /// Rows to fetch: one more than shown, to learn whether a next page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page of `rows` (fetched with [`PageRequest::fetch`]) as items.
    pub fn page<R, T>(&self, mut rows: Vec<R>, id: impl Fn(&R) -> i64, item: impl Fn(R) -> T) -> Page<T> {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let next_cursor = if more { rows.last().map(|row| encode_cursor(id(row))) } else { None };
        Page { items: rows.into_iter().map(item).collect(), next_cursor }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// An integer query parameter from 1 to `max`; absent is `default`.
pub fn bounded(value: Option<&str>, name: &str, default: i64, max: i64) -> Result<i64, AppError> {
    match value {
        None => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| AppError::Validation(format!("{name}: must be an integer from 1 to {max}"))),
    }
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("id:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, AppError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("id:").and_then(|id| id.parse().ok()))
        .ok_or_else(|| AppError::Validation("cursor: is not a cursor from a previous page".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor("!!").is_err());
    }

    #[test]
    fn limit_bounds() {
        assert!(PageRequest::parse(Some("0"), None, 20).is_err());
        assert!(PageRequest::parse(Some("101"), None, 20).is_err());
        assert!(PageRequest::parse(Some("1.5"), None, 20).is_err());
        assert_eq!(PageRequest::parse(None, None, 50).unwrap().limit, 50);
    }

    #[test]
    fn next_cursor_only_when_more_rows() {
        let request = PageRequest::parse(Some("2"), None, 20).unwrap();
        let full = request.page(vec![1, 2, 3], |r| *r, |r| r);
        assert_eq!(full.items, vec![1, 2]);
        assert_eq!(full.next_cursor.map(|c| decode_cursor(&c).unwrap()), Some(2));
        let last = request.page(vec![1, 2], |r| *r, |r| r);
        assert!(last.next_cursor.is_none());
    }
}
