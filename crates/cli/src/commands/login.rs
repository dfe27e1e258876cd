//! `marathon auth login`: OAuth logins — a browser that comes back to a
//! loopback server (default), a pasted code (`--paste`), or a device code
//! (`--device`). The terminal talk goes to stderr; the result line and the
//! next step go to stdout. No token, code or verifier is ever printed.

use std::future::Future;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::Context as _;
use marathon_config::{Config, ProviderConfig};
use marathon_oauth::{FlowKind, LoginError, LoginResult, OAuthClient, OAuthPreset, open_browser};
use marathon_store::{AddResult, Store, StoreError};

use super::Context;
use crate::cli::LoginArgs;
use crate::output::{Failure, Style, outln};

/// How long the browser login may take before marathon gives up.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub(crate) fn run(ctx: &Context, args: &LoginArgs) -> anyhow::Result<()> {
    let name = ctx.provider(&args.provider)?;
    let config = ctx.config()?;
    let provider = config
        .providers
        .get(&name)
        .with_context(|| format!("provider {name} vanished from the config"))?;
    if !provider.has_oauth() {
        return Err(Failure::usage(
            format!(
                "{name} has no OAuth login (its kind, {}, takes API keys)",
                provider.kind
            ),
            format!(
                "add a key with `marathon auth add {name}`, or describe its OAuth server in \
                 [providers.{name}.oauth] in {} (see `marathon auth login --help`)",
                ctx.paths.config_file.display()
            ),
        )
        .into());
    }
    // Open the store first: a store problem should show before the user
    // spends a minute in the browser.
    let store = ctx.store()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(login(&name, provider, &config, args))?;
    save(&*store, &name, result, args, &config)
}

async fn login(
    name: &str,
    provider: &ProviderConfig,
    config: &marathon_config::Config,
    args: &LoginArgs,
) -> anyhow::Result<LoginResult> {
    // The token exchange leaves as every upstream request does (forward
    // proxy, extra CA); the account's own proxy once it has a label.
    let mut egress = marathon_oauth::Egress::from_config(&config.server)?;
    if let Some(proxy) = args
        .label
        .as_ref()
        .and_then(|l| provider.account_proxies.get(l))
    {
        egress = egress.through(proxy);
    }
    let http = marathon_oauth::HyperHttpClient::with_egress(Duration::from_secs(30), &egress);
    let client = OAuthClient::new(
        std::sync::Arc::new(http),
        std::sync::Arc::new(marathon_core::SystemClock),
    );
    let preset = marathon_oauth::from_config::preset_for(provider, client.http().as_ref())
        .await?
        .with_context(|| format!("{name} has no OAuth preset"))?;
    let flow = choose_flow(name, &preset, args)?;
    // Open a browser only for a person at a terminal; scripts and tests
    // follow the printed URL themselves.
    let may_open = !args.no_browser && std::io::stdout().is_terminal();
    let failed = |e: LoginError| login_failed(name, e);
    match flow {
        FlowKind::Loopback => {
            let login = client.start_loopback(&preset, &[]).await.map_err(failed)?;
            let url = login.authorize_url().to_string();
            eprintln!("Log in to {name} in your browser:\n\n  {url}\n");
            if may_open && open_browser(&url) {
                eprintln!("(opened in your browser)");
            }
            eprintln!(
                "The browser comes back to {} on this machine when you are done. \
                 Without a browser here, use --paste or --device.",
                login.redirect_uri()
            );
            with_spinner(
                "waiting for the browser to finish the login",
                login.wait(BROWSER_TIMEOUT),
            )
            .await
            .map_err(failed)
        }
        FlowKind::Paste => {
            let login = client.start_paste(&preset, &[]).map_err(failed)?;
            let url = login.authorize_url().to_string();
            eprintln!(
                "Open this URL in a browser (on any machine) and log in to {name}:\n\n  {url}\n"
            );
            if may_open && open_browser(&url) {
                eprintln!("(opened in your browser)");
            }
            eprintln!(
                "Then copy the code the page shows, or, if the browser ends on a page that does \
                 not load, that page's whole address."
            );
            let pasted = tokio::task::spawn_blocking(read_paste)
                .await
                .context("reading the pasted code")??;
            with_spinner("finishing the login", login.finish(&pasted))
                .await
                .map_err(failed)
        }
        FlowKind::Device => {
            let login = client.start_device(&preset, &[]).await.map_err(failed)?;
            eprintln!(
                "To log in to {name}, open\n\n  {}\n\nand enter the code  {}\n",
                login.verification_uri, login.user_code
            );
            if let Some(complete) = &login.verification_uri_complete {
                eprintln!("(or open {complete} , which fills the code in)");
            }
            let open = login
                .verification_uri_complete
                .clone()
                .unwrap_or_else(|| login.verification_uri.clone());
            if may_open && open_browser(&open) {
                eprintln!("(opened in your browser)");
            }
            let expires_in = marathon_core::fmt::HumanDuration(login.expires_in);
            with_spinner(
                &format!("waiting for you to approve (the code expires in {expires_in})"),
                login.wait(),
            )
            .await
            .map_err(failed)
        }
    }
}

/// The flow asked for, else the browser login, else the preset's first flow
/// (Copilot logs in by device code only).
fn choose_flow(name: &str, preset: &OAuthPreset, args: &LoginArgs) -> anyhow::Result<FlowKind> {
    let asked = if args.device {
        Some(FlowKind::Device)
    } else if args.paste {
        Some(FlowKind::Paste)
    } else {
        None
    };
    match asked {
        Some(flow) if preset.supports(flow) => Ok(flow),
        Some(flow) => Err(Failure::usage(
            format!("{name} cannot log in with {}", flow_name(flow)),
            format!(
                "{name} supports: {}",
                preset
                    .flows
                    .iter()
                    .map(|f| flow_name(*f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into()),
        None if preset.supports(FlowKind::Loopback) => Ok(FlowKind::Loopback),
        None => preset.flows.first().copied().ok_or_else(|| {
            Failure::usage(
                format!("{name}'s OAuth settings allow no login flow"),
                "give its [providers.<name>.oauth] section an issuer, authorize_url or device_url",
            )
            .into()
        }),
    }
}

fn flow_name(flow: FlowKind) -> &'static str {
    match flow {
        FlowKind::Loopback => "the browser login (the default)",
        FlowKind::Paste => "--paste",
        FlowKind::Device => "--device",
    }
}

fn login_failed(name: &str, e: LoginError) -> anyhow::Error {
    let hint = match &e {
        LoginError::TimedOut(_) | LoginError::DeviceExpired => {
            "run the command again; --paste and --device work without a browser on this machine"
        }
        LoginError::StateMismatch => "use the URL printed by the newest `marathon auth login`",
        LoginError::Denied { .. } => {
            "the provider refused the login; check the account you chose, then run the command again"
        }
        LoginError::BadPaste(_) => {
            "paste the code shown after logging in, or the whole address the browser ended on"
        }
        LoginError::Bind { .. } => "or log in with --paste or --device",
        _ => "check the network and the provider's OAuth settings, then run the command again",
    };
    Failure::runtime(format!("login to {name} failed: {e}"), hint).into()
}

/// One line from stdin: the code, `code#state`, or the redirect URL.
fn read_paste() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Paste it here: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .take(16 * 1024)
        .read_line(&mut line)
        .context("reading the pasted code from stdin")?;
    if line.trim().is_empty() {
        return Err(Failure::usage(
            "nothing was pasted",
            "paste the code (or the address the browser ended on) and press Enter",
        )
        .into());
    }
    Ok(line)
}

/// Awaits `fut`, showing a spinner on a terminal (one plain line otherwise).
async fn with_spinner<T>(message: &str, fut: impl Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        eprintln!("{message}... (Ctrl-C to cancel)");
        return fut.await;
    }
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let fut = std::pin::pin!(fut);
    let mut fut = fut;
    let mut tick = tokio::time::interval(Duration::from_millis(120));
    let mut frame = 0usize;
    let out = loop {
        tokio::select! {
            v = &mut fut => break v,
            _ = tick.tick() => {
                eprint!("\r{} {message}... (Ctrl-C to cancel)", FRAMES[frame % FRAMES.len()]);
                let _ = std::io::stderr().flush();
                frame += 1;
            }
        }
    };
    // Clear the spinner line.
    eprint!("\r\x1b[2K");
    out
}

/// Stores the login: the same identity updates its account, another adds one.
fn save(
    store: &dyn Store,
    name: &str,
    result: LoginResult,
    args: &LoginArgs,
    config: &Config,
) -> anyhow::Result<()> {
    let identity = result.identity.clone();
    let mut new = result.into_new_account(name, args.label.clone());
    new.priority = args.priority.unwrap_or(0);
    let who = identity
        .as_deref()
        .map(|i| format!(" as {i}"))
        .unwrap_or_default();
    let fallback = {
        let mut n = new.clone();
        n.label = None;
        n
    };
    // A taken --label must not throw away a login the user just finished:
    // store it under the default label and say how to rename it.
    let added = match store.add(new) {
        Err(StoreError::LabelTaken { label, .. }) => {
            let added = store.add(fallback)?;
            eprintln!(
                "{} the label {label:?} belongs to another {name} account; stored this one as {:?} \
                 (rename it with `marathon auth rename {name} {:?} <label>`)",
                Style::for_stderr().yellow("note:"),
                added.account().label,
                added.account().label
            );
            added
        }
        other => other?,
    };
    match added {
        AddResult::Added(a) => {
            outln!(
                "added {}/{} (oauth{who}, priority {})",
                a.provider,
                a.label,
                a.priority
            );
        }
        AddResult::Updated(a) => {
            // Re-login keeps the account's label and priority unless asked.
            let mut a = a;
            if let Some(label) = args.label.clone().filter(|l| *l != a.label) {
                a = store.update(&a.id, &mut |acc| acc.label = label.clone())?;
            }
            if let Some(p) = args.priority.filter(|p| *p != a.priority) {
                a = store.update(&a.id, &mut |acc| acc.priority = p)?;
            }
            outln!(
                "updated {}/{}: logged in again{who}; its new tokens replace the old ones",
                a.provider,
                a.label
            );
        }
    }
    if identity.is_none() {
        let style = Style::for_stderr();
        eprintln!(
            "{} {name} did not say who this account is, so logging in again will add another \
             account instead of updating this one",
            style.yellow("note:")
        );
    }
    outln!(
        "next: run `marathon serve` (a running proxy picks the account up within seconds) and \
         point your tool at http://{}/{name}",
        config.server.listen
    );
    Ok(())
}
