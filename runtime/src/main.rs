//! The `sluice` binary: a thin shell over [`sluice_runtime::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sluice_runtime::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if cli.verbose { "debug" } else { "info" })
            }),
        )
        .init();
    match sluice_runtime::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line (plus detail lines only with --verbose); the chain is already in the message.
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
