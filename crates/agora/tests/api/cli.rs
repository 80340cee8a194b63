//! The command line, run as a user would run it.

use std::process::Command;

/// The binary, with no `AGORA_` variable of this process leaking into it.
pub(crate) fn agora() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    // Only what a test sets may configure the process.
    for (key, _) in std::env::vars() {
        if key.starts_with("AGORA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn config_prints_the_effective_configuration_with_secrets_masked() {
    let out = agora()
        .args(["config", "--data-dir", "/srv/agora"])
        .env("AGORA_AUTH__SIGNING_KEY", "very-secret-signing-key")
        .env(
            "AGORA_DATABASE__URL",
            "postgres://agora:hunter2@db:5432/agora",
        )
        .env(
            "AGORA_SERVICES__ORDERS__DATABASE_URL",
            "postgres://orders:hunter3@db:5432/agora_orders",
        )
        .env("AGORA_SERVICES__TOKEN", "very-secret-services-token")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data_dir = \"/srv/agora\""), "{text}");
    assert!(
        text.contains("postgres://agora:********@db:5432/agora"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("hunter3") && !text.contains("very-secret"),
        "{text}"
    );
}

#[test]
fn the_services_commands_refuse_what_they_cannot_run_with_a_message() {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = agora();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("runs");
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().to_str().expect("a path");
    let err = run(&["--data-dir", data, "up"], &[]);
    assert!(err.contains("--services"), "{err}");
    let err = run(&["gateway"], &[]);
    assert!(err.contains("--config"), "{err}");
    let bad = dir.path().join("gateway.toml");
    std::fs::write(
        &bad,
        "[[routes]]\nprefix = \"/api\"\nupstream = \"nowhere\"\n[upstreams]\n",
    )
    .expect("written");
    let err = run(&["--config", bad.to_str().expect("a path"), "gateway"], &[]);
    assert!(err.contains("routes[0].upstream"), "{err}");
    let err = run(
        &["--data-dir", data, "service", "catalog", "--no-demo"],
        &[],
    );
    assert!(err.contains("bus.backend"), "{err}");
    let err = run(
        &["--data-dir", data, "service", "orders"],
        &[("AGORA_SERVICES__ORDERS__GRPC", "[\"orders:50051\"]")],
    );
    assert!(err.contains("services.orders.grpc"), "{err}");
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let out = agora()
        .args(["serve"])
        .env("AGORA_SERVER__REQUEST_TIMEOUT_MS", "soon")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.request_timeout_ms"), "{err}");
}

#[test]
fn errors_markdown_is_docs_errors_md() {
    let out = agora()
        .args(["errors", "--markdown"])
        .output()
        .expect("runs");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md"))
        .expect("docs/errors.md");
    assert_eq!(String::from_utf8_lossy(&out.stdout), doc);
}

#[test]
fn migrate_then_seed_loads_the_demo_catalog_once() {
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().to_str().expect("utf-8 path");
    let migrate = agora()
        .args(["migrate", "--data-dir", data])
        .output()
        .expect("runs");
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(dir.path().join("agora.db").exists());
    let seed = agora()
        .args(["seed", "--demo", "--data-dir", data])
        .output()
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&seed.stdout).contains("loaded 10 categories and 200 products")
    );
    let again = agora()
        .args(["seed", "--demo", "--data-dir", data])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing loaded"));
}

#[test]
fn an_in_memory_sqlite_url_is_refused() {
    let out = agora()
        .args(["migrate"])
        .env("AGORA_DATABASE__URL", "sqlite::memory:")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.url"));
}

/// With `telemetry.otlp_endpoint` set, `agora serve` exports its spans over
/// OTLP/HTTP (protobuf) to that URL, and sends what it still holds when
/// stopped (SIGTERM), before the batch's schedule would have.
#[tokio::test]
async fn serve_exports_its_spans_over_otlp_and_flushes_them_at_shutdown() {
    use std::sync::{Arc, Mutex};
    /// What the collector received: each export's content type and body.
    type Exports = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Exports = Arc::default();
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let sink_addr = sink.local_addr().expect("an address");
    let store = received.clone();
    let collector = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let store = store.clone();
                    async move {
                        let kind = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        store.lock().expect("the sink").push((kind, body.to_vec()));
                        ([("content-type", "application/x-protobuf")], Vec::new())
                    }
                },
            ),
        );
        axum::serve(sink, app).await
    });

    let dir = tempfile::tempdir().expect("a directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = agora()
        .args(["serve", "--no-demo", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.path().to_str().expect("utf-8")])
        .env(
            "AGORA_TELEMETRY__OTLP_ENDPOINT",
            format!("http://{sink_addr}/v1/traces"),
        )
        .env("AGORA_TELEMETRY__SERVICE_NAME", "agora-otlp-test")
        .env("AGORA_LOG__FILTER", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..500 {
        if client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "the server did not become ready");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let listed = client
        .get(format!("{base}/api/v1/products"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("an answer");
    assert!(listed.status().is_success());
    let stopped = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("joined")
        .expect("the server exits");
    assert!(status.success(), "{status}");
    collector.abort();

    let received = received.lock().expect("the sink").clone();
    assert!(!received.is_empty(), "nothing was exported");
    let (kind, body) = &received[0];
    assert_eq!(kind, "application/x-protobuf");
    let all: Vec<u8> = received.iter().flat_map(|(_, b)| b.clone()).collect();
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    // Protobuf keeps strings and bytes as they are: the service's name, the
    // request span's name, and the caller's trace id (16 raw bytes).
    assert!(contains(b"agora-otlp-test"), "{} bytes", body.len());
    assert!(contains(b"request"));
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert!(contains(&trace_bytes), "the caller's trace is exported");
}

/// `agora gateway` reads its file again on SIGHUP: a valid file changes the
/// routes without a restart, an invalid one is refused and the routes in force
/// stay.
#[tokio::test]
async fn the_gateway_reloads_its_file_on_sighup_and_keeps_it_when_the_new_one_is_invalid() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let upstream_addr = upstream.local_addr().expect("an address");
    let service = tokio::spawn(async move {
        let app = axum::Router::new()
            .route("/health/ready", axum::routing::get(|| async { "ready" }))
            .fallback(|uri: axum::http::Uri| async move { uri.path().to_owned() });
        axum::serve(upstream, app).await
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("gateway.toml");
    let config = |prefixes: &[&str]| {
        let routes: String = prefixes
            .iter()
            .map(|p| format!("[[routes]]\nprefix = \"{p}\"\nupstream = \"svc\"\n"))
            .collect();
        format!(
            "listen = \"127.0.0.1:{port}\"\n{routes}[upstreams.svc]\naddresses = [\"http://{upstream_addr}\"]\n"
        )
    };
    std::fs::write(&file, config(&["/api"])).expect("the file is written");
    let mut gateway = agora()
        .args(["gateway", "--config"])
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the gateway starts");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let status = |path: &'static str| {
        let request = client.get(format!("{base}{path}")).send();
        async move { request.await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    let mut up = false;
    for _ in 0..500 {
        if status("/api/x").await == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(up, "the gateway did not start");
    assert_eq!(status("/other/y").await, 404);
    let hangup = |pid: u32| {
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    };

    std::fs::write(&file, config(&["/api", "/other"])).expect("the file is written");
    hangup(gateway.id());
    let mut reloaded = false;
    for _ in 0..250 {
        if status("/other/y").await == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the routes");

    std::fs::write(&file, "listen = 12\n[[routes]]\n").expect("the file is written");
    hangup(gateway.id());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        gateway.try_wait().expect("a status").is_none(),
        "an invalid reload stopped the gateway"
    );
    assert_eq!(status("/api/x").await, 200);
    assert_eq!(
        status("/other/y").await,
        200,
        "an invalid reload changed the routes"
    );

    let stopped = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let exit = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .expect("joined")
        .expect("the gateway exits");
    assert!(exit.success(), "{exit}");
    service.abort();
}
