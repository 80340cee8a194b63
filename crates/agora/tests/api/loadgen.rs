//! `agora loadgen` against a real server: what it prepares, what it counts,
//! and how it refuses what it cannot run.

use agora_loadgen::LoadgenArgs;
use clap::Parser;

use crate::cli::agora;
use crate::helpers::{PASSWORD, TestApp, spawn_app_with};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

/// Loadgen's arguments against `app`, from these flags, separated by spaces
/// (quiet: no progress bar).
fn args(app: &TestApp, flags: &str) -> LoadgenArgs {
    let target = ["loadgen", "--target", &app.base, "--quiet"];
    Cli::try_parse_from(target.into_iter().chain(flags.split_whitespace()))
        .expect("valid flags")
        .args
}

/// Runs loadgen against `app` with these flags, to the end.
async fn run(app: &TestApp, flags: &str) -> agora_loadgen::report::Report {
    agora_loadgen::run(args(app, flags))
        .await
        .expect("the run completes")
}

/// A freshly started server with the demo catalog (and its demo stock).
async fn demo_app() -> TestApp {
    spawn_app_with(|c| c.seed.demo = true).await
}

fn row<'r>(
    report: &'r agora_loadgen::report::Report,
    kind: &str,
) -> &'r agora_loadgen::report::Row {
    report
        .kinds
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} row in {}", report.table()))
}

/// The units of `product` (a catalog entry) on hand, as staff see them.
async fn on_hand(app: &TestApp, product: &serde_json::Value) -> i64 {
    let id = product["id"].as_str().expect("an id");
    let stock = app
        .get_as(
            &format!("/api/v1/inventory/{id}"),
            crate::helpers::As::Staff,
        )
        .await;
    stock.data()["on_hand"]
        .as_i64()
        .unwrap_or_else(|| panic!("on hand: {stock:?}"))
}

#[tokio::test]
async fn the_demo_catalog_is_stocked_so_a_fresh_server_can_sell() {
    let app = demo_app().await;
    let products = app.all_products("").await;
    for product in products.iter().take(5) {
        assert_eq!(on_hand(&app, product).await, agora::app::DEMO_STOCK);
    }
}

#[tokio::test]
async fn shop_on_a_fresh_server_confirms_orders_with_no_unexpected_errors() {
    let app = demo_app().await;
    let report = run(&app, "--scenario shop --users 4 --duration 3s --seed 7").await;
    let table = report.table();
    assert_eq!(report.total.unexpected_errors, 0, "{table}");
    for kind in [
        "GET /products",
        "GET /products/{id}",
        "POST /cart/items",
        "GET /cart",
    ] {
        assert!(row(&report, kind).count > 0, "{table}");
    }
    let checkout = row(&report, "POST /checkout");
    let confirmed = checkout.count - checkout.error_count();
    assert!(confirmed > 0, "{table}");
    // Every confirmed checkout is an order the staff can see, confirmed.
    let orders = app
        .get_as(
            "/api/v1/orders?status=confirmed&limit=100",
            crate::helpers::As::Staff,
        )
        .await;
    let listed = orders.data().as_array().map_or(0, Vec::len) as u64;
    assert!(listed >= confirmed.min(100), "{listed} listed, {table}");
    assert_eq!(report.run.scenario, "shop");
    assert!(report.total.p99_ms >= report.total.p50_ms);
}

#[tokio::test]
async fn checkout_only_with_a_staff_account_stocks_first_and_stops_at_the_request_count() {
    let app = demo_app().await;
    let admin = "loadgen-admin@agora.test";
    app.create_user_and_login(admin, &[agora_kernel::Role::Admin])
        .await;
    let flags = format!(
        "--scenario checkout-only --users 3 --requests 40 --admin-email {admin} --stock 5000"
    );
    let mut a = args(&app, &flags);
    a.admin_password = Some(PASSWORD.to_string());
    let report = agora_loadgen::run(a).await.expect("the run completes");
    let table = report.table();
    assert_eq!(
        report.total.count, 40,
        "exactly the requests asked for: {table}"
    );
    assert_eq!(
        report.total.error_count(),
        0,
        "restocked, nothing runs out: {table}"
    );
    let checkouts = row(&report, "POST /checkout").count;
    assert!(
        checkouts >= 9,
        "3 additions and a checkout per visit: {table}"
    );
    // The products were restocked to 5000 before the run, then sold from.
    let products = app.all_products("").await;
    let mut sold = 0;
    for product in &products {
        if product["active"] == true {
            let on_hand = on_hand(&app, product).await;
            assert!(on_hand <= 5000, "{on_hand} of {product}");
            sold += 5000 - on_hand;
        }
    }
    assert_eq!(
        sold as u64,
        3 * checkouts,
        "3 units per confirmed order: {table}"
    );
}

#[tokio::test]
async fn an_open_loop_run_keeps_its_rate_and_counts_latency_from_the_due_time() {
    let app = demo_app().await;
    let report = run(&app, "--scenario browse --users 2 --rate 20 --duration 2s").await;
    let table = report.table();
    assert_eq!(report.total.error_count(), 0, "{table}");
    assert_eq!(report.run.rate, Some(20.0));
    // A visit starts every 50 ms for 2 s: at most 41 visits, each listing
    // products once or twice.
    let lists = row(&report, "GET /products").count;
    assert!((1..=82).contains(&lists), "{table}");
}

#[tokio::test]
async fn a_server_error_during_the_run_is_counted_by_its_code() {
    // Every payment provider call fails: checkouts answer a coded error,
    // which the table shows under its code as unexpected. (A checkout whose
    // compensation is still retrying when the request has made its attempts
    // answers REQUEST_IN_PROGRESS, docs/checkout.md.)
    let app = spawn_app_with(|c| {
        c.seed.demo = true;
        c.payments.simulated.error_rate = 1.0;
    })
    .await;
    let report = run(
        &app,
        "--scenario checkout-only --users 2 --requests 8 --timeout 30s",
    )
    .await;
    let table = report.table();
    let checkout = row(&report, "POST /checkout");
    assert!(checkout.error_count() > 0, "{table}");
    assert!(
        checkout
            .errors
            .keys()
            .all(|code| code.starts_with("ORDERS_")
                || code == "REQUEST_IN_PROGRESS"
                || code == "SERVICE_NOT_READY"),
        "{table}"
    );
    assert!(report.total.unexpected_errors > 0, "{table}");
    assert!(table.contains("unexpected errors:"), "{table}");

    // The command prints the same table, then fails so that scripts notice.
    let target = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        agora()
            .args([
                "loadgen",
                "--target",
                &target,
                "--quiet",
                "--scenario",
                "checkout-only",
            ])
            .args(["--users", "1", "--requests", "4"])
            .output()
            .expect("runs")
    })
    .await
    .expect("joined");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("POST /checkout"), "{stdout}");
    assert!(stderr.contains("failed unexpectedly"), "{stderr}");
}

#[tokio::test]
async fn json_output_holds_the_same_rows() {
    let app = demo_app().await;
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("run.json");
    let mut a = args(&app, "--scenario browse --users 2 --requests 30");
    a.json = Some(file.clone());
    let report = agora_loadgen::run(a).await.expect("the run completes");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("written")).expect("JSON");
    assert_eq!(json["total"]["count"], 30);
    assert_eq!(
        json["kinds"].as_array().map(Vec::len),
        Some(report.kinds.len())
    );
    assert_eq!(json["run"]["scenario"], "browse");
}

/// Runs the binary's `loadgen` with `flags`; its exit status and stderr.
fn loadgen_cli(flags: &[&str]) -> (bool, String) {
    let out = agora().arg("loadgen").args(flags).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_target_is_a_clear_error_and_a_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    let (ok, err) = loadgen_cli(&["--target", &format!("http://127.0.0.1:{port}"), "--quiet"]);
    assert!(!ok);
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn a_server_that_is_not_agora_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let server = tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "hello, I am some other server" });
        axum::serve(listener, app).await
    });
    let target = format!("http://{addr}");
    let (ok, err) = tokio::task::spawn_blocking(move || {
        loadgen_cli(&["--target", &target, "--quiet", "--duration", "1s"])
    })
    .await
    .expect("joined");
    server.abort();
    assert!(!ok);
    assert!(err.contains("is not an Agora server"), "{err}");
}

#[test]
fn absurd_parameters_and_a_missing_password_are_refused_before_any_request() {
    let (ok, err) = loadgen_cli(&["--users", "0"]);
    assert!(!ok && err.contains("--users"), "{err}");
    let (ok, err) = loadgen_cli(&["--duration", "1000y"]);
    assert!(!ok && err.contains("--duration"), "{err}");
    let (ok, err) = loadgen_cli(&["--admin-email", "staff@agora.test"]);
    assert!(
        !ok && err.contains(agora_loadgen::ADMIN_PASSWORD_ENV),
        "{err}"
    );
}
