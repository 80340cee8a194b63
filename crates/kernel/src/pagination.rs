//! Keyset pagination: page limits and opaque cursors.
//!
//! A cursor is the sort key of the last item of a page, as JSON in base64url. It is
//! opaque to clients, who only send back what they were given; a cursor that does
//! not decode into the endpoint's key type is refused with
//! `REQUEST_INVALID_CURSOR`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// Cursors longer than this are refused before decoding.
const MAX_CURSOR_LEN: usize = 512;

/// Encoding and decoding of opaque cursors.
pub struct Cursor;

impl Cursor {
    /// Encodes a page's last sort key.
    pub fn encode<K: serde::Serialize>(key: &K) -> String {
        // Serializing our own plain key types cannot fail; an empty cursor would be
        // refused on the way back in, never silently restart the listing.
        let json = serde_json::to_vec(key).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes a cursor that the client sent back.
    pub fn decode<K: DeserializeOwned>(cursor: &str) -> Result<K, ApiError> {
        let invalid = || ApiError::from_code(ErrorCode::RequestInvalidCursor);
        if cursor.is_empty() || cursor.len() > MAX_CURSOR_LEN {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        serde_json::from_slice(&bytes).map_err(|_| invalid())
    }
}

/// How many items a page may hold: 1 to 100, 20 when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    /// The largest page.
    pub const MAX: u32 = 100;
    /// The page size when the client does not ask for one.
    pub const DEFAULT: u32 = 20;

    /// A limit in range.
    pub fn new(n: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&n).then_some(Self(n))
    }

    /// The number of items.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

impl<'de> serde::Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        Limit::new(n).ok_or_else(|| {
            serde::de::Error::custom(format!("limit must be between 1 and {}", Limit::MAX))
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in sort order.
    pub items: Vec<T>,
    /// The cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched rows: the extra row, if present,
    /// only proves that a next page exists and is dropped. `key` gives the sort
    /// key of an item, which becomes the cursor.
    pub fn from_overfetch<K: serde::Serialize>(
        mut rows: Vec<T>,
        limit: Limit,
        key: impl Fn(&T) -> K,
    ) -> Self {
        let limit = limit.get() as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| Cursor::encode(&key(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cursor_round_trips() {
        let key = (1999_i64, "0193-abc".to_string());
        let c = Cursor::encode(&key);
        assert_eq!(Cursor::decode::<(i64, String)>(&c).ok(), Some(key));
    }

    #[test]
    fn a_foreign_or_garbled_cursor_is_refused_with_its_code() {
        let other = Cursor::encode(&"just a string");
        for bad in ["", "!!!", "bm90IGpzb24", other.as_str()] {
            let err = Cursor::decode::<(i64, String)>(bad).err();
            assert_eq!(
                err.map(|e| e.code()),
                Some(ErrorCode::RequestInvalidCursor),
                "{bad}"
            );
        }
        assert!(Cursor::decode::<(i64, String)>(&"a".repeat(600)).is_err());
    }

    #[test]
    fn limits_outside_one_to_a_hundred_are_refused() {
        assert!(Limit::new(0).is_none());
        assert!(Limit::new(101).is_none());
        assert_eq!(Limit::new(100).map(Limit::get), Some(100));
        assert_eq!(Limit::default().get(), 20);
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_exist() {
        let limit = Limit::new(2).unwrap_or_default();
        let full = Page::from_overfetch(vec![1, 2, 3], limit, |n| *n);
        assert_eq!(full.items, vec![1, 2]);
        assert_eq!(
            full.next_cursor
                .as_deref()
                .map(Cursor::decode::<i32>)
                .and_then(Result::ok),
            Some(2)
        );
        let last = Page::from_overfetch(vec![1, 2], limit, |n| *n);
        assert_eq!(last.next_cursor, None);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_cursors_never_panics(s in ".{0,80}") {
            let _ = Cursor::decode::<(i64, String)>(&s);
        }
    }
}
