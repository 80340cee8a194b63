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
/// Built with `no_thp`: transparent huge pages would back each thread's first
/// allocation with 2 MiB, most of an idle server's memory.
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
    /// Run one module as its own service: its REST routes, its port over gRPC,
    /// its loops and consumers; the modules it calls are reached at
    /// `services.<module>.grpc` (docs/deployment.md).
    Service(ServiceArgs),
    /// Run the gateway: the single entry point that routes requests by path
    /// prefix to pools of service instances (docs/deployment.md).
    Gateway(GatewayArgs),
    /// Development launcher: the gateway and one process per module (with
    /// `--replicas N` of each) on loopback, against the local PostgreSQL,
    /// Redis and NATS; stops them all on Ctrl-C.
    Up(UpArgs),
    /// Run pending database migrations, then exit.
    Migrate,
    /// Load data into the database.
    Seed(SeedArgs),
    /// Print the effective configuration (secrets masked).
    Config,
    /// Run the functions (thumbnails, receipts, the nightly export) as a
    /// worker on the shared bus (`bus.backend = "nats"`); `agora serve` runs
    /// them itself unless `functions.in_process = false`.
    Functions(FunctionsArgs),
    /// Administration: accounts and signing keys.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Load a running Agora with virtual customers and print a latency table
    /// per request kind (docs/performance.md).
    Loadgen(Box<agora_loadgen::LoadgenArgs>),
    /// Print the catalogue of error codes.
    Errors {
        /// As the Markdown page docs/errors.md.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Debug, Args)]
struct FunctionsArgs {
    #[command(subcommand)]
    command: Option<FunctionsCommand>,
}

#[derive(Debug, Subcommand)]
enum FunctionsCommand {
    /// Run one function now, then exit.
    #[command(subcommand)]
    Run(RunFunction),
}

#[derive(Debug, Subcommand)]
enum RunFunction {
    /// Export the orders of one finished UTC day as CSV to the object storage
    /// (`exports/orders/DAY.csv`), replacing an earlier export of that day.
    Export {
        /// The day, `YYYY-MM-DD` (UTC).
        #[arg(long, value_name = "DAY")]
        date: String,
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
struct ServiceArgs {
    /// The module to run.
    module: agora::app::Module,
    /// The address of its REST routes [default: `server.addr`].
    #[arg(long, value_name = "ADDR")]
    addr: Option<std::net::SocketAddr>,
    /// The address of its gRPC port [default: `server.grpc_addr`, 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<std::net::SocketAddr>,
    /// The catalog service: do not load the demo catalog into an empty database.
    #[arg(long)]
    no_demo: bool,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Run the services shape (the monolith is `agora serve`).
    #[arg(long)]
    services: bool,
    /// Processes per module.
    #[arg(long, default_value_t = 1, value_name = "N")]
    replicas: u32,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    addr: std::net::SocketAddr,
    /// The PostgreSQL server: a database `<PREFIX>_<module>` is made on it for each module.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432",
        value_name = "URL"
    )]
    postgres: String,
    /// The prefix of the fleet's database names (1-40 of a-z, 0-9 and _,
    /// starting with a letter): a second fleet on the same server needs its own.
    #[arg(long, default_value = "agora_up", value_name = "PREFIX")]
    databases: String,
    /// The Redis of the catalog's cache and the gateway's rate limits.
    #[arg(long, default_value = "redis://127.0.0.1:6379", value_name = "URL")]
    redis: String,
    /// The NATS server (with JetStream) of the bus.
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_name = "URL")]
    nats: String,
}

/// `agora gateway --config gateway.toml`: the global `--config` names the
/// gateway's own configuration (routes and upstream pools), not Agora's.
#[derive(Debug, Args)]
struct GatewayArgs {}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an account with chosen roles, such as the first administrator. The
    /// password is asked for on the terminal (never an argument).
    CreateUser(CreateUserArgs),
    /// Add a new token signing key to the key file; servers use it after a restart,
    /// and the previous key keeps verifying until its tokens have expired.
    RotateSigningKey,
}

#[derive(Debug, Args)]
struct CreateUserArgs {
    /// The account's email.
    #[arg(long)]
    email: String,
    /// The display name [default: the part of the email before the @].
    #[arg(long)]
    name: Option<String>,
    /// A role: customer, staff or admin. Repeat for several.
    #[arg(long = "role", value_name = "ROLE", required = true, value_parser = parse_role)]
    roles: Vec<agora_kernel::Role>,
    /// Read the password from the first line of standard input instead of a prompt.
    #[arg(long)]
    password_stdin: bool,
}

fn parse_role(s: &str) -> Result<agora_kernel::Role, String> {
    agora_kernel::Role::parse(s)
        .ok_or_else(|| format!("`{s}` is not a role: customer, staff or admin"))
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("password: ")?;
    let again = rpassword::prompt_password("password (again): ")?;
    if first != again {
        anyhow::bail!("the passwords differ");
    }
    Ok(first)
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
    if let Command::Loadgen(args) = cli.command {
        // A client of another process: no configuration, database or logs of its own.
        return loadgen(*args);
    }
    if let Command::Gateway(_) = &cli.command {
        // Its own configuration file; no database.
        let Some(file) = &cli.config else {
            anyhow::bail!(
                "`agora gateway` needs --config FILE: its routes and upstream pools (docs/deployment.md)"
            );
        };
        return gateway(file, cli.log_format);
    }
    let mut overrides = Overrides {
        data_dir: cli.data_dir,
        log_format: cli.log_format,
        ..Overrides::default()
    };
    match &cli.command {
        Command::Serve(args) => {
            overrides.addr = args.addr;
            overrides.no_demo = args.no_demo;
        }
        Command::Service(args) => {
            overrides.addr = args.addr;
            overrides.grpc_addr = args.grpc_addr;
            overrides.no_demo = args.no_demo;
        }
        _ => {}
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
            let telemetry = telemetry::init(&config.log, &config.telemetry)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let outcome = runtime.block_on(async move {
                match command {
                    Command::Serve(_) => {
                        let app = Application::build(config).await?;
                        app.shutdown_handle().trigger_on_os_signals();
                        app.run_until_stopped().await
                    }
                    Command::Service(args) => {
                        let app = Application::service(config, args.module).await?;
                        app.shutdown_handle().trigger_on_os_signals();
                        app.run_until_stopped().await
                    }
                    Command::Up(args) => {
                        if !args.services {
                            anyhow::bail!(
                                "`agora up` starts the services shape: pass --services \
                                 (the monolith is `agora serve`)"
                            );
                        }
                        agora::up::run(agora::up::UpSettings {
                            replicas: args.replicas,
                            gateway_addr: args.addr,
                            postgres_url: args.postgres,
                            database_prefix: args.databases,
                            redis_url: args.redis,
                            nats_url: args.nats,
                            data_dir: config.data_dir.clone(),
                        })
                        .await
                    }
                    Command::Migrate => agora::app::migrate_only(&config).await,
                    Command::Functions(FunctionsArgs { command: None }) => {
                        agora::app::run_functions(&config).await
                    }
                    Command::Functions(FunctionsArgs {
                        command: Some(FunctionsCommand::Run(RunFunction::Export { date })),
                    }) => {
                        let exported = agora::app::export_day(&config, &date).await?;
                        println!(
                            "exported {} orders ({} lines, {} bytes) to {}",
                            exported.orders, exported.rows, exported.bytes, exported.key
                        );
                        Ok(())
                    }
                    Command::Seed(_) => agora::app::seed_demo(&config).await,
                    Command::Admin(AdminCommand::CreateUser(args)) => {
                        let password = read_password(args.password_stdin)?;
                        let name = args.name.unwrap_or_else(|| {
                            args.email.split('@').next().unwrap_or_default().to_string()
                        });
                        let user = agora::app::create_user(
                            &config,
                            &args.email,
                            &name,
                            password,
                            args.roles,
                        )
                        .await?;
                        println!(
                            "created {} ({}) with roles {:?}",
                            user.id, user.email, user.roles
                        );
                        Ok(())
                    }
                    Command::Admin(AdminCommand::RotateSigningKey) => {
                        let kid = agora::app::rotate_signing_key(&config)?;
                        println!("new signing key {kid}: restart the servers to sign with it");
                        Ok(())
                    }
                    Command::Config
                    | Command::Errors { .. }
                    | Command::Loadgen(_)
                    | Command::Gateway(_) => Ok(()),
                }
            });
            // Outside the runtime: the exporter's client blocks.
            drop(runtime);
            telemetry.shutdown();
            outcome
        }
    }
}

/// `agora gateway --config FILE`: serves until SIGTERM or Ctrl-C; SIGHUP
/// reads FILE again.
fn gateway(file: &std::path::Path, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let config = agora_gateway::GatewayConfig::load(file)?;
    let log = agora_platform::config::LogConfig {
        format: log_format.unwrap_or(LogFormat::Text),
        ..Default::default()
    };
    let telemetry = telemetry::init(&log, &Default::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async move {
        let shutdown = agora_platform::Shutdown::new();
        shutdown.trigger_on_os_signals();
        let gateway = agora_gateway::Gateway::new(config)?;
        #[cfg(unix)]
        gateway.reload_on_hangup(file.to_path_buf())?;
        gateway.run(shutdown).await
    });
    drop(runtime);
    telemetry.shutdown();
    outcome
}

/// `agora loadgen`: runs the load, prints the table. A run in which the
/// server answered errors other than the expected out-of-stock ones (or did
/// not answer) fails, after the table, so that scripts notice.
fn loadgen(args: agora_loadgen::LoadgenArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(agora_loadgen::run(args))?;
    print!("{}", report.table());
    let unexpected = report.total.unexpected_errors;
    if unexpected > 0 {
        anyhow::bail!(
            "{unexpected} of {} requests failed unexpectedly (by code in the table above)",
            report.total.count
        );
    }
    Ok(())
}
