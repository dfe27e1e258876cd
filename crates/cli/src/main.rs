//! `marathon`: the command-line front end. CLI definition plus glue; the work
//! happens in the library crates (store, config, and later the proxy).

mod backend;
mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head -1`): nothing failed.
        Err(err) if output::is_stdout_closed(&err) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(output::report_error(&err)),
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let ctx = commands::Context::new(cli.home.as_deref());
    match cli.command {
        cli::Command::Auth(auth) => commands::auth::run(&ctx, auth.command),
        cli::Command::Status(args) => commands::status::run(&ctx, &args),
        cli::Command::Statusline(args) => commands::statusline::run(&ctx, &args),
        cli::Command::Serve(args) => commands::serve::run(&ctx, &args),
        cli::Command::Connect(args) => commands::connect::run(&ctx, &args),
        // The client's own exit code.
        cli::Command::Run(args) => return commands::run::run(&ctx, &args),
        cli::Command::Demo(args) => commands::demo::run(&args),
        cli::Command::Store(cli::StoreCommand::Copy { to }) => commands::store::copy(&ctx, &to),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line. An unexpected positional argument is not echoed
/// back, as clap would: the likeliest one is a key pasted where it does not
/// belong, and the error may end up in a log.
fn parse() -> Result<cli::Cli, ExitCode> {
    let err = match cli::Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(err) => err,
    };
    let positional = matches!(
        err.get(ContextKind::InvalidArg),
        Some(ContextValue::String(arg)) if !arg.starts_with('-')
    );
    if err.kind() == ErrorKind::UnknownArgument && positional {
        eprintln!("error: unexpected extra argument (not shown, in case it is a key or token)");
        eprintln!(
            "hint: marathon never takes a key on the command line; pipe it on stdin \
             (printf %s \"$KEY\" | marathon auth add <provider> --label <name>). \
             `--help` on each command shows its arguments"
        );
        return Err(ExitCode::from(2));
    }
    let _ = err.print();
    Err(ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2)))
}
