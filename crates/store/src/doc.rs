//! The accounts document: its on-disk format, versions and migrations, and the
//! account operations both backends share (so the file and memory stores cannot
//! drift apart in semantics).

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    AccountId, AccountState, AddResult, Map, NewAccount, StoreError, StoredAccount, UnixMillis,
};

/// The schema version this build writes and the newest it reads.
pub(crate) const CURRENT_VERSION: u64 = 1;

/// The whole accounts file. Unknown top-level fields are kept as they were.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Document {
    pub(crate) version: u64,
    pub(crate) accounts: Vec<StoredAccount>,
    #[serde(flatten)]
    pub(crate) unknown: Map,
}

impl Document {
    pub(crate) fn empty() -> Self {
        Document {
            version: CURRENT_VERSION,
            accounts: Vec::new(),
            unknown: Map::new(),
        }
    }

    /// Serialized form, pretty-printed so a person can read (and, carefully,
    /// repair) it.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data (strings, numbers, maps) cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// A parsed file, and the version it was migrated from if it was older.
pub(crate) struct Parsed {
    pub(crate) doc: Document,
    pub(crate) migrated_from: Option<u64>,
}

/// Parses an accounts file. Never includes a value from the file in an error:
/// the file holds secrets, and serde's messages may quote what they found.
pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "the file ends too early (truncated?)",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Io => "read error",
        };
        corrupt(format!("{what} at line {} column {}", e.line(), e.column()))
    })?;
    let (version, accounts, unknown) = match value {
        // Version 0: a bare array of accounts (the earliest format).
        Value::Array(accounts) => (0, accounts, Map::new()),
        Value::Object(mut obj) => {
            // `shift_remove`: `remove` swaps the last field into the hole,
            // which reordered the kept unknown fields on every rewrite.
            let version = match obj.shift_remove("version") {
                Some(Value::Number(n)) => n
                    .as_u64()
                    .ok_or_else(|| corrupt("`version` is not a non-negative integer".into()))?,
                Some(_) => return Err(corrupt("`version` is not a number".into())),
                None => return Err(corrupt("no `version` field".into())),
            };
            if version > CURRENT_VERSION {
                return Err(StoreError::NewerVersion {
                    path: path.to_path_buf(),
                    found: version,
                    supported: CURRENT_VERSION,
                });
            }
            let accounts = match obj.shift_remove("accounts") {
                Some(Value::Array(a)) => a,
                Some(_) => return Err(corrupt("`accounts` is not a list".into())),
                None => return Err(corrupt("no `accounts` list".into())),
            };
            (version, accounts, obj)
        }
        _ => {
            return Err(corrupt(
                "the top level is neither an object nor a list".into(),
            ));
        }
    };
    let mut parsed = Vec::with_capacity(accounts.len());
    let mut ids = HashSet::new();
    for (i, v) in accounts.into_iter().enumerate() {
        // v0 accounts have the same shape as v1 accounts; the migration only
        // wraps the list in a versioned object.
        let account: StoredAccount = serde_json::from_value(v)
            .map_err(|e| corrupt(format!("account #{}: {}", i + 1, safe_serde_message(&e))))?;
        if !ids.insert(account.id.clone()) {
            return Err(corrupt(format!("two accounts share the id {}", account.id)));
        }
        parsed.push(account);
    }
    Ok(Parsed {
        doc: Document {
            version: CURRENT_VERSION,
            accounts: parsed,
            unknown,
        },
        migrated_from: (version < CURRENT_VERSION).then_some(version),
    })
}

/// A serde error message with anything quoted from the input removed.
fn safe_serde_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // Messages about our own field names carry no input values.
    for safe in ["missing field", "duplicate field"] {
        if msg.starts_with(safe) {
            return msg;
        }
    }
    match msg.find("expected ") {
        Some(at) => format!("a field has the wrong type or value ({})", &msg[at..]),
        None => "a field has the wrong type or value".into(),
    }
}

/// A fresh random account id, unique among `taken`.
pub(crate) fn new_id(taken: &[StoredAccount]) -> AccountId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        // RandomState is seeded from OS randomness once per process; mixing
        // in the pid, the time and a counter keeps ids distinct across
        // processes without a random-number dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        let id = AccountId(format!("acc_{:016x}", h.finish()).into());
        if !taken.iter().any(|a| a.id == id) {
            return id;
        }
    }
}

/// Checks a provider name: what config and URLs can carry.
pub(crate) fn validate_provider(provider: &str) -> Result<(), StoreError> {
    let ok = !provider.is_empty()
        && provider.len() <= 64
        && provider.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "provider name {provider:?} must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"
        )))
    }
}

/// Checks a label: shown in tables, logs and headers.
pub(crate) fn validate_label(label: &str) -> Result<(), StoreError> {
    if label.is_empty() {
        return Err(StoreError::Invalid("a label cannot be empty".into()));
    }
    if label.chars().count() > 128 {
        return Err(StoreError::Invalid(
            "a label can be at most 128 characters".into(),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "a label cannot contain control characters".into(),
        ));
    }
    if label.trim() != label {
        return Err(StoreError::Invalid(
            "a label cannot start or end with whitespace".into(),
        ));
    }
    Ok(())
}

fn label_taken(
    accounts: &[StoredAccount],
    provider: &str,
    label: &str,
    except: Option<&AccountId>,
) -> bool {
    accounts
        .iter()
        .any(|a| a.provider == provider && a.label == label && Some(&a.id) != except)
}

/// Adds (or, for the same provider identity or API key, updates) an account.
pub(crate) fn add(
    accounts: &mut Vec<StoredAccount>,
    new: NewAccount,
    now: UnixMillis,
) -> Result<AddResult, StoreError> {
    validate_provider(&new.provider)?;
    if new.kind != new.credential.kind() {
        return Err(StoreError::Invalid(format!(
            "the account kind is {} but the credential is {}",
            new.kind.as_str(),
            new.credential.kind().as_str()
        )));
    }
    if let Some(label) = &new.label {
        validate_label(label)?;
    }
    // The same identity first (a re-login brings new tokens), then the same
    // key or refresh token (a re-import of a login that names no identity).
    let existing = accounts
        .iter()
        .position(|a| a.provider == new.provider && new.same_identity(a))
        .or_else(|| accounts.iter().position(|a| new.is_same_account(a)));
    if let Some(a) = existing.map(|i| &mut accounts[i]) {
        a.kind = new.kind;
        a.credential = new.credential;
        a.state = AccountState::Active;
        if a.identity.is_none() {
            a.identity = new.identity;
        }
        a.extras.extend(new.extras);
        a.source = new.source;
        a.updated_at = now;
        return Ok(AddResult::Updated(a.clone()));
    }
    let label = match new.label {
        Some(label) => {
            if label_taken(accounts, &new.provider, &label, None) {
                return Err(StoreError::LabelTaken {
                    provider: new.provider,
                    label,
                });
            }
            label
        }
        None => default_label(accounts, &new.provider, new.identity.as_deref()),
    };
    let account = StoredAccount {
        id: new_id(accounts),
        provider: new.provider,
        label,
        kind: new.kind,
        priority: new.priority,
        enabled: true,
        state: AccountState::Active,
        identity: new.identity,
        credential: new.credential,
        extras: new.extras,
        source: new.source,
        created_at: now,
        updated_at: now,
        unknown: Map::new(),
    };
    accounts.push(account.clone());
    Ok(AddResult::Added(account))
}

fn default_label(accounts: &[StoredAccount], provider: &str, identity: Option<&str>) -> String {
    if let Some(identity) = identity.filter(|i| validate_label(i).is_ok()) {
        if !label_taken(accounts, provider, identity, None) {
            return identity.to_string();
        }
        return (2..)
            .map(|n| format!("{identity}-{n}"))
            .find(|l| !label_taken(accounts, provider, l, None))
            .unwrap_or_default();
    }
    let count = accounts.iter().filter(|a| a.provider == provider).count();
    (count + 1..)
        .map(|n| format!("{provider}-{n}"))
        .find(|l| !label_taken(accounts, provider, l, None))
        .unwrap_or_default()
}

/// Applies `f` to one account; the result is validated before it replaces the
/// stored one, so a bad edit leaves the account as it was.
pub(crate) fn update(
    accounts: &mut [StoredAccount],
    id: &AccountId,
    f: &mut dyn FnMut(&mut StoredAccount),
    now: UnixMillis,
) -> Result<StoredAccount, StoreError> {
    let pos = accounts
        .iter()
        .position(|a| &a.id == id)
        .ok_or_else(|| StoreError::NotFound(id.clone()))?;
    let mut edited = accounts[pos].clone();
    f(&mut edited);
    edited.id = id.clone();
    edited.kind = edited.credential.kind();
    edited.updated_at = now;
    validate_provider(&edited.provider)?;
    validate_label(&edited.label)?;
    if label_taken(accounts, &edited.provider, &edited.label, Some(id)) {
        return Err(StoreError::LabelTaken {
            provider: edited.provider,
            label: edited.label,
        });
    }
    accounts[pos] = edited.clone();
    Ok(edited)
}

/// Removes one account.
pub(crate) fn remove(accounts: &mut Vec<StoredAccount>, id: &AccountId) -> Result<(), StoreError> {
    let pos = accounts
        .iter()
        .position(|a| &a.id == id)
        .ok_or_else(|| StoreError::NotFound(id.clone()))?;
    accounts.remove(pos);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountKind, Credential, Secret};

    fn p() -> &'static Path {
        Path::new("/x/accounts.json")
    }

    #[test]
    fn corrupt_messages_never_quote_the_file() {
        let bytes = br#"{"version":1,"accounts":[{"id":"a","provider":"anthropic","label":"l","kind":"api_key","credential":{"type":"api_key","key":42}, "priority":"sk-ant-LEAKME"}]}"#;
        let err = parse(bytes, p()).err().unwrap().to_string();
        assert!(err.contains("account #1"), "{err}");
        assert!(!err.contains("LEAKME"), "{err}");
        let err = parse(b"{\"version\":1,\"accounts\":[\"sk-ant-LEAKME\"", p())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(!err.contains("LEAKME"), "{err}");
    }

    #[test]
    fn v0_bare_array_migrates() {
        let bytes = br#"[{"id":"acc_1","provider":"openai","label":"work","kind":"api_key","credential":{"type":"api_key","key":"sk-1"}}]"#;
        let parsed = parse(bytes, p()).unwrap();
        assert_eq!(parsed.migrated_from, Some(0));
        assert_eq!(parsed.doc.version, 1);
        assert_eq!(parsed.doc.accounts[0].label, "work");
        assert!(parsed.doc.accounts[0].enabled);
        assert_eq!(parsed.doc.accounts[0].state, AccountState::Active);
    }

    #[test]
    fn v0_object_form_migrates_and_keeps_unknown_fields() {
        let bytes = br#"{"version":0,"accounts":[],"team":"core"}"#;
        let parsed = parse(bytes, p()).unwrap();
        assert_eq!(parsed.migrated_from, Some(0));
        let out: serde_json::Value = serde_json::from_slice(&parsed.doc.to_bytes()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"version": 1, "accounts": [], "team": "core"})
        );
    }

    /// Found by the `store_accounts` fuzz target (parse → write → parse →
    /// write was not stable): taking `version` and `accounts` out of the
    /// top-level object swapped the last unknown field into their place, so
    /// the fields a newer marathon (or a person) added changed order on every
    /// rewrite of the file.
    #[test]
    fn unknown_top_level_fields_keep_their_order() {
        let bytes = br#"{"version":1,"accounts":[],"b":1,"a":2,"c":3}"#;
        let written = parse(bytes, p()).unwrap().doc.to_bytes();
        let keys = |bytes: &[u8]| {
            let v: Value = serde_json::from_slice(bytes).unwrap();
            v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(keys(&written), ["version", "accounts", "b", "a", "c"]);
        let again = parse(&written, p()).unwrap().doc.to_bytes();
        assert_eq!(again, written);
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let a = r#"{"id":"acc_1","provider":"openai","label":"a","kind":"api_key","credential":{"type":"api_key","key":"k"}}"#;
        let b = a.replace("\"a\"", "\"b\"");
        let bytes = format!(r#"{{"version":1,"accounts":[{a},{b}]}}"#);
        let err = parse(bytes.as_bytes(), p()).err().unwrap().to_string();
        assert!(err.contains("two accounts share the id acc_1"), "{err}");
    }

    #[test]
    fn newer_version_is_refused() {
        let err = parse(br#"{"version":7,"accounts":[]}"#, p()).err().unwrap();
        assert!(matches!(
            err,
            StoreError::NewerVersion {
                found: 7,
                supported: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("Upgrade marathon"));
    }

    #[test]
    fn default_labels_use_identity_then_provider_number() {
        let mut accounts = Vec::new();
        let oauth = |identity: Option<&str>, token: &str| NewAccount {
            provider: "anthropic".into(),
            label: None,
            kind: AccountKind::Oauth,
            priority: 0,
            identity: identity.map(str::to_string),
            credential: Credential::Oauth {
                access: Secret::new(token),
                refresh: None,
                expires_at: None,
                id_token: None,
                scopes: vec![],
            },
            extras: Map::new(),
            source: None,
        };
        let a = add(
            &mut accounts,
            oauth(Some("ana@example.com"), "t1"),
            UnixMillis(1),
        )
        .unwrap();
        assert_eq!(a.account().label, "ana@example.com");
        let b = add(&mut accounts, oauth(None, "t2"), UnixMillis(1)).unwrap();
        assert_eq!(b.account().label, "anthropic-2");
        let again = add(
            &mut accounts,
            oauth(Some("ana@example.com"), "t3"),
            UnixMillis(2),
        )
        .unwrap();
        assert!(matches!(again, AddResult::Updated(_)));
        assert_eq!(again.account().id, a.account().id);
        assert_eq!(accounts.len(), 2);
    }
}
