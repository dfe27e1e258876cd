//! ARCHITECTURE.md's invariants that a machine can check: the crate graph
//! (from `cargo metadata`) and what each crate's sources may touch. Each test
//! names the invariant it guards; a change that breaks one should change the
//! design on purpose (and the document with it), not by accident.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use marathon_testkit::repo_root;

/// Every workspace crate's normal (non-dev, non-build) dependencies, by name.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut graph = BTreeMap::new();
    for package in meta["packages"].as_array().unwrap() {
        let deps = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        graph.insert(package["name"].as_str().unwrap().to_owned(), deps);
    }
    graph
}

/// The crates (by package name) that depend on any of `deps`.
fn dependents_of(graph: &BTreeMap<String, BTreeSet<String>>, deps: &[&str]) -> BTreeSet<String> {
    graph
        .iter()
        .filter(|(_, d)| deps.iter().any(|x| d.contains(*x)))
        .map(|(name, _)| name.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Every `.rs` file under `crates/<dir>/src`, with its code lines (comments
/// cut off, so documentation may talk about what the code must not do).
fn sources(dir: &str) -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &repo_root().join("crates").join(dir).join("src"),
        &mut files,
    );
    files.sort();
    assert!(!files.is_empty(), "no sources in crates/{dir}");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default().to_owned())
                .collect();
            (path, code)
        })
        .collect()
}

/// `(file:line, text)` of each code line in `crates/<dir>/src` containing one
/// of `needles`.
fn uses(dir: &str, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, lines) in sources(dir) {
        let shown = path.strip_prefix(repo_root()).unwrap_or(&path).display();
        for (i, line) in lines.iter().enumerate() {
            if needles.iter().any(|n| line.contains(n)) {
                found.push(format!("{shown}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

const CRATE_DIRS: [&str; 11] = [
    "cli", "client", "config", "core", "oauth", "proxy", "redis", "sim", "store", "testkit", "wire",
];

/// Invariant: marathon-core does no I/O and reads no clock.
#[test]
fn core_does_no_io_and_reads_no_clock() {
    let graph = dependencies();
    // Pure data crates only; a new one is a design decision, added here on purpose.
    assert_eq!(
        graph["marathon-core"],
        set(&[
            "aho-corasick",
            "foldhash",
            "httpdate",
            "memchr",
            "serde",
            "serde_json"
        ]),
        "marathon-core's dependencies"
    );
    let io = uses(
        "core",
        &[
            "std::fs",
            "std::net",
            "std::io",
            "std::process",
            "std::thread",
            "std::env",
            "tokio",
            "Instant::now",
        ],
    );
    assert!(io.is_empty(), "I/O in marathon-core:\n{}", io.join("\n"));
    // The one real clock lives here for the I/O crates; no engine code calls it.
    let clock: Vec<String> = uses("core", &["SystemTime::now", "SystemClock"])
        .into_iter()
        .filter(|l| {
            !l.starts_with("crates/core/src/clock.rs:") && !l.starts_with("crates/core/src/lib.rs:")
        })
        .collect();
    assert!(
        clock.is_empty(),
        "marathon-core reads the clock:\n{}",
        clock.join("\n")
    );
}

/// Invariant: the crates depend on each other as the map draws it: the
/// engine on nothing of ours, store and config on the engine only, the
/// OAuth crate on them (it builds its refresher from the config), what both
/// faces put on the wire on the engine and the config, and the proxy not on
/// the OAuth crate (tokens come through core's `TokenSource` seam).
#[test]
fn the_crate_graph_is_layered() {
    let graph = dependencies();
    let ours = |name: &str| -> BTreeSet<String> {
        graph[name]
            .iter()
            .filter(|d| d.starts_with("marathon"))
            .cloned()
            .collect()
    };
    assert_eq!(ours("marathon-core"), set(&[]));
    assert_eq!(ours("marathon-store"), set(&["marathon-core"]));
    assert_eq!(ours("marathon-config"), set(&["marathon-core"]));
    assert_eq!(ours("marathon-sim"), set(&[]));
    assert_eq!(
        ours("marathon-oauth"),
        set(&["marathon-config", "marathon-core", "marathon-store"])
    );
    assert_eq!(
        ours("marathon-wire"),
        set(&["marathon-config", "marathon-core"])
    );
    assert_eq!(
        ours("marathon-proxy"),
        set(&[
            "marathon-config",
            "marathon-core",
            "marathon-store",
            "marathon-wire"
        ])
    );
    // The second face: the same engine, config, store, refresher and wire.
    assert_eq!(
        ours("marathon-client"),
        set(&[
            "marathon-config",
            "marathon-core",
            "marathon-oauth",
            "marathon-store",
            "marathon-wire"
        ])
    );
    // The Redis backend is a store: it knows the engine and the store's
    // trait, nothing above; the proxy reaches it only through its `Peers`
    // seam, which the binary fills.
    assert_eq!(
        ours("marathon-redis"),
        set(&["marathon-core", "marathon-store"])
    );
    assert_eq!(
        dependents_of(&graph, &["redis"]),
        set(&["marathon-redis"]),
        "only marathon-redis talks to Redis"
    );
}

/// Invariant: only marathon-store reads and writes marathon's data files
/// (and other tools' credential files); only marathon-config reads the
/// config file. (The simulator reads its scenario file, the testkit installs
/// the test authorization server: tools, not the product.)
#[test]
fn only_the_store_and_the_config_touch_files() {
    let file_io = ["std::fs", "tokio::fs", "File::", "OpenOptions"];
    for dir in CRATE_DIRS {
        if matches!(dir, "store" | "config" | "sim" | "testkit") {
            continue;
        }
        let found = uses(dir, &file_io);
        assert!(
            found.is_empty(),
            "file access outside the store and config:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(
        dependents_of(&dependencies(), &["toml"]),
        set(&["marathon-config", "marathon-sim"]),
        "TOML is the config's format (and the simulator's scenarios)"
    );
}

/// Invariant: HTTP stays at the edges. hyper is known to the crates that
/// speak HTTP (the proxy, the OAuth client and its login callback, the
/// simulator, the CLI's client for its own proxy); the engine, the store and
/// the config never see an HTTP or async-runtime type.
#[test]
fn http_stays_out_of_the_engine_the_store_and_the_config() {
    let graph = dependencies();
    let http_stack = [
        "hyper",
        "hyper-util",
        "hyper-rustls",
        "http",
        "http-body",
        "http-body-util",
        "axum",
        "tokio",
    ];
    for name in ["marathon-core", "marathon-store", "marathon-config"] {
        let found: Vec<&String> = graph[name]
            .iter()
            .filter(|d| http_stack.contains(&d.as_str()))
            .collect();
        assert!(found.is_empty(), "{name} depends on {found:?}");
    }
    assert_eq!(
        dependents_of(&graph, &["hyper", "hyper-util", "hyper-rustls"]),
        set(&[
            "marathon",
            "marathon-oauth",
            "marathon-proxy",
            "marathon-sim"
        ]),
    );
}

/// Invariant: HTTP is served by the proxy and the simulator, and by the OAuth
/// login's loopback callback while a login runs; nothing else listens.
#[test]
fn only_the_proxy_the_simulator_and_the_login_callback_serve_http() {
    let serving = ["serve_connection", "TcpListener::bind", "axum::serve"];
    let mut servers = Vec::new();
    for dir in CRATE_DIRS {
        servers.extend(uses(dir, &serving));
    }
    let unexpected: Vec<&String> = servers
        .iter()
        .filter(|l| {
            !l.starts_with("crates/proxy/")
                && !l.starts_with("crates/sim/")
                && !l.starts_with("crates/oauth/src/login.rs:")
                // Test peers for the secret-hygiene suites, on 127.0.0.1.
                && !l.starts_with("crates/testkit/src/echo.rs:")
                // Finding a free port for the test redis-server (closed at once).
                && !l.starts_with("crates/testkit/src/redis.rs:")
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "an HTTP server outside the proxy, the simulator and the login callback:\n{unexpected:#?}"
    );
    assert!(
        servers
            .iter()
            .any(|l| l.starts_with("crates/oauth/src/login.rs:")),
        "the login callback is served (this test must see it to mean anything)"
    );
}
