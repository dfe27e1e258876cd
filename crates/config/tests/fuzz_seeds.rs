//! The `config` fuzz target's seeds, run through the target's own check.
//!
//! `fuzz/` is built only by `scripts/fuzz` (it needs libFuzzer), so nothing in
//! the normal build would notice if its check stopped compiling or its seeds
//! stopped being good inputs. This test compiles the very file the `config`
//! target calls and runs every seed through it.

#[path = "../../../fuzz/src/config_checks.rs"]
mod config_checks;

use std::path::PathBuf;

/// The files of `fuzz/seeds/config`, by name.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/config");
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
fn config_seeds() {
    for (name, data) in seeds() {
        eprintln!("{name}");
        config_checks::config(&data);
    }
}

/// The seeds hold valid files (a copy of the shipped example, a custom OAuth
/// provider) and invalid ones, so both halves of the check run; the seed that
/// once crashed the engine (a rest of 2^64 - 1 seconds) must keep loading.
#[test]
fn config_seeds_include_valid_and_invalid_files() {
    let all = seeds();
    let load = |n: &str| {
        let text = &all.iter().find(|(name, _)| name == n).unwrap().1;
        marathon_config::load_str(std::str::from_utf8(text).unwrap(), "x.toml".as_ref())
    };
    assert!(load("example.toml").is_ok());
    assert!(load("custom_provider_oauth.toml").is_ok());
    assert!(load("regress_huge_cooldown.toml").is_ok());
    assert!(load("access_keys_wrong_type.toml").is_err());
    assert!(load("access_keys_not_a_list.toml").is_err());
}
