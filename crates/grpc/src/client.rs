//! Clients of the port services: each implements its port trait over gRPC.
//!
//! A module's service may run as several replicas. [`Replicas`] holds one
//! lazily connected channel (HTTP/2, reconnecting by itself) to each, and
//! picks them in turn. A call that fails on the way (refused, reset, the
//! replica gone, no answer within its share of the deadline) is made again on
//! the next replica, and the failing replica is passed over for a while
//! ([`RemoteSettings::eject_for`]); it is re-admitted when that time is up, or
//! as soon as a call to it succeeds. A replica that answers `UNAVAILABLE`
//! itself is not passed over; one other replica is tried. Repeating a call is
//! safe because every port call is idempotent: reads by nature, writes by the
//! caller's key (see each port's documentation).

use std::error::Error as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agora_contracts::PortError;
use agora_contracts::cart::{CartLine, CartPort};
use agora_contracts::catalog::{CatalogPort, ProductSnapshot, Rendition};
use agora_contracts::identity::{AccountsPort, Contact};
use agora_contracts::inventory::{InventoryError, InventoryPort, Reservation, StockLine};
use agora_contracts::orders::{OrderRecord, OrdersPort};
use agora_contracts::payments::{Payment, PaymentError, PaymentsPort};
use agora_kernel::{ImageId, Money, OrderId, PaymentId, ProductId, Timestamp, UserId};
use async_trait::async_trait;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::convert::{Malformed, decode_all, encode_all, payment_result, reservation_result};
use crate::metadata::outgoing;
use crate::pb;

/// How a client calls a module's replicas.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// How long a call may take in all, retries included; the callee learns it
    /// as the call's deadline (`grpc-timeout`).
    pub deadline: Duration,
    /// How long connecting to a replica may take.
    pub connect_timeout: Duration,
    /// How long a replica whose call failed in transport is passed over.
    pub eject_for: Duration,
    /// The token every call carries (`services.token`), which the replicas
    /// check; `None` sends none.
    pub token: Option<String>,
}

impl Default for RemoteSettings {
    /// A 10 s deadline (a payment provider's latency included), 1 s to
    /// connect, 5 s out after a failure.
    fn default() -> Self {
        RemoteSettings {
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            eject_for: Duration::from_secs(5),
            token: None,
        }
    }
}

/// Why a module's addresses cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReplicasError {
    /// No address was given.
    #[error("no address given for {0}")]
    NoAddress(&'static str),
    /// The token cannot travel in metadata (it must be printable ASCII).
    #[error("the token must be printable ASCII")]
    InvalidToken,
    /// An address is not an `http://host:port` URI.
    #[error("`{address}` is not a usable address for {module}: {reason}")]
    InvalidAddress {
        /// The module.
        module: &'static str,
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The replicas of one module's service, and how to call them.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    module: &'static str,
    replicas: Vec<Replica>,
    next: AtomicUsize,
    settings: RemoteSettings,
    /// `Bearer <token>`, ready to send.
    authorization: Option<AsciiMetadataValue>,
}

struct Replica {
    channel: Channel,
    /// Until when the replica is passed over, after a failed call.
    ejected_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn ejected(&self, now: Instant) -> bool {
        lock(&self.ejected_until).is_some_and(|until| until > now)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is a plain instant: a panic elsewhere cannot leave it
    // half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("module", &self.inner.module)
            .field("replicas", &self.inner.replicas.len())
            .finish()
    }
}

impl Replicas {
    /// The replicas of `module`'s service at `addresses` (`http://host:port`).
    /// Nothing is connected yet: each replica is connected at its first call,
    /// and again after its connection breaks. Must be called inside a Tokio
    /// runtime.
    pub fn new(
        module: &'static str,
        addresses: &[String],
        settings: RemoteSettings,
    ) -> Result<Replicas, ReplicasError> {
        if addresses.is_empty() {
            return Err(ReplicasError::NoAddress(module));
        }
        let authorization = match &settings.token {
            Some(token) => Some(
                AsciiMetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| ReplicasError::InvalidToken)?,
            ),
            None => None,
        };
        let replicas = addresses
            .iter()
            .map(|address| {
                let invalid = |reason: String| ReplicasError::InvalidAddress {
                    module,
                    address: address.clone(),
                    reason,
                };
                if !address.starts_with("http://") {
                    return Err(invalid("it must start with http://".into()));
                }
                let endpoint = Endpoint::from_shared(address.clone())
                    .map_err(|e| invalid(e.to_string()))?
                    .connect_timeout(settings.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10));
                Ok(Replica {
                    channel: endpoint.connect_lazy(),
                    ejected_until: Mutex::new(None),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Replicas {
            inner: Arc::new(Inner {
                module,
                replicas,
                next: AtomicUsize::new(0),
                settings,
                authorization,
            }),
        })
    }

    /// The module these replicas serve.
    pub fn module(&self) -> &'static str {
        self.inner.module
    }

    /// The order in which to try the replicas for one call: from the next in
    /// turn, those not passed over first.
    fn order(&self) -> Vec<&Replica> {
        let replicas = &self.inner.replicas;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let turn = (0..replicas.len()).map(|i| &replicas[(start + i) % replicas.len()]);
        let (ejected, admitted): (Vec<_>, Vec<_>) = turn.partition(|r| r.ejected(now));
        admitted.into_iter().chain(ejected).collect()
    }

    /// Sends `message` by `call` to a replica; when the call fails on the
    /// way (refused, reset, no answer in its share of the deadline), the
    /// replica is passed over for a while and the next one is tried. A replica
    /// that answers `UNAVAILABLE` itself (its own dependency is down) is not
    /// passed over, and only one other replica is tried: its trouble is
    /// likely shared, and trying every replica would multiply the load on it.
    async fn call<T, R, F, Fut>(&self, message: T, call: F) -> Result<R, PortError>
    where
        T: Clone,
        F: Fn(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let settings = &self.inner.settings;
        let module = self.inner.module;
        let started = Instant::now();
        let order = self.order();
        let mut last: Option<Status> = None;
        let mut message = Some(message);
        let mut unavailable_answers = 0;
        for (i, replica) in order.iter().enumerate() {
            let left = settings.deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let remaining = u32::try_from(order.len() - i).unwrap_or(u32::MAX);
            // Each try gets its share of what is left, so that a replica that
            // hangs leaves time for the next; the last gets all of it.
            let share = if remaining > 1 {
                left / remaining
            } else {
                left
            };
            let message = if remaining == 1 {
                message.take()
            } else {
                message.clone()
            };
            let Some(message) = message else { break };
            let request = outgoing(message, share, self.inner.authorization.as_ref());
            match call(replica.channel.clone(), request).await {
                Ok(answer) => {
                    *lock(&replica.ejected_until) = None;
                    return Ok(answer.into_inner());
                }
                Err(status) if failed_on_the_way(&status) => {
                    *lock(&replica.ejected_until) = Some(Instant::now() + settings.eject_for);
                    tracing::debug!(module, code = ?status.code(), message = status.message(), "replica failed; trying the next");
                    last = Some(status);
                }
                Err(status) if status.code() == Code::Unavailable && unavailable_answers == 0 => {
                    unavailable_answers += 1;
                    last = Some(status);
                }
                Err(status) => return Err(port_error(module, &status)),
            }
        }
        Err(match last {
            Some(status) if !is_timeout(&status) => port_error(module, &status),
            _ => PortError::Unavailable {
                module,
                reason: format!(
                    "no answer within the deadline ({} ms)",
                    settings.deadline.as_millis()
                ),
            },
        })
    }

    fn malformed(&self, m: Malformed) -> PortError {
        m.in_answer(self.inner.module)
    }
}

/// Whether a call failed on the way to or from the replica (refused, reset,
/// timed out here), rather than being answered: a status made on this side
/// from an error carries that error as its source; one the replica sent
/// carries none.
fn failed_on_the_way(status: &Status) -> bool {
    status.source().is_some()
}

/// Whether the call ran out of time (tonic's own timeout is `CANCELLED`).
fn is_timeout(status: &Status) -> bool {
    matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
}

/// A failed call as the port reports it.
fn port_error(module: &'static str, status: &Status) -> PortError {
    let reason = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            PortError::Unavailable { module, reason }
        }
        _ if failed_on_the_way(status) => PortError::Unavailable { module, reason },
        _ => PortError::Internal { module, reason },
    }
}

macro_rules! client {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(Replicas);

        impl $name {
            /// A client of the service at `replicas`.
            pub fn new(replicas: Replicas) -> $name {
                $name(replicas)
            }
        }
    };
}

client!(
    /// The catalog's port, over gRPC.
    CatalogClient
);
client!(
    /// The cart's port, over gRPC.
    CartClient
);
client!(
    /// The inventory's port, over gRPC.
    InventoryClient
);
client!(
    /// The payments' port, over gRPC.
    PaymentsClient
);
client!(
    /// The orders' port, over gRPC.
    OrdersClient
);
client!(
    /// The identity module's port, over gRPC.
    AccountsClient
);

fn ids<T: ToString>(ids: &[T]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

impl CatalogClient {
    async fn products(
        &self,
        ids_: &[ProductId],
        current: bool,
    ) -> Result<Vec<ProductSnapshot>, PortError> {
        let message = pb::ProductsByIdsRequest {
            ids: ids(ids_),
            current,
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::catalog_client::CatalogClient::new(channel)
                    .products_by_ids(request)
                    .await
            })
            .await?;
        decode_all(answer.products).map_err(|m| self.0.malformed(m))
    }
}

#[async_trait]
impl CatalogPort for CatalogClient {
    async fn products_by_ids(&self, ids: &[ProductId]) -> Result<Vec<ProductSnapshot>, PortError> {
        self.products(ids, false).await
    }

    async fn current_products_by_ids(
        &self,
        ids: &[ProductId],
    ) -> Result<Vec<ProductSnapshot>, PortError> {
        self.products(ids, true).await
    }

    async fn attach_renditions(
        &self,
        image: ImageId,
        renditions: &[Rendition],
    ) -> Result<bool, PortError> {
        let message = pb::AttachRenditionsRequest {
            image_id: image.to_string(),
            renditions: encode_all(renditions.iter().cloned()),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::catalog_client::CatalogClient::new(channel)
                    .attach_renditions(request)
                    .await
            })
            .await?;
        Ok(answer.attached)
    }
}

#[async_trait]
impl CartPort for CartClient {
    async fn lines(&self, owner: UserId) -> Result<Vec<CartLine>, PortError> {
        let message = pb::CartOwner {
            user_id: owner.to_string(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::cart_client::CartClient::new(channel)
                    .lines(request)
                    .await
            })
            .await?;
        decode_all(answer.lines).map_err(|m| self.0.malformed(m))
    }

    async fn remove_products(
        &self,
        owner: UserId,
        products: &[ProductId],
    ) -> Result<(), PortError> {
        let message = pb::RemoveProductsRequest {
            user_id: owner.to_string(),
            product_ids: ids(products),
        };
        self.0
            .call(message, |channel, request| async move {
                pb::cart_client::CartClient::new(channel)
                    .remove_products(request)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn clear(&self, owner: UserId) -> Result<(), PortError> {
        let message = pb::CartOwner {
            user_id: owner.to_string(),
        };
        self.0
            .call(message, |channel, request| async move {
                pb::cart_client::CartClient::new(channel)
                    .clear(request)
                    .await
            })
            .await?;
        Ok(())
    }
}

impl InventoryClient {
    fn settle(
        &self,
        answer: Result<pb::ReservationOutcome, PortError>,
    ) -> Result<Reservation, InventoryError> {
        reservation_result(answer?).map_err(|m| self.0.malformed(m))?
    }

    async fn keyed(&self, key: &str, commit: bool) -> Result<Reservation, InventoryError> {
        let message = pb::ReservationKey {
            key: key.to_owned(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                let mut client = pb::inventory_client::InventoryClient::new(channel);
                if commit {
                    client.commit(request).await
                } else {
                    client.release(request).await
                }
            })
            .await;
        self.settle(answer)
    }
}

#[async_trait]
impl InventoryPort for InventoryClient {
    async fn reserve(
        &self,
        key: &str,
        lines: &[StockLine],
        expires_at: Timestamp,
    ) -> Result<Reservation, InventoryError> {
        let message = pb::ReserveRequest {
            key: key.to_owned(),
            lines: encode_all(lines.iter().cloned()),
            expires_at_ms: expires_at.as_millis(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::inventory_client::InventoryClient::new(channel)
                    .reserve(request)
                    .await
            })
            .await;
        self.settle(answer)
    }

    async fn commit(&self, key: &str) -> Result<Reservation, InventoryError> {
        self.keyed(key, true).await
    }

    async fn release(&self, key: &str) -> Result<Reservation, InventoryError> {
        self.keyed(key, false).await
    }
}

/// Which keyed call on a payment.
#[derive(Clone, Copy)]
enum PaymentCall {
    Capture,
    Cancel,
}

impl PaymentsClient {
    fn settle(
        &self,
        answer: Result<pb::PaymentOutcome, PortError>,
    ) -> Result<Payment, PaymentError> {
        payment_result(answer?).map_err(|m| self.0.malformed(m))?
    }

    async fn keyed(
        &self,
        key: &str,
        payment: PaymentId,
        which: PaymentCall,
    ) -> Result<Payment, PaymentError> {
        let message = pb::PaymentCall {
            key: key.to_owned(),
            payment_id: payment.to_string(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                let mut client = pb::payments_client::PaymentsClient::new(channel);
                match which {
                    PaymentCall::Capture => client.capture(request).await,
                    PaymentCall::Cancel => client.cancel(request).await,
                }
            })
            .await;
        self.settle(answer)
    }
}

#[async_trait]
impl PaymentsPort for PaymentsClient {
    async fn authorize(
        &self,
        key: &str,
        reference: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Payment, PaymentError> {
        let message = pb::AuthorizeRequest {
            key: key.to_owned(),
            reference: reference.to_owned(),
            payment_token: payment_token.to_owned(),
            amount: Some(amount.into()),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::payments_client::PaymentsClient::new(channel)
                    .authorize(request)
                    .await
            })
            .await;
        self.settle(answer)
    }

    async fn capture(&self, key: &str, payment: PaymentId) -> Result<Payment, PaymentError> {
        self.keyed(key, payment, PaymentCall::Capture).await
    }

    async fn cancel(&self, key: &str, payment: PaymentId) -> Result<Payment, PaymentError> {
        self.keyed(key, payment, PaymentCall::Cancel).await
    }

    async fn refund(
        &self,
        key: &str,
        payment: PaymentId,
        amount: Money,
        reason: &str,
    ) -> Result<Payment, PaymentError> {
        let message = pb::RefundRequest {
            key: key.to_owned(),
            payment_id: payment.to_string(),
            amount: Some(amount.into()),
            reason: reason.to_owned(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::payments_client::PaymentsClient::new(channel)
                    .refund(request)
                    .await
            })
            .await;
        self.settle(answer)
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>, PortError> {
        let message = pb::PaymentRef {
            payment_id: id.to_string(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::payments_client::PaymentsClient::new(channel)
                    .get_payment(request)
                    .await
            })
            .await?;
        answer
            .payment
            .map(Payment::try_from)
            .transpose()
            .map_err(|m| self.0.malformed(m))
    }
}

#[async_trait]
impl OrdersPort for OrdersClient {
    async fn order(&self, id: OrderId) -> Result<Option<OrderRecord>, PortError> {
        let message = pb::OrderRef {
            order_id: id.to_string(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::orders_client::OrdersClient::new(channel)
                    .get_order(request)
                    .await
            })
            .await?;
        answer
            .order
            .map(OrderRecord::try_from)
            .transpose()
            .map_err(|m| self.0.malformed(m))
    }

    async fn placed_between(
        &self,
        from: Timestamp,
        to: Timestamp,
        after: Option<(Timestamp, OrderId)>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, PortError> {
        let message = pb::PlacedBetweenRequest {
            from_ms: from.as_millis(),
            to_ms: to.as_millis(),
            after: after.map(|(at, id)| pb::OrderCursor {
                created_at_ms: at.as_millis(),
                order_id: id.to_string(),
            }),
            limit,
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::orders_client::OrdersClient::new(channel)
                    .placed_between(request)
                    .await
            })
            .await?;
        decode_all(answer.orders).map_err(|m| self.0.malformed(m))
    }
}

#[async_trait]
impl AccountsPort for AccountsClient {
    async fn contact(&self, user: UserId) -> Result<Option<Contact>, PortError> {
        let message = pb::AccountRef {
            user_id: user.to_string(),
        };
        let answer = self
            .0
            .call(message, |channel, request| async move {
                pb::accounts_client::AccountsClient::new(channel)
                    .contact(request)
                    .await
            })
            .await?;
        answer
            .contact
            .map(Contact::try_from)
            .transpose()
            .map_err(|m| self.0.malformed(m))
    }
}
