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
        !text.contains("hunter2") && !text.contains("very-secret"),
        "{text}"
    );
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
