//! One module per top-level command, plus what they share: where the files
//! are, opening the store, and resolving provider and account names.

pub(crate) mod auth;
pub(crate) mod clients;
pub(crate) mod connect;
pub(crate) mod demo;
pub(crate) mod login;
pub(crate) mod proxy_client;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod statusline;
pub(crate) mod store;
pub(crate) mod watch;

use std::path::Path;

use marathon_config::{Config, Paths};
use std::sync::Arc;

use marathon_store::{Store, StoredAccount};

use crate::output::Failure;

/// What every command needs: the resolved file locations.
pub(crate) struct Context {
    pub(crate) paths: Paths,
}

impl Context {
    pub(crate) fn new(home: Option<&Path>) -> Self {
        let home = home.filter(|h| !h.as_os_str().is_empty());
        Context {
            paths: Paths::resolve(home),
        }
    }

    /// The configured account store (`[store]`): the data directory's files
    /// (created if missing; files another user could read are made
    /// private, with a warning), or Redis.
    pub(crate) fn store(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(self.open_store()?.store)
    }

    /// Where the configured store is, for people: the accounts file, or the
    /// Redis URL (without a password: the config holds none in it).
    pub(crate) fn store_location(&self) -> String {
        match self.config().map(|c| c.store) {
            Ok(s) if s.backend == marathon_config::StoreBackend::Redis => {
                marathon_core::secret::redact_url(s.url.as_deref().unwrap_or_default())
            }
            _ => self
                .paths
                .data_dir
                .join("accounts.json")
                .display()
                .to_string(),
        }
    }

    /// The configured store, with the channel to other instances when it is shared.
    pub(crate) fn open_store(&self) -> anyhow::Result<crate::backend::Opened> {
        crate::backend::open(&self.paths.data_dir, &self.config()?)
    }

    /// The configuration (built-in presets when no file exists).
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        Ok(marathon_config::load(&self.paths)?)
    }

    /// The configured provider called `name` (aliases accepted), or an error
    /// listing the known ones.
    pub(crate) fn provider(&self, name: &str) -> anyhow::Result<String> {
        let config = self.config()?;
        if config.providers.contains_key(name) {
            return Ok(name.to_string());
        }
        let canonical = marathon_config::presets::canonical_name(name);
        if config.providers.contains_key(canonical) {
            return Ok(canonical.to_string());
        }
        let known: Vec<&str> = config.providers.keys().map(String::as_str).collect();
        let suggestion = known
            .iter()
            .filter(|k| edit_distance(k, name) <= 2)
            .min_by_key(|k| edit_distance(k, name))
            .map(|k| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        Err(Failure::usage(
            format!("unknown provider {name:?}{suggestion}; known providers: {}", known.join(", ")),
            format!(
                "use one of those names, or define [providers.{name}] with `kind` and `upstream` in {}",
                self.paths.config_file.display()
            ),
        )
        .into())
    }
}

/// The account `provider`/`label`, or an error naming the labels that exist.
pub(crate) fn find_account(
    store: &dyn Store,
    provider: &str,
    label: &str,
) -> anyhow::Result<StoredAccount> {
    let accounts = store.list()?;
    // Accept a preset alias (`gemini` for `google`) unless accounts are stored
    // under the name as given.
    let provider = if accounts.iter().any(|a| a.provider == provider) {
        provider
    } else {
        marathon_config::presets::canonical_name(provider)
    };
    if let Some(a) = accounts
        .iter()
        .find(|a| a.provider == provider && a.label == label)
    {
        return Ok(a.clone());
    }
    let labels: Vec<&str> = accounts
        .iter()
        .filter(|a| a.provider == provider)
        .map(|a| a.label.as_str())
        .collect();
    let hint = if labels.is_empty() {
        let mut providers: Vec<&str> = accounts.iter().map(|a| a.provider.as_str()).collect();
        providers.sort_unstable();
        providers.dedup();
        if providers.is_empty() {
            "no accounts are stored yet; add one with `marathon auth add <provider> --label <name>`"
                .to_string()
        } else {
            format!(
                "there are no {provider} accounts; accounts exist for: {}",
                providers.join(", ")
            )
        }
    } else {
        format!("{provider} accounts: {}", labels.join(", "))
    };
    Err(Failure::usage(format!("no {provider} account labelled {label:?}"), hint).into())
}

/// Levenshtein distance, for "did you mean" suggestions on short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(super::edit_distance("anthropic", "anthropc"), 1);
        assert_eq!(super::edit_distance("openai", "opnai"), 1);
        assert_eq!(super::edit_distance("google", "codex"), 5);
    }
}
