//! `marathon run <client> [args…]`: runs the client with marathon's settings
//! in its environment — against the running proxy, or one started in this
//! process for the run — without changing the user's files: Codex gets `-c`
//! overrides, opencode `OPENCODE_CONFIG_CONTENT`, Gemini CLI a home of its
//! own for the run (`GEMINI_CLI_HOME`) whose `.gemini` links to the user's
//! and holds the user's settings with marathon's merged in. The client's
//! exit code is marathon's.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use marathon_proxy::ProxySettings;

use super::Context;
use super::clients::{Client, Places, Setup};
use super::connect;
use crate::cli::RunArgs;
use crate::output::{Failure, errln};

pub(crate) fn run(ctx: &Context, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (program, rest) = command(args)?;
    // Before starting anything: is there a program to run?
    if !on_path(&program) {
        return Err(not_started(
            args.client,
            &program,
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    let config = ctx.config()?;
    let places = Places::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (mut target, running) = connect::target(ctx, &config);
        let proxy = match running {
            Some(_) => None,
            None => {
                let mut config = config.clone();
                config.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let settings = ProxySettings::from_config(&config)
                    .with_context(|| format!("in {}", ctx.paths.config_file.display()))?;
                let opened = ctx.open_store()?;
                let handle = super::serve::start_proxy(&config, settings, opened, 1).await?;
                target.url = handle.url();
                errln!(
                    "marathon: no proxy was running; serving this run at {}",
                    target.url
                );
                Some(handle)
            }
        };
        let setup = connect::client_setup(
            ctx,
            &config,
            args.client,
            args.provider.as_deref(),
            &target,
            &places,
        )?;
        let launch = Launch::prepare(args.client, &setup)?;
        // Ctrl-C reaches the client from the terminal; the client decides,
        // and marathon stays up (serving it) until it has ended.
        tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
        let status = tokio::process::Command::new(&program)
            .args(&launch.args)
            .args(rest)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
            .await;
        if let Some(proxy) = proxy {
            proxy.shutdown(Duration::from_secs(2)).await;
        }
        drop(launch);
        let status = status.map_err(|e| not_started(args.client, &program, e))?;
        Ok(exit_code(status))
    })
}

/// The program and its arguments: the client's own program, or for an SDK
/// the command given (`marathon run openai-sdk -- python app.py`).
fn command(args: &RunArgs) -> anyhow::Result<(OsString, &[OsString])> {
    if let Some(program) = args.client.program() {
        return Ok((program.into(), &args.args));
    }
    if args.client == Client::Curl {
        return Err(Failure::usage(
            "curl reads no settings from its environment",
            "use the lines `marathon connect curl` prints",
        )
        .into());
    }
    match args.args.split_first() {
        Some((program, rest)) => Ok((program.clone(), rest)),
        None => Err(Failure::usage(
            format!("{} needs the command to run", args.client.name()),
            format!(
                "for example: marathon run {} -- python app.py",
                args.client.name()
            ),
        )
        .into()),
    }
}

/// Whether `program` names an executable file (a path, or a name on PATH).
fn on_path(program: &OsString) -> bool {
    let path = std::path::Path::new(program);
    if path.components().count() > 1 {
        return path.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| d.join(program).is_file()))
}

/// What the client is started with; temporary files live as long as it.
struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    _files: Option<tempfile::TempDir>,
}

impl Launch {
    fn prepare(client: Client, setup: &Setup) -> anyhow::Result<Launch> {
        let mut launch = Launch {
            args: Vec::new(),
            env: setup
                .env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            _files: None,
        };
        let Some(file) = setup.files.first() else {
            return Ok(launch);
        };
        match client {
            Client::Codex => {
                for o in marathon_store::client_config::dotted_overrides(&file.settings) {
                    launch.args.push("-c".to_owned());
                    launch.args.push(o);
                }
            }
            Client::Opencode => {
                let content = serde_json::to_string(&file.settings)?;
                launch
                    .env
                    .push(("OPENCODE_CONFIG_CONTENT".to_owned(), content));
            }
            Client::GeminiCli => {
                // Gemini CLI takes a settings layer only from a root-owned
                // path; it reads the user's from `$GEMINI_CLI_HOME/.gemini`.
                let home = tempfile::tempdir()?;
                let real = file.path.parent().unwrap_or(&file.path);
                let name = file
                    .path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("settings.json");
                marathon_store::client_config::shadow_dir(
                    real,
                    &home.path().join(".gemini"),
                    name,
                    &file.settings,
                )?;
                launch.env.push((
                    "GEMINI_CLI_HOME".to_owned(),
                    home.path().display().to_string(),
                ));
                launch._files = Some(home);
            }
            _ => {}
        }
        Ok(launch)
    }
}

fn not_started(client: Client, program: &OsString, e: std::io::Error) -> anyhow::Error {
    let name = program.to_string_lossy();
    if e.kind() != std::io::ErrorKind::NotFound {
        return anyhow::Error::new(e).context(format!("cannot start {name}"));
    }
    let install = match client {
        Client::ClaudeCode => "install Claude Code: npm install -g @anthropic-ai/claude-code",
        Client::Codex => "install Codex: npm install -g @openai/codex",
        Client::Opencode => "install opencode: npm install -g opencode-ai",
        Client::GeminiCli => "install Gemini CLI: npm install -g @google/gemini-cli",
        _ => "check the command's name",
    };
    Failure::runtime(format!("{name} was not found on PATH"), install).into()
}

/// The client's exit code; a client killed by a signal exits 128 + its number,
/// as a shell reports it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            return ExitCode::from(u8::try_from(128 + signal).unwrap_or(1));
        }
    }
    ExitCode::FAILURE
}
