//! The `sluice` binary: a thin shell over [`sluice_cli::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sluice_cli::cli::LogFormat;

fn main() -> ExitCode {
    let cli = sluice_cli::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if cli.verbose { "debug" } else { "info" })
    });
    let terminal = std::io::stderr().is_terminal();
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !terminal,
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        // One object per line, fields at the top level (what log collectors index).
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        logs.with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
            .init();
    }
    match sluice_cli::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`sluice ... | head -1`): it wanted no more.
        Err(err) if sluice_cli::cli::is_closed_stdout(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line (plus detail lines only with --verbose); the chain is already in the message.
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
