//! Several real processes on one store: no lost update, and a writer killed
//! with SIGKILL at any point never leaves a broken file or loses a committed
//! account.
//!
//! The child processes are this test binary itself, re-run with
//! `MARATHON_STORE_CHILD` set: the `child` test below then acts as the writer.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use marathon_store::{AccountId, FileStore, NewAccount, Secret, Store, StoreError};

const CHILD: &str = "MARATHON_STORE_CHILD";

/// The writer, when run as a child; a no-op in a normal test run.
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD) else {
        return;
    };
    let dir = std::env::var("MARATHON_STORE_DIR").unwrap();
    let store = FileStore::open(Path::new(&dir)).unwrap();
    if role == "locker" {
        // Hold one account's lock until killed.
        let _guard = store
            .lock_account(&AccountId("acc_shared".into()), Duration::from_secs(5))
            .unwrap();
        println!("LOCKED");
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let count: usize = std::env::var("MARATHON_STORE_COUNT")
        .unwrap()
        .parse()
        .unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let label = format!("{role}-{i}");
        store
            .add(NewAccount::api_key(
                "anthropic",
                Some(label.clone()),
                Secret::new(format!("sk-ant-{role}-{i}")),
            ))
            .unwrap();
        // Printed only after `add` returned, i.e. after the write is durable.
        writeln!(out, "COMMITTED {label}").unwrap();
        out.flush().unwrap();
    }
}

fn spawn_writer(dir: &Path, role: &str, count: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env("MARATHON_STORE_DIR", dir)
        .env("MARATHON_STORE_COUNT", count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The label in a `COMMITTED <label>` line. libtest may print `test child ... `
/// before the first one on the same line.
fn committed_label(line: &str) -> Option<&str> {
    line.find("COMMITTED ")
        .map(|at| &line[at + "COMMITTED ".len()..])
}

fn labels_in_file(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("accounts.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("accounts.json always parses");
    assert_eq!(v["version"], 1);
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn eight_processes_adding_25_accounts_each_lose_nothing() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..8)
        .map(|w| spawn_writer(tmp.path(), &format!("w{w}"), 25))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "writer failed: {:?}", out.status);
        let committed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(committed_label)
            .count();
        assert_eq!(committed, 25);
    }
    let mut labels = labels_in_file(tmp.path());
    assert_eq!(labels.len(), 200);
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), 200, "every account present once");
    let store = FileStore::open(tmp.path()).unwrap();
    let accounts = store.list().unwrap();
    let mut ids: Vec<_> = accounts.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "ids are unique");
}

/// A tiny deterministic generator, so a failure can be replayed from the seed
/// printed in the assertion message.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn a_writer_killed_at_random_points_never_breaks_the_file() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let start_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut seed = start_seed;
    let mut committed_total: Vec<String> = Vec::new();
    for round in 0..12 {
        let mut child = spawn_writer(tmp.path(), &format!("r{round}"), 100);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| committed_label(&l).map(str::to_string))
                .collect::<Vec<_>>()
        });
        // Kill somewhere between process start-up and the end of its writes.
        let delay = Duration::from_micros(next(&mut seed) % 150_000);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let committed = reader.join().unwrap();
        eprintln!(
            "round {round}: killed after {delay:?}, {} writes committed",
            committed.len()
        );
        committed_total.extend(committed);

        if tmp.path().join("accounts.json").exists() {
            let labels = labels_in_file(tmp.path());
            for label in &committed_total {
                assert!(
                    labels.contains(label),
                    "round {round} (seed {start_seed}): committed {label} missing after SIGKILL at {delay:?}"
                );
            }
        } else {
            assert!(
                committed_total.is_empty(),
                "seed {start_seed}: accounts committed but no file"
            );
        }
    }
    // The store opens cleanly afterwards and cleans up temporaries left by the kills.
    let store = FileStore::open(tmp.path()).unwrap();
    assert!(store.list().unwrap().len() >= committed_total.len());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        !committed_total.is_empty(),
        "seed {start_seed}: no round got a write in; the test proved nothing"
    );
}

#[test]
fn an_account_lock_excludes_other_processes_and_dies_with_its_holder() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    let mut child = spawn_writer(tmp.path(), "locker", 0);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("LOCKED"))),
        "the child took the lock"
    );
    let id = AccountId("acc_shared".into());
    let err = store
        .lock_account(&id, Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    // SIGKILL: no destructor runs, yet the kernel drops the lock with the process.
    child.kill().unwrap();
    child.wait().unwrap();
    store.lock_account(&id, Duration::from_secs(5)).unwrap();
}
