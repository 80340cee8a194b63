//! The cart's operations: finding the caller's cart, changing its lines,
//! pricing it from the catalog, merging an anonymous cart at login, and the port.

use std::collections::HashMap;
use std::sync::Arc;

use agora_contracts::PortError;
use agora_contracts::cart::{CartLine, CartPort};
use agora_contracts::catalog::{CatalogPort, ProductSnapshot};
use agora_kernel::{Clock, Money, ProductId, UserId};
use agora_platform::auth::{random_secret, secret_hash};
use async_trait::async_trait;
use serde::Serialize;

use crate::error::CartError;
use crate::store::{CartStore, StoredItem};

/// Whose cart a request means.
#[derive(Debug, Clone)]
pub enum Holder {
    /// A signed-in customer, and the anonymous cart token they sent, if any (it is
    /// merged into their cart).
    Customer(UserId, Option<String>),
    /// An anonymous visitor, with the cart token they were given, if any.
    Visitor(Option<String>),
}

/// Whether a line can be bought now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    /// For sale: priced and counted in the subtotal.
    Available,
    /// The product exists but is not for sale now.
    Inactive,
    /// The product no longer exists.
    Deleted,
}

/// A cart line, priced from the catalog now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CartItem {
    /// The product.
    #[schema(value_type = String, example = "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub product_id: ProductId,
    /// Its SKU (absent when the product is deleted).
    pub sku: Option<String>,
    /// Its name (absent when the product is deleted).
    pub name: Option<String>,
    /// How many.
    pub quantity: i64,
    /// The catalog's price now (absent when the product is deleted).
    pub unit_price: Option<Money>,
    /// Unit price × quantity (absent when the product is deleted).
    pub line_total: Option<Money>,
    /// Whether it can be bought now; lines that cannot are kept, flagged.
    pub status: LineStatus,
}

/// A cart as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CartView {
    /// The lines, oldest first.
    pub items: Vec<CartItem>,
    /// The sum of the available lines, one entry per currency.
    pub subtotals: Vec<Money>,
    /// Units in the cart, all lines.
    pub item_count: i64,
    /// A new anonymous cart's token, present only in the answer that made it:
    /// send it back as `Cart-Token` (also in the `Cart-Token` response header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_token: Option<String>,
}

/// The cart module. Cheap to clone.
#[derive(Clone)]
pub struct Carts {
    store: CartStore,
    catalog: Arc<dyn CatalogPort>,
    clock: Arc<dyn Clock>,
}

impl Carts {
    /// The module over `store`, pricing with `catalog`.
    pub fn new(store: CartStore, catalog: Arc<dyn CatalogPort>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            catalog,
            clock,
        }
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &CartStore {
        &self.store
    }

    /// The holder's cart (empty when they have none).
    pub async fn view(&self, holder: &Holder) -> Result<CartView, CartError> {
        let cart = self.find(holder).await?;
        self.priced(cart.as_deref(), None).await
    }

    /// Adds units of a product that is for sale.
    pub async fn add(
        &self,
        holder: &Holder,
        product: ProductId,
        quantity: i64,
    ) -> Result<CartView, CartError> {
        let found = self.catalog.products_by_ids(&[product]).await?;
        if !found.iter().any(|p| p.active) {
            return Err(CartError::ProductUnavailable);
        }
        let (cart, token) = self.find_or_create(holder).await?;
        self.store
            .add(&cart, product, quantity, self.clock.now())
            .await?;
        self.priced(Some(&cart), token).await
    }

    /// Sets a line's quantity.
    pub async fn set_quantity(
        &self,
        holder: &Holder,
        product: ProductId,
        quantity: i64,
    ) -> Result<CartView, CartError> {
        let cart = self.find(holder).await?.ok_or(CartError::ItemNotFound)?;
        if !self
            .store
            .set_quantity(&cart, product, quantity, self.clock.now())
            .await?
        {
            return Err(CartError::ItemNotFound);
        }
        self.priced(Some(&cart), None).await
    }

    /// Removes a line.
    pub async fn remove(&self, holder: &Holder, product: ProductId) -> Result<CartView, CartError> {
        let cart = self.find(holder).await?.ok_or(CartError::ItemNotFound)?;
        if !self.store.remove(&cart, product, self.clock.now()).await? {
            return Err(CartError::ItemNotFound);
        }
        self.priced(Some(&cart), None).await
    }

    /// Empties the cart.
    pub async fn empty(&self, holder: &Holder) -> Result<CartView, CartError> {
        if let Some(cart) = self.find(holder).await? {
            self.store.clear(&cart, self.clock.now()).await?;
        }
        self.priced(None, None).await
    }

    /// Deletes anonymous carts untouched for `max_age`; returns how many.
    pub async fn delete_abandoned(&self, max_age: std::time::Duration) -> Result<u64, CartError> {
        let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let before =
            agora_kernel::Timestamp::from_millis(self.clock.now().as_millis().saturating_sub(age));
        let deleted = self.store.delete_abandoned(before).await?;
        if deleted > 0 {
            tracing::info!(deleted, "abandoned anonymous carts deleted");
        }
        Ok(deleted)
    }

    /// Runs [`Self::delete_abandoned`] every `every` until `shutdown`.
    pub async fn run_sweeper(
        self,
        every: std::time::Duration,
        max_age: std::time::Duration,
        shutdown: agora_platform::Shutdown,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.wait() => return,
            }
            if let Err(e) = self.delete_abandoned(max_age).await {
                tracing::warn!(error = %e, "deleting abandoned carts failed; retrying later");
            }
        }
    }

    /// The holder's cart id, if they have one; a customer's anonymous cart is
    /// merged into theirs first.
    async fn find(&self, holder: &Holder) -> Result<Option<String>, CartError> {
        match holder {
            Holder::Customer(user, token) => {
                if let Some(anonymous) = self.anonymous(token.as_deref()).await? {
                    let own = self.store.owner_cart(*user, self.clock.now()).await?;
                    self.store.merge(&anonymous, &own, self.clock.now()).await?;
                    tracing::debug!(user_id = %user, "anonymous cart merged");
                    return Ok(Some(own));
                }
                self.store.cart_of_owner(*user).await
            }
            Holder::Visitor(token) => self.anonymous(token.as_deref()).await,
        }
    }

    async fn anonymous(&self, token: Option<&str>) -> Result<Option<String>, CartError> {
        match token {
            Some(token) if token.starts_with(TOKEN_PREFIX) && token.len() <= 64 => {
                self.store.cart_of_token(&secret_hash(token)).await
            }
            _ => Ok(None),
        }
    }

    /// The holder's cart, made when missing; with the token of a new anonymous cart.
    async fn find_or_create(&self, holder: &Holder) -> Result<(String, Option<String>), CartError> {
        if let Some(cart) = self.find(holder).await? {
            return Ok((cart, None));
        }
        let now = self.clock.now();
        match holder {
            Holder::Customer(user, _) => Ok((self.store.owner_cart(*user, now).await?, None)),
            Holder::Visitor(_) => {
                let token = random_secret(TOKEN_PREFIX)?;
                let cart = self.store.anonymous_cart(&secret_hash(&token), now).await?;
                Ok((cart, Some(token)))
            }
        }
    }

    async fn priced(
        &self,
        cart: Option<&str>,
        cart_token: Option<String>,
    ) -> Result<CartView, CartError> {
        let items = match cart {
            Some(cart) => self.store.items(cart).await?,
            None => Vec::new(),
        };
        let ids: Vec<ProductId> = items.iter().map(|i| i.product_id).collect();
        let products: HashMap<ProductId, ProductSnapshot> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.catalog
                .products_by_ids(&ids)
                .await?
                .into_iter()
                .map(|p| (p.id, p))
                .collect()
        };
        let mut subtotals: Vec<Money> = Vec::new();
        let mut lines = Vec::with_capacity(items.len());
        for StoredItem {
            product_id,
            quantity,
        } in items
        {
            let product = products.get(&product_id);
            let status = match product {
                Some(p) if p.active => LineStatus::Available,
                Some(_) => LineStatus::Inactive,
                None => LineStatus::Deleted,
            };
            let line_total = product
                .map(|p| p.unit_price.checked_mul(quantity))
                .transpose()
                .map_err(|e| anyhow::anyhow!("line total: {e}"))?;
            if let (LineStatus::Available, Some(total)) = (status, line_total) {
                match subtotals
                    .iter_mut()
                    .find(|s| s.currency() == total.currency())
                {
                    Some(sum) => {
                        *sum = sum
                            .checked_add(total)
                            .map_err(|e| anyhow::anyhow!("subtotal: {e}"))?;
                    }
                    None => subtotals.push(total),
                }
            }
            lines.push(CartItem {
                product_id,
                sku: product.map(|p| p.sku.clone()),
                name: product.map(|p| p.name.clone()),
                quantity,
                unit_price: product.map(|p| p.unit_price),
                line_total,
                status,
            });
        }
        Ok(CartView {
            item_count: lines.iter().map(|l| l.quantity).sum(),
            items: lines,
            subtotals,
            cart_token,
        })
    }
}

/// The prefix of anonymous cart tokens.
pub const TOKEN_PREFIX: &str = "crt_";

#[async_trait]
impl CartPort for Carts {
    async fn lines(&self, owner: UserId) -> Result<Vec<CartLine>, PortError> {
        let Some(cart) = self
            .store
            .cart_of_owner(owner)
            .await
            .map_err(PortError::from)?
        else {
            return Ok(Vec::new());
        };
        let items = self.store.items(&cart).await.map_err(PortError::from)?;
        Ok(items
            .into_iter()
            .map(|i| CartLine {
                product_id: i.product_id,
                quantity: i.quantity,
            })
            .collect())
    }

    async fn remove_products(
        &self,
        owner: UserId,
        products: &[ProductId],
    ) -> Result<(), PortError> {
        if let Some(cart) = self
            .store
            .cart_of_owner(owner)
            .await
            .map_err(PortError::from)?
        {
            self.store
                .remove_products(&cart, products, self.clock.now())
                .await
                .map_err(PortError::from)?;
        }
        Ok(())
    }

    async fn clear(&self, owner: UserId) -> Result<(), PortError> {
        if let Some(cart) = self
            .store
            .cart_of_owner(owner)
            .await
            .map_err(PortError::from)?
        {
            self.store
                .clear(&cart, self.clock.now())
                .await
                .map_err(PortError::from)?;
        }
        Ok(())
    }
}
