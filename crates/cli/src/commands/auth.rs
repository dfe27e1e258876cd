//! `marathon auth ...`: add, list, remove, rename, enable/disable, priority, import.

use std::io::{IsTerminal, Read};

use marathon_core::AccountKind;
use marathon_store::import::{self, ImportFormat, ImportedAccount};
use marathon_store::{AddResult, Credential, NewAccount, Secret, Store, StoredAccount};

use super::{Context, find_account};
use crate::cli::{
    AccountRef, AddArgs, AuthCommand, ImportArgs, ImportSource, ListArgs, PriorityArgs, RenameArgs,
};
use crate::output::{Failure, Style, Table, cell};

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
        AddResult::Added(a) => println!(
            "added {}/{} (api key, priority {})",
            a.provider, a.label, a.priority
        ),
        AddResult::Updated(a) => println!(
            "updated {}/{}: this key was already stored under that label; the label and priority were kept",
            a.provider, a.label
        ),
    }
    Ok(())
}

/// Reads an API key from stdin (when piped) or a no-echo prompt. The key is
/// never echoed, never taken from argv, and never quoted in an error.
fn read_key(provider: &str) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let raw = if stdin.is_terminal() {
        rpassword::prompt_password(format!("API key for {provider} (input hidden): ")).map_err(
            |e| {
                Failure::runtime(
                    format!("could not read the key from the terminal: {e}"),
                    PIPE_HINT,
                )
            },
        )?
    } else {
        let mut raw = String::new();
        // A key is short; the cap stops a mistaken pipe of a large file.
        stdin
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut raw)
            .map_err(|e| {
                Failure::usage(format!("could not read the key from stdin: {e}"), PIPE_HINT)
            })?;
        raw
    };
    let key = Secret::new(raw.trim());
    drop(raw);
    if key.is_empty() {
        return Err(Failure::usage("no API key was given", PIPE_HINT).into());
    }
    if key
        .expose()
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Failure::usage(
            "the API key contains spaces, line breaks or control characters (was more than the key piped in?)",
            PIPE_HINT,
        )
        .into());
    }
    Ok(key)
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
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if accounts.is_empty() {
        println!("{}", NO_ACCOUNTS);
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
    print!("{}", table.render(style));
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
    let a = find_account(&store, &args.provider, &args.label)?;
    store.remove(&a.id)?;
    println!("removed {}/{}", a.provider, a.label);
    if let Some(source) = &a.source {
        println!(
            "note: the credential was imported ({source}); the source tool still has its own copy"
        );
    }
    Ok(())
}

fn rename(ctx: &Context, args: &RenameArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&store, &args.provider, &args.old)?;
    let new = args.new.clone();
    let renamed = store.update(&a.id, &mut |acc| acc.label = new.clone())?;
    println!("renamed {}/{} to {}", a.provider, a.label, renamed.label);
    Ok(())
}

fn set_enabled(ctx: &Context, args: &AccountRef, enabled: bool) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&store, &args.provider, &args.label)?;
    store.update(&a.id, &mut |acc| acc.enabled = enabled)?;
    let what = if enabled { "enabled" } else { "disabled" };
    let already = if a.enabled == enabled {
        " (it already was)"
    } else {
        ""
    };
    println!("{what} {}/{}{already}", a.provider, a.label);
    Ok(())
}

fn priority(ctx: &Context, args: &PriorityArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let a = find_account(&store, &args.provider, &args.label)?;
    let p = args.priority;
    store.update(&a.id, &mut |acc| acc.priority = p)?;
    println!(
        "{}/{}: priority {} (was {})",
        a.provider, a.label, p, a.priority
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
    let mut shared_oauth = 0;
    for item in found.accounts {
        let provider = &item.account.provider;
        if config.provider(provider).is_none() {
            println!(
                "skipped {}: provider {provider:?} is not configured",
                entry_label(&item)
            );
            continue;
        }
        let result = store.add(item.account.clone())?;
        let (verb, a) = match &result {
            AddResult::Added(a) => ("added", a),
            AddResult::Updated(a) => ("updated", a),
        };
        println!(
            "{verb} {}/{} ({}, from {format})",
            a.provider,
            a.label,
            kind_name(a)
        );
        if a.kind == AccountKind::Oauth {
            shared_oauth += 1;
        }
        stored.push(item);
    }
    for skipped in &found.skipped {
        let entry = if skipped.entry.is_empty() {
            format.to_string()
        } else {
            skipped.entry.clone()
        };
        println!("skipped {entry}: {}", skipped.reason);
    }
    if stored.is_empty() {
        println!("nothing imported from {}", path.display());
        return Ok(());
    }

    if !args.move_ {
        if shared_oauth > 0 {
            let style = Style::for_stderr();
            eprintln!(
                "{} {shared_oauth} imported OAuth login(s) share a single-use refresh token with {format}: \
                 when either side refreshes, the other's copy stops working.\n\
                 Run `marathon auth import {format} --move` to let marathon own them \
                 (they are then removed from {}).",
                style.yellow("warning:"),
                path.display()
            );
        }
        return Ok(());
    }
    match import::remove_from_source(format, &path, &stored)? {
        import::Removed::Rewritten => println!(
            "moved: removed {} credential(s) from {}",
            stored.len(),
            path.display()
        ),
        import::Removed::Deleted => println!(
            "moved: deleted {} (it held only the moved credential)",
            path.display()
        ),
    }
    // marathon alone owns these now: no other tool shares the token family.
    let tag = format.source_tag();
    for a in store.list()? {
        if a.source.as_deref() == Some(tag.as_str())
            && stored
                .iter()
                .any(|s| s.account.provider == a.provider && same_origin(&s.account, &a))
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

/// Whether a stored account is the one this import produced: same identity,
/// else same credential.
fn same_origin(new: &NewAccount, stored: &StoredAccount) -> bool {
    if new.identity.is_some() && new.identity == stored.identity {
        return true;
    }
    match (&new.credential, &stored.credential) {
        (Credential::ApiKey { key: a }, Credential::ApiKey { key: b }) => a.same_as(b),
        (Credential::Oauth { access: a, .. }, Credential::Oauth { access: b, .. }) => a.same_as(b),
        _ => false,
    }
}
