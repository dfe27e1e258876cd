//! The fuzz targets' seeds, run through the targets' own checks.
//!
//! `fuzz/` is built only by `scripts/fuzz` (it needs libFuzzer), so nothing in
//! the normal build would notice if its checks stopped compiling or its seeds
//! stopped being good inputs. This test compiles the very file the
//! `store_accounts`, `store_hot` and `import` targets call and runs every seed
//! through it.

#[path = "../../../fuzz/src/store_checks.rs"]
mod store_checks;

use std::path::PathBuf;

/// The files of `fuzz/seeds/<target>`, by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn store_accounts_seeds() {
    for (name, data) in seeds("store_accounts") {
        eprintln!("{name}");
        store_checks::accounts(&data);
    }
}

#[test]
fn store_hot_seeds() {
    for (name, data) in seeds("store_hot") {
        eprintln!("{name}");
        store_checks::hot(&data);
    }
}

#[test]
fn import_seeds() {
    for (name, data) in seeds("import") {
        eprintln!("{name}");
        store_checks::import(&data);
    }
}

/// The accounts seeds cover what they are named for: a current document, both
/// old forms (migrated) and refused ones, so the round-trip check is exercised.
#[test]
fn accounts_seeds_cover_parse_migrate_and_refuse() {
    use marathon_store::fuzzing::accounts_file;
    let by_name = |n: &str| {
        seeds("store_accounts")
            .into_iter()
            .find(|(name, _)| name == n)
            .unwrap()
            .1
    };
    assert_eq!(accounts_file(&by_name("v1_mixed.json")).unwrap().1, None);
    assert_eq!(
        accounts_file(&by_name("v0_bare_array.json")).unwrap().1,
        Some(0)
    );
    assert_eq!(
        accounts_file(&by_name("v0_object.json")).unwrap().1,
        Some(0)
    );
    assert!(accounts_file(&by_name("duplicate_ids.json")).is_err());
    assert!(accounts_file(&by_name("newer_version.json")).is_err());
}
