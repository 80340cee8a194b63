//! API keys for service accounts: what is stored of them, and how the edge
//! resolves one to the permissions it grants.
//!
//! A key is `agk_` followed by 43 base64url characters (256 random bits). Only its
//! SHA-256 is stored, with its first 12 characters to recognise it by; the key
//! itself is shown once, in the answer that creates it.

use std::sync::Arc;

use agora_kernel::{ApiError, ApiKeyId, Clock, Permission, Permissions, Timestamp};
use agora_platform::auth::{ApiKeyGrant, ApiKeyResolver};
use agora_platform::db::{Columns, SqlBuilder};
use serde::Serialize;

use crate::error::IdentityError;
use crate::store::{CreationCursor, IdentityStore, corrupt, page_in_creation_order};

/// The columns of a key row, in the order [`api_key_from_row`] reads them.
macro_rules! api_key_columns {
    () => {
        "id, name, prefix, permissions, created_by, created_at, expires_at, revoked_at"
    };
}

/// How many leading characters of a key are kept to recognise it by.
pub const SHOWN_PREFIX_LEN: usize = 12;

/// An API key as the API shows it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    /// The key's id.
    #[schema(value_type = String, example = "key_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub id: ApiKeyId,
    /// What it is for, chosen by its creator.
    pub name: String,
    /// The key's first characters, to recognise it by.
    #[schema(example = "agk_Xq3v9LmP")]
    pub prefix: String,
    /// What the key may do.
    #[schema(value_type = Vec<String>, example = json!(["catalog:write"]))]
    pub permissions: Vec<Permission>,
    /// Who created it: a user id (`usr_…`) or another key's id (`key_…`).
    pub created_by: String,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it stops working by itself, if ever.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

/// A key just created: the only time the key itself is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    /// The key's record.
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key, to send as `Authorization: ApiKey <key>`. Store it now: it
    /// cannot be shown again.
    #[schema(example = "agk_Xq3v9LmP…")]
    pub key: String,
}

/// Permission names as stored: space-separated, in table order.
fn permissions_to_db(permissions: &[Permission]) -> String {
    Permissions::of(permissions)
        .iter()
        .map(Permission::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn permissions_from_db(column: &str) -> Result<Vec<Permission>, IdentityError> {
    column
        .split_whitespace()
        .map(|name| Permission::parse(name).ok_or_else(|| corrupt("identity_api_keys.permissions")))
        .collect()
}

fn api_key_from_row(row: &dyn Columns) -> Result<ApiKey, IdentityError> {
    Ok(ApiKey {
        id: ApiKeyId::from_db(&row.text(0)?).map_err(|_| corrupt("identity_api_keys.id"))?,
        name: row.text(1)?,
        prefix: row.text(2)?,
        permissions: permissions_from_db(&row.text(3)?)?,
        created_by: row.text(4)?,
        created_at: Timestamp::from_millis(row.integer(5)?),
        expires_at: row.optional_integer(6)?.map(Timestamp::from_millis),
        revoked_at: row.optional_integer(7)?.map(Timestamp::from_millis),
    })
}

impl ApiKey {
    /// Whether the key works at `now`: not revoked, not expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

impl IdentityStore {
    /// Stores a new key under the hash of its secret.
    pub async fn insert_api_key(&self, key: &ApiKey, hash: &str) -> Result<(), IdentityError> {
        sqlx::query(
            "INSERT INTO identity_api_keys \
             (id, name, prefix, key_hash, permissions, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id.to_db())
        .bind(key.name.clone())
        .bind(key.prefix.clone())
        .bind(hash.to_string())
        .bind(permissions_to_db(&key.permissions))
        .bind(key.created_by.clone())
        .bind(key.created_at.as_millis())
        .bind(key.expires_at.map(Timestamp::as_millis))
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// One key.
    pub async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKey>, IdentityError> {
        self.db
            .fetch_by_key(
                concat!(
                    "SELECT ",
                    api_key_columns!(),
                    " FROM identity_api_keys WHERE id = $1"
                ),
                &id.to_db(),
                api_key_from_row,
            )
            .await
    }

    /// The key whose secret hashes to `hash`, live or not.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, IdentityError> {
        self.db
            .fetch_by_key(
                concat!(
                    "SELECT ",
                    api_key_columns!(),
                    " FROM identity_api_keys WHERE key_hash = $1"
                ),
                hash,
                api_key_from_row,
            )
            .await
    }

    /// Up to `limit` keys after `after`, oldest first, revoked ones included.
    pub async fn list_api_keys(
        &self,
        after: Option<&CreationCursor>,
        limit: i64,
    ) -> Result<Vec<ApiKey>, IdentityError> {
        let mut q = SqlBuilder::new(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM identity_api_keys"
        ));
        page_in_creation_order(&mut q, after, limit)?;
        let rows = q.build().fetch_all(self.db.reader()).await?;
        rows.iter().map(|r| api_key_from_row(r)).collect()
    }

    /// Revokes a key (a revoked key stays revoked, with its first revocation
    /// time). `None` when there is no such key.
    pub async fn revoke_api_key(
        &self,
        id: ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<ApiKey>, IdentityError> {
        let row = sqlx::query(concat!(
            "UPDATE identity_api_keys SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 RETURNING ",
            api_key_columns!()
        ))
        .bind(now.as_millis())
        .bind(id.to_db())
        .fetch_optional(self.db.writer())
        .await?;
        row.as_ref().map(|r| api_key_from_row(r)).transpose()
    }
}

/// Resolves API keys for the edge from the identity store.
pub(crate) struct StoredApiKeys {
    pub(crate) store: IdentityStore,
    pub(crate) clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl ApiKeyResolver for StoredApiKeys {
    async fn resolve(&self, hash: &str) -> Result<Option<ApiKeyGrant>, ApiError> {
        let key = self.store.api_key_by_hash(hash).await?;
        Ok(key
            .filter(|k| k.is_live(self.clock.now()))
            .map(|k| ApiKeyGrant {
                id: k.id,
                permissions: Permissions::of(&k.permissions),
                expires_at: k.expires_at,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expires_at: Option<i64>, revoked_at: Option<i64>) -> ApiKey {
        ApiKey {
            id: ApiKeyId::new(),
            name: "k".into(),
            prefix: "agk_12345678".into(),
            permissions: vec![Permission::UsersManage, Permission::CatalogWrite],
            created_by: "usr_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b".into(),
            created_at: Timestamp::from_millis(0),
            expires_at: expires_at.map(Timestamp::from_millis),
            revoked_at: revoked_at.map(Timestamp::from_millis),
        }
    }

    #[test]
    fn a_key_works_until_it_expires_or_is_revoked() {
        let at = Timestamp::from_millis(1_000);
        assert!(key(None, None).is_live(at));
        assert!(key(Some(1_001), None).is_live(at));
        assert!(!key(Some(1_000), None).is_live(at));
        assert!(!key(None, Some(500)).is_live(at));
    }

    #[test]
    fn permissions_are_stored_in_table_order_and_read_back() {
        let k = key(None, None);
        let stored = permissions_to_db(&k.permissions);
        assert_eq!(stored, "catalog:write users:manage");
        assert_eq!(
            permissions_from_db(&stored).ok(),
            Some(vec![Permission::CatalogWrite, Permission::UsersManage])
        );
        assert!(permissions_from_db("catalog:write root").is_err());
    }
}
