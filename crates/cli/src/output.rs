//! Terminal output: tables, colour (only on a terminal), and error reports
//! that say what to do next.

use std::fmt;
use std::io::{IsTerminal, Write};

use marathon_store::StoreError;
use marathon_store::import::ImportError;

/// An error meant for a person: what went wrong, what to do, and the exit
/// code (2 for a mistake in the command, 1 for anything else).
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    hint: Option<String>,
    code: u8,
}

impl Failure {
    /// The command asked for something that cannot be (unknown provider or
    /// account, bad input): exit code 2.
    pub(crate) fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: Some(hint.into()),
            code: 2,
        }
    }

    /// Something failed while doing what was asked: exit code 1.
    pub(crate) fn runtime(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: Some(hint.into()),
            code: 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Output to stdout that, unlike `println!`, does not panic when the reader
/// went away (`marathon auth list --json | head -1`): the write's error is
/// returned, and `main` ends quietly on [`StdoutClosed`].
///
/// Why not reset SIGPIPE to its default, as C tools behave? `serve` and
/// `demo` also write to pipes that may close under them — the event
/// command's stdin, a log pipe — and a long-running proxy must not be killed
/// by one of those (sockets are safe either way: std and mio send with
/// MSG_NOSIGNAL). Returning the error, as ripgrep does, keeps the process in
/// charge of what a closed pipe means.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// [`outln!`] without the line break.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))?
    };
}

/// `eprintln!` that ignores a closed stderr instead of panicking: for
/// `serve`, whose stderr may be a pipe that closes while it runs
/// (`marathon serve 2>&1 | grep ...`); a notice lost there is no reason to
/// stop serving.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) use {errln, out, outln};

/// Stdout was closed by its reader: not a failure of the command, so `main`
/// exits 0 without a message (the convention of ripgrep and friends).
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to stdout; a closed pipe becomes [`StdoutClosed`], any other
/// error (a full disk) stays an error worth reporting.
pub(crate) fn write_stdout(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("could not write to stdout")),
    }
}

/// Whether `err` only says that stdout was closed.
pub(crate) fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.is::<StdoutClosed>())
}

/// Prints `error: ...`, its causes, and a `hint: ...` line to stderr; returns
/// the exit code.
pub(crate) fn report_error(err: &anyhow::Error) -> u8 {
    let style = Style::for_stream(std::io::stderr().is_terminal());
    let (code, hint) = match err.downcast_ref::<Failure>() {
        Some(f) => (f.code, f.hint.clone()),
        None => (1, err.chain().find_map(hint_for)),
    };
    eprintln!("{} {err}", style.red("error:"));
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if let Some(hint) = hint {
        eprintln!("{} {hint}", style.bold("hint:"));
    }
    code
}

fn hint_for(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(e) = cause.downcast_ref::<StoreError>() {
        return Some(
            match e {
                StoreError::Corrupt { .. } | StoreError::NewerVersion { .. } => {
                    "your accounts file was not changed; nothing was lost"
                }
                StoreError::LabelTaken { .. } | StoreError::NotFound(_) => {
                    "`marathon auth list` shows the accounts"
                }
                StoreError::LockTimeout { .. } | StoreError::Fenced(_) => {
                    "`ps aux | grep marathon` shows other marathon processes"
                }
                StoreError::Io { .. } => {
                    "check the directory exists and is writable, or pick another with --home"
                }
                StoreError::Invalid(_) => "see `marathon auth --help`",
                StoreError::Unavailable { .. } => {
                    "check the server runs and [store] url (or MARATHON_STORE_URL) points at it"
                }
            }
            .to_string(),
        );
    }
    if let Some(e) = cause.downcast_ref::<ImportError>() {
        return Some(
            match e {
                ImportError::Read { .. } | ImportError::Malformed { .. } => {
                    "check it is the tool's credentials file (log in with the tool again), or pass another with --path"
                }
                ImportError::Changed { .. } => "run the same import again (without --move first if unsure)",
                ImportError::Write { .. } => "the accounts were stored; remove the credential from the source by hand",
            }
            .to_string(),
        );
    }
    if cause
        .downcast_ref::<marathon_config::ConfigError>()
        .is_some()
    {
        return Some(
            "fix the setting named above; example.toml documents every setting".to_string(),
        );
    }
    None
}

/// Colour on or off. Off unless the stream is a terminal and `NO_COLOR` is unset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Style {
    color: bool,
}

impl Style {
    pub(crate) fn stdout() -> Self {
        Self::for_stream(std::io::stdout().is_terminal())
    }

    pub(crate) fn for_stderr() -> Self {
        Self::for_stream(std::io::stderr().is_terminal())
    }

    fn for_stream(is_terminal: bool) -> Self {
        Style {
            color: is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub(crate) fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
    pub(crate) fn red(self, s: &str) -> String {
        self.paint("31", s)
    }
    pub(crate) fn green(self, s: &str) -> String {
        self.paint("32", s)
    }
    pub(crate) fn yellow(self, s: &str) -> String {
        self.paint("33", s)
    }
    pub(crate) fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// A plain text table: a header row and left-aligned columns. Cells may
/// carry colour codes; widths are measured on the visible text.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, String)>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of `(visible text, painted text)` cells.
    pub(crate) fn row(&mut self, cells: Vec<(String, String)>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, style: Style) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (plain, _)) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(plain.chars().count());
                }
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<(usize, String)>| {
            let last = cells.len().saturating_sub(1);
            for (i, (visible, painted)) in cells.into_iter().enumerate() {
                out.push_str(&painted);
                if i != last {
                    out.push_str(&" ".repeat(widths[i].saturating_sub(visible) + 2));
                }
            }
            let trimmed = out.trim_end_matches(' ').len();
            out.truncate(trimmed);
            out.push('\n');
        };
        line(
            &mut out,
            self.header
                .iter()
                .map(|h| (h.chars().count(), style.bold(h)))
                .collect(),
        );
        for row in &self.rows {
            line(
                &mut out,
                row.iter()
                    .map(|(plain, painted)| (plain.chars().count(), painted.clone()))
                    .collect(),
            );
        }
        out
    }
}

/// A cell without colour.
pub(crate) fn cell(s: impl Into<String>) -> (String, String) {
    let s = s.into();
    (s.clone(), s)
}
