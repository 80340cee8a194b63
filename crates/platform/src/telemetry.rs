//! Logs, through `tracing`.
//!
//! Readable lines by default, one JSON object a line with `log.format = "json"`.
//! Every line logged while a request is handled carries that request's span, and
//! so its `request_id`.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it again (as tests do) is harmless.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.filter)
        .with_context(|| format!("`log.filter`: `{}` is not a valid filter", config.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.with_target(true).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // Already installed (several apps in one test process): keep the first.
    drop(result);
    Ok(())
}
