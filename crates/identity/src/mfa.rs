//! The second factor: TOTP (RFC 6238) with single-use recovery codes, and the
//! challenges of logins that wait for a code.
//!
//! Codes are 6 digits over 30-second steps with HMAC-SHA1, the parameters every
//! authenticator app supports. A code is accepted for its own step and one step
//! either side (clock drift), and only once: the last accepted step is stored, and
//! a conditional update refuses that step and every earlier one, so a replayed or
//! concurrently reused code fails.

use agora_kernel::{Timestamp, UserId};
use agora_platform::auth::secret_hash;
use anyhow::anyhow;
use serde::Serialize;
use sqlx::Row;
use totp_rs::{Algorithm, TOTP};

use crate::error::IdentityError;
use crate::store::{IdentityStore, corrupt};

/// Seconds per TOTP step.
pub const STEP_SECS: i64 = 30;
/// Digits per TOTP code.
pub const DIGITS: usize = 6;
/// Recovery codes made at confirmation (and on renewal).
pub const RECOVERY_CODES: usize = 10;
/// How long a login challenge waits for its code.
pub const CHALLENGE_TTL_SECS: u64 = 300;
/// Codes a challenge takes (wrong ones, and the right one) before it is spent.
pub const CHALLENGE_ATTEMPTS: i64 = 5;

/// Characters of a recovery code (base32, lower case; no 0/1/8/9 to misread).
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A TOTP secret: 160 random bits, as RFC 4226 recommends.
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(********)")
    }
}

impl TotpSecret {
    /// A fresh secret.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut bytes = vec![0_u8; 20];
        getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness for a secret: {e}"))?;
        Ok(Self(bytes))
    }

    /// A stored secret.
    pub fn from_base32(s: &str) -> Result<Self, IdentityError> {
        totp_rs::Secret::Encoded(s.to_string())
            .to_bytes()
            .map(Self)
            .map_err(|_| corrupt("identity_mfa.secret"))
    }

    /// The secret in base32, as stored and as typed into an app by hand.
    pub fn to_base32(&self) -> String {
        totp_rs::Secret::Raw(self.0.clone())
            .to_encoded()
            .to_string()
    }

    fn totp(&self, issuer: &str, account: &str) -> Result<TOTP, IdentityError> {
        TOTP::new(
            Algorithm::SHA1,
            DIGITS,
            0,
            STEP_SECS.unsigned_abs(),
            self.0.clone(),
            Some(issuer.replace(':', " ")),
            account.replace(':', " "),
        )
        .map_err(|e| IdentityError::Unexpected(anyhow!("TOTP parameters: {e:?}")))
    }

    /// The `otpauth://totp/…` URI an authenticator app reads (usually as a QR code).
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<String, IdentityError> {
        Ok(self.totp(issuer, account)?.get_url())
    }

    /// The time step whose code `code` is at `now`, allowing one step of drift
    /// either way; `None` when it matches none.
    pub fn matching_step(&self, code: &str, now: Timestamp) -> Option<i64> {
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let totp = self.totp("agora", "user").ok()?;
        let current = now.as_millis().div_euclid(1000) / STEP_SECS;
        // All three are checked, so the time taken does not say which matched.
        let mut matched = None;
        for step in [current - 1, current, current + 1] {
            let at = u64::try_from(step * STEP_SECS).ok()?;
            if totp.check(code, at) {
                matched = Some(step);
            }
        }
        matched
    }

    /// The code for `step` (tests, and nothing else, need to make one).
    pub fn code_at_step(&self, step: i64) -> Result<String, IdentityError> {
        let at = u64::try_from(step * STEP_SECS).map_err(|e| anyhow!("step: {e}"))?;
        Ok(self.totp("agora", "user")?.generate(at))
    }
}

/// Fresh recovery codes, shown to the user once: `xxxx-xxxx-xxxx-xxxx`, 80 bits
/// each.
pub fn new_recovery_codes() -> Result<Vec<String>, IdentityError> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0_u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness for a code: {e}"))?;
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(RECOVERY_ALPHABET[usize::from(b % 32)]))
                .collect();
            Ok(chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-"))
        })
        .collect()
}

/// What is stored of a recovery code: the SHA-256 of its normalised form (lower
/// case, no dashes or spaces). 80 random bits need no salt or stretching.
pub fn recovery_code_hash(code: &str) -> String {
    let normalised: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    secret_hash(&normalised)
}

/// A new TOTP enrolment: what the user puts into their app.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    /// The `otpauth://` URI, for a QR code.
    #[schema(example = "otpauth://totp/agora:ada%40example.com?secret=…&issuer=agora")]
    pub otpauth_uri: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Ten single-use codes; each logs in once in place of a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// Whether an account has a second factor.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MfaStatus {
    /// Logins ask for a code.
    pub enabled: bool,
    /// An enrolment waits for its first code.
    pub pending: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: i64,
}

/// An account's TOTP row.
#[derive(Debug)]
pub struct MfaRow {
    /// The secret.
    pub secret: TotpSecret,
    /// Whether the enrolment was confirmed.
    pub confirmed: bool,
}

/// A login waiting for its second factor.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The challenge's row id.
    pub id: String,
    /// Whose login it is.
    pub user_id: UserId,
    /// When it lapses.
    pub expires_at: Timestamp,
    /// Wrong codes sent with it so far.
    pub attempts: i64,
    /// Whether a code already completed it.
    pub used: bool,
}

impl Challenge {
    /// Whether a code may still complete it at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        !self.used && now < self.expires_at && self.attempts < CHALLENGE_ATTEMPTS
    }
}

impl IdentityStore {
    /// The account's TOTP row, confirmed or pending.
    pub async fn mfa(&self, user: UserId) -> Result<Option<MfaRow>, IdentityError> {
        let row = sqlx::query("SELECT secret, confirmed_at FROM identity_mfa WHERE user_id = $1")
            .bind(user.to_db())
            .fetch_optional(self.db.reader())
            .await?;
        row.map(|r| {
            Ok(MfaRow {
                secret: TotpSecret::from_base32(&r.try_get::<String, _>(0)?)?,
                confirmed: r.try_get::<Option<i64>, _>(1)?.is_some(),
            })
        })
        .transpose()
    }

    /// Starts (or restarts) an enrolment with `secret`; `false` when the account
    /// already has a confirmed second factor, which is left alone.
    pub async fn start_totp_enrolment(
        &self,
        user: UserId,
        secret: &TotpSecret,
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let done = sqlx::query(
            "INSERT INTO identity_mfa (user_id, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET secret = $2, created_at = $3 \
             WHERE identity_mfa.confirmed_at IS NULL",
        )
        .bind(user.to_db())
        .bind(secret.to_base32())
        .bind(now.as_millis())
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Confirms a pending enrolment whose code of `step` was right, and stores the
    /// hashes of its recovery codes, in one transaction. `false` when nothing was
    /// pending (confirmed meanwhile, or never started).
    pub async fn confirm_totp(
        &self,
        user: UserId,
        step: i64,
        recovery_hashes: &[String],
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query(
            "UPDATE identity_mfa SET confirmed_at = $1, last_step = $2 \
             WHERE user_id = $3 AND confirmed_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(step)
        .bind(user.to_db())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        replace_recovery_codes(&mut tx, user, recovery_hashes, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Accepts the code of `step` if no code of it or a later step was accepted
    /// before; `false` for a replay.
    pub async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, IdentityError> {
        let done = sqlx::query(
            "UPDATE identity_mfa SET last_step = $1 WHERE user_id = $2 \
             AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $1)",
        )
        .bind(step)
        .bind(user.to_db())
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Spends the unused recovery code with `hash`; `false` when there is none.
    pub async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &str,
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let done = sqlx::query(
            "UPDATE identity_recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(user.to_db())
        .bind(hash.to_string())
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces every recovery code of a confirmed second factor; `false` when
    /// the account has none.
    pub async fn renew_recovery_codes(
        &self,
        user: UserId,
        recovery_hashes: &[String],
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let mut tx = self.db.begin().await?;
        let confirmed = sqlx::query(
            "SELECT 1 FROM identity_mfa WHERE user_id = $1 AND confirmed_at IS NOT NULL",
        )
        .bind(user.to_db())
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !confirmed {
            tx.rollback().await?;
            return Ok(false);
        }
        replace_recovery_codes(&mut tx, user, recovery_hashes, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Unused recovery codes of the account.
    pub async fn recovery_codes_left(&self, user: UserId) -> Result<i64, IdentityError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM identity_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user.to_db())
        .fetch_one(self.db.reader())
        .await?)
    }

    /// Removes the account's second factor, its recovery codes and its open
    /// challenges; `false` when it had none.
    pub async fn remove_mfa(&self, user: UserId) -> Result<bool, IdentityError> {
        let mut tx = self.db.begin().await?;
        for sql in [
            "DELETE FROM identity_recovery_codes WHERE user_id = $1",
            "DELETE FROM identity_mfa_challenges WHERE user_id = $1",
        ] {
            sqlx::query(sql)
                .bind(user.to_db())
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM identity_mfa WHERE user_id = $1")
            .bind(user.to_db())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a challenge for `user`'s login, and drops lapsed ones.
    pub async fn create_challenge(
        &self,
        user: UserId,
        token_hash: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        sqlx::query("DELETE FROM identity_mfa_challenges WHERE expires_at < $1")
            .bind(now.as_millis())
            .execute(self.db.writer())
            .await?;
        sqlx::query(
            "INSERT INTO identity_mfa_challenges (id, user_id, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().hyphenated().to_string())
        .bind(user.to_db())
        .bind(token_hash.to_string())
        .bind(now.as_millis())
        .bind(expires_at.as_millis())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// The challenge whose token hashes to `token_hash`.
    pub async fn challenge(&self, token_hash: &str) -> Result<Option<Challenge>, IdentityError> {
        let row = sqlx::query(
            "SELECT id, user_id, expires_at, attempts, used_at \
             FROM identity_mfa_challenges WHERE token_hash = $1",
        )
        .bind(token_hash.to_string())
        .fetch_optional(self.db.writer())
        .await?;
        row.map(|r| {
            Ok(Challenge {
                id: r.try_get(0)?,
                user_id: UserId::from_db(&r.try_get::<String, _>(1)?)
                    .map_err(|_| corrupt("identity_mfa_challenges.user_id"))?,
                expires_at: Timestamp::from_millis(r.try_get(2)?),
                attempts: r.try_get(3)?,
                used: r.try_get::<Option<i64>, _>(4)?.is_some(),
            })
        })
        .transpose()
    }

    /// Counts an attempt against a challenge before its code is checked;
    /// `false` when the challenge is used, expired or out of attempts.
    pub async fn reserve_challenge_attempt(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let done = sqlx::query(
            "UPDATE identity_mfa_challenges SET attempts = attempts + 1 \
             WHERE id = $1 AND attempts < $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(id.to_string())
        .bind(CHALLENGE_ATTEMPTS)
        .bind(now.as_millis())
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Completes a challenge; `false` when another request completed it first.
    pub async fn complete_challenge(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let done = sqlx::query(
            "UPDATE identity_mfa_challenges SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(id.to_string())
        .execute(self.db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn replace_recovery_codes(
    tx: &mut agora_platform::db::WriteTx,
    user: UserId,
    hashes: &[String],
    now: Timestamp,
) -> Result<(), IdentityError> {
    sqlx::query("DELETE FROM identity_recovery_codes WHERE user_id = $1")
        .bind(user.to_db())
        .execute(&mut **tx)
        .await?;
    for hash in hashes {
        sqlx::query(
            "INSERT INTO identity_recovery_codes (id, user_id, code_hash, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(uuid::Uuid::now_v7().hyphenated().to_string())
        .bind(user.to_db())
        .bind(hash.clone())
        .bind(now.as_millis())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238, appendix B: the SHA-1 secret "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret(b"12345678901234567890".to_vec())
    }

    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        // 8-digit vectors truncated to our 6 digits: 94287082 → 287082 at T=59.
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (2_000_000_000, "279037"),
        ] {
            let step = time / STEP_SECS;
            assert_eq!(rfc_secret().code_at_step(step).ok().as_deref(), Some(code));
            assert_eq!(
                rfc_secret().matching_step(code, Timestamp::from_millis(time * 1000)),
                Some(step)
            );
        }
    }

    #[test]
    fn one_step_of_drift_is_allowed_either_way_and_no_more() {
        let s = TotpSecret::generate().expect("a secret");
        let now = Timestamp::from_millis(1_700_000_000_000);
        let current = 1_700_000_000 / STEP_SECS;
        for (step, expected) in [
            (current - 2, None),
            (current - 1, Some(current - 1)),
            (current, Some(current)),
            (current + 1, Some(current + 1)),
            (current + 2, None),
        ] {
            let code = s.code_at_step(step).expect("a code");
            // A code may collide with a neighbouring step's by chance (1 in 10^6).
            if expected.is_none() && s.matching_step(&code, now).is_some() {
                continue;
            }
            assert_eq!(s.matching_step(&code, now), expected, "step {step}");
        }
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert_eq!(s.matching_step(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn secrets_round_trip_through_base32_and_never_print() {
        let s = TotpSecret::generate().expect("a secret");
        let back = TotpSecret::from_base32(&s.to_base32()).expect("decodes");
        assert_eq!(back.0, s.0);
        assert_eq!(format!("{s:?}"), "TotpSecret(********)");
        let uri = s.otpauth_uri("agora", "ada@example.com").expect("a uri");
        assert!(
            uri.starts_with("otpauth://totp/agora:ada%40example.com?secret="),
            "{uri}"
        );
        assert!(uri.contains(&s.to_base32()));
    }

    #[test]
    fn recovery_codes_are_distinct_and_typed_loosely() {
        let codes = new_recovery_codes().expect("codes");
        assert_eq!(codes.len(), RECOVERY_CODES);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            assert_eq!(
                recovery_code_hash(code),
                recovery_code_hash(&code.replace('-', " ").to_uppercase())
            );
        }
    }
}
