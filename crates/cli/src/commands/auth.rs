//! `marathon auth ...`: add, list, remove, rename, enable/disable, priority, import.

use std::io::{IsTerminal, Read};

use marathon_store::import::{self, ImportFormat, ImportedAccount};
use marathon_store::{AddResult, Credential, NewAccount, Secret, Store, StoredAccount};

use super::{Context, find_account};
use crate::cli::{
    AccountRef, AddArgs, AuthCommand, ImportArgs, ImportSource, ListArgs, PriorityArgs, RenameArgs,
};
use crate::output::{Failure, Style, Table, cell, out, outln};

pub(crate) fn run(ctx: &Context, command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::Login(args) => super::login::run(ctx, &args),
        AuthCommand::Add(args) => add(ctx, &args),
        AuthCommand::List(args) => list(ctx, &args),
        AuthCommand::Remove(args) => remove(ctx, &args),
        AuthCommand::Rename(args) => rename(ctx, &args),
        AuthCommand::Disable(args) => set_enabled(ctx, &args, false),
        AuthCommand::Enable(args) => set_enabled(ctx, &args, true),
        AuthCommand::Priority(args) => priority(ctx, &args),
        AuthCommand::Import(args) => import(ctx, &args),
    }
}

fn add(ctx: &Context, args: &AddArgs) -> anyhow::Result<()> {
    let provider = ctx.provider(&args.provider)?;
    let store = ctx.store()?;
    let key = read_key(&provider)?;
    let mut new = NewAccount::api_key(&provider, args.label.clone(), key);
    new.priority = args.priority;
    match store.add(new)? {
        AddResult::Added(a) => outln!(
            "added {}/{} (api key, priority {})",
            a.provider,
            a.label,
            a.priority
        ),
        AddResult::Updated(a) => outln!(
            "updated {}/{}: this key was already stored there; its label and priority were kept",
            a.provider,
            a.label
        ),
    }
    Ok(())
}

/// The longest key `auth add` takes. Real API keys are under 200 bytes and
/// JWT-style tokens a few KiB; anything longer is a file piped by mistake.
const MAX_KEY_BYTES: usize = 16 * 1024;

/// Reads an API key from stdin (when piped) or a no-echo prompt. The key is
/// never echoed, never taken from argv, and never quoted in an error.
fn read_key(provider: &str) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let raw = if stdin.is_terminal() {
        rpassword::prompt_password(format!("API key for {provider} (input hidden): "))
            .map_err(|e| {
                Failure::runtime(
                    format!("could not read the key from the terminal: {e}"),
                    PIPE_HINT,
                )
            })?
            .into_bytes()
    } else {
        let mut raw = Vec::new();
        // One byte past the limit tells "too long" from "exactly at the limit"
        // without reading (or silently cutting) a whole mistaken file.
        stdin
            .lock()
            .take(MAX_KEY_BYTES as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|e| {
                Failure::usage(format!("could not read the key from stdin: {e}"), PIPE_HINT)
            })?;
        raw
    };
    let key = check_key(&raw).map_err(|why| Failure::usage(why, PIPE_HINT))?;
    drop(raw);
    Ok(Secret::new(key))
}

/// The key in `raw` with surrounding whitespace (the newline `echo` adds)
/// removed, or why it cannot be a key. The reasons never quote the key.
fn check_key(raw: &[u8]) -> Result<String, String> {
    if raw.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the API key is longer than {} KiB, so it was not stored (was a file piped in?); \
             API keys and tokens are a few hundred bytes to a few KiB",
            MAX_KEY_BYTES / 1024
        ));
    }
    let key = raw.trim_ascii();
    if key.is_empty() {
        return Err("no API key was given".to_owned());
    }
    if key.iter().any(u8::is_ascii_whitespace) {
        return Err(
            "the API key contains spaces or line breaks (was more than the key piped in?)"
                .to_owned(),
        );
    }
    // Keys are printable ASCII; anything else is a paste accident (an escape
    // sequence, a zero-width space, a curly quote) the provider would refuse.
    if let Some(at) = key.iter().position(|b| !b.is_ascii_graphic()) {
        let what = if key[at].is_ascii_control() {
            "a control character (such as a terminal escape)"
        } else {
            "a character that is not plain ASCII (such as a zero-width space or a curly quote)"
        };
        return Err(format!(
            "the API key contains {what} at byte {}; keys are printable ASCII",
            at + 1
        ));
    }
    // All bytes are printable ASCII, so this is valid UTF-8.
    Ok(String::from_utf8_lossy(key).into_owned())
}

const PIPE_HINT: &str = "pipe the key on stdin, e.g. `printf %s \"$KEY\" | marathon auth add <provider> --label <name>`, \
                         or run in a terminal to be prompted";

fn list(ctx: &Context, args: &ListArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let mut accounts = store.list()?;
    if let Some(p) = &args.provider {
        let canonical = marathon_config::presets::canonical_name(p);
        accounts.retain(|a| &a.provider == p || a.provider == canonical);
    }
    sort_accounts(&mut accounts);
    if args.json {
        let rows: Vec<serde_json::Value> = accounts.iter().map(account_json).collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if accounts.is_empty() {
        outln!("{}", NO_ACCOUNTS);
        return Ok(());
    }
    let style = Style::stdout();
    let mut table = Table::new(&["PROVIDER", "LABEL", "KIND", "STATE", "PRIORITY", "ENABLED"]);
    for a in &accounts {
        table.row(vec![
            cell(&a.provider),
            cell(&a.label),
            cell(kind_name(a)),
            state_cell(a, style),
            cell(a.priority.to_string()),
            if a.enabled {
                cell("yes")
            } else {
                (String::from("no"), style.dim("no"))
            },
        ]);
    }
    out!("{}", table.render(style));
    Ok(())
}

pub(crate) const NO_ACCOUNTS: &str = "no accounts yet; add one with `marathon auth add <provider> --label <name>` \
                                      or import one with `marathon auth import claude-code|codex|opencode|gemini`";

/// Provider, then priority, then label: the order a person scans.
pub(crate) fn sort_accounts(accounts: &mut [StoredAccount]) {
    accounts.sort_by(|a, b| {
        (a.provider.as_str(), a.priority, a.label.as_str()).cmp(&(
            b.provider.as_str(),
            b.priority,
            b.label.as_str(),
        ))
    });
}

pub(crate) fn kind_name(a: &StoredAccount) -> &'static str {
    match a.kind {
        marathon_core::AccountKind::Oauth => "oauth",
        marathon_core::AccountKind::ApiKey => "api key",
    }
}

pub(crate) fn state_cell(a: &StoredAccount, style: Style) -> (String, String) {
    let s = a.state.as_str().replace('_', " ");
    let painted = match a.state {
        marathon_store::AccountState::Active => style.green(&s),
        marathon_store::AccountState::NeedsLogin => style.yellow(&s),
    };
    (s, painted)
}

/// Everything about an account except its credential.
pub(crate) fn account_json(a: &StoredAccount) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "provider": a.provider,
        "label": a.label,
        "kind": a.kind,
        "state": a.state,
        "priority": a.priority,
        "enabled": a.enabled,
        "identity": a.identity,
        "source": a.source,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    })
}

fn remove(ctx: &Context, args: &AccountRef) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&*store, &args.provider, &args.label)?;
    store.remove(&a.id)?;
    outln!("removed {}/{}", a.provider, a.label);
    if let Some(source) = &a.source {
        outln!(
            "note: the credential was imported ({source}); the source tool still has its own copy"
        );
    }
    Ok(())
}

fn rename(ctx: &Context, args: &RenameArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&*store, &args.provider, &args.old)?;
    let new = args.new.clone();
    let renamed = store.update(&a.id, &mut |acc| acc.label = new.clone())?;
    outln!("renamed {}/{} to {}", a.provider, a.label, renamed.label);
    Ok(())
}

fn set_enabled(ctx: &Context, args: &AccountRef, enabled: bool) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&*store, &args.provider, &args.label)?;
    store.update(&a.id, &mut |acc| acc.enabled = enabled)?;
    let what = if enabled { "enabled" } else { "disabled" };
    let already = if a.enabled == enabled {
        " (it already was)"
    } else {
        ""
    };
    outln!("{what} {}/{}{already}", a.provider, a.label);
    Ok(())
}

fn priority(ctx: &Context, args: &PriorityArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&*store, &args.provider, &args.label)?;
    let p = args.priority;
    store.update(&a.id, &mut |acc| acc.priority = p)?;
    outln!(
        "{}/{}: priority {} (was {})",
        a.provider,
        a.label,
        p,
        a.priority
    );
    Ok(())
}

fn import(ctx: &Context, args: &ImportArgs) -> anyhow::Result<()> {
    let format = match args.from {
        ImportSource::Opencode => ImportFormat::Opencode,
        ImportSource::ClaudeCode => ImportFormat::ClaudeCode,
        ImportSource::Codex => ImportFormat::Codex,
        ImportSource::Gemini => ImportFormat::Gemini,
    };
    let path = match args.path.clone().or_else(|| import::default_path(format)) {
        Some(p) => p,
        None => {
            return Err(Failure::usage(
                format!("cannot tell where {format} keeps its credentials ($HOME is not set)"),
                format!("pass the file with `marathon auth import {format} --path <file>`"),
            )
            .into());
        }
    };
    if !path.exists() {
        return Err(Failure::usage(
            format!("no {format} credentials at {}", path.display()),
            format!("log in with {format} first, or point at the file with --path <file>"),
        )
        .into());
    }
    let config = ctx.config()?;
    let found = import::read(format, &path)?;
    let store = ctx.store()?;

    let mut stored: Vec<ImportedAccount> = Vec::new();
    for item in found.accounts {
        let provider = &item.account.provider;
        if config.provider(provider).is_none() {
            outln!(
                "skipped {}: provider {provider:?} is not configured",
                entry_label(&item)
            );
            continue;
        }
        store_imported(&*store, &item, format, &path)?;
        stored.push(item);
    }
    for skipped in &found.skipped {
        let entry = if skipped.entry.is_empty() {
            format.to_string()
        } else {
            skipped.entry.clone()
        };
        outln!("skipped {entry}: {}", skipped.reason);
    }
    if stored.is_empty() {
        outln!("nothing imported from {}", path.display());
        return Ok(());
    }
    let shared = stored
        .iter()
        .filter(|s| s.account.credential.is_single_use())
        .count();
    if args.move_ || args.move_all {
        return move_from_source(&*store, format, &path, stored, args.move_all);
    }
    if shared > 0 {
        let style = Style::for_stderr();
        eprintln!(
            "{} {shared} imported OAuth login(s) share a single-use refresh token with {format}: \
             when either side refreshes, the other's copy stops working.\n\
             Run `marathon auth import {format} --move` to let marathon own them \
             (they are then removed from {}).",
            style.yellow("warning:"),
            path.display()
        );
    }
    Ok(())
}

/// Stores one imported account, or updates the one already holding it (the
/// same identity, key or refresh token), and says which. A stored login
/// newer than the file's (marathon refreshed it since the last import) is
/// kept: the file's tokens are then already spent.
fn store_imported(
    store: &dyn Store,
    item: &ImportedAccount,
    format: ImportFormat,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let existing = store
        .list()?
        .into_iter()
        .find(|a| item.account.is_same_account(a));
    if let Some(a) = existing.filter(|a| holds_newer_login(a, &item.account)) {
        outln!(
            "kept {}/{}: the stored login is newer than the one in {} (marathon refreshed it since)",
            a.provider,
            a.label,
            path.display()
        );
        return Ok(());
    }
    let (verb, a) = match store.add(item.account.clone())? {
        AddResult::Added(a) => ("added", a),
        AddResult::Updated(a) => ("updated", a),
    };
    outln!(
        "{verb} {}/{} ({}, from {format})",
        a.provider,
        a.label,
        kind_name(&a)
    );
    Ok(())
}

/// Whether `stored` is a working OAuth login that expires after `new`'s, with
/// other tokens: replacing it would swap live tokens for spent ones.
fn holds_newer_login(stored: &StoredAccount, new: &NewAccount) -> bool {
    let expiry = |c: &Credential| match c {
        Credential::Oauth { expires_at, .. } => *expires_at,
        Credential::ApiKey { .. } => None,
    };
    stored.state == marathon_store::AccountState::Active
        && !stored.credential.same_login(&new.credential)
        && matches!(
            (expiry(&stored.credential), expiry(&new.credential)),
            (Some(s), Some(n)) if s > n
        )
}

/// `--move`: takes the single-use credentials (OAuth logins with a refresh
/// token) out of the source file, so marathon alone refreshes them. API keys
/// can be shared safely and stay in the source unless `--move-all`.
fn move_from_source(
    store: &dyn Store,
    format: ImportFormat,
    path: &std::path::Path,
    stored: Vec<ImportedAccount>,
    move_all: bool,
) -> anyhow::Result<()> {
    let (moving, left): (Vec<ImportedAccount>, Vec<ImportedAccount>) = stored
        .into_iter()
        .partition(|s| move_all || s.account.credential.is_single_use());
    if !moving.is_empty() {
        match import::remove_from_source(format, path, &moving)? {
            import::Removed::Rewritten => outln!(
                "moved: removed {} credential(s) from {}",
                moving.len(),
                path.display()
            ),
            import::Removed::Deleted => outln!(
                "moved: deleted {} (it held only the moved credential)",
                path.display()
            ),
        }
    }
    if !left.is_empty() {
        let entries: Vec<String> = left.iter().map(entry_label).collect();
        outln!(
            "left in {}: {} (not single-use, so safe to share; --move-all moves them too)",
            path.display(),
            entries.join(", ")
        );
    }
    // marathon alone owns the moved ones now: no other tool shares the token family.
    let tag = format.source_tag();
    for a in store.list()? {
        if a.source.as_deref() == Some(tag.as_str())
            && moving.iter().any(|s| s.account.is_same_account(&a))
        {
            store.update(&a.id, &mut |acc| acc.source = None)?;
        }
    }
    Ok(())
}

fn entry_label(item: &ImportedAccount) -> String {
    if item.entry.is_empty() {
        item.account.provider.clone()
    } else {
        item.entry.clone()
    }
}
