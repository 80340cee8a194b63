//! The identity module's data access: accounts, sessions and refresh tokens.

use agora_kernel::{Role, SessionId, Timestamp, UserId};
use agora_platform::Database;
use agora_platform::db::{Columns, SqlBuilder, violation};
use anyhow::anyhow;
use sqlx::{Any, Executor, Row};

use crate::domain::{Email, User, roles_from_db, roles_to_db};
use crate::error::IdentityError;

/// The columns of a user row, in the order [`user_from_row`] reads them.
macro_rules! user_columns {
    () => {
        "id, email, name, roles, disabled, created_at, updated_at"
    };
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The user logged out.
    Logout,
    /// The user changed their password (every other session ends).
    PasswordChanged,
    /// A rotated refresh token was presented again.
    TokenReused,
    /// An administrator disabled the account.
    AccountDisabled,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::PasswordChanged => "password_changed",
            RevokeReason::TokenReused => "token_reused",
            RevokeReason::AccountDisabled => "account_disabled",
        }
    }
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was valid: it is now used, and the new token is its successor.
    Rotated {
        /// The account.
        user: User,
        /// The session the tokens belong to.
        session_id: SessionId,
    },
    /// No such token, or it expired, or its session had ended.
    Invalid,
    /// The token had already been used: the session is now revoked.
    Reused,
    /// The account is disabled: the session is now revoked.
    Disabled,
}

/// Where a page of a list in creation order (users, API keys) ends.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreationCursor {
    /// The last account's creation time, epoch milliseconds.
    pub created_at: i64,
    /// The last account's id, as stored.
    pub id: String,
}

/// A new refresh token, as stored.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// When it lapses if unused.
    pub expires_at: Timestamp,
}

/// The identity module's data access.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    pub(crate) db: Database,
}

impl IdentityStore {
    /// A store over `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a new account.
    pub async fn insert_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
    ) -> Result<(), IdentityError> {
        sqlx::query(
            "INSERT INTO identity_users \
             (id, email, name, password_hash, roles, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(user.id.to_db())
        .bind(user.email.clone())
        .bind(user.name.clone())
        .bind(password_hash.map(str::to_string))
        .bind(roles_to_db(&user.roles))
        .bind(i64::from(user.disabled))
        .bind(user.created_at.as_millis())
        .bind(user.updated_at.as_millis())
        .execute(self.db.writer())
        .await
        .map_err(|e| match violation(&e) {
            Some(v) if v.is_unique("identity_users_email_key", "identity_users.email") => {
                IdentityError::EmailTaken
            }
            _ => IdentityError::Database(e),
        })?;
        Ok(())
    }

    /// One account.
    pub async fn user(&self, id: UserId) -> Result<Option<User>, IdentityError> {
        self.db
            .fetch_by_key(
                concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM identity_users WHERE id = $1"
                ),
                &id.to_db(),
                user_from_row,
            )
            .await
    }

    /// The account with `email`, and its password hash.
    pub async fn user_by_email(
        &self,
        email: &Email,
    ) -> Result<Option<(User, Option<String>)>, IdentityError> {
        self.db
            .fetch_by_key(
                concat!(
                    "SELECT ",
                    user_columns!(),
                    ", password_hash FROM identity_users WHERE email = $1"
                ),
                email.as_str(),
                user_and_hash_from_row,
            )
            .await
    }

    /// The account, and its password hash.
    pub async fn user_with_hash(
        &self,
        id: UserId,
    ) -> Result<Option<(User, Option<String>)>, IdentityError> {
        self.db
            .fetch_by_key(
                concat!(
                    "SELECT ",
                    user_columns!(),
                    ", password_hash FROM identity_users WHERE id = $1"
                ),
                &id.to_db(),
                user_and_hash_from_row,
            )
            .await
    }

    /// Renames an account; `None` when there is no such account.
    pub async fn update_name(
        &self,
        id: UserId,
        name: &str,
        now: Timestamp,
    ) -> Result<Option<User>, IdentityError> {
        let row = sqlx::query(concat!(
            "UPDATE identity_users SET name = $1, updated_at = $2 WHERE id = $3 RETURNING ",
            user_columns!()
        ))
        .bind(name.to_string())
        .bind(now.as_millis())
        .bind(id.to_db())
        .fetch_optional(self.db.writer())
        .await?;
        row.as_ref().map(|r| user_from_row(r)).transpose()
    }

    /// Replaces the password hash and ends every session of the account but
    /// `keep`, in one transaction.
    pub async fn change_password(
        &self,
        id: UserId,
        hash: &str,
        keep: Option<SessionId>,
        now: Timestamp,
    ) -> Result<bool, IdentityError> {
        let mut tx = self.db.begin().await?;
        let changed = sqlx::query(
            "UPDATE identity_users SET password_hash = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(hash.to_string())
        .bind(now.as_millis())
        .bind(id.to_db())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE identity_sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE user_id = $3 AND revoked_at IS NULL AND id <> $4",
        )
        .bind(now.as_millis())
        .bind(RevokeReason::PasswordChanged.as_str())
        .bind(id.to_db())
        .bind(keep.map(|s| s.to_db()).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Starts a session for `user` with its first refresh token.
    pub async fn start_session(
        &self,
        user: UserId,
        token: &NewRefreshToken,
        now: Timestamp,
    ) -> Result<SessionId, IdentityError> {
        let session = SessionId::new();
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO identity_sessions (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(session.to_db())
            .bind(user.to_db())
            .bind(now.as_millis())
            .execute(&mut *tx)
            .await?;
        insert_refresh_token(&mut *tx, session, token, now).await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Exchanges the refresh token whose hash is `hash` for `next`, in one
    /// transaction. A second use of a token revokes its whole session: whoever
    /// holds the newer token (the thief or the owner) loses it too.
    pub async fn rotate_refresh_token(
        &self,
        hash: &str,
        next: &NewRefreshToken,
        now: Timestamp,
    ) -> Result<Rotation, IdentityError> {
        let mut tx = self.db.begin().await?;
        let found = sqlx::query(
            "SELECT t.id, t.session_id, t.expires_at, t.used_at, s.user_id, s.revoked_at \
             FROM identity_refresh_tokens t \
             JOIN identity_sessions s ON s.id = t.session_id \
             WHERE t.token_hash = $1",
        )
        .bind(hash.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = found else {
            tx.rollback().await?;
            return Ok(Rotation::Invalid);
        };
        let token_id: String = row.try_get(0)?;
        let session_id = parse_session(&row.try_get::<String, _>(1)?)?;
        let expires_at: i64 = row.try_get(2)?;
        let used_at: Option<i64> = row.try_get(3)?;
        let user_id = parse_user(&row.try_get::<String, _>(4)?)?;
        let revoked_at: Option<i64> = row.try_get(5)?;

        if revoked_at.is_some() {
            tx.rollback().await?;
            return Ok(Rotation::Invalid);
        }
        if used_at.is_some() {
            revoke(&mut tx, session_id, RevokeReason::TokenReused, now).await?;
            tx.commit().await?;
            return Ok(Rotation::Reused);
        }
        if expires_at <= now.as_millis() {
            tx.rollback().await?;
            return Ok(Rotation::Invalid);
        }
        // Conditional: of two concurrent uses, only one finds the token unused.
        let claimed = sqlx::query(
            "UPDATE identity_refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(token_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            revoke(&mut tx, session_id, RevokeReason::TokenReused, now).await?;
            tx.commit().await?;
            return Ok(Rotation::Reused);
        }
        let user = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM identity_users WHERE id = $1"
        ))
        .bind(user_id.to_db())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user.as_ref().map(|r| user_from_row(r)).transpose()? else {
            // Undoes the claim of the token too.
            tx.rollback().await?;
            return Ok(Rotation::Invalid);
        };
        if user.disabled {
            revoke(&mut tx, session_id, RevokeReason::AccountDisabled, now).await?;
            tx.commit().await?;
            return Ok(Rotation::Disabled);
        }
        insert_refresh_token(&mut *tx, session_id, next, now).await?;
        tx.commit().await?;
        Ok(Rotation::Rotated { user, session_id })
    }

    /// Ends the session of the refresh token whose hash is `hash`, if any.
    pub async fn end_session_of_token(
        &self,
        hash: &str,
        reason: RevokeReason,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        sqlx::query(
            "UPDATE identity_sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE revoked_at IS NULL AND id = \
             (SELECT session_id FROM identity_refresh_tokens WHERE token_hash = $3)",
        )
        .bind(now.as_millis())
        .bind(reason.as_str())
        .bind(hash.to_string())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// Up to `limit` accounts, oldest first, after the account `after` (its
    /// creation time and id).
    pub async fn list_users(
        &self,
        after: Option<&CreationCursor>,
        limit: i64,
    ) -> Result<Vec<User>, IdentityError> {
        let mut q = SqlBuilder::new(concat!("SELECT ", user_columns!(), " FROM identity_users"));
        page_in_creation_order(&mut q, after, limit)?;
        let rows = q.build().fetch_all(self.db.reader()).await?;
        rows.iter().map(|r| user_from_row(r)).collect()
    }

    /// Changes an account's roles and whether it is disabled; disabling it ends
    /// every session, in the same transaction. `None` when there is no such account.
    pub async fn update_account(
        &self,
        id: UserId,
        roles: Option<&[Role]>,
        disabled: Option<bool>,
        now: Timestamp,
    ) -> Result<Option<User>, IdentityError> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE identity_users SET roles = COALESCE($1, roles), \
             disabled = COALESCE($2, disabled), updated_at = $3 WHERE id = $4 RETURNING ",
            user_columns!()
        ))
        .bind(roles.map(roles_to_db))
        .bind(disabled.map(i64::from))
        .bind(now.as_millis())
        .bind(id.to_db())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = row.as_ref().map(|r| user_from_row(r)).transpose()? else {
            tx.rollback().await?;
            return Ok(None);
        };
        if disabled == Some(true) {
            sqlx::query(
                "UPDATE identity_sessions SET revoked_at = $1, revoked_reason = $2 \
                 WHERE user_id = $3 AND revoked_at IS NULL",
            )
            .bind(now.as_millis())
            .bind(RevokeReason::AccountDisabled.as_str())
            .bind(id.to_db())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(user))
    }

    /// The ids of disabled accounts.
    pub async fn disabled_users(&self) -> Result<Vec<UserId>, IdentityError> {
        // Reads every account (once, at start-up): not on the caller's thread.
        let rows = sqlx::query("SELECT id FROM identity_users WHERE disabled = 1")
            .fetch_all(self.db.scan_reader())
            .await?;
        rows.iter()
            .map(|r| parse_user(&r.try_get::<String, _>(0)?))
            .collect()
    }
}

/// Adds the keyset condition and order of a list in creation order to `q`.
pub(crate) fn page_in_creation_order(
    q: &mut SqlBuilder,
    after: Option<&CreationCursor>,
    limit: i64,
) -> Result<(), sqlx::Error> {
    if let Some(after) = after {
        q.push(" WHERE (created_at, id) > (")
            .bind(after.created_at)?
            .push(", ")
            .bind(after.id.clone())?
            .push(")");
    }
    q.push(" ORDER BY created_at, id LIMIT ").bind(limit)?;
    Ok(())
}

async fn insert_refresh_token<'e, E>(
    executor: E,
    session: SessionId,
    token: &NewRefreshToken,
    now: Timestamp,
) -> Result<(), IdentityError>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query(
        "INSERT INTO identity_refresh_tokens (id, session_id, token_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(uuid::Uuid::now_v7().hyphenated().to_string())
    .bind(session.to_db())
    .bind(token.hash.clone())
    .bind(now.as_millis())
    .bind(token.expires_at.as_millis())
    .execute(executor)
    .await?;
    Ok(())
}

async fn revoke(
    tx: &mut agora_platform::db::WriteTx,
    session: SessionId,
    reason: RevokeReason,
    now: Timestamp,
) -> Result<(), IdentityError> {
    sqlx::query(
        "UPDATE identity_sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now.as_millis())
    .bind(reason.as_str())
    .bind(session.to_db())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn corrupt(column: &str) -> IdentityError {
    IdentityError::Unexpected(anyhow!("corrupt value in {column}"))
}

fn parse_user(db: &str) -> Result<UserId, IdentityError> {
    UserId::from_db(db).map_err(|_| corrupt("identity_users.id"))
}

fn parse_session(db: &str) -> Result<SessionId, IdentityError> {
    SessionId::from_db(db).map_err(|_| corrupt("identity_sessions.id"))
}

fn user_and_hash_from_row(row: &dyn Columns) -> Result<(User, Option<String>), IdentityError> {
    Ok((user_from_row(row)?, row.optional_text(7)?))
}

fn user_from_row(row: &dyn Columns) -> Result<User, IdentityError> {
    let roles: Vec<Role> =
        roles_from_db(&row.text(3)?).ok_or_else(|| corrupt("identity_users.roles"))?;
    Ok(User {
        id: parse_user(&row.text(0)?)?,
        email: row.text(1)?,
        name: row.text(2)?,
        roles,
        disabled: row.integer(4)? != 0,
        created_at: Timestamp::from_millis(row.integer(5)?),
        updated_at: Timestamp::from_millis(row.integer(6)?),
    })
}

/// How other modules reach a customer: read straight from the accounts
/// table, so a process that only needs addresses (a functions worker) needs
/// no signing keys.
#[async_trait::async_trait]
impl agora_contracts::identity::AccountsPort for IdentityStore {
    async fn contact(
        &self,
        user: UserId,
    ) -> Result<Option<agora_contracts::identity::Contact>, agora_contracts::PortError> {
        let found = self
            .user(user)
            .await
            .map_err(agora_contracts::PortError::from)?;
        Ok(found.map(|u| agora_contracts::identity::Contact {
            email: u.email,
            name: u.name,
        }))
    }
}
