//! What the `store_accounts`, `store_hot` and `import` fuzz targets check.
//!
//! Compiled twice: by the fuzz crate and, through `#[path]`, by
//! `crates/store/tests/fuzz_seeds.rs`, which runs every checked-in seed through
//! these functions in the normal test suite (so the targets cannot rot).

#![allow(unreachable_pub, dead_code)]

use std::sync::Arc;

use marathon_store::import::{self, ImportFormat};
use marathon_store::{MemoryStore, Store, UnixMillis, fuzzing};
use serde_json::Value;

/// `accounts.json`: a document that parses re-serialises to bytes that parse
/// to the same document (written back unchanged, not migrated again); an
/// error never quotes a credential from the file.
pub fn accounts(data: &[u8]) {
    match fuzzing::accounts_file(data) {
        Ok((written, _migrated_from)) => {
            let (again, migrated) = fuzzing::accounts_file(&written).unwrap_or_else(|e| {
                panic!(
                    "the store cannot read what it wrote: {e}\n{}",
                    String::from_utf8_lossy(&written)
                )
            });
            assert_eq!(migrated, None, "a written document is migrated again");
            assert_eq!(
                String::from_utf8_lossy(&again),
                String::from_utf8_lossy(&written),
                "parse → write → parse → write is not stable"
            );
        }
        Err(err) => {
            let Ok(doc) = serde_json::from_slice::<Value>(data) else {
                // Not JSON: the message is a position, checked by the store's own tests.
                return;
            };
            let mut masked = doc.clone();
            mask_strings(&mut masked, true, &|key| {
                matches!(key, "key" | "access" | "refresh" | "id_token")
            });
            let masked = serde_json::to_vec(&masked).expect("a JSON value serializes");
            let masked_err = fuzzing::accounts_file(&masked)
                .expect_err("masking credentials made a bad document valid");
            // Messages depend on the document's shape, never on a secret's value.
            assert_eq!(err.to_string(), masked_err.to_string());
        }
    }
}

/// `hot.json`: whatever it reads, what it writes reads back to the same state
/// (a cooldown written is never silently dropped on the next start).
pub fn hot(data: &[u8]) {
    let (_, written) = fuzzing::hot_file(data);
    let (_, again) = fuzzing::hot_file(&written);
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&written),
        "hot state does not survive a save and load"
    );
}

/// Importers: the input as each of the four formats. Errors never quote a
/// value from the file; every imported account is accepted by a store.
pub fn import(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // `import::read` reads text; a non-UTF-8 file fails before parsing.
        return;
    };
    let json = serde_json::from_str::<Value>(text).ok();
    for format in ImportFormat::ALL {
        match import::parse(format, text) {
            Ok(found) => {
                let store = MemoryStore::with_clock(Arc::new(marathon_core::ManualClock::new(
                    UnixMillis(1_764_331_200_000),
                )));
                for a in found.accounts {
                    assert_eq!(a.account.kind, a.account.credential.kind());
                    assert_eq!(a.account.label, None);
                    if let Err(e) = store.add(a.account) {
                        panic!("{format}: the store refused an imported account: {e}");
                    }
                }
            }
            Err(err) => {
                let Some(doc) = &json else { continue };
                // Every string value but the `type` tags (which choose the
                // branch) replaced by one of the same length: the message
                // must not change, so it quotes no value.
                let mut masked = doc.clone();
                mask_strings(&mut masked, false, &|key| key != "type");
                let masked = serde_json::to_string(&masked).expect("a JSON value serializes");
                let masked_err = import::parse(format, &masked)
                    .expect_err("masking values made a bad file valid");
                assert_eq!(err.to_string(), masked_err.to_string(), "{format}");
            }
        }
    }
}

/// Replaces every non-empty string value under a key `mask` accepts (array
/// items count as under their array's key; with `inherit`, so does everything
/// nested below such a key) with as many `x`s.
fn mask_strings(v: &mut Value, inherit: bool, mask: &dyn Fn(&str) -> bool) {
    fn walk(v: &mut Value, masked: bool, inherit: bool, mask: &dyn Fn(&str) -> bool) {
        match v {
            Value::String(s) if masked && !s.is_empty() => {
                *s = "x".repeat(s.chars().count());
            }
            Value::Array(items) => items
                .iter_mut()
                .for_each(|i| walk(i, masked, inherit, mask)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    walk(v, mask(k) || (inherit && masked), inherit, mask);
                }
            }
            _ => {}
        }
    }
    walk(v, false, inherit, mask);
}
