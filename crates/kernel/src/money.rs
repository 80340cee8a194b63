//! Money: integer amounts in minor units with an ISO 4217 currency.
//!
//! There are no floats anywhere: `1999 USD` means $19.99. Arithmetic is checked, and
//! mixing currencies is an error rather than a silent conversion.

use std::fmt;

/// The largest amount, in minor units, that Agora accepts on any price or total:
/// 10^15 (ten trillion dollars in cents). Far below `i64::MAX`, so a sum of many
/// in-range amounts cannot overflow before it is checked.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// An ISO 4217 currency that can price goods: it has minor units and is neither a
/// fund, a precious metal, a testing code, nor superseded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Parses an upper-case three-letter code such as `USD`.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let c = iso_currency::Currency::from_code(code)
            .filter(|c| c.code() == code)
            .filter(|c| c.exponent().is_some() && !c.is_fund() && !c.is_special())
            .filter(|c| c.is_superseded().is_none())
            .ok_or_else(|| MoneyError::UnknownCurrency(code.chars().take(8).collect()))?;
        Ok(Self(c))
    }

    /// The three-letter code.
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// How many decimal places the minor unit has (2 for USD, 0 for JPY).
    pub fn exponent(self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z]{3}$"))
            .description(Some("ISO 4217 currency code"))
            .examples(["USD"])
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not an ISO 4217 code we can price in.
    #[error("`{0}` is not a supported ISO 4217 currency code")]
    UnknownCurrency(String),
    /// Two amounts in different currencies were combined.
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    /// The result is outside ±MAX_AMOUNT_MINOR.
    #[error("amount out of range")]
    OutOfRange,
}

/// An amount of money.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "UncheckedMoney", deny_unknown_fields)]
pub struct Money {
    /// The amount in minor units (cents for USD).
    #[schema(example = 1999)]
    amount: i64,
    /// The ISO 4217 currency.
    currency: Currency,
}

/// Money as it arrives on the wire, before its range is checked.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UncheckedMoney {
    amount: i64,
    currency: Currency,
}

impl TryFrom<UncheckedMoney> for Money {
    type Error = MoneyError;
    fn try_from(m: UncheckedMoney) -> Result<Self, Self::Error> {
        Money::new(m.amount, m.currency)
    }
}

impl Money {
    /// An amount in minor units; refused outside ±[`MAX_AMOUNT_MINOR`].
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if !(-MAX_AMOUNT_MINOR..=MAX_AMOUNT_MINOR).contains(&amount_minor) {
            return Err(MoneyError::OutOfRange);
        }
        Ok(Self {
            amount: amount_minor,
            currency,
        })
    }

    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Self {
        Self {
            amount: 0,
            currency,
        }
    }

    /// The amount in minor units.
    pub fn amount_minor(self) -> i64 {
        self.amount
    }

    /// The currency.
    pub fn currency(self) -> Currency {
        self.currency
    }

    /// `self + other`, in the same currency and in range.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let sum = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::OutOfRange)?;
        Money::new(sum, self.currency)
    }

    /// `self - other`, in the same currency and in range.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let diff = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::OutOfRange)?;
        Money::new(diff, self.currency)
    }

    /// `self × quantity`, in range.
    pub fn checked_mul(self, quantity: i64) -> Result<Money, MoneyError> {
        let product = self
            .amount
            .checked_mul(quantity)
            .ok_or(MoneyError::OutOfRange)?;
        Money::new(product, self.currency)
    }
}

impl fmt::Display for Money {
    /// `19.99 USD`, `500 JPY`, `-0.05 EUR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = u32::from(self.currency.exponent());
        let sign = if self.amount < 0 { "-" } else { "" };
        let abs = self.amount.unsigned_abs();
        if exp == 0 {
            return write!(f, "{sign}{abs} {}", self.currency);
        }
        let scale = 10u64.pow(exp);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / scale,
            abs % scale,
            self.currency,
            width = exp as usize
        )
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap_or_else(|e| panic!("{e}"))
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn real_currencies_parse_and_know_their_minor_units() {
        assert_eq!(usd().exponent(), 2);
        assert_eq!(Currency::parse("JPY").map(Currency::exponent), Ok(0));
        assert_eq!(Currency::parse("KWD").map(Currency::exponent), Ok(3));
    }

    #[test]
    fn codes_that_cannot_price_goods_are_refused() {
        for bad in ["usd", "US", "USDX", "", "XAU", "XTS", "XXX", "ZZZ", "USN"] {
            assert!(Currency::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn money_displays_in_major_units() {
        let m = |a| Money::new(a, usd()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m(1999).to_string(), "19.99 USD");
        assert_eq!(m(5).to_string(), "0.05 USD");
        assert_eq!(m(-5).to_string(), "-0.05 USD");
        let yen = Currency::parse("JPY").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Money::zero(yen)
                .checked_add(Money::new(500, yen).unwrap_or_else(|e| panic!("{e}")))
                .map(|m| m.to_string()),
            Ok("500 JPY".to_string())
        );
    }

    #[test]
    fn adding_different_currencies_is_an_error() {
        assert_eq!(
            Money::zero(usd()).checked_add(Money::zero(eur())),
            Err(MoneyError::CurrencyMismatch(usd(), eur()))
        );
    }

    #[test]
    fn money_serializes_as_amount_and_currency() {
        let m = Money::new(1999, usd()).unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&m).unwrap_or_default();
        assert_eq!(json, r#"{"amount":1999,"currency":"USD"}"#);
        let back: Money = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, m);
    }

    proptest! {
        #[test]
        fn addition_is_exact_or_refused(a in any::<i64>(), b in any::<i64>()) {
            match (Money::new(a, usd()), Money::new(b, usd())) {
                (Ok(x), Ok(y)) => {
                    let exact = i128::from(a) + i128::from(b);
                    match x.checked_add(y) {
                        Ok(sum) => prop_assert_eq!(i128::from(sum.amount_minor()), exact),
                        Err(e) => {
                            prop_assert_eq!(e, MoneyError::OutOfRange);
                            prop_assert!(exact.abs() > i128::from(MAX_AMOUNT_MINOR));
                        }
                    }
                }
                _ => prop_assert!(a.unsigned_abs() > MAX_AMOUNT_MINOR.unsigned_abs() || b.unsigned_abs() > MAX_AMOUNT_MINOR.unsigned_abs()),
            }
        }

        #[test]
        fn multiplication_is_exact_or_refused(a in -MAX_AMOUNT_MINOR..=MAX_AMOUNT_MINOR, q in any::<i64>()) {
            let m = Money::new(a, usd()).unwrap_or_else(|e| panic!("{e}"));
            let exact = i128::from(a) * i128::from(q);
            match m.checked_mul(q) {
                Ok(p) => prop_assert_eq!(i128::from(p.amount_minor()), exact),
                Err(_) => prop_assert!(exact.abs() > i128::from(MAX_AMOUNT_MINOR)),
            }
        }

        #[test]
        fn subtraction_undoes_addition(a in -1_000_000_000i64..1_000_000_000, b in -1_000_000_000i64..1_000_000_000) {
            let x = Money::new(a, usd()).unwrap_or_else(|e| panic!("{e}"));
            let y = Money::new(b, usd()).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(x.checked_add(y).and_then(|s| s.checked_sub(y)), Ok(x));
        }

        #[test]
        fn currency_parsing_never_panics(s in ".{0,8}") {
            let _ = Currency::parse(&s);
        }
    }
}
