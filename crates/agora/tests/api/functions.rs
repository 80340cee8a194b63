//! The functions the monolith runs in-process: receipts on OrderConfirmed, and
//! the export of a day's orders (thumbnails: images.rs).

use std::sync::Arc;
use std::time::Duration;

use agora_contracts::orders::OrdersPort;
use agora_functions::export::{COLUMNS, Day, Export};
use agora_kernel::{Clock, SystemClock, Timestamp};
use agora_platform::Database;
use agora_platform::storage::ObjectStorage;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::cli::agora;
use crate::helpers::{As, TestApp, spawn_app, spawn_app_with};

/// The receipt file of `order`, once the function has written it.
async fn receipt(app: &TestApp, order: &str) -> String {
    let path = app.config.mail_dir().join(format!("receipt-{order}.eml"));
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no receipt at {}", path.display());
}

/// A confirmed order mails its customer a receipt with a text and an HTML
/// part; a replay of the event to the function sends nothing again.
#[tokio::test]
async fn a_confirmed_order_mails_its_receipt_once() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let order = app.place_order(As::Token(&ada)).await;
    let id = order["id"].as_str().expect("an id");

    let text = receipt(&app, id).await;
    assert!(text.contains("To: Customer <ada@example.com>"), "{text}");
    assert!(
        text.contains("From: Agora <receipts@agora.localhost>"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Subject: Your receipt for order {id}")),
        "{text}"
    );
    assert!(text.contains("multipart/alternative"), "{text}");
    assert!(
        text.contains("text/plain") && text.contains("text/html"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Message-ID: <receipt.{id}@agora.localhost>")),
        "{text}"
    );
    assert!(text.contains("15.00 USD"), "{text}");

    // The function's inbox holds the event (it records it after sending):
    // a replay to it does nothing.
    let db = Database::connect(&app.config).await.expect("the database");
    for _ in 0..500 {
        let recorded: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM functions_inbox WHERE consumer = 'functions-receipts'",
        )
        .fetch_one(db.reader())
        .await
        .expect("the inbox");
        if recorded == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    db.close().await;
    let path = app.config.mail_dir().join(format!("receipt-{id}.eml"));
    std::fs::remove_file(&path).expect("removed");
    let ops = app
        .create_user_and_login("ops@agora.test", &[agora_kernel::Role::Admin])
        .await;
    let replayed = app
        .call(
            Method::POST,
            "/api/v1/admin/events/replay",
            Some(json!({ "consumer": "functions-receipts", "kind": "orders.order_confirmed" })),
            As::Token(&ops),
        )
        .await;
    assert_eq!(replayed.status, StatusCode::OK, "{:?}", replayed.body);
    assert_eq!(replayed.data()["replayed"], 1, "{:?}", replayed.body);
    assert_eq!(replayed.data()["failed_count"], 0, "{:?}", replayed.body);
    assert!(!path.exists(), "the replay sent no second receipt");
}

/// With an SMTP server configured, the receipt goes there (aiosmtpd from
/// `.ci/run`, delivering into `AGORA_TEST_SMTP_MAILDIR`), not to a file.
#[tokio::test]
#[ignore = "needs an SMTP server: set AGORA_TEST_SMTP_URL and AGORA_TEST_SMTP_MAILDIR (see docs/operations.md)"]
async fn a_receipt_goes_to_the_smtp_server() {
    let url = std::env::var("AGORA_TEST_SMTP_URL").expect("AGORA_TEST_SMTP_URL");
    let maildir = std::env::var("AGORA_TEST_SMTP_MAILDIR").expect("AGORA_TEST_SMTP_MAILDIR");
    let app = spawn_app_with(|c| c.mail.smtp_url = Some(url)).await;
    let ada = app.register_and_login("ada@example.com").await;
    let order = app.place_order(As::Token(&ada)).await;
    let id = order["id"].as_str().expect("an id");
    let subject = format!("Subject: Your receipt for order {id}");
    let arrived = async {
        loop {
            let found = std::fs::read_dir(std::path::Path::new(&maildir).join("new"))
                .expect("the maildir")
                .filter_map(|e| std::fs::read_to_string(e.expect("entry").path()).ok())
                .any(|text| text.contains(&subject) && text.contains("X-RcptTo: ada@example.com"));
            if found {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), arrived)
        .await
        .expect("the receipt reached the SMTP server");
    assert!(
        !app.config
            .mail_dir()
            .join(format!("receipt-{id}.eml"))
            .exists(),
        "not written to the mail directory"
    );
}

/// The whole monolith on a shared broker: the checkout's events travel
/// through the broker to the receipts function.
async fn a_receipt_travels_through(configure: impl FnOnce(&mut agora_platform::Config)) {
    let app = spawn_app_with(configure).await;
    let ada = app.register_and_login("ada@example.com").await;
    let order = app.place_order(As::Token(&ada)).await;
    let text = receipt(&app, order["id"].as_str().expect("an id")).await;
    assert!(text.contains("15.00 USD"), "{text}");
}

#[tokio::test]
#[ignore = "needs RabbitMQ: set AGORA_TEST_RABBITMQ_URL (see docs/operations.md)"]
async fn on_rabbitmq_a_confirmed_order_mails_its_receipt() {
    let url = std::env::var("AGORA_TEST_RABBITMQ_URL").expect("AGORA_TEST_RABBITMQ_URL");
    let exchange = format!("test-{}", uuid::Uuid::now_v7().simple());
    a_receipt_travels_through(|c| {
        c.bus.backend = agora_platform::config::BusBackend::Rabbitmq;
        c.bus.rabbitmq_url = url;
        c.bus.rabbitmq_exchange = exchange.clone();
    })
    .await;
    // The test's queues go (with the broker's own tool, where the broker runs
    // on this machine); its two exchanges are mere names and stay.
    if let Ok(out) = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
    {
        for queue in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|q| q.starts_with(&exchange))
        {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", queue])
                .output();
        }
    }
}

#[tokio::test]
#[ignore = "needs NATS: set AGORA_TEST_NATS_URL (see docs/operations.md)"]
async fn on_nats_a_confirmed_order_mails_its_receipt() {
    let url = std::env::var("AGORA_TEST_NATS_URL").expect("AGORA_TEST_NATS_URL");
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("TEST_{unique}");
    a_receipt_travels_through(|c| {
        c.bus.backend = agora_platform::config::BusBackend::Nats;
        c.bus.nats_url = url.clone();
        c.bus.nats_stream = stream.clone();
        c.bus.nats_subject_prefix = format!("t{unique}");
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("NATS"));
    for name in [stream.clone(), format!("{stream}_DEAD")] {
        js.delete_stream(&name)
            .await
            .expect("the test's stream deleted");
    }
}

/// A declined checkout confirms nothing, so it mails nothing.
#[tokio::test]
async fn a_declined_checkout_mails_no_receipt() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let mug = app.stocked_product(1250, 5).await;
    app.add_to_cart(As::Token(&ada), &mug, 1).await;
    let declined = app.checkout(As::Token(&ada), "k1", "tok_declined").await;
    assert_eq!(
        declined.status,
        StatusCode::PAYMENT_REQUIRED,
        "{:?}",
        declined.body
    );
    // A confirmed order after it is mailed; the declined one never was.
    let order = app.place_order(As::Token(&ada)).await;
    receipt(&app, order["id"].as_str().expect("an id")).await;
    let declined_id = declined.body["error"]["details"]["order_id"]
        .as_str()
        .map(str::to_string);
    let files: Vec<_> = std::fs::read_dir(app.config.mail_dir())
        .expect("the mail directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    if let Some(declined_id) = declined_id {
        assert!(!files.iter().any(|f| f.contains(&declined_id)), "{files:?}");
    }
}

/// The export of a day holds one CSV row per order line of that day's
/// orders, fields quoted where they need it; a day that is not over is
/// refused.
#[tokio::test]
async fn the_export_of_a_day_lists_its_order_lines() {
    let app = spawn_app().await;
    let ada = app.register_and_login("ada@example.com").await;
    let odd = app
        .create_product(
            json!({ "name": "Mug, \"large\"", "price": { "amount": 1250, "currency": "USD" } }),
        )
        .await;
    let odd_id = odd["id"].as_str().expect("an id").to_string();
    let stocked = app
        .call(
            Method::PUT,
            &format!("/api/v1/inventory/{odd_id}"),
            Some(json!({ "on_hand": 5, "reason": "test stock" })),
            As::Staff,
        )
        .await;
    assert_eq!(stocked.status, StatusCode::OK, "{:?}", stocked.body);
    let plain = app.stocked_product(300, 5).await;
    app.add_to_cart(As::Token(&ada), &odd_id, 2).await;
    app.add_to_cart(As::Token(&ada), &plain, 1).await;
    let first = app.checkout(As::Token(&ada), "k1", "tok_visa").await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let second = app.place_order(As::Token(&ada)).await;

    let db = Database::connect(&app.config).await.expect("the database");
    let storage = ObjectStorage::from_config(&app.config).expect("storage");
    let orders = Arc::new(orders_of(&app, &db, &storage));
    let export = Export::new(orders.clone(), storage.clone());
    // The day the orders were placed on (not "today": midnight may have
    // passed since).
    let placed = first.data()["created_at"].as_str().expect("a time");
    let today = Day::of(Timestamp::parse_rfc3339(placed).expect("RFC 3339"));
    let refused = export
        .run(today, today.start())
        .await
        .expect_err("the day is not over");
    assert!(refused.to_string().contains("is not over yet"), "{refused}");
    let now = SystemClock.now();

    let done = export.run(today, today.end()).await.expect("exported");
    assert_eq!((done.orders, done.rows), (2, 3));
    assert_eq!(done.key.as_str(), format!("exports/orders/{today}.csv"));
    let bytes = storage.read(&done.key).await.expect("stored");
    assert_eq!(bytes.len(), done.bytes);
    let mut csv = csv::Reader::from_reader(&bytes[..]);
    assert_eq!(
        csv.headers().expect("headers").iter().collect::<Vec<_>>(),
        COLUMNS
    );
    let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.expect("a row")).collect();
    let first_id = first.data()["id"].as_str().expect("an id");
    let odd_row = rows
        .iter()
        .find(|r| &r[7] == odd_id.as_str())
        .expect("the odd product's line");
    assert_eq!(&odd_row[0], first_id);
    assert_eq!(&odd_row[2], "confirmed");
    assert_eq!(&odd_row[4], "USD");
    assert_eq!(&odd_row[5], "2800", "the order's total");
    assert_eq!(&odd_row[9], "Mug, \"large\"", "quoted, read back whole");
    assert_eq!(
        (&odd_row[10], &odd_row[11], &odd_row[12]),
        ("2", "1250", "2500")
    );
    assert!(
        rows.iter()
            .any(|r| &r[0] == second["id"].as_str().expect("an id"))
    );
    // Oldest first.
    assert_eq!(&rows[0][0], first_id);

    // The port pages oldest first, one at a time, each order once.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = orders
            .placed_between(today.start(), today.end(), after, 1)
            .await
            .expect("a page");
        let Some(last) = page.last() else { break };
        assert_eq!(page.len(), 1);
        after = Some((last.created_at, last.id));
        paged.push(last.id.to_string());
    }
    assert_eq!(
        paged,
        [first_id, second["id"].as_str().expect("an id")],
        "oldest first, each once"
    );

    // The day before holds nothing, and its file says so.
    let empty = export.run(today.previous(), now).await.expect("exported");
    assert_eq!((empty.orders, empty.rows), (0, 0));
    db.close().await;
}

fn orders_of(app: &TestApp, db: &Database, storage: &ObjectStorage) -> agora_orders::Orders {
    let catalog = agora::app::catalog(&app.config, db, None, storage.clone());
    let port = std::sync::Arc::new(catalog.clone());
    agora::app::orders(
        db,
        agora::app::local_participants(
            &catalog,
            &agora::app::carts(db, port.clone()),
            &agora::app::inventory(db, port),
            &agora::app::payments(&app.config, db),
        ),
    )
}

/// `agora functions run export` from the command line: a finished day is
/// written to the object storage; a malformed or unfinished day is refused
/// with a message and a failing status.
#[test]
fn the_export_command_writes_a_finished_day_and_refuses_others() {
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().to_str().expect("utf-8 path");
    let ok = agora()
        .args([
            "functions",
            "run",
            "export",
            "--date",
            "2020-01-01",
            "--data-dir",
            data,
        ])
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout)
            .contains("exported 0 orders (0 lines, 143 bytes) to exports/orders/2020-01-01.csv"),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let file = dir.path().join("objects/exports/orders/2020-01-01.csv");
    let header = std::fs::read_to_string(&file).expect("the export");
    assert_eq!(header, format!("{}\n", COLUMNS.join(",")));

    for (date, says) in [
        ("2026-02-30", "is not a date"),
        ("yesterday", "is not a date"),
        ("9999-12-30", "is not over yet"),
    ] {
        let out = agora()
            .args([
                "functions",
                "run",
                "export",
                "--date",
                date,
                "--data-dir",
                data,
            ])
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{date}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{date}: {err}");
    }
}
