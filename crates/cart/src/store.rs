//! The cart's data access.

use agora_kernel::{ProductId, Timestamp, UserId};
use agora_platform::Database;
use agora_platform::db::violation;
use sqlx::Row;

use crate::error::CartError;

/// The most units of one product in a cart.
pub const MAX_LINE_QUANTITY: i64 = 99;
/// The most lines (distinct products) in a cart.
pub const MAX_LINES: i64 = 100;

/// A stored cart line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// The product.
    pub product_id: ProductId,
    /// How many.
    pub quantity: i64,
}

/// How many customers' cart ids a store remembers.
const REMEMBERED_OWNERS: u64 = 100_000;

/// The cart's data access.
#[derive(Clone)]
pub struct CartStore {
    db: Database,
    /// Customers' cart ids, once read: a customer's cart is never deleted or
    /// replaced (only anonymous carts are), so a remembered id stays true in
    /// every process and needs no invalidation.
    owners: moka::sync::Cache<UserId, String>,
}

impl std::fmt::Debug for CartStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CartStore")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl CartStore {
    /// A store over `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            owners: moka::sync::Cache::new(REMEMBERED_OWNERS),
        }
    }

    /// The database (for tests and tools).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The id of `owner`'s cart.
    pub async fn cart_of_owner(&self, owner: UserId) -> Result<Option<String>, CartError> {
        if let Some(id) = self.owners.get(&owner) {
            return Ok(Some(id));
        }
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM cart_carts WHERE owner = $1")
            .bind(owner.to_db())
            .fetch_optional(self.db.reader())
            .await?;
        if let Some(id) = &id {
            self.owners.insert(owner, id.clone());
        }
        Ok(id)
    }

    /// The id of the anonymous cart whose token hashes to `token_hash`.
    pub async fn cart_of_token(&self, token_hash: &str) -> Result<Option<String>, CartError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM cart_carts WHERE token_hash = $1")
                .bind(token_hash.to_string())
                .fetch_optional(self.db.reader())
                .await?,
        )
    }

    /// `owner`'s cart, created when missing (a concurrent creation is reused).
    pub async fn owner_cart(&self, owner: UserId, now: Timestamp) -> Result<String, CartError> {
        if let Some(id) = self.cart_of_owner(owner).await? {
            return Ok(id);
        }
        let created = sqlx::query(
            "INSERT INTO cart_carts (id, owner, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(uuid::Uuid::now_v7().hyphenated().to_string())
        .bind(owner.to_db())
        .bind(now.as_millis())
        .execute(self.db.writer())
        .await;
        match created {
            Ok(_) => {}
            Err(e) if violation(&e).is_some() => {}
            Err(e) => return Err(e.into()),
        }
        self.cart_of_owner(owner)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the cart of {owner} vanished").into())
    }

    /// A new anonymous cart for a token with hash `token_hash`.
    pub async fn anonymous_cart(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<String, CartError> {
        let id = uuid::Uuid::now_v7().hyphenated().to_string();
        sqlx::query(
            "INSERT INTO cart_carts (id, token_hash, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(id.clone())
        .bind(token_hash.to_string())
        .bind(now.as_millis())
        .execute(self.db.writer())
        .await?;
        Ok(id)
    }

    /// The cart's lines, oldest first.
    pub async fn items(&self, cart: &str) -> Result<Vec<StoredItem>, CartError> {
        let rows = sqlx::query(
            "SELECT product_id, quantity FROM cart_items WHERE cart_id = $1 \
             ORDER BY added_at, product_id",
        )
        .bind(cart.to_string())
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredItem {
                    product_id: ProductId::from_db(&r.try_get::<String, _>(0)?)
                        .map_err(|_| anyhow::anyhow!("corrupt cart_items.product_id"))?,
                    quantity: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Adds `quantity` units of a product (to its line, if it has one).
    /// `CartError::QuantityLimit` when the line would exceed the limit.
    pub async fn add(
        &self,
        cart: &str,
        product: ProductId,
        quantity: i64,
        now: Timestamp,
    ) -> Result<(), CartError> {
        let mut tx = self.db.begin().await?;
        // Lock the cart, so concurrent adds count its lines one at a time.
        claim(&mut tx, cart, now).await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM cart_items WHERE cart_id = $1 AND product_id <> $2",
        )
        .bind(cart.to_string())
        .bind(product.to_db())
        .fetch_one(&mut *tx)
        .await?;
        if others >= MAX_LINES {
            return Err(CartError::Full);
        }
        let done = sqlx::query(
            "INSERT INTO cart_items (cart_id, product_id, quantity, added_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = cart_items.quantity + excluded.quantity \
             WHERE cart_items.quantity + excluded.quantity <= $5",
        )
        .bind(cart.to_string())
        .bind(product.to_db())
        .bind(quantity)
        .bind(now.as_millis())
        .bind(MAX_LINE_QUANTITY)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CartError::QuantityLimit);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets a line's quantity; `false` when the cart has no such line.
    pub async fn set_quantity(
        &self,
        cart: &str,
        product: ProductId,
        quantity: i64,
        now: Timestamp,
    ) -> Result<bool, CartError> {
        let done = sqlx::query(
            "UPDATE cart_items SET quantity = $1 WHERE cart_id = $2 AND product_id = $3",
        )
        .bind(quantity)
        .bind(cart.to_string())
        .bind(product.to_db())
        .execute(self.db.writer())
        .await?;
        self.touch(cart, now).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a line; `false` when the cart has no such line.
    pub async fn remove(
        &self,
        cart: &str,
        product: ProductId,
        now: Timestamp,
    ) -> Result<bool, CartError> {
        let done = sqlx::query("DELETE FROM cart_items WHERE cart_id = $1 AND product_id = $2")
            .bind(cart.to_string())
            .bind(product.to_db())
            .execute(self.db.writer())
            .await?;
        self.touch(cart, now).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the lines of `products` (those bought at a checkout), in one
    /// transaction; lines of other products stay.
    pub async fn remove_products(
        &self,
        cart: &str,
        products: &[ProductId],
        now: Timestamp,
    ) -> Result<(), CartError> {
        if products.is_empty() {
            return Ok(());
        }
        let mut q = agora_platform::db::SqlBuilder::new("DELETE FROM cart_items WHERE cart_id = ");
        q.bind(cart.to_string())?.push(" AND product_id IN (");
        q.push_list(products.iter(), |q, product| {
            q.bind(product.to_db())?;
            Ok(())
        })?;
        q.push(")");
        let mut tx = self.db.begin().await?;
        q.build().execute(&mut *tx).await?;
        sqlx::query("UPDATE cart_carts SET updated_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(cart.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes every line.
    pub async fn clear(&self, cart: &str, now: Timestamp) -> Result<(), CartError> {
        sqlx::query("DELETE FROM cart_items WHERE cart_id = $1")
            .bind(cart.to_string())
            .execute(self.db.writer())
            .await?;
        self.touch(cart, now).await
    }

    /// Moves every line of cart `from` into cart `into` (adding quantities, at
    /// most the line limit) and deletes `from`, in one transaction.
    pub async fn merge(&self, from: &str, into: &str, now: Timestamp) -> Result<(), CartError> {
        let mut tx = self.db.begin().await?;
        // Claim the anonymous cart: a concurrent merge of it waits here, then finds
        // it gone and adds nothing a second time.
        if claim(&mut tx, from, now).await.is_err() {
            tx.rollback().await?;
            return Ok(());
        }
        // SQLite needs the WHERE to read `ON CONFLICT` as the upsert's, not a join's.
        sqlx::query(
            "INSERT INTO cart_items (cart_id, product_id, quantity, added_at) \
             SELECT $1, product_id, quantity, added_at FROM cart_items WHERE cart_id = $2 \
             ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = CASE \
               WHEN cart_items.quantity + excluded.quantity > $3 THEN $3 \
               ELSE cart_items.quantity + excluded.quantity END",
        )
        .bind(into.to_string())
        .bind(from.to_string())
        .bind(MAX_LINE_QUANTITY)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM cart_carts WHERE id = $1")
            .bind(from.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE cart_carts SET updated_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(into.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes anonymous carts untouched since `before` (with their lines);
    /// returns how many.
    pub async fn delete_abandoned(&self, before: Timestamp) -> Result<u64, CartError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "DELETE FROM cart_items WHERE cart_id IN \
             (SELECT id FROM cart_carts WHERE token_hash IS NOT NULL AND updated_at < $1)",
        )
        .bind(before.as_millis())
        .execute(&mut *tx)
        .await?;
        let done =
            sqlx::query("DELETE FROM cart_carts WHERE token_hash IS NOT NULL AND updated_at < $1")
                .bind(before.as_millis())
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn touch(&self, cart: &str, now: Timestamp) -> Result<(), CartError> {
        sqlx::query("UPDATE cart_carts SET updated_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(cart.to_string())
            .execute(self.db.writer())
            .await?;
        Ok(())
    }
}

/// Locks a cart row for the rest of the transaction (and marks it touched);
/// `CartError::Gone` when it no longer exists.
async fn claim(
    tx: &mut agora_platform::db::WriteTx,
    cart: &str,
    now: Timestamp,
) -> Result<(), CartError> {
    let found: Option<String> =
        sqlx::query_scalar("UPDATE cart_carts SET updated_at = $1 WHERE id = $2 RETURNING id")
            .bind(now.as_millis())
            .bind(cart.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    found.map(drop).ok_or(CartError::Gone)
}
