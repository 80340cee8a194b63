//! Orders as the customer and staff see them, and the rules of their status.

use agora_kernel::{Money, OrderId, PaymentId, ProductId, Timestamp, UserId};
use serde::Serialize;

/// Where an order stands.
///
/// ```text
/// pending ─▶ reserved ─▶ authorized ─▶ confirmed ─▶ fulfilled
///    │           │            │            │            │
///    └───────────┴────────────┴──▶ cancelled            │
///                                          └────────────┴──▶ refunded
/// ```
/// `confirmed` means paid (captured) with its stock committed. `cancelled` and
/// `refunded` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed; its checkout has started.
    Pending,
    /// Its stock is set aside.
    Reserved,
    /// Its payment is authorized (held on the card).
    Authorized,
    /// Paid and its stock sold.
    Confirmed,
    /// Shipped to the customer.
    Fulfilled,
    /// Cancelled: nothing is owed and the stock went back.
    Cancelled,
    /// All of its payment was given back.
    Refunded,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Authorized,
        OrderStatus::Confirmed,
        OrderStatus::Fulfilled,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
    ];

    /// The status as stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Authorized => "authorized",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Fulfilled => "fulfilled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether nothing can happen to the order any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Refunded)
    }

    /// Whether the order may go from `self` to `to`.
    pub const fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, Reserved)
                | (Reserved, Authorized)
                | (Authorized, Confirmed)
                | (Confirmed, Fulfilled)
                | (Pending | Reserved | Authorized | Confirmed, Cancelled)
                | (Confirmed | Fulfilled, Refunded)
        )
    }

    /// The statuses an order may come from to reach `to`.
    pub fn sources(to: OrderStatus) -> Vec<OrderStatus> {
        OrderStatus::ALL
            .into_iter()
            .filter(|from| from.can_become(to))
            .collect()
    }
}

/// One line of an order: the product as it was priced at checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderLine {
    /// The product.
    #[schema(value_type = String, example = "prod_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub product_id: ProductId,
    /// Its SKU at checkout.
    pub sku: String,
    /// Its name at checkout.
    pub name: String,
    /// Its unit price at checkout.
    pub unit_price: Money,
    /// How many.
    pub quantity: i64,
    /// Unit price times quantity.
    pub line_total: Money,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Order {
    /// The order, `ord_…`.
    #[schema(value_type = String, example = "ord_0193a9c07b5a7f4e8d6a0c1b2e3f4a5b")]
    pub id: OrderId,
    /// Its customer.
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// Where it stands.
    pub status: OrderStatus,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// What it costs: the sum of its lines.
    pub total: Money,
    /// How much of the total was refunded, in minor units.
    pub refunded_minor: i64,
    /// Its payment, once one was made.
    #[schema(value_type = Option<String>)]
    pub payment_id: Option<PaymentId>,
    /// Why it was cancelled: the checkout's reason (`payment_declined`,
    /// `out_of_stock`, `payment_unavailable`, …) or the reason staff gave.
    pub cancel_reason: Option<String>,
    /// When it was placed.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    #[test]
    fn the_state_machine_allows_only_its_transitions() {
        let allowed = [
            (Pending, Reserved),
            (Reserved, Authorized),
            (Authorized, Confirmed),
            (Confirmed, Fulfilled),
            (Pending, Cancelled),
            (Reserved, Cancelled),
            (Authorized, Cancelled),
            (Confirmed, Cancelled),
            (Confirmed, Refunded),
            (Fulfilled, Refunded),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        for terminal in [Cancelled, Refunded] {
            assert!(terminal.is_terminal());
            assert!(OrderStatus::ALL.iter().all(|to| !terminal.can_become(*to)));
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
    }
}
