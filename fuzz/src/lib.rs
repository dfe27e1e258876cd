//! Fuzz targets for marathon's parsers (see `fuzz/README.md`).
//!
//! The checks live in plain modules that depend only on the crate they test,
//! so each owning crate's test suite can compile them too (`tests/fuzz_seeds.rs`
//! runs every seed in `fuzz/seeds/` through them). The targets in
//! `fuzz_targets/` are one line each.

pub mod config_checks;
pub mod core_checks;
pub mod store_checks;
