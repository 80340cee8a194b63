//! The inventory's operations: staff changes to stock, reservations for other
//! modules (the port), and the sweeper that releases lapsed reservations.

use std::sync::Arc;
use std::time::Duration;

use agora_contracts::catalog::CatalogPort;
use agora_contracts::inventory::{
    InventoryError, InventoryPort, Reservation, ReservationStatus, StockLine,
};
use agora_kernel::{Clock, ProductId, Timestamp};
use agora_platform::Shutdown;
use async_trait::async_trait;

use crate::error::StockError;
use crate::store::{Change, InventoryStore, Movement, MovementCursor, StockLevel};

/// The largest quantity of one line, and of a staff change.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// The longest reservation key.
pub const MAX_KEY_LEN: usize = 200;
/// Lapsed reservations released per sweep.
const SWEEP_BATCH: i64 = 100;

/// The inventory module. Cheap to clone.
#[derive(Clone)]
pub struct Inventory {
    store: InventoryStore,
    catalog: Arc<dyn CatalogPort>,
    clock: Arc<dyn Clock>,
}

impl Inventory {
    /// The module over `store`; products are checked with `catalog`.
    pub fn new(
        store: InventoryStore,
        catalog: Arc<dyn CatalogPort>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            catalog,
            clock,
        }
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &InventoryStore {
        &self.store
    }

    /// A product's stock.
    pub async fn stock(&self, product_id: ProductId) -> Result<StockLevel, StockError> {
        self.ensure_product(product_id).await?;
        self.store.stock(product_id).await
    }

    /// Sets or adjusts a product's stock, recording who and why in the ledger.
    pub async fn change(
        &self,
        product_id: ProductId,
        change: Change,
        reason: &str,
        actor: &str,
    ) -> Result<StockLevel, StockError> {
        self.ensure_product(product_id).await?;
        let stock = self
            .store
            .change(product_id, change, reason, actor, self.clock.now())
            .await?;
        tracing::info!(%product_id, ?change, on_hand = stock.on_hand, actor, "stock changed");
        Ok(stock)
    }

    /// A page of a product's ledger, newest first.
    pub async fn movements(
        &self,
        product_id: ProductId,
        after: Option<MovementCursor>,
        limit: agora_kernel::Limit,
    ) -> Result<agora_kernel::Page<Movement>, StockError> {
        self.ensure_product(product_id).await?;
        let rows = self
            .store
            .movements(product_id, after.as_ref(), i64::from(limit.get()) + 1)
            .await?;
        let page = agora_kernel::Page::from_overfetch(rows, limit, |(_, c)| c.clone());
        Ok(agora_kernel::Page {
            items: page.items.into_iter().map(|(m, _)| m).collect(),
            next_cursor: page.next_cursor,
        })
    }

    async fn ensure_product(&self, product_id: ProductId) -> Result<(), StockError> {
        let found = self.catalog.products_by_ids(&[product_id]).await?;
        if found.is_empty() {
            return Err(StockError::UnknownProduct);
        }
        Ok(())
    }

    /// Releases held reservations that lapsed by now; returns how many.
    pub async fn release_lapsed(&self) -> Result<usize, StockError> {
        let now = self.clock.now();
        let mut released = 0;
        for key in self.store.lapsed(now, SWEEP_BATCH).await? {
            // One failing reservation must not hold back the others.
            match self
                .store
                .settle(&key, ReservationStatus::Released, now)
                .await
            {
                Ok(Some(_)) => released += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!(key, error = %e, "releasing a lapsed reservation failed"),
            }
        }
        if released > 0 {
            tracing::info!(released, "lapsed reservations released");
        }
        Ok(released)
    }

    /// Runs [`Self::release_lapsed`] every `every` until `shutdown`.
    pub async fn run_sweeper(self, every: Duration, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.wait() => return,
            }
            if let Err(e) = self.release_lapsed().await {
                tracing::warn!(error = %e, "releasing lapsed reservations failed; retrying later");
            }
        }
    }

    async fn do_reserve(
        &self,
        key: &str,
        lines: &[StockLine],
        expires_at: Timestamp,
    ) -> Result<Reservation, StockError> {
        check_key(key)?;
        let lines = normalise(lines)?;
        if expires_at <= self.clock.now() {
            return Err(StockError::InvalidLines(
                "expires_at must be in the future".into(),
            ));
        }
        // No read first: the key's insert finds a repeat (then it is read).
        match self
            .store
            .reserve(key, &lines, expires_at, self.clock.now())
            .await?
        {
            Some(reservation) => Ok(reservation),
            // A call with the same key came first: answer with its reservation.
            None => match self.store.reservation(key).await? {
                Some(existing) => same_lines(existing, &lines),
                None => Err(anyhow::anyhow!("reservation {key} vanished").into()),
            },
        }
    }

    async fn do_settle(&self, key: &str, to: ReservationStatus) -> Result<Reservation, StockError> {
        check_key(key)?;
        let now = self.clock.now();
        if let Some(settled) = self.store.settle(key, to, now).await? {
            return Ok(settled);
        }
        let current = self
            .store
            .reservation(key)
            .await?
            .ok_or(StockError::ReservationNotFound)?;
        if current.status == to {
            return Ok(current);
        }
        match (current.status, to) {
            // Held but lapsed, asked to commit: it is released, as the sweeper would.
            (ReservationStatus::Held, ReservationStatus::Committed) => {
                self.store
                    .settle(key, ReservationStatus::Released, now)
                    .await?;
                Err(StockError::WrongState(ReservationStatus::Released))
            }
            (status, _) => Err(StockError::WrongState(status)),
        }
    }
}

fn check_key(key: &str) -> Result<(), StockError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StockError::InvalidLines(format!(
            "the key must have 1 to {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

/// Lines sorted by product, each product once, quantities in range.
fn normalise(lines: &[StockLine]) -> Result<Vec<StockLine>, StockError> {
    if lines.is_empty() {
        return Err(StockError::InvalidLines("no line".into()));
    }
    let mut sorted = lines.to_vec();
    sorted.sort_by_key(|l| l.product_id);
    for pair in sorted.windows(2) {
        if pair[0].product_id == pair[1].product_id {
            return Err(StockError::InvalidLines(format!(
                "{} appears twice",
                pair[0].product_id
            )));
        }
    }
    if let Some(bad) = sorted
        .iter()
        .find(|l| !(1..=MAX_QUANTITY).contains(&l.quantity))
    {
        return Err(StockError::InvalidLines(format!(
            "the quantity of {} must be between 1 and {MAX_QUANTITY}",
            bad.product_id
        )));
    }
    Ok(sorted)
}

/// The answer to a repeated reserve: the stored reservation if the lines match
/// and its units are (or were sold) held; a released one is no success.
fn same_lines(existing: Reservation, lines: &[StockLine]) -> Result<Reservation, StockError> {
    if existing.lines != lines {
        return Err(StockError::KeyReused);
    }
    if existing.status == ReservationStatus::Released {
        return Err(StockError::WrongState(ReservationStatus::Released));
    }
    Ok(existing)
}

#[async_trait]
impl InventoryPort for Inventory {
    async fn reserve(
        &self,
        key: &str,
        lines: &[StockLine],
        expires_at: Timestamp,
    ) -> Result<Reservation, InventoryError> {
        Ok(self.do_reserve(key, lines, expires_at).await?)
    }

    async fn commit(&self, key: &str) -> Result<Reservation, InventoryError> {
        Ok(self.do_settle(key, ReservationStatus::Committed).await?)
    }

    async fn release(&self, key: &str) -> Result<Reservation, InventoryError> {
        Ok(self.do_settle(key, ReservationStatus::Released).await?)
    }
}
