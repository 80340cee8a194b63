//! Between the ports' types and their messages.
//!
//! Encoding cannot fail. Decoding can, for a message that a peer of another
//! build (or a broken one) sent: an id that does not parse, an unknown
//! currency, a missing required field, an enum value this build does not know.
//! That is [`Malformed`]: `INVALID_ARGUMENT` when a server decodes a request,
//! a [`PortError::Internal`] when a client decodes an answer.

use std::fmt;
use std::str::FromStr;

use agora_contracts::PortError;
use agora_contracts::cart::CartLine;
use agora_contracts::catalog::{ProductSnapshot, Rendition};
use agora_contracts::identity::Contact;
use agora_contracts::inventory::{InventoryError, Reservation, ReservationStatus, StockLine};
use agora_contracts::orders::{OrderRecord, OrderRecordLine};
use agora_contracts::payments::{Payment, PaymentError, PaymentStatus};
use agora_kernel::{Currency, Money, Timestamp};

use crate::pb;

/// A message field that this build cannot read: which, and why.
#[derive(Debug)]
pub struct Malformed {
    field: &'static str,
    why: String,
}

impl Malformed {
    pub(crate) fn new(field: &'static str, why: impl fmt::Display) -> Malformed {
        Malformed {
            field,
            why: why.to_string(),
        }
    }

    fn missing(field: &'static str) -> Malformed {
        Malformed::new(field, "missing")
    }

    /// The reason a client reports when `module` answered with this.
    pub(crate) fn in_answer(self, module: &'static str) -> PortError {
        PortError::Internal {
            module,
            reason: format!("malformed answer: {self}"),
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.why)
    }
}

impl From<Malformed> for tonic::Status {
    fn from(m: Malformed) -> Self {
        tonic::Status::invalid_argument(m.to_string())
    }
}

/// Parses an id (or anything with `FromStr`) from `field`.
pub(crate) fn parse<T>(field: &'static str, text: &str) -> Result<T, Malformed>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    text.parse().map_err(|e| Malformed::new(field, e))
}

/// Parses every id in `texts`.
pub(crate) fn parse_all<T>(field: &'static str, texts: &[String]) -> Result<Vec<T>, Malformed>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    texts.iter().map(|t| parse(field, t)).collect()
}

/// Decodes each message of `items`.
pub(crate) fn decode_all<W, T>(items: Vec<W>) -> Result<Vec<T>, Malformed>
where
    T: TryFrom<W, Error = Malformed>,
{
    items.into_iter().map(T::try_from).collect()
}

/// Encodes each item of `items`.
pub(crate) fn encode_all<T, W: From<T>>(items: impl IntoIterator<Item = T>) -> Vec<W> {
    items.into_iter().map(W::from).collect()
}

// Money.

impl From<Money> for pb::Money {
    fn from(m: Money) -> Self {
        pb::Money {
            amount_minor: m.amount_minor(),
            currency: m.currency().code().to_owned(),
        }
    }
}

/// The money in `field`, which must be present and valid.
pub(crate) fn money(field: &'static str, m: Option<pb::Money>) -> Result<Money, Malformed> {
    let m = m.ok_or(Malformed::missing(field))?;
    let currency = Currency::parse(&m.currency).map_err(|e| Malformed::new(field, e))?;
    Money::new(m.amount_minor, currency).map_err(|e| Malformed::new(field, e))
}

// Catalog.

impl From<ProductSnapshot> for pb::ProductSnapshot {
    fn from(p: ProductSnapshot) -> Self {
        pb::ProductSnapshot {
            id: p.id.to_string(),
            sku: p.sku,
            name: p.name,
            unit_price: Some(p.unit_price.into()),
            active: p.active,
        }
    }
}

impl TryFrom<pb::ProductSnapshot> for ProductSnapshot {
    type Error = Malformed;
    fn try_from(p: pb::ProductSnapshot) -> Result<Self, Malformed> {
        Ok(ProductSnapshot {
            id: parse("id", &p.id)?,
            sku: p.sku,
            name: p.name,
            unit_price: money("unit_price", p.unit_price)?,
            active: p.active,
        })
    }
}

impl From<Rendition> for pb::Rendition {
    fn from(r: Rendition) -> Self {
        pb::Rendition {
            size: r.size,
            key: r.key,
            content_type: r.content_type,
            width: r.width,
            height: r.height,
        }
    }
}

impl TryFrom<pb::Rendition> for Rendition {
    type Error = Malformed;
    fn try_from(r: pb::Rendition) -> Result<Self, Malformed> {
        Ok(Rendition {
            size: r.size,
            key: r.key,
            content_type: r.content_type,
            width: r.width,
            height: r.height,
        })
    }
}

// Cart.

impl From<CartLine> for pb::CartLine {
    fn from(l: CartLine) -> Self {
        pb::CartLine {
            product_id: l.product_id.to_string(),
            quantity: l.quantity,
        }
    }
}

impl TryFrom<pb::CartLine> for CartLine {
    type Error = Malformed;
    fn try_from(l: pb::CartLine) -> Result<Self, Malformed> {
        Ok(CartLine {
            product_id: parse("product_id", &l.product_id)?,
            quantity: l.quantity,
        })
    }
}

// Inventory.

impl From<StockLine> for pb::StockLine {
    fn from(l: StockLine) -> Self {
        pb::StockLine {
            product_id: l.product_id.to_string(),
            quantity: l.quantity,
        }
    }
}

impl TryFrom<pb::StockLine> for StockLine {
    type Error = Malformed;
    fn try_from(l: pb::StockLine) -> Result<Self, Malformed> {
        Ok(StockLine {
            product_id: parse("product_id", &l.product_id)?,
            quantity: l.quantity,
        })
    }
}

pub(crate) fn reservation_status(s: ReservationStatus) -> pb::ReservationStatus {
    match s {
        ReservationStatus::Held => pb::ReservationStatus::Held,
        ReservationStatus::Committed => pb::ReservationStatus::Committed,
        ReservationStatus::Released => pb::ReservationStatus::Released,
    }
}

fn reservation_status_from(
    field: &'static str,
    value: i32,
) -> Result<ReservationStatus, Malformed> {
    match pb::ReservationStatus::try_from(value) {
        Ok(pb::ReservationStatus::Held) => Ok(ReservationStatus::Held),
        Ok(pb::ReservationStatus::Committed) => Ok(ReservationStatus::Committed),
        Ok(pb::ReservationStatus::Released) => Ok(ReservationStatus::Released),
        Ok(pb::ReservationStatus::Unspecified) | Err(_) => Err(Malformed::new(
            field,
            format_args!("unknown status {value}"),
        )),
    }
}

impl From<Reservation> for pb::Reservation {
    fn from(r: Reservation) -> Self {
        pb::Reservation {
            key: r.key,
            status: reservation_status(r.status).into(),
            lines: encode_all(r.lines),
            expires_at_ms: r.expires_at.as_millis(),
        }
    }
}

impl TryFrom<pb::Reservation> for Reservation {
    type Error = Malformed;
    fn try_from(r: pb::Reservation) -> Result<Self, Malformed> {
        Ok(Reservation {
            key: r.key,
            status: reservation_status_from("status", r.status)?,
            lines: decode_all(r.lines)?,
            expires_at: Timestamp::from_millis(r.expires_at_ms),
        })
    }
}

/// A reservation call's outcome as its answer: the reservation, or why the
/// inventory refused. A failed call (not a refusal) is the status `Err`.
pub(crate) fn reservation_outcome(
    outcome: Result<Reservation, InventoryError>,
) -> Result<pb::ReservationOutcome, tonic::Status> {
    use pb::inventory_refusal::Reason;
    use pb::reservation_outcome::Outcome;
    let reason = match outcome {
        Ok(r) => {
            return Ok(pb::ReservationOutcome {
                outcome: Some(Outcome::Reservation(r.into())),
            });
        }
        Err(InventoryError::Insufficient {
            product_id,
            available,
            requested,
        }) => Reason::Insufficient(pb::Insufficient {
            product_id: product_id.to_string(),
            available,
            requested,
        }),
        Err(InventoryError::KeyReused) => Reason::KeyReused(pb::Empty {}),
        Err(InventoryError::NotFound) => Reason::NotFound(pb::Empty {}),
        Err(InventoryError::WrongState(s)) => Reason::WrongState(reservation_status(s).into()),
        Err(InventoryError::InvalidLines(why)) => Reason::InvalidLines(why),
        Err(InventoryError::Port(e)) => return Err(port_status(e)),
    };
    Ok(pb::ReservationOutcome {
        outcome: Some(Outcome::Refused(pb::InventoryRefusal {
            reason: Some(reason),
        })),
    })
}

/// The inverse of [`reservation_outcome`].
pub(crate) fn reservation_result(
    answer: pb::ReservationOutcome,
) -> Result<Result<Reservation, InventoryError>, Malformed> {
    use pb::inventory_refusal::Reason;
    use pb::reservation_outcome::Outcome;
    Ok(match answer.outcome.ok_or(Malformed::missing("outcome"))? {
        Outcome::Reservation(r) => Ok(r.try_into()?),
        Outcome::Refused(refusal) => {
            Err(match refusal.reason.ok_or(Malformed::missing("reason"))? {
                Reason::Insufficient(i) => InventoryError::Insufficient {
                    product_id: parse("product_id", &i.product_id)?,
                    available: i.available,
                    requested: i.requested,
                },
                Reason::KeyReused(_) => InventoryError::KeyReused,
                Reason::NotFound(_) => InventoryError::NotFound,
                Reason::WrongState(s) => {
                    InventoryError::WrongState(reservation_status_from("wrong_state", s)?)
                }
                Reason::InvalidLines(why) => InventoryError::InvalidLines(why),
            })
        }
    })
}

// Payments.

fn payment_status(s: PaymentStatus) -> pb::PaymentStatus {
    match s {
        PaymentStatus::Processing => pb::PaymentStatus::Processing,
        PaymentStatus::Authorized => pb::PaymentStatus::Authorized,
        PaymentStatus::Declined => pb::PaymentStatus::Declined,
        PaymentStatus::Voided => pb::PaymentStatus::Voided,
        PaymentStatus::Captured => pb::PaymentStatus::Captured,
        PaymentStatus::PartiallyRefunded => pb::PaymentStatus::PartiallyRefunded,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
    }
}

fn payment_status_from(field: &'static str, value: i32) -> Result<PaymentStatus, Malformed> {
    Ok(match pb::PaymentStatus::try_from(value) {
        Ok(pb::PaymentStatus::Processing) => PaymentStatus::Processing,
        Ok(pb::PaymentStatus::Authorized) => PaymentStatus::Authorized,
        Ok(pb::PaymentStatus::Declined) => PaymentStatus::Declined,
        Ok(pb::PaymentStatus::Voided) => PaymentStatus::Voided,
        Ok(pb::PaymentStatus::Captured) => PaymentStatus::Captured,
        Ok(pb::PaymentStatus::PartiallyRefunded) => PaymentStatus::PartiallyRefunded,
        Ok(pb::PaymentStatus::Refunded) => PaymentStatus::Refunded,
        Ok(pb::PaymentStatus::Unspecified) | Err(_) => {
            return Err(Malformed::new(
                field,
                format_args!("unknown status {value}"),
            ));
        }
    })
}

impl From<Payment> for pb::Payment {
    fn from(p: Payment) -> Self {
        pb::Payment {
            id: p.id.to_string(),
            reference: p.reference,
            status: payment_status(p.status).into(),
            amount: Some(p.amount.into()),
            captured_minor: p.captured_minor,
            refunded_minor: p.refunded_minor,
            decline_reason: p.decline_reason,
            card_brand: p.card_brand,
            card_last4: p.card_last4,
        }
    }
}

impl TryFrom<pb::Payment> for Payment {
    type Error = Malformed;
    fn try_from(p: pb::Payment) -> Result<Self, Malformed> {
        Ok(Payment {
            id: parse("id", &p.id)?,
            reference: p.reference,
            status: payment_status_from("status", p.status)?,
            amount: money("amount", p.amount)?,
            captured_minor: p.captured_minor,
            refunded_minor: p.refunded_minor,
            decline_reason: p.decline_reason,
            card_brand: p.card_brand,
            card_last4: p.card_last4,
        })
    }
}

/// A payment call's outcome as its answer, as [`reservation_outcome`].
pub(crate) fn payment_outcome(
    outcome: Result<Payment, PaymentError>,
) -> Result<pb::PaymentOutcome, tonic::Status> {
    use pb::payment_outcome::Outcome;
    use pb::payment_refusal::Reason;
    let reason = match outcome {
        Ok(p) => {
            return Ok(pb::PaymentOutcome {
                outcome: Some(Outcome::Payment(p.into())),
            });
        }
        Err(PaymentError::ProviderUnavailable(why)) => Reason::ProviderUnavailable(why),
        Err(PaymentError::NotFound) => Reason::NotFound(pb::Empty {}),
        Err(PaymentError::InvalidState(s)) => Reason::InvalidState(payment_status(s).into()),
        Err(PaymentError::ExceedsRefundable { refundable_minor }) => {
            Reason::ExceedsRefundableMinor(refundable_minor)
        }
        Err(PaymentError::KeyReused) => Reason::KeyReused(pb::Empty {}),
        Err(PaymentError::Port(e)) => return Err(port_status(e)),
    };
    Ok(pb::PaymentOutcome {
        outcome: Some(Outcome::Refused(pb::PaymentRefusal {
            reason: Some(reason),
        })),
    })
}

/// The inverse of [`payment_outcome`].
pub(crate) fn payment_result(
    answer: pb::PaymentOutcome,
) -> Result<Result<Payment, PaymentError>, Malformed> {
    use pb::payment_outcome::Outcome;
    use pb::payment_refusal::Reason;
    Ok(match answer.outcome.ok_or(Malformed::missing("outcome"))? {
        Outcome::Payment(p) => Ok(p.try_into()?),
        Outcome::Refused(refusal) => {
            Err(match refusal.reason.ok_or(Malformed::missing("reason"))? {
                Reason::ProviderUnavailable(why) => PaymentError::ProviderUnavailable(why),
                Reason::NotFound(_) => PaymentError::NotFound,
                Reason::InvalidState(s) => {
                    PaymentError::InvalidState(payment_status_from("invalid_state", s)?)
                }
                Reason::ExceedsRefundableMinor(refundable_minor) => {
                    PaymentError::ExceedsRefundable { refundable_minor }
                }
                Reason::KeyReused(_) => PaymentError::KeyReused,
            })
        }
    })
}

// Orders.

impl From<OrderRecordLine> for pb::OrderLine {
    fn from(l: OrderRecordLine) -> Self {
        pb::OrderLine {
            product_id: l.product_id.to_string(),
            sku: l.sku,
            name: l.name,
            unit_price: Some(l.unit_price.into()),
            quantity: l.quantity,
            line_total: Some(l.line_total.into()),
        }
    }
}

impl TryFrom<pb::OrderLine> for OrderRecordLine {
    type Error = Malformed;
    fn try_from(l: pb::OrderLine) -> Result<Self, Malformed> {
        Ok(OrderRecordLine {
            product_id: parse("product_id", &l.product_id)?,
            sku: l.sku,
            name: l.name,
            unit_price: money("unit_price", l.unit_price)?,
            quantity: l.quantity,
            line_total: money("line_total", l.line_total)?,
        })
    }
}

impl From<OrderRecord> for pb::Order {
    fn from(o: OrderRecord) -> Self {
        pb::Order {
            id: o.id.to_string(),
            user_id: o.user_id.to_string(),
            status: o.status,
            lines: encode_all(o.lines),
            total: Some(o.total.into()),
            refunded_minor: o.refunded_minor,
            created_at_ms: o.created_at.as_millis(),
        }
    }
}

impl TryFrom<pb::Order> for OrderRecord {
    type Error = Malformed;
    fn try_from(o: pb::Order) -> Result<Self, Malformed> {
        Ok(OrderRecord {
            id: parse("id", &o.id)?,
            user_id: parse("user_id", &o.user_id)?,
            status: o.status,
            lines: decode_all(o.lines)?,
            total: money("total", o.total)?,
            refunded_minor: o.refunded_minor,
            created_at: Timestamp::from_millis(o.created_at_ms),
        })
    }
}

// Identity.

impl From<Contact> for pb::Contact {
    fn from(c: Contact) -> Self {
        pb::Contact {
            email: c.email,
            name: c.name,
        }
    }
}

impl TryFrom<pb::Contact> for Contact {
    type Error = Malformed;
    fn try_from(c: pb::Contact) -> Result<Self, Malformed> {
        Ok(Contact {
            email: c.email,
            name: c.name,
        })
    }
}

/// A failed port call as a gRPC status: the callee being unavailable stays
/// `UNAVAILABLE` (the caller may retry), anything else is `INTERNAL`. The
/// reason is logged here, with the request's id, and not sent: it may name
/// tables or hosts.
pub(crate) fn port_status(e: PortError) -> tonic::Status {
    match e {
        PortError::Unavailable { module, reason } => {
            tracing::warn!(module, %reason, "port call failed: unavailable");
            tonic::Status::unavailable(format!("{module} is unavailable"))
        }
        PortError::Internal { module, reason } => {
            tracing::error!(module, %reason, "port call failed");
            tonic::Status::internal(format!("{module} failed"))
        }
    }
}
