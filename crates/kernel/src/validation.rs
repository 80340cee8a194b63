//! Parsing request fields: collect every problem, then answer once.
//!
//! A handler parses each field of a request into its domain type, records what is
//! wrong with each in [`Problems`], and either gets the whole value or one
//! `VALIDATION_FAILED` listing every field at fault.

use crate::error::{ApiError, FieldError};

/// Collects field errors while a request is parsed.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    /// Records what is wrong with `field`.
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message.into()));
    }

    /// Keeps `result`'s value, or records its error against `field`.
    pub fn check<T>(&mut self, field: &'static str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.add(field, message);
                None
            }
        }
    }

    /// Ends parsing: `VALIDATION_FAILED` with every recorded problem, or the value
    /// `build` assembles from the parsed fields, which are all present when no
    /// problem was recorded.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, ApiError> {
        self.into_result().map_err(ApiError::validation)?;
        build().ok_or_else(|| {
            ApiError::internal("a parsed field is missing, yet no problem was recorded")
        })
    }

    /// The errors, if any.
    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Whether `text` has control characters other than line breaks and tabs. NUL
/// above all: PostgreSQL cannot store it.
pub fn has_control_characters(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// The longest reason a person gives for a change (stock, refund,
/// cancellation), in characters.
pub const MAX_REASON: usize = 200;

/// A reason a person gives for a change: trimmed, 1 to [`MAX_REASON`]
/// characters, no control characters.
pub fn parse_reason(raw: &str) -> Result<String, String> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(format!("must have 1 to {MAX_REASON} characters"));
    }
    if has_control_characters(reason) {
        return Err("must not contain control characters".into());
    }
    Ok(reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_trimmed_and_bounded() {
        assert_eq!(parse_reason("  stocktake "), Ok("stocktake".to_string()));
        assert!(parse_reason("   ").is_err());
        assert!(parse_reason(&"x".repeat(MAX_REASON + 1)).is_err());
        assert!(parse_reason(&"é".repeat(MAX_REASON)).is_ok());
        assert!(parse_reason("a\u{0}b").is_err());
    }

    #[test]
    fn every_problem_is_reported_together() {
        let mut p = Problems::default();
        let a: Option<u8> = p.check("a", Err("bad".into()));
        p.add("b", "also bad");
        assert!(a.is_none());
        let err = p.into_result().err().unwrap_or_default();
        assert_eq!(err.len(), 2);
    }

    #[test]
    fn line_breaks_and_tabs_are_not_control_characters_here() {
        assert!(!has_control_characters("a\tb\r\nc"));
        assert!(has_control_characters("a\u{0}b"));
        assert!(has_control_characters("a\u{1b}[31m"));
    }
}
