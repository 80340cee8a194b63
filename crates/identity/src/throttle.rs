//! Failed-login limits (docs/security.md, "Abuse").
//!
//! Two rate limits live in memory, per process: failures per client address and
//! per email within `auth.login.window_secs`, each a sliding window of failure
//! times. The lock after `auth.login.lockout_after` consecutive failures lives in
//! the database (`identity_login_failures`), so it holds across restarts and
//! replicas. Both count emails, not accounts: an email without an account is
//! throttled and locked exactly like one with, so neither tells which exist.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agora_kernel::Timestamp;
use agora_platform::config::LoginLimits;

use crate::error::IdentityError;
use crate::store::IdentityStore;

/// How many client addresses and emails the rate limits track at most. Under a
/// flood of distinct keys the least recently seen are forgotten first.
const TRACKED_ADDRESSES: u64 = 10_000;
const TRACKED_EMAILS: u64 = 100_000;

/// Failure times, oldest first, at most as many as the limit.
type Window = Arc<Mutex<VecDeque<i64>>>;

/// The in-memory rate limits on failed logins.
pub struct LoginThrottle {
    by_address: moka::sync::Cache<IpAddr, Window>,
    by_email: moka::sync::Cache<String, Window>,
    window_ms: i64,
    per_address: usize,
    per_email: usize,
}

impl LoginThrottle {
    /// Limits as configured.
    pub fn new(limits: &LoginLimits) -> Self {
        let idle = Duration::from_secs(limits.window_secs);
        Self {
            by_address: moka::sync::Cache::builder()
                .max_capacity(TRACKED_ADDRESSES)
                .time_to_idle(idle)
                .build(),
            by_email: moka::sync::Cache::builder()
                .max_capacity(TRACKED_EMAILS)
                .time_to_idle(idle)
                .build(),
            window_ms: i64::try_from(limits.window_secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            per_address: usize::try_from(limits.failures_per_address).unwrap_or(usize::MAX),
            per_email: usize::try_from(limits.failures_per_account).unwrap_or(usize::MAX),
        }
    }

    /// Takes a slot for an attempt from `address` for `email`: `Err(seconds to
    /// wait)` when either has used up its failures in the window, else the
    /// attempt is counted as a failure until [`Self::release`] says otherwise.
    /// Checking and counting happen under one lock, so a burst of parallel
    /// attempts cannot all pass the check before any is counted.
    pub fn attempt(&self, address: IpAddr, email: Option<&str>, now: Timestamp) -> Result<(), u64> {
        let by_address = self.by_address.get_with(address, Window::default);
        let by_email = email.map(|e| self.by_email.get_with(e.to_string(), Window::default));
        // Always the address first, then the email: one order, no deadlock.
        let mut address_times = by_address.lock().unwrap_or_else(PoisonError::into_inner);
        let mut email_times = by_email
            .as_ref()
            .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner));
        let mut wait = self.wait(&mut address_times, self.per_address, now);
        if let Some(times) = email_times.as_deref_mut() {
            wait = wait.max(self.wait(times, self.per_email, now));
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        push(&mut address_times, self.per_address, now);
        if let Some(times) = email_times.as_deref_mut() {
            push(times, self.per_email, now);
        }
        Ok(())
    }

    /// Gives back the slot [`Self::attempt`] took at `now`: the attempt did not
    /// fail (a right password, or one refused before it was tried).
    pub fn release(&self, address: IpAddr, email: Option<&str>, now: Timestamp) {
        if let Some(w) = self.by_address.get(&address) {
            unpush(&w, now);
        }
        if let Some(w) = email.and_then(|e| self.by_email.get(e)) {
            unpush(&w, now);
        }
    }

    /// Forgets the email's failures (after a complete, successful login).
    pub fn forget_email(&self, email: &str) {
        self.by_email.invalidate(email);
    }

    /// Seconds until a slot frees in a full window; `None` when not full.
    fn wait(&self, times: &mut VecDeque<i64>, limit: usize, now: Timestamp) -> Option<u64> {
        let start = now.as_millis() - self.window_ms;
        while times.front().is_some_and(|t| *t <= start) {
            times.pop_front();
        }
        if times.len() < limit {
            return None;
        }
        let free_at = times.front().copied().unwrap_or_default() + self.window_ms;
        Some(ceil_secs(free_at - now.as_millis()))
    }
}

fn push(times: &mut VecDeque<i64>, limit: usize, now: Timestamp) {
    times.push_back(now.as_millis());
    while times.len() > limit {
        times.pop_front();
    }
}

fn unpush(window: &Window, now: Timestamp) {
    let mut times = window.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = times.iter().rposition(|t| *t == now.as_millis()) {
        times.remove(i);
    }
}

/// Whole seconds to wait for `ms` milliseconds, at least one.
pub(crate) fn ceil_secs(ms: i64) -> u64 {
    u64::try_from(ms.max(1)).unwrap_or(1).div_ceil(1000)
}

/// What the database holds about an email's failed logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureState {
    /// No failure since the last success.
    Clean,
    /// Some failures, not locked.
    Failing,
    /// Locked until then.
    LockedUntil(Timestamp),
}

impl IdentityStore {
    /// The failed-login state of `email` at `now`.
    pub async fn login_failures(
        &self,
        email: &str,
        now: Timestamp,
    ) -> Result<FailureState, IdentityError> {
        let row = self
            .db
            .fetch_by_key(
                "SELECT locked_until FROM identity_login_failures WHERE email = $1",
                email,
                |row| Ok::<_, IdentityError>(row.optional_integer(0)?),
            )
            .await?;
        Ok(match row {
            None => FailureState::Clean,
            Some(Some(until)) if until > now.as_millis() => {
                FailureState::LockedUntil(Timestamp::from_millis(until))
            }
            Some(_) => FailureState::Failing,
        })
    }

    /// Counts a failed login for `email`. Failures older than `lockout_ms` are
    /// forgotten first; the `lockout_after`th consecutive one locks the email for
    /// `lockout_ms` and starts the count again. Returns the lock's end if this
    /// failure set it.
    pub async fn record_login_failure(
        &self,
        email: &str,
        now: Timestamp,
        lockout_after: u32,
        lockout_ms: i64,
    ) -> Result<Option<Timestamp>, IdentityError> {
        let now_ms = now.as_millis();
        let stale = now_ms.saturating_sub(lockout_ms);
        let lock_end = now_ms.saturating_add(lockout_ms);
        // One statement, so concurrent failures are each counted.
        let locked_until: Option<i64> = sqlx::query_scalar(
            "INSERT INTO identity_login_failures (email, failures, locked_until, updated_at) \
             VALUES ($1, 1, NULL, $2) \
             ON CONFLICT (email) DO UPDATE SET \
               failures = CASE \
                 WHEN identity_login_failures.updated_at < $3 THEN 1 \
                 WHEN identity_login_failures.failures + 1 >= $4 THEN 0 \
                 ELSE identity_login_failures.failures + 1 END, \
               locked_until = CASE \
                 WHEN identity_login_failures.updated_at >= $3 \
                  AND identity_login_failures.failures + 1 >= $4 THEN $5 \
                 ELSE identity_login_failures.locked_until END, \
               updated_at = $2 \
             RETURNING locked_until",
        )
        .bind(email.to_string())
        .bind(now_ms)
        .bind(stale)
        .bind(i64::from(lockout_after))
        .bind(lock_end)
        .fetch_one(self.db.writer())
        .await?;
        // Rows of emails nobody tried for a while, whose lock (if any) is over.
        sqlx::query(
            "DELETE FROM identity_login_failures WHERE updated_at < $1 \
             AND (locked_until IS NULL OR locked_until < $2)",
        )
        .bind(stale)
        .bind(now_ms)
        .execute(self.db.writer())
        .await?;
        Ok(locked_until
            .filter(|u| *u == lock_end)
            .map(Timestamp::from_millis))
    }

    /// Forgets the failures of `email` (after a successful login).
    pub async fn clear_login_failures(&self, email: &str) -> Result<(), IdentityError> {
        sqlx::query("DELETE FROM identity_login_failures WHERE email = $1")
            .bind(email.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            window_secs: 60,
            failures_per_address: 4,
            failures_per_account: 2,
            ..LoginLimits::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + secs * 1000)
    }

    #[test]
    fn an_email_is_throttled_after_its_failures_until_the_oldest_leaves_the_window() {
        let t = LoginThrottle::new(&limits());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let email = Some("ada@example.com");
        assert_eq!(t.attempt(ip, email, at(0)), Ok(()));
        assert_eq!(t.attempt(ip, email, at(10)), Ok(()));
        assert_eq!(t.attempt(ip, email, at(10)), Err(50));
        assert_eq!(t.attempt(ip, email, at(59)), Err(1));
        assert_eq!(
            t.attempt(ip, email, at(60)),
            Ok(()),
            "the first failure aged out"
        );
        assert_eq!(
            t.attempt(ip, Some("bob@example.com"), at(61)),
            Ok(()),
            "another email from the same address is not throttled yet"
        );
        t.forget_email("ada@example.com");
        assert_eq!(t.attempt(ip, email, at(62)), Ok(()));
        assert_eq!(
            t.attempt(ip, email, at(63)),
            Err(7),
            "the address is full now"
        );
    }

    #[test]
    fn a_released_attempt_does_not_count() {
        let t = LoginThrottle::new(&limits());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let email = Some("ada@example.com");
        for i in 0..5 {
            assert_eq!(t.attempt(ip, email, at(i)), Ok(()), "attempt {i}");
            t.release(ip, email, at(i));
        }
        assert_eq!(t.attempt(ip, email, at(6)), Ok(()));
        assert_eq!(t.attempt(ip, email, at(7)), Ok(()));
        assert_eq!(t.attempt(ip, email, at(8)), Err(58));
    }

    #[test]
    fn an_address_is_throttled_across_emails() {
        let t = LoginThrottle::new(&limits());
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        for (i, email) in ["a@x.io", "b@x.io", "c@x.io", "d@x.io"].iter().enumerate() {
            assert_eq!(t.attempt(ip, Some(email), at(i as i64)), Ok(()));
        }
        assert_eq!(t.attempt(ip, Some("e@x.io"), at(5)), Err(55));
        assert_eq!(t.attempt(ip, None, at(5)), Err(55));
        let other: IpAddr = "2001:db8::2".parse().expect("ip");
        assert_eq!(t.attempt(other, Some("e@x.io"), at(5)), Ok(()));
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
        assert_eq!(ceil_secs(-5), 1);
    }
}
