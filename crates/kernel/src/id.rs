//! Typed identifiers.
//!
//! Every entity id is a UUIDv7 (time-ordered, so primary-key inserts stay local in
//! B-trees) wrapped in its own type, so a `ProductId` can never be passed where a
//! `CategoryId` is expected. On the wire an id carries a short prefix naming its
//! kind followed by the UUID in 32 lowercase hex digits (`prod_0193…`); in the
//! database it is the plain hyphenated UUID text.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why a string is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The prefix names another kind of entity, or is missing.
    #[error("expected an id starting with `{expected}_`")]
    WrongPrefix {
        /// The prefix this kind of id must carry.
        expected: &'static str,
    },
    /// The part after the prefix is not 32 hex digits of a UUID.
    #[error("the id is malformed")]
    Malformed,
}

/// Declares a typed id with its wire prefix.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// The prefix this id carries on the wire.
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the wire form (`prefix_hex`).
            pub fn parse(s: &str) -> Result<Self, IdParseError> {
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or(IdParseError::WrongPrefix { expected: $prefix })?;
                if rest.len() != 32 || !rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(IdParseError::Malformed);
                }
                Uuid::try_parse(rest).map(Self).map_err(|_| IdParseError::Malformed)
            }

            /// The form stored in the database: the hyphenated UUID.
            pub fn to_db(&self) -> String {
                self.0.hyphenated().to_string()
            }

            /// Reads the database form back. A value that does not parse means the
            /// row was not written by us.
            pub fn from_db(s: &str) -> Result<Self, IdParseError> {
                Uuid::try_parse(s).map(Self).map_err(|_| IdParseError::Malformed)
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-f]{32}$")))
                    .examples([concat!($prefix, "_01936f5e4c7a7d3e9b1f2a3c4d5e6f70")])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// Identifies a product in the catalog.
    ProductId,
    "prod"
);
typed_id!(
    /// Identifies an image of a product.
    ImageId,
    "img"
);
typed_id!(
    /// Identifies a category in the catalog.
    CategoryId,
    "cat"
);
typed_id!(
    /// Identifies a user account.
    UserId,
    "usr"
);
typed_id!(
    /// Identifies a login session: one chain (family) of refresh tokens.
    SessionId,
    "ses"
);
typed_id!(
    /// Identifies an API key of a service account.
    ApiKeyId,
    "key"
);
typed_id!(
    /// Identifies an order.
    OrderId,
    "ord"
);
typed_id!(
    /// Identifies a payment (an intent to take money for one order).
    PaymentId,
    "pay"
);
typed_id!(
    /// Identifies a published event.
    EventId,
    "evt"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_id_round_trips_through_its_wire_form() {
        let id = ProductId::new();
        let wire = id.to_string();
        assert!(wire.starts_with("prod_"));
        assert_eq!(wire.len(), 5 + 32);
        assert_eq!(ProductId::parse(&wire), Ok(id));
    }

    #[test]
    fn an_id_round_trips_through_its_database_form() {
        let id = CategoryId::new();
        assert_eq!(CategoryId::from_db(&id.to_db()), Ok(id));
    }

    #[test]
    fn an_id_of_another_kind_is_refused() {
        let cat = CategoryId::new().to_string();
        assert_eq!(
            ProductId::parse(&cat),
            Err(IdParseError::WrongPrefix { expected: "prod" })
        );
    }

    #[test]
    fn uppercase_hyphenated_or_short_ids_are_refused() {
        let id = ProductId::new();
        let upper = format!("prod_{}", id.as_uuid().simple().to_string().to_uppercase());
        let hyphen = format!("prod_{}", id.as_uuid().hyphenated());
        for bad in [
            upper.as_str(),
            hyphen.as_str(),
            "prod_",
            "prod_abc",
            "prod",
            "",
        ] {
            assert!(ProductId::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn ids_made_later_sort_later() {
        let a = ProductId::new();
        let b = ProductId::new();
        assert!(a < b);
        assert!(a.to_db() < b.to_db());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,64}") {
            let _ = ProductId::parse(&s);
        }

        #[test]
        fn any_uuid_round_trips(bytes in any::<[u8; 16]>()) {
            let id = ProductId(Uuid::from_bytes(bytes));
            prop_assert_eq!(ProductId::parse(&id.to_string()), Ok(id));
        }
    }
}
