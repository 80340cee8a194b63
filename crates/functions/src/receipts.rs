//! The receipts function: on OrderConfirmed, it reads the order and its
//! customer through their modules' ports, renders a receipt (plain text and
//! HTML, from `templates/receipt.*`) and sends it with the platform's mailer:
//! to the SMTP server, or as `receipt-<order>.eml` in the mail directory.

use std::sync::Arc;

use agora_contracts::events::{EventPayload, OrderConfirmed};
use agora_contracts::identity::{AccountsPort, Contact};
use agora_contracts::orders::{OrderRecord, OrdersPort};
use agora_kernel::Clock;
use agora_platform::Database;
use agora_platform::bus::{Event, Handler};
use agora_platform::mail::{Delivery, Mailer};
use anyhow::Context;
use askama::Template;
use async_trait::async_trait;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};

use crate::INBOX;

/// The consumer name of the receipts function.
pub const CONSUMER: &str = "functions-receipts";
/// The events it takes.
pub const KINDS: [&str; 1] = [OrderConfirmed::KIND];

/// The receipts function.
pub struct Receipts {
    orders: Arc<dyn OrdersPort>,
    accounts: Arc<dyn AccountsPort>,
    mailer: Mailer,
    db: Database,
    clock: Arc<dyn Clock>,
}

/// A rendered receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Its subject line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// One line as the templates show it.
struct Line {
    name: String,
    sku: String,
    quantity: i64,
    unit_price: String,
    line_total: String,
}

/// What both parts of a receipt show.
struct View<'a> {
    name: &'a str,
    order_id: String,
    placed_at: String,
    lines: Vec<Line>,
    total: String,
    shop: &'a str,
}

#[derive(Template)]
#[template(path = "receipt.txt")]
struct TextReceipt<'a> {
    r: &'a View<'a>,
}

#[derive(Template)]
#[template(path = "receipt.html")]
struct HtmlReceipt<'a> {
    r: &'a View<'a>,
}

impl Receipts {
    /// The function, reading orders and customers through their ports and
    /// sending with `mailer`, recording what it handled in `db`'s
    /// `functions_inbox`.
    pub fn new(
        orders: Arc<dyn OrdersPort>,
        accounts: Arc<dyn AccountsPort>,
        mailer: Mailer,
        db: Database,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            orders,
            accounts,
            mailer,
            db,
            clock,
        }
    }

    /// Renders and sends the receipt of one confirmed order. `None` when the
    /// order or its customer's account no longer exists (nobody to send to).
    pub async fn run(&self, confirmed: &OrderConfirmed) -> anyhow::Result<Option<Delivery>> {
        let Some(order) = self.orders.order(confirmed.order_id).await? else {
            tracing::warn!(order_id = %confirmed.order_id, "no such order: no receipt");
            return Ok(None);
        };
        let Some(contact) = self.accounts.contact(order.user_id).await? else {
            tracing::warn!(order_id = %order.id, "the customer's account is gone: no receipt");
            return Ok(None);
        };
        let to = Mailbox::new(
            (!contact.name.is_empty()).then(|| contact.name.clone()),
            contact
                .email
                .parse()
                .with_context(|| format!("the customer's address {:?}", contact.email))?,
        );
        let shop = self.mailer.from().name.as_deref().unwrap_or("Agora");
        let receipt = render(&order, &contact, shop)?;
        let domain = self.mailer.from().email.domain().to_string();
        let message = Message::builder()
            .from(self.mailer.from().clone())
            .to(to)
            .subject(receipt.subject)
            // The same id on a repeat lets mail clients fold duplicates.
            .message_id(Some(format!("<receipt.{}@{domain}>", order.id)))
            .multipart(MultiPart::alternative_plain_html(
                receipt.text,
                receipt.html,
            ))
            .context("building the receipt message")?;
        let delivery = self
            .mailer
            .send(&format!("receipt-{}", order.id), message)
            .await?;
        Ok(Some(delivery))
    }
}

/// The receipt of `order` for `contact`, signed by `shop`.
pub fn render(order: &OrderRecord, contact: &Contact, shop: &str) -> anyhow::Result<Receipt> {
    let view = View {
        name: &contact.name,
        order_id: order.id.to_string(),
        placed_at: order.created_at.to_rfc3339(),
        lines: order
            .lines
            .iter()
            .map(|l| Line {
                name: l.name.clone(),
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.to_string(),
                line_total: l.line_total.to_string(),
            })
            .collect(),
        total: order.total.to_string(),
        shop,
    };
    let text = TextReceipt { r: &view }
        .render()
        .context("rendering the text receipt")?;
    let html = HtmlReceipt { r: &view }
        .render()
        .context("rendering the HTML receipt")?;
    Ok(Receipt {
        subject: format!("Your receipt for order {}", view.order_id),
        text,
        html,
    })
}

#[async_trait]
impl Handler for Receipts {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        if event.kind != OrderConfirmed::KIND || INBOX.handled(&self.db, CONSUMER, event).await? {
            return Ok(());
        }
        let confirmed: OrderConfirmed = event
            .payload()
            .context("an OrderConfirmed payload this version does not understand")?;
        // Sent, then recorded: a crash between the two sends the receipt
        // again (once more, with the same Message-ID), never not at all.
        let delivery = self.run(&confirmed).await?;
        INBOX
            .record(&self.db, CONSUMER, event, self.clock.now())
            .await?;
        tracing::info!(order_id = %confirmed.order_id, ?delivery, "receipt sent");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use agora_contracts::orders::OrderRecordLine;
    use agora_kernel::{Currency, Money, OrderId, ProductId, Timestamp, UserId};

    use super::*;

    fn order() -> OrderRecord {
        let usd = Currency::parse("USD").expect("usd");
        let money = |minor| Money::new(minor, usd).expect("money");
        OrderRecord {
            id: OrderId::new(),
            user_id: UserId::new(),
            status: "confirmed".to_string(),
            lines: vec![OrderRecordLine {
                product_id: ProductId::new(),
                sku: "CUP-1".to_string(),
                name: "Mug <b>& \"Saucer\"</b>".to_string(),
                unit_price: money(1250),
                quantity: 2,
                line_total: money(2500),
            }],
            total: money(2500),
            refunded_minor: 0,
            created_at: Timestamp::from_millis(1_764_000_000_000),
        }
    }

    #[test]
    fn a_receipt_lists_the_lines_and_the_total_in_both_parts() {
        let order = order();
        let contact = Contact {
            email: "ada@example.com".to_string(),
            name: "Ada".to_string(),
        };
        let receipt = render(&order, &contact, "Agora").expect("rendered");
        assert_eq!(
            receipt.subject,
            format!("Your receipt for order {}", order.id)
        );
        for part in [&receipt.text, &receipt.html] {
            assert!(part.contains(&order.id.to_string()), "{part}");
            assert!(part.contains("25.00 USD"), "{part}");
            assert!(part.contains("12.50 USD"), "{part}");
            assert!(part.contains("Hello Ada,"), "{part}");
        }
        assert!(receipt.text.contains("2 x Mug <b>& \"Saucer\"</b> (CUP-1)"));
    }

    #[test]
    fn names_are_escaped_in_html() {
        let contact = Contact {
            email: "eve@example.com".to_string(),
            name: "<script>alert(1)</script>".to_string(),
        };
        let receipt = render(&order(), &contact, "Agora").expect("rendered");
        assert!(!receipt.html.contains("<script>"), "{}", receipt.html);
        assert!(!receipt.html.contains("<b>"), "{}", receipt.html);
        assert!(
            receipt.html.contains("&#60;script&#62;"),
            "{}",
            receipt.html
        );
    }

    #[test]
    fn no_name_no_dangling_space() {
        let contact = Contact {
            email: "x@example.com".to_string(),
            name: String::new(),
        };
        let receipt = render(&order(), &contact, "Agora").expect("rendered");
        assert!(receipt.text.starts_with("Hello,"), "{}", receipt.text);
    }
}
