//! The simulated provider's own books, kept in the payments database
//! (`payments_simulator_*`) as a real provider keeps them on its side: every
//! process of the payments module sees the same payments, and they survive a
//! restart, so a capture or a void may go to any replica, before or after a
//! crash.
//!
//! Each keyed call is one transaction that first claims its key
//! (`INSERT … ON CONFLICT DO NOTHING` of a `pending` answer), then makes its
//! change with one conditional `UPDATE` whose `WHERE` states the rule, then
//! records its answer. A second call with the key waits for the first to
//! commit, finds the key taken, and gets the recorded answer: a call takes
//! effect once however many processes repeat it at once. These tables stand
//! for the provider's side and are read by nothing but the simulator.

use agora_kernel::{Currency, Money};
use agora_platform::Database;
use agora_platform::db::WriteTx;
use sqlx::Row as _;

use crate::provider::{Authorization, ProviderError};

/// A payment as the simulated provider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) authorized: Money,
    pub(crate) captured: i64,
    pub(crate) refunded: i64,
    pub(crate) voided: bool,
}

/// A keyed call's recorded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A capture, void or refund that took effect.
    Done,
    /// An authorization's answer.
    Authorized(Authorization),
    /// Refused or failed, with the provider's words.
    Failed(ProviderError),
}

impl Answer {
    fn columns(&self) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
        match self {
            Answer::Done => ("done", None, None, None),
            Answer::Authorized(Authorization::Approved {
                provider_ref,
                brand,
                last4,
            }) => ("approved", Some(provider_ref), Some(brand), Some(last4)),
            Answer::Authorized(Authorization::Declined { reason }) => {
                ("declined", Some(reason), None, None)
            }
            Answer::Failed(ProviderError::Refused(why)) => ("refused", Some(why), None, None),
            Answer::Failed(ProviderError::Unavailable(why)) => {
                ("unavailable", Some(why), None, None)
            }
            Answer::Failed(ProviderError::Timeout) => ("timeout", None, None, None),
        }
    }

    fn from_columns(
        outcome: &str,
        detail: Option<String>,
        brand: Option<String>,
        last4: Option<String>,
    ) -> Result<Answer, ProviderError> {
        let detail = detail.unwrap_or_default();
        Ok(match outcome {
            "done" => Answer::Done,
            "approved" => Answer::Authorized(Authorization::Approved {
                provider_ref: detail,
                brand: brand.unwrap_or_default(),
                last4: last4.unwrap_or_default(),
            }),
            "declined" => Answer::Authorized(Authorization::Declined { reason: detail }),
            "refused" => Answer::Failed(ProviderError::Refused(detail)),
            "unavailable" => Answer::Failed(ProviderError::Unavailable(detail)),
            "timeout" => Answer::Failed(ProviderError::Timeout),
            other => return Err(books(format!("an answer recorded as {other:?}"))),
        })
    }
}

/// A failure of the books themselves: to the caller, the provider is
/// unavailable, and repeating the call with its key is safe.
fn books(why: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(format!("the simulated provider's books: {why}"))
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// What a keyed change found: the key taken already (its answer), or the
/// key claimed in an open transaction.
enum Claim {
    Taken(Answer),
    Claimed(WriteTx),
}

/// The books in the payments database.
#[derive(Clone)]
pub(crate) struct Books {
    db: Database,
}

impl Books {
    pub(crate) fn new(db: Database) -> Books {
        Books { db }
    }

    /// The answer recorded for `key`, if any.
    pub(crate) async fn answer(&self, key: &str) -> Result<Option<Answer>, ProviderError> {
        let row = sqlx::query(
            "SELECT outcome, detail, brand, last4 FROM payments_simulator_answers WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(self.db.writer())
        .await
        .map_err(books)?;
        row.map(|row| {
            Answer::from_columns(
                row.try_get::<String, _>("outcome").map_err(books)?.as_str(),
                row.try_get("detail").map_err(books)?,
                row.try_get("brand").map_err(books)?,
                row.try_get("last4").map_err(books)?,
            )
        })
        .transpose()
    }

    /// Claims `key` in a new transaction, or finds the answer of the call
    /// that claimed it first.
    async fn claim(&self, key: &str) -> Result<Claim, ProviderError> {
        let mut tx = self.db.begin().await.map_err(books)?;
        let claimed = sqlx::query(
            "INSERT INTO payments_simulator_answers (key, outcome, created_at) \
             VALUES ($1, 'pending', $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(books)?;
        if claimed.rows_affected() == 1 {
            return Ok(Claim::Claimed(tx));
        }
        tx.rollback().await.map_err(books)?;
        match self.answer(key).await? {
            Some(answer) => Ok(Claim::Taken(answer)),
            None => Err(books(format!("the key {key} is taken but has no answer"))),
        }
    }

    /// Records `answer` for the claimed `key` and commits.
    async fn settle(mut tx: WriteTx, key: &str, answer: &Answer) -> Result<(), ProviderError> {
        let (outcome, detail, brand, last4) = answer.columns();
        sqlx::query(
            "UPDATE payments_simulator_answers SET outcome = $1, detail = $2, brand = $3, \
             last4 = $4 WHERE key = $5",
        )
        .bind(outcome)
        .bind(detail)
        .bind(brand)
        .bind(last4)
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(books)?;
        tx.commit().await.map_err(books)
    }

    /// Records an authorization's answer under `key` (and, when approved, the
    /// payment it holds); when another call recorded one first, that answer.
    pub(crate) async fn authorize(
        &self,
        key: &str,
        answer: Result<Authorization, ProviderError>,
        amount: Money,
    ) -> Result<(Result<Authorization, ProviderError>, bool), ProviderError> {
        let mut tx = match self.claim(key).await? {
            Claim::Taken(Answer::Authorized(first)) => return Ok((Ok(first), false)),
            Claim::Taken(Answer::Failed(e)) => return Ok((Err(e), false)),
            Claim::Taken(Answer::Done) => {
                return Err(books(format!("the key {key} was used for another call")));
            }
            Claim::Claimed(tx) => tx,
        };
        if let Ok(Authorization::Approved { provider_ref, .. }) = &answer {
            sqlx::query(
                "INSERT INTO payments_simulator_payments \
                 (provider_ref, currency, authorized_minor, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(provider_ref)
            .bind(amount.currency().code())
            .bind(amount.amount_minor())
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(books)?;
        }
        let recorded = match &answer {
            Ok(authorization) => Answer::Authorized(authorization.clone()),
            Err(e) => Answer::Failed(e.clone()),
        };
        Self::settle(tx, key, &recorded).await?;
        Ok((answer, true))
    }

    /// Makes the change `change` describes once per `key`: `Ok(Some(held))`
    /// when this call made it (the payment after it), `Ok(None)` when an
    /// earlier call with the key had, `Err` when it was refused (then or
    /// earlier).
    pub(crate) async fn change(
        &self,
        key: &str,
        provider_ref: &str,
        change: Change,
    ) -> Result<Option<Held>, ProviderError> {
        let mut tx = match self.claim(key).await? {
            Claim::Taken(Answer::Done) => return Ok(None),
            Claim::Taken(Answer::Failed(e)) => return Err(e),
            Claim::Taken(Answer::Authorized(_)) => {
                return Err(books(format!("the key {key} was used for another call")));
            }
            Claim::Claimed(tx) => tx,
        };
        let outcome = apply(&mut tx, provider_ref, change).await?;
        let answer = match &outcome {
            Ok(_) => Answer::Done,
            Err(e) => Answer::Failed(e.clone()),
        };
        Self::settle(tx, key, &answer).await?;
        outcome.map(Some)
    }

    /// Lets the authorization made with `key` go, if it was approved and not
    /// captured; an authorization that never answered is recorded declined
    /// (`canceled`), so that a late repeat of it cannot approve it. Returns the
    /// payment when this call voided it.
    pub(crate) async fn cancel_authorization(
        &self,
        key: &str,
    ) -> Result<Option<(String, Held)>, ProviderError> {
        match self.claim(key).await? {
            Claim::Claimed(tx) => {
                let canceled = Answer::Authorized(Authorization::Declined {
                    reason: "canceled".into(),
                });
                Self::settle(tx, key, &canceled).await?;
                Ok(None)
            }
            Claim::Taken(Answer::Authorized(Authorization::Approved { provider_ref, .. })) => {
                let mut tx = self.db.begin().await.map_err(books)?;
                let voided = voided_now(&mut tx, &provider_ref).await?;
                tx.commit().await.map_err(books)?;
                match voided {
                    Some(held) => Ok(Some((provider_ref, held))),
                    None => match self.held(&provider_ref).await? {
                        Some(held) if held.captured > 0 => Err(ProviderError::Refused(
                            "already captured: refund instead".into(),
                        )),
                        _ => Ok(None),
                    },
                }
            }
            // Declined, failed before answering, or used for another call:
            // nothing is held under this key.
            Claim::Taken(_) => Ok(None),
        }
    }

    /// The payment `provider_ref`, if the provider holds one.
    pub(crate) async fn held(&self, provider_ref: &str) -> Result<Option<Held>, ProviderError> {
        let row = sqlx::query(
            "SELECT currency, authorized_minor, captured_minor, refunded_minor, voided \
             FROM payments_simulator_payments WHERE provider_ref = $1",
        )
        .bind(provider_ref)
        .fetch_optional(self.db.writer())
        .await
        .map_err(books)?;
        row.map(|row| held_from_row(&row)).transpose()
    }
}

/// A change to a held payment.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    Capture(Money),
    Void,
    Refund(Money),
}

const HELD_COLUMNS: &str = "currency, authorized_minor, captured_minor, refunded_minor, voided";

fn held_from_row(row: &sqlx::any::AnyRow) -> Result<Held, ProviderError> {
    let currency: String = row.try_get("currency").map_err(books)?;
    let currency = Currency::parse(&currency).map_err(books)?;
    let authorized: i64 = row.try_get("authorized_minor").map_err(books)?;
    Ok(Held {
        authorized: Money::new(authorized, currency).map_err(books)?,
        captured: row.try_get("captured_minor").map_err(books)?,
        refunded: row.try_get("refunded_minor").map_err(books)?,
        voided: row.try_get::<i64, _>("voided").map_err(books)? != 0,
    })
}

/// Voids `provider_ref` if it holds nothing captured and is not voided yet.
async fn voided_now(tx: &mut WriteTx, provider_ref: &str) -> Result<Option<Held>, ProviderError> {
    let sql = format!(
        "UPDATE payments_simulator_payments SET voided = 1 \
         WHERE provider_ref = $1 AND captured_minor = 0 AND voided = 0 RETURNING {HELD_COLUMNS}"
    );
    fetch_held(tx, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(provider_ref)).await
}

/// The held payment `query` returns, if any.
async fn fetch_held(
    tx: &mut WriteTx,
    query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
) -> Result<Option<Held>, ProviderError> {
    let row = query.fetch_optional(&mut **tx).await.map_err(books)?;
    row.map(|row| held_from_row(&row)).transpose()
}

/// Applies `change` with one conditional update; when its rule stops it, the
/// refusal says which rule.
async fn apply(
    tx: &mut WriteTx,
    provider_ref: &str,
    change: Change,
) -> Result<Result<Held, ProviderError>, ProviderError> {
    let changed = match change {
        Change::Capture(amount) => {
            let sql = format!(
                "UPDATE payments_simulator_payments SET captured_minor = captured_minor + $1 \
                 WHERE provider_ref = $2 AND voided = 0 AND currency = $3 \
                 AND captured_minor + $1 <= authorized_minor RETURNING {HELD_COLUMNS}"
            );
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(amount.amount_minor())
                .bind(provider_ref)
                .bind(amount.currency().code());
            fetch_held(tx, query).await?
        }
        Change::Void => {
            let sql = format!(
                "UPDATE payments_simulator_payments SET voided = 1 \
                 WHERE provider_ref = $1 AND captured_minor = 0 RETURNING {HELD_COLUMNS}"
            );
            fetch_held(tx, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(provider_ref)).await?
        }
        Change::Refund(amount) => {
            let sql = format!(
                "UPDATE payments_simulator_payments SET refunded_minor = refunded_minor + $1 \
                 WHERE provider_ref = $2 AND currency = $3 \
                 AND refunded_minor + $1 <= captured_minor RETURNING {HELD_COLUMNS}"
            );
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(amount.amount_minor())
                .bind(provider_ref)
                .bind(amount.currency().code());
            fetch_held(tx, query).await?
        }
    };
    if let Some(held) = changed {
        return Ok(Ok(held));
    }
    let sql =
        format!("SELECT {HELD_COLUMNS} FROM payments_simulator_payments WHERE provider_ref = $1");
    let found = fetch_held(tx, sqlx::query(sqlx::AssertSqlSafe(sql)).bind(provider_ref)).await?;
    let Some(held) = found else {
        return Ok(Err(ProviderError::Refused("unknown payment".into())));
    };
    let why = match change {
        Change::Capture(_) if held.voided => "the authorization was voided",
        Change::Capture(_) => "more than authorized",
        Change::Void => "already captured: refund instead",
        Change::Refund(_) => "more than captured",
    };
    Ok(Err(ProviderError::Refused(why.into())))
}
