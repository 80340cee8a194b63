//! The port services: each answers its port's calls from an `Arc<dyn Port>`.
//!
//! A request that does not decode (an id that does not parse, a missing
//! field) is refused with `INVALID_ARGUMENT` before the port is called. The
//! port's refusals go back in the answer; a failed port call is
//! `UNAVAILABLE` or `INTERNAL` ([`crate::convert::port_status`]).

use std::sync::Arc;
use std::time::Duration;

use agora_contracts::cart::CartPort;
use agora_contracts::catalog::CatalogPort;
use agora_contracts::identity::AccountsPort;
use agora_contracts::inventory::InventoryPort;
use agora_contracts::orders::OrdersPort;
use agora_contracts::payments::PaymentsPort;
use agora_kernel::{ImageId, OrderId, PaymentId, ProductId, Timestamp, UserId};
use agora_platform::Shutdown;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::convert::{
    Malformed, decode_all, encode_all, money, parse, parse_all, payment_outcome, port_status,
    reservation_outcome,
};
use crate::metadata::{TokenCheck, serve};
use crate::pb;

/// The most ids a products call may name (as [`CatalogPort::products_by_ids`]).
const MAX_PRODUCT_IDS: usize = 1000;
/// The most items in any other list of a request (lines, product ids,
/// renditions): more than a cart or an image can have.
const MAX_LIST: usize = 1000;
/// How long a call that carries no deadline may run.
pub const MAX_CALL: Duration = Duration::from_secs(60);
/// The most calls one connection carries at once.
pub const MAX_STREAMS: u32 = 256;

/// Refuses a list longer than [`MAX_LIST`].
fn bounded<T>(field: &'static str, items: &[T]) -> Result<(), Status> {
    if items.len() > MAX_LIST {
        return Err(Malformed::new(field, format_args!("at most {MAX_LIST} items")).into());
    }
    Ok(())
}

/// Adds a port's service to a [`PortServer`], remembering its name for the
/// health service.
macro_rules! add {
    ($server:ident, $($stub:ident)::+, $service:expr) => {{
        let mut server = $server;
        let service = $($stub)::+::with_interceptor($service, server.token.clone());
        server.names.push(name_of(&service));
        server.routes.add_service(service);
        server
    }};
}

fn name_of<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// A gRPC server for the ports of the modules that run in this process, with
/// the standard health service reporting each of them `SERVING`.
pub struct PortServer {
    routes: tonic::service::RoutesBuilder,
    names: Vec<&'static str>,
    token: TokenCheck,
}

impl PortServer {
    /// A server with no port yet, whose ports accept only calls that carry
    /// `token` (`services.token`) when one is given.
    pub fn new(token: Option<&str>) -> PortServer {
        PortServer {
            routes: Routes::builder(),
            names: Vec::new(),
            token: TokenCheck::new(token),
        }
    }

    /// Serves the catalog's port.
    pub fn catalog(self, port: Arc<dyn CatalogPort>) -> PortServer {
        add!(
            self,
            pb::catalog_server::CatalogServer,
            CatalogService(port)
        )
    }

    /// Serves the cart's port.
    pub fn cart(self, port: Arc<dyn CartPort>) -> PortServer {
        add!(self, pb::cart_server::CartServer, CartService(port))
    }

    /// Serves the inventory's port.
    pub fn inventory(self, port: Arc<dyn InventoryPort>) -> PortServer {
        add!(
            self,
            pb::inventory_server::InventoryServer,
            InventoryService(port)
        )
    }

    /// Serves the payments' port.
    pub fn payments(self, port: Arc<dyn PaymentsPort>) -> PortServer {
        add!(
            self,
            pb::payments_server::PaymentsServer,
            PaymentsService(port)
        )
    }

    /// Serves the orders' port.
    pub fn orders(self, port: Arc<dyn OrdersPort>) -> PortServer {
        add!(self, pb::orders_server::OrdersServer, OrdersService(port))
    }

    /// Serves the identity module's port.
    pub fn accounts(self, port: Arc<dyn AccountsPort>) -> PortServer {
        add!(
            self,
            pb::accounts_server::AccountsServer,
            AccountsService(port)
        )
    }

    /// The full names of the services added (`agora.v1.Catalog`, …).
    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Serves on `listener` until `shutdown` fires, then gives the calls in
    /// flight `grace` to finish. The health service says `SERVING` for every
    /// port (and for the server as a whole, the empty name) while it runs, and
    /// `NOT_SERVING` once shutdown has begun.
    ///
    /// Limits: a call without a deadline gets [`MAX_CALL`]; a connection
    /// carries at most [`MAX_STREAMS`] calls at once; a message is at most
    /// tonic's 4 MiB.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        set_all(&reporter, &self.names, ServingStatus::Serving).await;
        let mut routes = self.routes;
        routes.add_service(health);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let names = self.names;
        let stopping = shutdown.clone();
        let server = tonic::transport::Server::builder()
            .timeout(MAX_CALL)
            .max_concurrent_streams(Some(MAX_STREAMS))
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, async move {
                stopping.wait().await;
                set_all(&reporter, &names, ServingStatus::NotServing).await;
            });
        tokio::pin!(server);
        tokio::select! {
            outcome = &mut server => return Ok(outcome?),
            () = shutdown.wait() => {}
        }
        match tokio::time::timeout(grace, server).await {
            Ok(outcome) => Ok(outcome?),
            Err(_) => {
                tracing::warn!("gRPC calls in flight did not finish in time; closing them");
                Ok(())
            }
        }
    }
}

async fn set_all(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

struct CatalogService(Arc<dyn CatalogPort>);

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn products_by_ids(
        &self,
        request: Request<pb::ProductsByIdsRequest>,
    ) -> Result<Response<pb::ProductsByIdsResponse>, Status> {
        serve("Catalog/ProductsByIds", request, |m| async move {
            if m.ids.len() > MAX_PRODUCT_IDS {
                return Err(Status::invalid_argument(format!(
                    "`ids`: at most {MAX_PRODUCT_IDS} a call"
                )));
            }
            let ids: Vec<ProductId> = parse_all("ids", &m.ids)?;
            let products = if m.current {
                self.0.current_products_by_ids(&ids).await
            } else {
                self.0.products_by_ids(&ids).await
            };
            Ok(pb::ProductsByIdsResponse {
                products: encode_all(products.map_err(port_status)?),
            })
        })
        .await
    }

    async fn attach_renditions(
        &self,
        request: Request<pb::AttachRenditionsRequest>,
    ) -> Result<Response<pb::AttachRenditionsResponse>, Status> {
        serve("Catalog/AttachRenditions", request, |m| async move {
            let image: ImageId = parse("image_id", &m.image_id)?;
            bounded("renditions", &m.renditions)?;
            let renditions = decode_all(m.renditions)?;
            let attached = self
                .0
                .attach_renditions(image, &renditions)
                .await
                .map_err(port_status)?;
            Ok(pb::AttachRenditionsResponse { attached })
        })
        .await
    }
}

struct CartService(Arc<dyn CartPort>);

#[tonic::async_trait]
impl pb::cart_server::Cart for CartService {
    async fn lines(
        &self,
        request: Request<pb::CartOwner>,
    ) -> Result<Response<pb::CartLines>, Status> {
        serve("Cart/Lines", request, |m| async move {
            let owner: UserId = parse("user_id", &m.user_id)?;
            let lines = self.0.lines(owner).await.map_err(port_status)?;
            Ok(pb::CartLines {
                lines: encode_all(lines),
            })
        })
        .await
    }

    async fn remove_products(
        &self,
        request: Request<pb::RemoveProductsRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        serve("Cart/RemoveProducts", request, |m| async move {
            let owner: UserId = parse("user_id", &m.user_id)?;
            bounded("product_ids", &m.product_ids)?;
            let products: Vec<ProductId> = parse_all("product_ids", &m.product_ids)?;
            self.0
                .remove_products(owner, &products)
                .await
                .map_err(port_status)?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn clear(&self, request: Request<pb::CartOwner>) -> Result<Response<pb::Empty>, Status> {
        serve("Cart/Clear", request, |m| async move {
            let owner: UserId = parse("user_id", &m.user_id)?;
            self.0.clear(owner).await.map_err(port_status)?;
            Ok(pb::Empty {})
        })
        .await
    }
}

struct InventoryService(Arc<dyn InventoryPort>);

#[tonic::async_trait]
impl pb::inventory_server::Inventory for InventoryService {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReservationOutcome>, Status> {
        serve("Inventory/Reserve", request, |m| async move {
            bounded("lines", &m.lines)?;
            let lines = decode_all(m.lines)?;
            let expires_at = Timestamp::from_millis(m.expires_at_ms);
            reservation_outcome(self.0.reserve(&m.key, &lines, expires_at).await)
        })
        .await
    }

    async fn commit(
        &self,
        request: Request<pb::ReservationKey>,
    ) -> Result<Response<pb::ReservationOutcome>, Status> {
        serve("Inventory/Commit", request, |m| async move {
            reservation_outcome(self.0.commit(&m.key).await)
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReservationKey>,
    ) -> Result<Response<pb::ReservationOutcome>, Status> {
        serve("Inventory/Release", request, |m| async move {
            reservation_outcome(self.0.release(&m.key).await)
        })
        .await
    }
}

struct PaymentsService(Arc<dyn PaymentsPort>);

#[tonic::async_trait]
impl pb::payments_server::Payments for PaymentsService {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::PaymentOutcome>, Status> {
        serve("Payments/Authorize", request, |m| async move {
            let amount = money("amount", m.amount)?;
            payment_outcome(
                self.0
                    .authorize(&m.key, &m.reference, &m.payment_token, amount)
                    .await,
            )
        })
        .await
    }

    async fn capture(
        &self,
        request: Request<pb::PaymentCall>,
    ) -> Result<Response<pb::PaymentOutcome>, Status> {
        serve("Payments/Capture", request, |m| async move {
            let payment: PaymentId = parse("payment_id", &m.payment_id)?;
            payment_outcome(self.0.capture(&m.key, payment).await)
        })
        .await
    }

    async fn cancel(
        &self,
        request: Request<pb::PaymentCall>,
    ) -> Result<Response<pb::PaymentOutcome>, Status> {
        serve("Payments/Cancel", request, |m| async move {
            let payment: PaymentId = parse("payment_id", &m.payment_id)?;
            payment_outcome(self.0.cancel(&m.key, payment).await)
        })
        .await
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::PaymentOutcome>, Status> {
        serve("Payments/Refund", request, |m| async move {
            let payment: PaymentId = parse("payment_id", &m.payment_id)?;
            let amount = money("amount", m.amount)?;
            payment_outcome(self.0.refund(&m.key, payment, amount, &m.reason).await)
        })
        .await
    }

    async fn get_payment(
        &self,
        request: Request<pb::PaymentRef>,
    ) -> Result<Response<pb::PaymentLookup>, Status> {
        serve("Payments/GetPayment", request, |m| async move {
            let payment: PaymentId = parse("payment_id", &m.payment_id)?;
            let payment = self.0.payment(payment).await.map_err(port_status)?;
            Ok(pb::PaymentLookup {
                payment: payment.map(Into::into),
            })
        })
        .await
    }
}

struct OrdersService(Arc<dyn OrdersPort>);

#[tonic::async_trait]
impl pb::orders_server::Orders for OrdersService {
    async fn get_order(
        &self,
        request: Request<pb::OrderRef>,
    ) -> Result<Response<pb::OrderLookup>, Status> {
        serve("Orders/GetOrder", request, |m| async move {
            let id: OrderId = parse("order_id", &m.order_id)?;
            let order = self.0.order(id).await.map_err(port_status)?;
            Ok(pb::OrderLookup {
                order: order.map(Into::into),
            })
        })
        .await
    }

    async fn placed_between(
        &self,
        request: Request<pb::PlacedBetweenRequest>,
    ) -> Result<Response<pb::OrderPage>, Status> {
        serve("Orders/PlacedBetween", request, |m| async move {
            // The port bounds the page itself (to 1..=500), as in process.
            let after = match m.after {
                Some(c) => Some((
                    Timestamp::from_millis(c.created_at_ms),
                    parse::<OrderId>("after.order_id", &c.order_id)?,
                )),
                None => None,
            };
            let orders = self
                .0
                .placed_between(
                    Timestamp::from_millis(m.from_ms),
                    Timestamp::from_millis(m.to_ms),
                    after,
                    m.limit,
                )
                .await
                .map_err(port_status)?;
            Ok(pb::OrderPage {
                orders: encode_all(orders),
            })
        })
        .await
    }
}

struct AccountsService(Arc<dyn AccountsPort>);

#[tonic::async_trait]
impl pb::accounts_server::Accounts for AccountsService {
    async fn contact(
        &self,
        request: Request<pb::AccountRef>,
    ) -> Result<Response<pb::ContactLookup>, Status> {
        serve("Accounts/Contact", request, |m| async move {
            let user: UserId = parse("user_id", &m.user_id)?;
            let contact = self.0.contact(user).await.map_err(port_status)?;
            Ok(pb::ContactLookup {
                contact: contact.map(Into::into),
            })
        })
        .await
    }
}
