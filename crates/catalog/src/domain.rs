//! The catalog's domain: products and categories, and the rules their fields obey.
//!
//! Requests are parsed into these types, never validated after the fact: a
//! [`ProductDraft`] exists only if every field is valid, and the store never sees
//! anything else.

use agora_kernel::validation::{Problems, has_control_characters};
use agora_kernel::{CategoryId, Money, ProductId, Timestamp};
use serde::Serialize;
use serde_json::value::RawValue;

/// The highest price of one unit, in minor units: 100 million in major units.
pub const MAX_PRICE_MINOR: i64 = 10_000_000_000;
/// Longest name of a product or category, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest slug, in bytes (slugs are ASCII).
pub const MAX_SLUG_LEN: usize = 200;
/// Longest SKU, in bytes (SKUs are ASCII).
pub const MAX_SKU_LEN: usize = 64;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Most attributes on one product.
pub const MAX_ATTRIBUTES: usize = 64;
/// Largest attributes object, serialized, in bytes.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Longest text query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// A product as the catalog stores and shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Product {
    /// The product's id.
    pub id: ProductId,
    /// Stock-keeping unit, unique across the catalog.
    #[schema(example = "AUD-HEADPHONES-01")]
    pub sku: String,
    /// URL-friendly name, unique across the catalog.
    #[schema(example = "studio-headphones")]
    pub slug: String,
    /// Display name.
    #[schema(example = "Studio Headphones")]
    pub name: String,
    /// Longer text; may be empty.
    pub description: String,
    /// Unit price.
    pub price: Money,
    /// The category, if any.
    pub category_id: Option<CategoryId>,
    /// Free-form attributes (a JSON object), such as colour or size.
    #[schema(value_type = Object)]
    pub attributes: Box<RawValue>,
    /// Whether the product is for sale. Inactive products are visible to staff only.
    pub active: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A category.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Category {
    /// The category's id.
    pub id: CategoryId,
    /// Display name.
    #[schema(example = "Audio")]
    pub name: String,
    /// URL-friendly name, unique across categories.
    #[schema(example = "audio")]
    pub slug: String,
    /// Longer text; may be empty.
    pub description: String,
    /// The parent category, for nested categories.
    pub parent_id: Option<CategoryId>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The slug sent, checked; or, when none was sent, one derived from `name`
/// (already checked: an invalid name is reported on its own, not again here).
pub fn slug_or_derived(
    problems: &mut Problems,
    sent: Option<&str>,
    name: Option<&str>,
) -> Option<String> {
    match sent {
        Some(s) => problems.check("slug", parse_slug(s)),
        None => name.and_then(|n| {
            slugify(n).or_else(|| {
                problems.add("slug", "cannot be derived from the name: send one");
                None
            })
        }),
    }
}

/// A display name: trimmed, 1 to 200 characters, no control characters.
pub fn parse_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_string())
}

/// A SKU: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn parse_sku(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > MAX_SKU_LEN {
        return Err(format!("must be 1 to {MAX_SKU_LEN} characters"));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may contain only letters, digits, `.`, `_` and `-`".into());
    }
    Ok(raw.to_string())
}

/// A slug: lowercase words of `a-z0-9` joined by single hyphens, at most 200 bytes.
pub fn parse_slug(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= MAX_SLUG_LEN
        && raw.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if valid {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "must be lowercase letters and digits in words joined by single hyphens, at most {MAX_SLUG_LEN} characters"
        ))
    }
}

/// Derives a slug from a name: `"Coffee & Tea"` → `"coffee-tea"`. `None` when the
/// name has no ASCII letters or digits to build one from.
pub fn slugify(name: &str) -> Option<String> {
    let mut slug = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let mut slug = slug.trim_end_matches('-').to_string();
    if slug.len() > MAX_SLUG_LEN {
        slug.truncate(MAX_SLUG_LEN);
        slug = slug.trim_end_matches('-').to_string();
    }
    (!slug.is_empty()).then_some(slug)
}

/// A description: at most 10,000 characters, no control characters but line
/// breaks and tabs.
pub fn parse_description(raw: &str) -> Result<String, String> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "must be at most {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    if has_control_characters(raw) {
        return Err("must not contain control characters other than line breaks and tabs".into());
    }
    Ok(raw.to_string())
}

/// A unit price: zero or more, at most 100 million in major units.
pub fn parse_price(price: Money) -> Result<Money, String> {
    match price.amount_minor() {
        a if a < 0 => Err("must not be negative".into()),
        a if a > MAX_PRICE_MINOR => Err(format!("must be at most {MAX_PRICE_MINOR} minor units")),
        _ => Ok(price),
    }
}

/// Attributes: a JSON object of at most 64 keys (1 to 64 characters each) and
/// 16 KiB serialized.
pub fn parse_attributes(value: &serde_json::Value) -> Result<Box<RawValue>, String> {
    let Some(map) = value.as_object() else {
        return Err("must be a JSON object".into());
    };
    if map.len() > MAX_ATTRIBUTES {
        return Err(format!("must have at most {MAX_ATTRIBUTES} keys"));
    }
    if map.keys().any(|k| k.is_empty() || k.chars().count() > 64) {
        return Err("keys must be 1 to 64 characters".into());
    }
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    if text.len() > MAX_ATTRIBUTES_BYTES {
        return Err(format!(
            "must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON"
        ));
    }
    RawValue::from_string(text).map_err(|e| e.to_string())
}

/// An empty attributes object.
pub fn empty_attributes() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).expect("`{}` is valid JSON")
}

/// A valid new product. Outside this crate it can only be made by parsing a
/// request (`ProductDraft::try_from(CreateProduct)`), so every draft the store
/// sees has passed the rules above.
#[derive(Debug, Clone)]
pub struct ProductDraft {
    /// See [`Product::sku`].
    pub(crate) sku: String,
    /// See [`Product::slug`].
    pub(crate) slug: String,
    /// See [`Product::name`].
    pub(crate) name: String,
    /// See [`Product::description`].
    pub(crate) description: String,
    /// See [`Product::price`].
    pub(crate) price: Money,
    /// See [`Product::category_id`].
    pub(crate) category_id: Option<CategoryId>,
    /// See [`Product::attributes`].
    pub(crate) attributes: Box<RawValue>,
    /// See [`Product::active`].
    pub(crate) active: bool,
}

/// A valid set of changes to a product. `None` leaves a field as it is; for the
/// nullable `category_id`, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProductChanges {
    /// New SKU.
    pub(crate) sku: Option<String>,
    /// New slug.
    pub(crate) slug: Option<String>,
    /// New name.
    pub(crate) name: Option<String>,
    /// New description.
    pub(crate) description: Option<String>,
    /// New price.
    pub(crate) price: Option<Money>,
    /// New category, or none.
    pub(crate) category_id: Option<Option<CategoryId>>,
    /// New attributes (replacing the old ones).
    pub(crate) attributes: Option<Box<RawValue>>,
    /// New active flag.
    pub(crate) active: Option<bool>,
}

impl ProductChanges {
    /// Whether these changes would change nothing.
    pub fn is_empty(&self) -> bool {
        self.sku.is_none()
            && self.slug.is_none()
            && self.name.is_none()
            && self.description.is_none()
            && self.price.is_none()
            && self.category_id.is_none()
            && self.attributes.is_none()
            && self.active.is_none()
    }
}

/// A valid new category.
#[derive(Debug, Clone)]
pub struct CategoryDraft {
    /// See [`Category::name`].
    pub(crate) name: String,
    /// See [`Category::slug`].
    pub(crate) slug: String,
    /// See [`Category::description`].
    pub(crate) description: String,
    /// See [`Category::parent_id`].
    pub(crate) parent_id: Option<CategoryId>,
}

/// A valid set of changes to a category.
#[derive(Debug, Clone, Default)]
pub struct CategoryChanges {
    /// New name.
    pub(crate) name: Option<String>,
    /// New slug.
    pub(crate) slug: Option<String>,
    /// New description.
    pub(crate) description: Option<String>,
    /// New parent, or none.
    pub(crate) parent_id: Option<Option<CategoryId>>,
}

impl CategoryChanges {
    /// Whether these changes would change nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.slug.is_none()
            && self.description.is_none()
            && self.parent_id.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("  Mug  ").ok().as_deref(), Some("Mug"));
        assert!(parse_name("   ").is_err());
        assert!(parse_name(&"x".repeat(201)).is_err());
        assert!(parse_name("bell\u{7}").is_err());
        assert!(parse_name(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn skus_are_restricted_ascii() {
        assert!(parse_sku("AUD-01_x.2").is_ok());
        for bad in ["", "has space", "ünï", &"A".repeat(65)] {
            assert!(parse_sku(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs_are_lowercase_hyphenated_words() {
        assert!(parse_slug("coffee-tea-2").is_ok());
        for bad in ["", "Coffee", "a--b", "-a", "a-", "a b", "ça"] {
            assert!(parse_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_become_slugs() {
        assert_eq!(slugify("Coffee & Tea").as_deref(), Some("coffee-tea"));
        assert_eq!(slugify("  Hello, World!  ").as_deref(), Some("hello-world"));
        assert_eq!(slugify("日本"), None);
    }

    #[test]
    fn prices_are_never_negative_or_absurd() {
        let usd = agora_kernel::Currency::parse("USD").unwrap_or_else(|e| panic!("{e}"));
        let m = |a| Money::new(a, usd).unwrap_or_else(|e| panic!("{e}"));
        assert!(parse_price(m(0)).is_ok());
        assert!(parse_price(m(-1)).is_err());
        assert!(parse_price(m(MAX_PRICE_MINOR + 1)).is_err());
    }

    #[test]
    fn attributes_must_be_a_small_object() {
        assert!(parse_attributes(&serde_json::json!({"colour": "red"})).is_ok());
        assert!(parse_attributes(&serde_json::json!([1, 2])).is_err());
        assert!(parse_attributes(&serde_json::json!({"": 1})).is_err());
        let big: serde_json::Map<String, serde_json::Value> = (0..65)
            .map(|i| (format!("k{i}"), serde_json::Value::Null))
            .collect();
        assert!(parse_attributes(&serde_json::Value::Object(big)).is_err());
        assert!(parse_attributes(&serde_json::json!({"k": "x".repeat(17_000)})).is_err());
    }

    proptest! {
        #[test]
        fn every_derived_slug_is_a_valid_slug(name in ".{0,300}") {
            if let Some(slug) = slugify(&name) {
                prop_assert!(parse_slug(&slug).is_ok(), "{slug}");
            }
        }
    }
}
