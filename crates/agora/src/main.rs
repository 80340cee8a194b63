//! `agora`: the one binary. `main` only parses arguments and hands over to the
//! composition root in [`agora::app`].

use std::path::PathBuf;
use std::process::ExitCode;

use agora::app::Application;
use agora_platform::config::{Config, LogFormat, Overrides};
use agora_platform::telemetry;
use clap::{Args, Parser, Subcommand};

/// mimalloc: measurably faster than the system allocator for a server that
/// allocates small buffers per request (docs/performance.md), and returns memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Agora: a commerce backend — accounts, catalog, inventory, carts, orders and
/// payments — that runs as one process with embedded defaults.
#[derive(Debug, Parser)]
#[command(name = "agora", version, about, long_about = None)]
struct Cli {
    /// A TOML configuration file (see docs/configuration.md).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to keep the database and other files [default: ./agora-data].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `text` (readable) or `json` log lines [default: text].
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the monolith: every module in one process.
    Serve(ServeArgs),
    /// Run pending database migrations, then exit.
    Migrate,
    /// Load data into the database.
    Seed(SeedArgs),
    /// Print the effective configuration (secrets masked).
    Config,
    /// Print the catalogue of error codes.
    Errors {
        /// As the Markdown page docs/errors.md.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    addr: Option<std::net::SocketAddr>,
    /// Do not load the demo catalog into an empty database.
    #[arg(long)]
    no_demo: bool,
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// The demo catalog (about 200 products in 10 categories), if the catalog is empty.
    #[arg(long, required = true)]
    demo: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = Overrides {
        data_dir: cli.data_dir,
        log_format: cli.log_format,
        ..Overrides::default()
    };
    if let Command::Serve(args) = &cli.command {
        overrides.addr = args.addr;
        overrides.no_demo = args.no_demo;
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Errors { markdown } => {
            if markdown {
                print!("{}", agora_kernel::error::render_error_catalogue_markdown());
            } else {
                for code in agora_kernel::ErrorCode::ALL {
                    println!(
                        "{:<32} {}  {}",
                        code.as_str(),
                        code.status().as_u16(),
                        code.description()
                    );
                }
            }
            Ok(())
        }
        command => {
            telemetry::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                match command {
                    Command::Serve(_) => {
                        let app = Application::build(config).await?;
                        app.shutdown_handle().trigger_on_os_signals();
                        app.run_until_stopped().await
                    }
                    Command::Migrate => agora::app::migrate_only(&config).await,
                    Command::Seed(_) => agora::app::seed_demo(&config).await,
                    Command::Config | Command::Errors { .. } => Ok(()),
                }
            })
        }
    }
}
