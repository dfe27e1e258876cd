//! `marathon`: the command-line front end. CLI definition plus glue; the work
//! happens in the library crates (store, config, and later the proxy).

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(output::report_error(&err)),
    }
}

fn run() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let ctx = commands::Context::new(cli.home.as_deref());
    match cli.command {
        cli::Command::Auth(auth) => commands::auth::run(&ctx, auth.command),
        cli::Command::Status(args) => commands::status::run(&ctx, &args),
    }
}
