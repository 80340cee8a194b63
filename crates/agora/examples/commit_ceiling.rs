//! The commit ceiling of SQLite on this machine: one-row insert transactions in a
//! loop on one connection, with the pragmas Agora uses (WAL, `synchronous=FULL`).
//! `scripts/bench-checkout.sh` sets checkout throughput beside it: a checkout
//! costs a number of commits, and this is how many commits the disk allows.
//!
//! Usage: `commit_ceiling FILE COUNT`

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(count)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: commit_ceiling FILE COUNT");
    };
    let count: u32 = count.parse()?;
    let conn = rusqlite::Connection::open(&file)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         CREATE TABLE IF NOT EXISTS ceiling (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)",
    )?;
    let payload = "x".repeat(200);
    let started = Instant::now();
    for _ in 0..count {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.execute("INSERT INTO ceiling (payload) VALUES (?1)", [&payload])?;
        conn.execute_batch("COMMIT")?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "commits={count} seconds={secs:.2} commits_per_s={:.0}",
        f64::from(count) / secs
    );
    Ok(())
}
