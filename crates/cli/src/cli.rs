//! The command line, as clap types. Every command's `--help` carries examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub(crate) use crate::commands::clients::Client;

const MAIN_EXAMPLES: &str = "\
Examples:
  marathon demo                      # see failover, cooldown and recovery on a simulated provider
  printf %s \"$ANTHROPIC_API_KEY\" | marathon auth add anthropic --label work
  marathon auth login anthropic      # a Claude Pro/Max login in the browser
  marathon auth import claude-code
  marathon serve                     # then, in another terminal:
  marathon connect claude-code       # prints what to set (or: marathon run claude)
  marathon run codex                 # runs Codex through marathon
  marathon status

Files: --home DIR (or MARATHON_HOME) keeps DIR/config.toml and DIR/data/.
Otherwise ~/.config/marathon/config.toml and ~/.local/share/marathon/ (XDG).";

/// Keep LLM coding tools running across several accounts per provider.
#[derive(Debug, Parser)]
#[command(name = "marathon", version, after_help = MAIN_EXAMPLES, propagate_version = true)]
pub(crate) struct Cli {
    /// Directory for config.toml and data/ (instead of the XDG directories)
    #[arg(long, global = true, env = "MARATHON_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage accounts: login, add, list, remove, rename, enable/disable, import
    Auth(AuthArgs),
    /// Show every account and its state (live from a running proxy, else from the store)
    #[command(after_help = "\
Examples:
  marathon status
  marathon status --json | jq -r '.providers[].accounts[] | select(.state != \"ready\") | .label'
  marathon status --watch            # live: countdowns, window bars, requests/min, events; q quits

When `marathon serve` runs (on any port; it records where) or a proxy answers
at the configured address, this shows its live view: cooldown countdowns,
counters, the last error and quota bars. Otherwise (or with --offline) it shows
the stored accounts and the last saved cooldowns. --json prints the same
document either way (\"source\": \"live\" or \"store\"); states are ready,
cooling, probing, needs_login and disabled. An invalid config is reported, not
skipped.")]
    Status(StatusArgs),
    /// One line for Claude Code's status line: the account serving this session and its windows
    #[command(after_help = STATUSLINE_HELP)]
    Statusline(StatuslineArgs),
    /// Run the rotating proxy (point your tools at http://127.0.0.1:8787/<provider>)
    #[command(after_help = "\
Examples:
  marathon serve
  marathon serve --listen 127.0.0.1:9000
  MARATHON_LOG=debug marathon serve

Then point a client at the proxy: `marathon connect <client>` prints what to
set, `marathon run <client>` runs it with those settings. The client's own
API key is replaced by the chosen account's (any value will do, or the access
key when the proxy requires one).

The address is recorded in the data directory (serve.json) while it runs, so
`status`, `connect` and `run` find it on any port. Ctrl-C or SIGTERM stops it.

Live state: marathon status, or http://127.0.0.1:8787/_marathon/ in a browser.")]
    Serve(ServeArgs),
    /// Print what to set so a client uses marathon (--write: change its config file)
    #[command(after_help = CONNECT_HELP)]
    Connect(ConnectArgs),
    /// Run a client (claude, codex, opencode, gemini) through marathon
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// See marathon work: a simulated provider, three accounts, one runs out of quota
    #[command(after_help = "\
Runs entirely on this machine: starts the bundled provider simulator and the
proxy in a temporary directory, adds three demo accounts, and sends requests
until the first account hits its quota window, cools down, and recovers.
Nothing you have configured is read or changed.

Examples:
  marathon demo
  marathon demo --window 5s --requests 20")]
    Demo(DemoArgs),
    /// Move the account store between backends (files, Redis)
    #[command(subcommand)]
    Store(StoreCommand),
}

/// `marathon store ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy every account (credentials, ids, labels) and the hot state from the
    /// configured store to another: a Redis URL or a data directory
    #[command(after_help = "\
Examples:
  marathon store copy --to redis://10.0.0.5:6379/0
  MARATHON_STORE_BACKEND=redis MARATHON_STORE_URL=redis://10.0.0.5:6379/0 \\
    marathon store copy --to ~/.local/share/marathon

The source is the configured store ([store] in the config, or MARATHON_STORE_*).
A Redis destination uses [store] username, password and prefix. Accounts keep
their ids; an account already at the destination with the same id is replaced.
Stop the proxies first so no refresh token rotates during the copy; then point
[store] at the destination.")]
    Copy {
        /// Destination: redis://host:port/db, rediss://..., or a directory
        #[arg(long, value_name = "URL|DIR")]
        to: String,
    },
}

const STATUSLINE_HELP: &str = "\
Reads the JSON Claude Code gives a statusLine command on stdin (its
session_id) and prints one line: the account the running proxy has pinned
that session to and its quota windows, e.g. `work 5h 42% · 7d 12%`. Before
the session's first request it shows the provider's accounts at a glance;
without a proxy, `marathon: not running`. Never waits more than a second.

In ~/.claude/settings.json:
  {\"statusLine\": {\"type\": \"command\", \"command\": \"marathon statusline\"}}

Examples:
  echo '{\"session_id\":\"abc\"}' | marathon statusline
  marathon statusline --provider corp < session.json";

const CONNECT_HELP: &str = "\
Prints the environment variables (and, for Codex, opencode and Gemini CLI,
the config file settings) that point the client at the running proxy, or at
the configured address when none runs. Settings never hold an access key:
files name the MARATHON_API_KEY variable instead.

--write merges the file settings into the client's own config file, keeping
everything else in it (the original is kept as <file>.marathon-backup);
--undo puts the original back. Variables still go in your shell.

Examples:
  eval \"$(marathon connect claude-code)\"
  marathon connect codex --write
  marathon connect codex --undo
  marathon connect openai-sdk --provider local-llm";

const RUN_HELP: &str = "\
Starts the client with marathon's settings in its environment, against the
running proxy, or against one started for this run when none is running.
Your own config files are not changed: Codex gets -c overrides, opencode
OPENCODE_CONFIG_CONTENT, Gemini CLI a settings layer of its own. The client's
exit code is marathon's.

Examples:
  marathon run claude-code
  marathon run codex exec \"fix the failing test\"
  marathon run gemini-cli -- -p \"summarise this repository\"
  marathon run openai-sdk -- python app.py";

/// `marathon statusline`.
#[derive(Debug, Args)]
pub(crate) struct StatuslineArgs {
    /// The provider whose accounts to show when the session has none yet
    #[arg(long, default_value = "anthropic")]
    pub(crate) provider: String,
}

/// `marathon connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The client to set up
    pub(crate) client: Client,
    /// The marathon provider its requests go to [default: the one it speaks; for
    /// Codex `codex`, or `openai` when only that has accounts]
    #[arg(long, value_name = "NAME")]
    pub(crate) provider: Option<String>,
    /// Merge the settings into the client's config file (backed up first)
    #[arg(long, conflicts_with = "undo")]
    pub(crate) write: bool,
    /// Restore the client's config file from the backup --write made
    #[arg(long)]
    pub(crate) undo: bool,
}

/// `marathon run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The client to run
    pub(crate) client: Client,
    /// The marathon provider its requests go to (as for `connect`)
    #[arg(long, value_name = "NAME")]
    pub(crate) provider: Option<String>,
    /// Arguments for the client (for an SDK: the command to run)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub(crate) args: Vec<std::ffi::OsString>,
}

/// `marathon serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default from config: 127.0.0.1:8787)
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Event loops serving requests, each on its own thread and listener
    /// (SO_REUSEPORT): 1 (the default) is the cheapest per request and ample
    /// for a laptop; "auto" is one per core, for a busy team gateway
    #[arg(long, default_value = "1", value_name = "N|auto", value_parser = parse_workers, env = "MARATHON_WORKERS")]
    pub(crate) workers: usize,
}

/// `--workers`: a positive number, or `auto` for one per core.
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim() {
        "auto" => Ok(marathon_proxy::auto_workers()),
        n => match n.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "expected a number from 1 to 1024, or \"auto\" (got {n:?})"
            )),
        },
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event
    Text,
    /// One JSON object per line
    Json,
}

/// `marathon demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Length of the first account's quota window
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) window: std::time::Duration,
    /// Requests the first account may make per window
    #[arg(long, default_value_t = 4)]
    pub(crate) quota: u64,
    /// Pause between requests
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    pub(crate) interval: std::time::Duration,
    /// Stop after this many requests even if the account has not recovered yet
    #[arg(long, default_value_t = 60)]
    pub(crate) requests: u32,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration (try 10s, 500ms, 2m)"))
}

/// `marathon auth`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  printf %s \"$OPENAI_API_KEY\" | marathon auth add openai --label work
  marathon auth login codex
  marathon auth list
  marathon auth rename openai work work-2024
  marathon auth disable openai work-2024
  marathon auth import codex --move")]
pub(crate) struct AuthArgs {
    #[command(subcommand)]
    pub(crate) command: AuthCommand,
}

/// `marathon auth <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuthCommand {
    /// Log in to a provider with OAuth (browser, pasted code, or device code)
    #[command(after_help = LOGIN_HELP)]
    Login(LoginArgs),
    /// Add an API-key account (the key is read from stdin or a hidden prompt)
    #[command(after_help = "\
The key is never taken from the command line (it would end up in shell
history and the process list): pipe it on stdin, or run in a terminal and
paste it at the hidden prompt. Adding the same key again updates it.

Examples:
  printf %s \"$ANTHROPIC_API_KEY\" | marathon auth add anthropic --label work
  marathon auth add openai --label personal --priority 10   # prompts for the key
  pass show openai/team | marathon auth add openai --label team")]
    Add(AddArgs),
    /// List accounts (no secrets are shown)
    #[command(after_help = "\
Examples:
  marathon auth list
  marathon auth list --provider anthropic
  marathon auth list --json")]
    List(ListArgs),
    /// Remove one account
    #[command(after_help = "\
Removes only the named account; other accounts of the provider stay.

Example:
  marathon auth remove anthropic old-work")]
    Remove(AccountRef),
    /// Give an account a new label
    #[command(after_help = "\
Example:
  marathon auth rename anthropic ana@example.com work")]
    Rename(RenameArgs),
    /// Stop using an account without removing it
    #[command(after_help = "\
Example:
  marathon auth disable openai personal
  marathon auth enable openai personal")]
    Disable(AccountRef),
    /// Use a disabled account again
    #[command(after_help = "\
Example:
  marathon auth enable openai personal")]
    Enable(AccountRef),
    /// Set an account's priority (lower is preferred)
    #[command(after_help = "\
With the `priority` strategy the lowest number is tried first; other
strategies use it to break ties. Negative numbers are allowed.

Examples:
  marathon auth priority anthropic work 0
  marathon auth priority anthropic personal 10")]
    Priority(PriorityArgs),
    /// Import accounts from another tool's credential file
    #[command(after_help = "\
Default source files:
  opencode      ~/.local/share/opencode/auth.json
  claude-code   ~/.claude/.credentials.json
  codex         ~/.codex/auth.json
  gemini        ~/.gemini/oauth_creds.json

An imported OAuth login shares its refresh token with the tool it came from.
Refresh tokens are single-use: when one side refreshes, the other's copy stops
working. With --move, marathon takes those logins over and removes them from
the source file (after they are safely stored here); log the other tool in
again with a different account if you still need it. API keys can be shared
and stay in the source unless --move-all.

Importing the same login again (same identity, key or refresh token) updates
the account instead of adding a second one.

Examples:
  marathon auth import claude-code
  marathon auth import codex --move
  marathon auth import opencode --path ./backup/auth.json")]
    Import(ImportArgs),
}

const LOGIN_HELP: &str = "\
Flows:
  (default)   a browser login that comes back to a one-off server on
              127.0.0.1 (authorization code + PKCE); the URL is always
              printed, and opened in your browser when run in a terminal
  --paste     for a machine without a browser: open the URL anywhere, then
              paste the code shown (or the whole address the browser ended
              on) here
  --device    the device flow: open the printed address on any device and
              enter the code shown

Logging in again as the same identity (email or account) updates that
account's tokens; another identity adds an account, labelled with its email
unless --label is given. Tokens are stored in the account store (mode 0600)
and never printed.

Built-in logins: anthropic (Claude Pro/Max), codex (ChatGPT), copilot
(GitHub), google (Gemini). Other providers log in to the OpenID/OAuth server
in their [providers.<name>.oauth] config section.

Examples:
  marathon auth login anthropic
  marathon auth login codex --device
  marathon auth login anthropic --paste --label work
  marathon auth login corp --no-browser --priority 10";

/// `marathon auth login`.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// Provider name (e.g. anthropic, codex, copilot, google, or one from your config)
    pub(crate) provider: String,
    /// Label for a new account, unique per provider [default: the account's email or id]
    #[arg(long, short)]
    pub(crate) label: Option<String>,
    /// Paste the code (or the redirect URL) instead of waiting for the browser
    #[arg(long, conflicts_with = "device")]
    pub(crate) paste: bool,
    /// Log in with a device code shown here, approved on any device
    #[arg(long)]
    pub(crate) device: bool,
    /// Print the URL but do not open a browser
    #[arg(long)]
    pub(crate) no_browser: bool,
    /// Priority (lower is preferred) [default: 0 for a new account; unchanged on re-login]
    #[arg(long, short, allow_negative_numbers = true)]
    pub(crate) priority: Option<i32>,
}

/// `marathon auth add`.
#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// Provider name (e.g. anthropic, openai, google, or one from your config)
    pub(crate) provider: String,
    /// Label for the account, unique per provider [default: <provider>-N]
    #[arg(long, short)]
    pub(crate) label: Option<String>,
    /// Priority (lower is preferred)
    #[arg(long, short, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
}

/// `marathon auth list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this provider's accounts
    #[arg(long)]
    pub(crate) provider: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub(crate) json: bool,
}

/// An account named by provider and label.
#[derive(Debug, Args)]
pub(crate) struct AccountRef {
    /// Provider name
    pub(crate) provider: String,
    /// The account's label (see `marathon auth list`)
    pub(crate) label: String,
}

/// `marathon auth rename`.
#[derive(Debug, Args)]
pub(crate) struct RenameArgs {
    /// Provider name
    pub(crate) provider: String,
    /// The current label
    pub(crate) old: String,
    /// The new label
    pub(crate) new: String,
}

/// `marathon auth priority`.
#[derive(Debug, Args)]
pub(crate) struct PriorityArgs {
    /// Provider name
    pub(crate) provider: String,
    /// The account's label
    pub(crate) label: String,
    /// New priority (lower is preferred)
    #[arg(allow_negative_numbers = true)]
    pub(crate) priority: i32,
}

/// `marathon auth import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Which tool's credentials to read
    pub(crate) from: ImportSource,
    /// Read this file instead of the tool's default location
    #[arg(long, value_name = "FILE")]
    pub(crate) path: Option<PathBuf>,
    /// Take the OAuth logins over: remove them from the source file once
    /// stored (their refresh tokens are single-use; API keys stay)
    #[arg(long = "move")]
    pub(crate) move_: bool,
    /// Like --move, and remove the imported API keys from the source too
    #[arg(long)]
    pub(crate) move_all: bool,
}

/// Tools marathon can import from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ImportSource {
    /// opencode's auth.json
    Opencode,
    /// Claude Code's .credentials.json
    ClaudeCode,
    /// Codex CLI's auth.json
    Codex,
    /// Gemini CLI's oauth_creds.json
    Gemini,
}

/// `marathon status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub(crate) json: bool,
    /// Show the stored accounts even when a proxy is running
    #[arg(long)]
    pub(crate) offline: bool,
    /// A live terminal view, updated every second (q quits)
    #[arg(long, short = 'w', conflicts_with = "json")]
    pub(crate) watch: bool,
}
