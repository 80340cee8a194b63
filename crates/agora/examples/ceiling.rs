//! The benchmark ceiling: a bare axum server that answers every GET with the same
//! bytes, read once from a file. `scripts/bench-catalog.sh` loads it beside Agora in
//! the same run, so Agora's figures can be read as a fraction of what axum and
//! this machine allow.
//!
//! Usage: `ceiling ADDR FILE`

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(file)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: ceiling ADDR FILE");
    };
    let body: Arc<[u8]> = std::fs::read(&file)?.into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new().fallback(get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body.to_vec()) }
        }));
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
