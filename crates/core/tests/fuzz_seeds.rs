//! The fuzz targets' seeds, run through the targets' own checks.
//!
//! `fuzz/` is built only by `scripts/fuzz` (it needs libFuzzer), so nothing in
//! the normal build would notice if its checks stopped compiling or its seeds
//! stopped being good inputs. This test compiles the very file the `hints`,
//! `classify`, `sse` and `usage` targets call and runs every seed through it: an API
//! change breaks this test, and a seed that trips an invariant fails here too.

#[path = "../../../fuzz/src/core_checks.rs"]
mod core_checks;

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
fn hints_seeds() {
    for (name, data) in seeds("hints") {
        eprintln!("{name}");
        core_checks::hints(&data);
    }
}

#[test]
fn classify_seeds() {
    for (name, data) in seeds("classify") {
        eprintln!("{name}");
        core_checks::classify_all(&data);
    }
}

#[test]
fn usage_seeds() {
    for (name, data) in seeds("usage") {
        eprintln!("{name}");
        core_checks::usage(&data);
    }
}

#[test]
fn sse_seeds() {
    for (name, data) in seeds("sse") {
        eprintln!("{name}");
        core_checks::sse(&data);
    }
}

/// The seeds are real samples: the fixture-format reader must see what the
/// fixtures say, or the targets would be fuzzing garbage.
#[test]
fn seed_reader_reads_the_fixture_format() {
    let (_, data) = seeds("hints")
        .into_iter()
        .find(|(n, _)| n == "anthropic_429_api_key.http")
        .unwrap();
    let r = core_checks::response(&data);
    assert_eq!(r.status, 429);
    assert_eq!(r.now, marathon_core::UnixMillis(1_795_867_200_000));
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v == "17")
    );
    assert!(r.body.starts_with(b"{"));
}
