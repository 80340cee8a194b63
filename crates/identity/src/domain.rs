//! Accounts and the rules their fields obey.
//!
//! Requests are parsed into these types: an [`Email`] is always normalised, a
//! [`NewPassword`] has passed the password rules, and neither prints its secret.

use std::fmt;

use agora_kernel::{Role, Timestamp, UserId};
use serde::Serialize;

/// Longest email address, in bytes (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest password, in characters. Hashing cost does not depend on length; the
/// cap only bounds the request.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// A user account as the API shows it. Never carries the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The account's id.
    #[schema(value_type = String, example = "usr_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub id: UserId,
    /// The normalised email address (trimmed, lower-case).
    pub email: String,
    /// The display name.
    pub name: String,
    /// The account's roles.
    #[schema(value_type = Vec<String>, example = json!(["customer"]))]
    pub roles: Vec<Role>,
    /// Whether an administrator has disabled the account.
    pub disabled: bool,
    /// When the account was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When the account last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// An email address, trimmed and lower-cased so that one mailbox is one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Parses and normalises an address. The check is deliberately loose (one `@`,
    /// a dotted domain, no spaces): only delivery proves an address.
    pub fn parse(raw: &str) -> Result<Email, String> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("must not be empty".into());
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(format!("must be at most {MAX_EMAIL_LEN} bytes"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err("must be an email address such as ada@example.com".into());
        };
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && domain
                .split('.')
                .all(|label| !label.is_empty() && !label.starts_with('-'));
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err("must be an email address such as ada@example.com".into());
        }
        Ok(Email(email))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub fn parse_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must be one line without control characters".into());
    }
    Ok(name.to_string())
}

/// A password as sent by the client, for checking against a hash. Its `Debug`
/// output is redacted so that it cannot reach a log by accident.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password as sent (no rule applies to a password being checked).
    pub fn new(raw: String) -> Password {
        Password(raw)
    }

    /// The secret itself, for the hasher only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(********)")
    }
}

/// A password chosen at registration or password change: long enough, not too
/// long, not on the list of common passwords, and not the email address.
#[derive(Debug, Clone)]
pub struct NewPassword(Password);

impl NewPassword {
    /// Applies the password rules. `email` is the account's address, when known.
    pub fn parse(
        raw: String,
        min_chars: usize,
        email: Option<&Email>,
    ) -> Result<NewPassword, String> {
        let chars = raw.chars().count();
        if chars < min_chars {
            return Err(format!("must be at least {min_chars} characters"));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
        }
        let lower = raw.to_lowercase();
        if COMMON_PASSWORDS.contains(&lower.as_str()) {
            return Err("is one of the most common passwords: choose another".into());
        }
        if let Some(email) = email {
            let local = email.as_str().split('@').next().unwrap_or_default();
            if lower == email.as_str() || lower == local {
                return Err("must not be the email address".into());
            }
        }
        if raw.chars().all(|c| raw.starts_with(c)) {
            return Err("must not repeat one character".into());
        }
        Ok(NewPassword(Password(raw)))
    }

    /// The password, for hashing.
    pub fn into_password(self) -> Password {
        self.0
    }
}

/// Roles stored as one column: sorted names separated by spaces.
pub fn roles_to_db(roles: &[Role]) -> String {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads the roles column; `None` when it holds an unknown name.
pub fn roles_from_db(column: &str) -> Option<Vec<Role>> {
    column.split_whitespace().map(Role::parse).collect()
}

/// Passwords that attackers try first (lower-case; compared case-insensitively).
/// Only those long enough to pass the length rule matter; the list is small on
/// purpose and complements, not replaces, the length rule and rate limiting.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "password1234",
    "password!",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "12345678",
    "123456789",
    "1234567890",
    "0123456789",
    "1234567891",
    "12341234",
    "12344321",
    "11223344",
    "11111111",
    "00000000",
    "87654321",
    "987654321",
    "123123123",
    "123qweasd",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "1qaz2wsx",
    "zaq12wsx",
    "qazwsxedc",
    "q1w2e3r4",
    "q1w2e3r4t5",
    "qwertyui",
    "qwertyuiop",
    "qwerty12",
    "qwerty123",
    "qwerty1234",
    "asdfghjk",
    "asdfghjkl",
    "asdfasdf",
    "zxcvbnm1",
    "abcd1234",
    "1234abcd",
    "abc12345",
    "aa123456",
    "iloveyou",
    "iloveyou1",
    "sunshine",
    "sunshine1",
    "princess",
    "princess1",
    "football",
    "football1",
    "baseball",
    "baseball1",
    "superman",
    "batman123",
    "starwars",
    "whatever",
    "whatever1",
    "trustno1",
    "letmein1",
    "letmein123",
    "welcome1",
    "welcome123",
    "changeme",
    "changeme123",
    "admin123",
    "admin1234",
    "administrator",
    "computer",
    "michael1",
    "jennifer",
    "charlie1",
    "shadow12",
    "monkey123",
    "dragon123",
    "master123",
    "mustang1",
    "corvette",
    "hello123",
    "freedom1",
    "secret123",
    "lovely123",
    "loveme123",
    "myspace1",
    "summer2024",
    "summer2025",
    "summer2026",
    "winter2024",
    "winter2025",
    "winter2026",
    "agora123",
    "agorapassword",
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        let e = Email::parse("  Ada.Lovelace@Example.COM ").map(|e| e.0);
        assert_eq!(e.as_deref(), Ok("ada.lovelace@example.com"));
    }

    #[test]
    fn addresses_without_a_mailbox_and_a_dotted_domain_are_refused() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@localhost",
            "ada@@example.com",
            "a da@example.com",
            "ada@example..com",
            "ada@-example.com",
            "ada@example.com\u{0}",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn passwords_follow_the_rules() {
        let email = Email::parse("ada@example.com").ok();
        let check = |p: &str| NewPassword::parse(p.into(), 10, email.as_ref()).map(drop);
        assert!(check("correct horse battery").is_ok());
        assert!(check("short").is_err());
        assert!(check("Password123").is_err(), "common, any case");
        assert!(check("ada@example.com").is_err(), "the email");
        assert!(check("aaaaaaaaaaaa").is_err(), "one repeated character");
        assert!(check(&"x1".repeat(200)).is_err(), "too long");
    }

    #[test]
    fn a_password_never_prints() {
        let p = Password::new("hunter2-but-longer".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        let n = NewPassword::parse("hunter2-but-longer".into(), 10, None).map(|n| format!("{n:?}"));
        assert!(!n.unwrap_or_default().contains("hunter2"));
    }

    #[test]
    fn names_are_one_trimmed_line() {
        assert_eq!(parse_name("  Ada  ").as_deref(), Ok("Ada"));
        assert!(parse_name("   ").is_err());
        assert!(parse_name("Ada\nLovelace").is_err());
        assert!(parse_name(&"x".repeat(101)).is_err());
    }

    #[test]
    fn roles_are_stored_sorted_and_read_back() {
        let stored = roles_to_db(&[Role::Staff, Role::Customer, Role::Staff]);
        assert_eq!(stored, "customer staff");
        assert_eq!(
            roles_from_db(&stored),
            Some(vec![Role::Customer, Role::Staff])
        );
        assert_eq!(roles_from_db("customer root"), None);
    }

    proptest! {
        #[test]
        fn parsing_an_email_is_idempotent(raw in "\\PC{0,80}") {
            if let Ok(e) = Email::parse(&raw) {
                prop_assert_eq!(Email::parse(e.as_str()), Ok(e.clone()));
            }
        }
    }
}
