//! Other tools' config files (Codex's `config.toml`, opencode's
//! `opencode.json`, Gemini CLI's `settings.json`), changed without clobbering
//! them: the file is parsed, marathon's settings are merged into it (TOML
//! through toml_edit, so the user's comments and layout stay; JSON key order
//! kept), the original is kept once as `<file>.marathon-backup`, and
//! [`undo`] puts it back.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::StoreError;
use std::os::unix::fs::DirBuilderExt as _;

use crate::lock::{io_err, write_atomic};

/// Why a config file was not changed.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// The file is not valid TOML/JSON (JSON with comments, say); it was
    /// left as it was. The reason quotes no content of the file.
    #[error("cannot read {} as {format:?} ({why}); nothing was changed", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Its language.
        format: Format,
        /// What the parser said.
        why: String,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] StoreError),
}

/// A config file's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// TOML (Codex).
    Toml,
    /// JSON (opencode, Gemini CLI).
    Json,
}

/// `<file>.marathon-backup`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".marathon-backup");
    path.with_file_name(name)
}

/// The settings alone, as they would appear in the file.
pub fn render(format: Format, patch: &Map<String, Value>) -> String {
    match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(patch).unwrap_or_default();
            text.push('\n');
            text
        }
        Format::Toml => {
            let mut doc = toml_edit::DocumentMut::new();
            merge_toml(doc.as_table_mut(), patch);
            doc.to_string()
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The file did not exist and was created.
    Created,
    /// The file was changed; the original is in the backup.
    Changed,
    /// The file already said all of it.
    Unchanged,
}

/// Merges `patch` into the file at `path` (created if missing), keeping the
/// original as the backup unless a backup from an earlier edit exists (it
/// holds the file as it was before marathon touched it).
pub fn apply(
    path: &Path,
    format: Format,
    patch: &Map<String, Value>,
) -> Result<Applied, ClientConfigError> {
    let path = &real_path(path);
    let original = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", path)(e).into()),
    };
    let text = original.as_deref().unwrap_or_default();
    let merged = merge_text(format, text, patch).map_err(|why| ClientConfigError::Unreadable {
        path: path.clone(),
        format,
        why,
    })?;
    if original.as_deref() == Some(merged.as_str()) {
        return Ok(Applied::Unchanged);
    }
    let backup = backup_path(path);
    if !backup.exists() {
        // An empty backup stands for "there was no file": undo removes it.
        create_parent(&backup)?;
        write_atomic(&backup, text.as_bytes(), true)?;
        copy_mode(path, &backup);
    }
    write_atomic(path, merged.as_bytes(), true)?;
    copy_mode(&backup, path);
    Ok(if original.is_none() {
        Applied::Created
    } else {
        Applied::Changed
    })
}

/// The file's directory, created (private) if missing: a tool never run yet
/// has no config directory.
fn create_parent(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// What [`undo`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Undone {
    /// The file is as it was before marathon edited it.
    Restored,
    /// The file did not exist before; it is gone again.
    Removed,
    /// There was no backup.
    NoBackup,
}

/// Puts the file back as it was before the first edit, and removes the backup.
pub fn undo(path: &Path) -> Result<Undone, StoreError> {
    let path = &real_path(path);
    let backup = backup_path(path);
    let saved = match std::fs::read(&backup) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Undone::NoBackup),
        Err(e) => return Err(io_err("read", &backup)(e)),
    };
    let done = if saved.is_empty() {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", path)(e)),
        }
        Undone::Removed
    } else {
        write_atomic(path, &saved, true)?;
        copy_mode(&backup, path);
        Undone::Restored
    };
    std::fs::remove_file(&backup).map_err(io_err("remove", &backup))?;
    Ok(done)
}

/// Writes `base` (a JSON settings file, when it exists and holds an object)
/// with `patch` merged in to `target` (0600): a settings layer of marathon's
/// that keeps what the layer it replaces said.
pub fn write_json_layer(
    target: &Path,
    base: Option<&Path>,
    patch: &Map<String, Value>,
) -> Result<(), StoreError> {
    let mut layer = base
        .and_then(|b| std::fs::read_to_string(b).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    merge_json(&mut layer, patch);
    let text = serde_json::to_string_pretty(&layer).unwrap_or_default();
    write_atomic(target, text.as_bytes(), false)
}

/// Fills `shadow` (a directory of marathon's, e.g. the `.gemini` of the
/// home `GEMINI_CLI_HOME` names) as a stand-in for the user's `real` one:
/// every entry of `real` is linked in, except `settings`, which is written
/// as the user's file with `patch` merged in (0600). The client then reads
/// marathon's settings, and everything else (credentials, history, memory,
/// extensions) is the user's own, written through the links; nothing of the
/// user's is changed. Entries the client creates anew stay in `shadow`.
pub fn shadow_dir(
    real: &Path,
    shadow: &Path,
    settings: &str,
    patch: &Map<String, Value>,
) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(shadow)
        .map_err(io_err("create", shadow))?;
    if let Ok(entries) = std::fs::read_dir(real) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == settings {
                continue;
            }
            let link = shadow.join(&name);
            std::os::unix::fs::symlink(entry.path(), &link).map_err(io_err("link", &link))?;
        }
    }
    let user = real.join(settings);
    write_json_layer(&shadow.join(settings), Some(&user), patch)
}

/// The file a symlink points to (dotfiles kept in a repository are often
/// linked into place): the link stays, the file it names is edited.
fn real_path(path: &Path) -> PathBuf {
    let linked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if linked {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
    } else {
        path.to_owned()
    }
}

/// Gives `to` the permission bits of `from` (a user's config keeps its mode).
fn copy_mode(from: &Path, to: &Path) {
    if let Ok(meta) = std::fs::metadata(from) {
        let _ = std::fs::set_permissions(to, meta.permissions());
    }
}

/// `text` with `patch` merged in; an error says why `text` is unreadable.
fn merge_text(format: Format, text: &str, patch: &Map<String, Value>) -> Result<String, String> {
    match format {
        Format::Toml => {
            let mut doc: toml_edit::DocumentMut = text
                .parse()
                .map_err(|e: toml_edit::TomlError| e.message().to_owned())?;
            merge_toml(doc.as_table_mut(), patch);
            Ok(doc.to_string())
        }
        Format::Json => {
            let mut v: Value = if text.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(text).map_err(|e| e.to_string())?
            };
            let Value::Object(map) = &mut v else {
                return Err("the top level is not an object".to_owned());
            };
            merge_json(map, patch);
            let mut out = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            out.push('\n');
            Ok(out)
        }
    }
}

fn merge_json(into: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match (into.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(inner)) => merge_json(existing, inner),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_toml(into: &mut toml_edit::Table, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Object(inner) => {
                let item = into.entry(key).or_insert_with(|| {
                    let mut t = toml_edit::Table::new();
                    t.set_implicit(true);
                    toml_edit::Item::Table(t)
                });
                if let toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) = item {
                    *item = toml_edit::Item::Table(t.clone().into_table());
                }
                if !item.is_table() {
                    let mut t = toml_edit::Table::new();
                    t.set_implicit(true);
                    *item = toml_edit::Item::Table(t);
                }
                if let Some(t) = item.as_table_mut() {
                    merge_toml(t, inner);
                }
            }
            other => {
                if let Some(v) = toml_value(other) {
                    into.insert(key, toml_edit::Item::Value(v));
                }
            }
        }
    }
}

fn toml_value(v: &Value) -> Option<toml_edit::Value> {
    Some(match v {
        Value::String(s) => s.as_str().into(),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64()?.into(),
        },
        Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for item in items {
                a.push(toml_value(item)?);
            }
            a.into()
        }
        Value::Null | Value::Object(_) => return None,
    })
}

/// Codex's `-c key=value` overrides for the same settings: one per leaf, the
/// value as TOML (`model_providers.marathon.base_url="http://..."`).
pub fn dotted_overrides(patch: &Map<String, Value>) -> Vec<String> {
    fn walk(prefix: &str, map: &Map<String, Value>, out: &mut Vec<String>) {
        for (key, value) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Object(inner) => walk(&path, inner, out),
                leaf => {
                    if let Some(v) = toml_value(leaf) {
                        out.push(format!("{path}={}", v.to_string().trim()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk("", patch, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch() -> Map<String, Value> {
        let v = json!({"model_provider": "marathon",
                       "model_providers": {"marathon": {"base_url": "http://127.0.0.1:1/codex",
                                                        "wire_api": "responses"}}});
        v.as_object().unwrap().clone()
    }

    #[test]
    fn toml_merge_keeps_comments_and_other_settings() {
        let before = "# my codex setup\nmodel = \"o3\" # fast\n\n[model_providers.local]\nbase_url = \"http://localhost:1234/v1\"\n";
        let after = merge_text(Format::Toml, before, &patch()).unwrap();
        assert!(
            after.starts_with(
                "# my codex setup\nmodel = \"o3\" # fast\nmodel_provider = \"marathon\"\n"
            ),
            "{after}"
        );
        assert!(
            after.contains("[model_providers.local]\nbase_url = \"http://localhost:1234/v1\"\n"),
            "{after}"
        );
        assert!(after.contains("[model_providers.marathon]\nbase_url = \"http://127.0.0.1:1/codex\"\nwire_api = \"responses\"\n"), "{after}");
        // Merging again changes nothing.
        assert_eq!(merge_text(Format::Toml, &after, &patch()).unwrap(), after);
    }

    #[test]
    fn json_merge_goes_into_nested_objects() {
        let before = r#"{"theme": "dark", "provider": {"anthropic": {"models": {"x": {}}, "options": {"timeout": 5}}}}"#;
        let p = json!({"provider": {"anthropic": {"options": {"baseURL": "http://b/v1"}}}});
        let after: Value = serde_json::from_str(
            &merge_text(Format::Json, before, p.as_object().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            after,
            json!({"theme": "dark", "provider": {"anthropic": {"models": {"x": {}},
                   "options": {"timeout": 5, "baseURL": "http://b/v1"}}}})
        );
        assert!(
            merge_text(
                Format::Json,
                "{\"a\": 1, // comment\n}",
                p.as_object().unwrap()
            )
            .is_err()
        );
    }

    /// Guards a dotfile symlink being replaced by a plain file.
    #[cfg(unix)]
    #[test]
    fn a_symlinked_file_is_edited_through_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles-settings.json");
        std::fs::write(&real, "{\"ui\": {}}").unwrap();
        let link = dir.path().join("settings.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let p = json!({"security": {"auth": {"selectedType": "gemini-api-key"}}});
        assert_eq!(
            apply(&link, Format::Json, p.as_object().unwrap()).unwrap(),
            Applied::Changed
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::read_to_string(&real)
                .unwrap()
                .contains("gemini-api-key")
        );
        assert_eq!(undo(&link).unwrap(), Undone::Restored);
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "{\"ui\": {}}");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn overrides_are_dotted_toml() {
        assert_eq!(
            dotted_overrides(&patch()),
            [
                "model_provider=\"marathon\"",
                "model_providers.marathon.base_url=\"http://127.0.0.1:1/codex\"",
                "model_providers.marathon.wire_api=\"responses\"",
            ]
        );
    }
}
