//! `biocage`: run Python in hardened, stateful sandboxes on Docker or rootless Podman.

mod args;
mod config;
mod doctor;
mod engine;
mod exit;
mod image;
mod inert;
mod mcp;
mod progress;
mod ps;
mod repl;
mod run;

use clap::Parser;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use args::{Cli, Command};

fn init_logs(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,biocage=debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BIOCAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Log lines can quote sandbox text; on a terminal they are shown inertly, which
    // leaves no room for colours.
    let on_terminal = inert::Stream::Stderr.is_terminal();
    let writer = if on_terminal {
        BoxMakeWriter::new(inert::inert_stderr)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    if on_terminal {
        logs.with_ansi(false).init();
    } else {
        logs.init();
    }
}

async fn dispatch(cli: &Cli) -> Result<i32, exit::CliError> {
    match &cli.command {
        Command::Run { file, args, opts } => run::run(cli, file.as_ref(), args, opts).await,
        Command::Repl { pool, opts } => repl::repl(cli, *pool, opts).await,
        Command::Image { command } => image::image(cli, command).await,
        Command::Doctor { image } => doctor::doctor(cli, image).await,
        Command::Ps => ps::ps(cli).await,
        Command::Gc { all } => ps::gc(cli, *all).await,
        Command::Mcp(args) => mcp::mcp(cli, args).await,
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logs(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("biocage: cannot start the async runtime: {e}");
            std::process::exit(exit::UNAVAILABLE);
        }
    };
    let code = match runtime.block_on(dispatch(&cli)) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.message, "exit_code": e.code})
                );
            } else {
                eprintln!("biocage: {}", inert::Stream::Stderr.show(&e.message));
            }
            e.code
        }
    };
    // Dropping the runtime waits for nothing: sessions were closed explicitly.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
