//! `marathon-sim`: run the simulated provider from the command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use marathon_sim::{Options, Scenario};

/// A simulated LLM provider (Anthropic Messages, OpenAI Chat Completions and
/// Responses over HTTP and WebSocket, the Gemini API; JSON and streams) whose
/// accounts rate-limit, expire, fail and reset connections as a scenario file says.
///
/// Clients authenticate with an account's key (`x-api-key` or
/// `Authorization: Bearer`). Admin endpoints: PUT /_sim/scenario,
/// POST|DELETE /_sim/accounts/<name>, GET /_sim/counts, POST /_sim/reset-counts.
#[derive(Debug, Parser)]
#[command(name = "marathon-sim", version, after_help = EXAMPLE)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Scenario file (TOML, or JSON if it ends in .json). Without it the
    /// simulator starts with no accounts: add them through the admin API.
    #[arg(long, short)]
    scenario: Option<PathBuf>,
    /// Benchmark mode: precomputed bodies, no request parsing, no logging.
    #[arg(long)]
    fast: bool,
    /// Do not log requests.
    #[arg(long, short)]
    quiet: bool,
}

const EXAMPLE: &str = "\
Example scenario (TOML):

  [[accounts]]
  name = \"alice\"
  key = \"sk-alice\"
  quota = { requests = 3, window = \"60s\", style = \"anthropic-unified\" }

  [[accounts]]
  name = \"bob\"
  key = \"sk-bob\"
  status = 529
  fail_first = 2

Try: curl -s localhost:8080/v1/messages -H 'x-api-key: sk-alice' \\
       -d '{\"model\":\"m\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("marathon-sim: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A plain message, not anyhow's Debug with a backtrace: the usual failure
    // is a typo in a scenario file, and the message already names file and line.
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marathon-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::default(),
    };
    scenario.fast |= args.fast;
    let options = Options {
        addr: SocketAddr::new(args.host, args.port),
        log: !args.quiet && !scenario.fast,
    };
    let accounts = scenario.accounts.len();
    let sim = marathon_sim::start_with(scenario, options)
        .await
        .context("starting the simulator")?;
    println!(
        "marathon-sim listening on {} ({accounts} accounts)",
        sim.url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sim.shutdown().await;
    Ok(())
}
