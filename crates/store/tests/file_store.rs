//! The file backend: format, refusal of files it does not understand,
//! preservation of unknown fields, migration, permissions, locks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marathon_core::ManualClock;
use marathon_store::{
    AccountState, AddResult, Credential, FileStore, HotAccount, HotState, NewAccount, Secret,
    Store, StoreError, UnixMillis,
};

fn key(provider: &str, label: &str, key: &str) -> NewAccount {
    NewAccount::api_key(provider, Some(label.to_string()), Secret::new(key))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn store(dir: &Path) -> FileStore {
    FileStore::open_with_clock(
        dir,
        Arc::new(ManualClock::new(UnixMillis(1_750_000_000_000))),
    )
    .unwrap()
}

#[test]
fn add_list_update_remove_round_trip_through_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let a = s
        .add(key("anthropic", "work", "sk-ant-api03-aaaa"))
        .unwrap();
    let AddResult::Added(a) = a else {
        panic!("expected Added")
    };
    assert_eq!(a.created_at, UnixMillis(1_750_000_000_000));
    s.add(key("openai", "work", "sk-proj-bbbb")).unwrap();

    // A second handle (as another process would) sees the same accounts.
    let other = FileStore::open(tmp.path()).unwrap();
    let listed = other.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(other.find("anthropic", "work").unwrap().unwrap().id, a.id);

    let updated = other
        .update(&a.id, &mut |acc| {
            acc.priority = 5;
            acc.state = AccountState::NeedsLogin;
        })
        .unwrap();
    assert_eq!(updated.priority, 5);
    let seen = s.get(&a.id).unwrap().unwrap();
    assert_eq!(seen.priority, 5);
    assert_eq!(seen.state, AccountState::NeedsLogin);
    match seen.credential {
        Credential::ApiKey { key } => assert_eq!(key.expose(), "sk-ant-api03-aaaa"),
        Credential::Oauth { .. } => panic!("kind changed"),
    }

    s.remove(&a.id).unwrap();
    assert!(other.get(&a.id).unwrap().is_none());
    assert_eq!(
        other.list().unwrap().len(),
        1,
        "remove takes one account, not all"
    );
    assert!(matches!(s.remove(&a.id), Err(StoreError::NotFound(_))));
}

#[test]
fn labels_are_unique_per_provider_and_same_key_is_an_update() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    s.add(key("anthropic", "work", "sk-ant-1")).unwrap();
    let err = s.add(key("anthropic", "work", "sk-ant-2")).unwrap_err();
    assert!(matches!(err, StoreError::LabelTaken { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("marathon auth rename anthropic work"),
        "{err}"
    );
    // Same label in another provider is fine.
    s.add(key("openai", "work", "sk-2")).unwrap();
    // The same key again updates rather than duplicating.
    let again = s.add(key("anthropic", "other", "sk-ant-1")).unwrap();
    assert!(matches!(again, AddResult::Updated(ref a) if a.label == "work"));
    assert_eq!(s.list().unwrap().len(), 2);

    // Renaming onto a taken label is refused and changes nothing.
    let b = s
        .add(key("anthropic", "home", "sk-ant-3"))
        .unwrap()
        .account()
        .clone();
    let err = s
        .update(&b.id, &mut |a| a.label = "work".into())
        .unwrap_err();
    assert!(matches!(err, StoreError::LabelTaken { .. }));
    assert_eq!(s.get(&b.id).unwrap().unwrap().label, "home");
}

#[test]
fn unknown_fields_top_level_and_per_account_survive_a_rewrite() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("accounts.json");
    std::fs::write(
        &path,
        r#"{
  "version": 1,
  "team": {"name": "core", "seats": 4},
  "accounts": [
    {"id": "acc_1", "provider": "anthropic", "label": "work", "kind": "api_key",
     "credential": {"type": "api_key", "key": "sk-ant-keep"},
     "future_field": [1, 2, 3], "notes": "from a newer minor release"}
  ],
  "zz_last": true
}"#,
    )
    .unwrap();
    let s = store(tmp.path());
    s.add(key("openai", "new", "sk-new")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["team"], serde_json::json!({"name": "core", "seats": 4}));
    assert_eq!(v["zz_last"], true);
    assert_eq!(
        v["accounts"][0]["future_field"],
        serde_json::json!([1, 2, 3])
    );
    assert_eq!(v["accounts"][0]["notes"], "from a newer minor release");
    assert_eq!(v["accounts"][0]["credential"]["key"], "sk-ant-keep");
    assert_eq!(v["accounts"][1]["label"], "new");
}

/// Found by the `store_accounts` fuzz target: serde_json's default number
/// parser is not correctly rounded, so a float in a field the store keeps
/// as it was (extras, unknown fields) changed on every rewrite of the file:
/// `18446744073715095615` was written as `1.8446744073715098e+19`, which read
/// back and was written as `...094e+19`, and so on. Fixed by serde_json's
/// `float_roundtrip` feature.
#[test]
fn numbers_in_kept_fields_do_not_drift_across_rewrites() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("accounts.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "accounts": [
  {"id": "acc_1", "provider": "openai", "label": "k", "kind": "api_key",
   "credential": {"type": "api_key", "key": "sk-1"},
   "extras": {"big": 18446744073715095615, "fine": 0.30000000000000004},
   "future": 1.8446744073715098e19}],
  "seats": 2.2250738585072011e-308}"#,
    )
    .unwrap();
    let s = store(tmp.path());
    let read_numbers = || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let a = &v["accounts"][0];
        [
            a["extras"]["big"].as_f64().unwrap(),
            a["extras"]["fine"].as_f64().unwrap(),
            a["future"].as_f64().unwrap(),
            v["seats"].as_f64().unwrap(),
        ]
    };
    // The values as Rust's (correctly rounded) parser reads the original text.
    let expected: [f64; 4] = [
        "18446744073715095615".parse().unwrap(),
        "0.30000000000000004".parse().unwrap(),
        "1.8446744073715098e19".parse().unwrap(),
        "2.2250738585072011e-308".parse().unwrap(),
    ];
    for n in 0..3 {
        s.add(key("anthropic", &format!("a{n}"), &format!("sk-{n}")))
            .unwrap();
        assert_eq!(read_numbers(), expected, "after rewrite {}", n + 1);
    }
}

fn assert_refused_and_untouched(contents: &[u8], expect: impl Fn(&StoreError) -> bool, hint: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("accounts.json");
    std::fs::write(&path, contents).unwrap();
    let err = FileStore::open(tmp.path()).unwrap_err();
    assert!(expect(&err), "unexpected error: {err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );
    assert!(msg.contains(hint), "says what to do: {msg}");
    assert!(!msg.contains("sk-ant-LEAK"), "no secret in: {msg}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        contents,
        "byte-for-byte untouched after open"
    );

    // A handle opened before the file went bad refuses every operation too.
    let tmp2 = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp2.path()).unwrap();
    let path2 = tmp2.path().join("accounts.json");
    std::fs::write(&path2, contents).unwrap();
    assert!(s.add(key("anthropic", "x", "sk-x")).is_err());
    assert!(s.list().is_err());
    assert!(
        s.remove(&marathon_store::AccountId("acc_1".into()))
            .is_err()
    );
    assert_eq!(
        std::fs::read(&path2).unwrap(),
        contents,
        "byte-for-byte untouched after add"
    );
    let names: Vec<_> = std::fs::read_dir(tmp2.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("bak")),
        "no migration of a refused file: {names:?}"
    );
}

#[test]
fn a_corrupt_file_is_refused_and_never_overwritten() {
    let truncated = br#"{"version":1,"accounts":[{"id":"acc_1","provider":"anthropic","label":"w","kind":"api_key","credential":{"type":"api_key","key":"sk-ant-LEAK"#;
    assert_refused_and_untouched(
        truncated,
        |e| matches!(e, StoreError::Corrupt { .. }),
        "move it aside",
    );
    let wrong_type = br#"{"version":1,"accounts":[{"id":"acc_1","provider":"anthropic","label":"w","kind":"api_key","credential":{"type":"api_key","key":"k"},"priority":"sk-ant-LEAK"}]}"#;
    assert_refused_and_untouched(
        wrong_type,
        |e| matches!(e, StoreError::Corrupt { .. }),
        "Fix it by hand",
    );
    assert_refused_and_untouched(
        b"",
        |e| matches!(e, StoreError::Corrupt { .. }),
        "move it aside",
    );
    assert_refused_and_untouched(
        b"\"sk-ant-LEAK\"",
        |e| matches!(e, StoreError::Corrupt { .. }),
        "move it aside",
    );
}

#[test]
fn a_file_from_a_newer_version_is_refused_and_never_overwritten() {
    let newer = br#"{"version":2,"accounts":[{"id":"acc_1","provider":"anthropic","label":"w","kind":"passkey","credential":{"type":"passkey","blob":"sk-ant-LEAK"}}]}"#;
    assert_refused_and_untouched(
        newer,
        |e| {
            matches!(
                e,
                StoreError::NewerVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            )
        },
        "Upgrade marathon",
    );
}

#[test]
fn a_v0_file_is_migrated_after_a_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("accounts.json");
    let v0 = br#"[{"id":"acc_old","provider":"openai","label":"legacy","kind":"api_key","credential":{"type":"api_key","key":"sk-legacy"}}]"#;
    std::fs::write(&path, v0).unwrap();
    let s = FileStore::open(tmp.path()).unwrap();
    let backup = tmp.path().join("accounts.json.bak-v0");
    assert_eq!(std::fs::read(&backup).unwrap(), v0);
    assert_eq!(mode(&backup), 0o600);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["accounts"][0]["label"], "legacy");
    assert_eq!(
        s.find("openai", "legacy").unwrap().unwrap().id.as_str(),
        "acc_old"
    );
}

#[test]
fn files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = FileStore::open(&dir).unwrap();
    let a = s
        .add(key("anthropic", "work", "sk-ant-1"))
        .unwrap()
        .account()
        .clone();
    let _g = s.lock_account(&a.id, Duration::from_secs(1)).unwrap();
    s.save_hot(&HotState::default()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("accounts.json")), 0o600);
    assert_eq!(mode(&dir.join("accounts.lock")), 0o600);
    assert_eq!(mode(&dir.join("hot.json")), 0o600);
    assert_eq!(mode(&dir.join("locks")), 0o700);
    assert_eq!(
        mode(&dir.join("locks").join(format!("{}.lock", a.id))),
        0o600
    );
    // Nothing else (no leftover temporary file) in the directory.
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["accounts.json", "accounts.lock", "hot.json", "locks"]
    );
}

/// Store files left open to other users (copied with `cp`, made by an older
/// build, a 022 umask on a hand-made file) were used as they were, so any
/// local user could read the keys. Opening the store now makes them private,
/// reports each fix, and changes no byte of their contents.
#[test]
fn loose_permissions_are_tightened_on_open_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    store(&dir)
        .add(key("anthropic", "work", "sk-ant-1"))
        .unwrap();
    store(&dir).save_hot(&HotState::default()).unwrap();
    let backup = dir.join("accounts.json.bak-v0");
    std::fs::write(&backup, b"[]").unwrap();
    let loose = [
        (dir.clone(), 0o755),
        (dir.join("accounts.json"), 0o644),
        (dir.join("accounts.lock"), 0o666),
        (dir.join("hot.json"), 0o640),
        (backup.clone(), 0o604),
    ];
    for (path, m) in &loose {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*m)).unwrap();
    }
    let before = std::fs::read(dir.join("accounts.json")).unwrap();

    let s = store(&dir);
    let fixed: Vec<(&Path, u32, u32)> = s
        .permission_fixes()
        .iter()
        .map(|f| (f.path.as_path(), f.was, f.now))
        .collect();
    assert_eq!(
        fixed,
        [
            (dir.as_path(), 0o755, 0o700),
            (dir.join("accounts.json").as_path(), 0o644, 0o600),
            (dir.join("accounts.lock").as_path(), 0o666, 0o600),
            (dir.join("hot.json").as_path(), 0o640, 0o600),
            (backup.as_path(), 0o604, 0o600),
        ]
    );
    for (path, _) in &loose {
        let want = if path == &dir { 0o700 } else { 0o600 };
        assert_eq!(mode(path), want, "{}", path.display());
    }
    assert_eq!(std::fs::read(dir.join("accounts.json")).unwrap(), before);
    let message = s.permission_fixes()[1].to_string();
    assert!(
        message.contains("mode 0644") && message.contains("0600"),
        "{message}"
    );
    assert!(message.contains("holds credentials"), "{message}");
    // Private files are left alone and not reported.
    assert!(store(&dir).permission_fixes().is_empty());
}

#[test]
fn account_locks_exclude_other_handles_and_time_out() {
    let tmp = tempfile::tempdir().unwrap();
    let s1 = FileStore::open(tmp.path()).unwrap();
    let s2 = FileStore::open(tmp.path()).unwrap();
    let id = marathon_store::AccountId("acc_lockme".into());
    let guard = s1.lock_account(&id, Duration::from_secs(1)).unwrap();
    let err = s2.lock_account(&id, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    assert!(
        err.to_string().contains("another marathon process"),
        "{err}"
    );
    // Another account is independent.
    let _other = s2
        .lock_account(
            &marathon_store::AccountId("acc_other".into()),
            Duration::ZERO,
        )
        .unwrap();
    drop(guard);
    s2.lock_account(&id, Duration::from_millis(50)).unwrap();
    // An id that cannot be a file name is refused rather than escaping locks/.
    assert!(
        s1.lock_account(
            &marathon_store::AccountId("../../etc".into()),
            Duration::ZERO
        )
        .is_err()
    );
}

#[test]
fn hot_state_round_trips_and_a_damaged_hot_file_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path()).unwrap();
    assert!(s.load_hot().unwrap().cooldowns.is_empty());
    let mut hot = HotState::default();
    hot.cooldowns.insert(
        marathon_store::AccountId("acc_1".into()),
        HotAccount {
            cooling_until: Some(UnixMillis(1_750_000_060_000)),
            reason: Some("rate_limit".into()),
            successes: 3,
            failures: 1,
        },
    );
    s.save_hot(&hot).unwrap();
    let back = s.load_hot().unwrap();
    let h = &back.cooldowns[&marathon_store::AccountId("acc_1".into())];
    assert_eq!(h.cooling_until, Some(UnixMillis(1_750_000_060_000)));
    assert_eq!(h.successes, 3);
    std::fs::write(tmp.path().join("hot.json"), b"{\"cooldowns\":").unwrap();
    assert!(s.load_hot().unwrap().cooldowns.is_empty());
}

#[test]
fn oauth_credentials_round_trip_with_rotated_refresh_token() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let acc = NewAccount {
        provider: "anthropic".into(),
        label: None,
        kind: marathon_store::AccountKind::Oauth,
        priority: 1,
        identity: Some("ana@example.com".into()),
        credential: Credential::Oauth {
            access: Secret::new("sk-ant-oat01-access"),
            refresh: Some(Secret::new("sk-ant-ort01-first")),
            expires_at: Some(UnixMillis(1_750_000_000_000 + 28_800_000)),
            id_token: None,
            scopes: vec!["user:inference".into(), "user:profile".into()],
        },
        extras: Default::default(),
        source: Some("import:claude-code".into()),
    };
    let a = s.add(acc).unwrap().account().clone();
    assert_eq!(a.label, "ana@example.com");
    s.update(&a.id, &mut |acc| {
        if let Credential::Oauth { refresh, .. } = &mut acc.credential {
            *refresh = Some(Secret::new("sk-ant-ort01-second"));
        }
    })
    .unwrap();
    // Durable: a fresh handle reads the rotated token from disk.
    let fresh = FileStore::open(tmp.path()).unwrap();
    match fresh.get(&a.id).unwrap().unwrap().credential {
        Credential::Oauth {
            refresh, scopes, ..
        } => {
            assert_eq!(refresh.unwrap().expose(), "sk-ant-ort01-second");
            assert_eq!(scopes, ["user:inference", "user:profile"]);
        }
        Credential::ApiKey { .. } => panic!("kind changed"),
    }
}

fn hot_of(id: &str, until: Option<u64>, successes: u64) -> HotState {
    let mut hot = HotState::default();
    hot.cooldowns.insert(
        marathon_store::AccountId(id.into()),
        HotAccount {
            cooling_until: until.map(UnixMillis),
            reason: until.map(|_| "rate_limit_error".into()),
            successes,
            failures: 0,
        },
    );
    hot
}

/// Guards issue 12: two proxies on one store each saved their own view of
/// hot.json, so a 10-minute cooldown one learned vanished when the other
/// saved. Merging keeps the later cooldown and adds the counters up, even
/// from many writers at once.
#[test]
fn merging_hot_state_never_loses_another_process_s_news() {
    let tmp = tempfile::tempdir().unwrap();
    let now = UnixMillis(1_750_000_000_000);
    let long = 1_750_000_600_000;
    let a = FileStore::open(tmp.path()).unwrap();
    let b = FileStore::open(tmp.path()).unwrap();
    a.merge_hot(&hot_of("acc_1", Some(long), 1), now).unwrap();
    // b knows nothing of it, learns a shorter one, and counts a success.
    let merged = b
        .merge_hot(&hot_of("acc_1", Some(1_750_000_030_000), 1), now)
        .unwrap();
    let h = &merged.cooldowns[&marathon_store::AccountId("acc_1".into())];
    assert_eq!(h.cooling_until, Some(UnixMillis(long)), "never shortened");
    assert_eq!(h.successes, 2, "counters add up");
    // Writers racing from threads (as processes would): no increment lost.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let store = FileStore::open(tmp.path()).unwrap();
                for _ in 0..10 {
                    store.merge_hot(&hot_of("acc_2", None, 1), now).unwrap();
                }
            });
        }
    });
    let back = a.load_hot().unwrap();
    assert_eq!(
        back.cooldowns[&marathon_store::AccountId("acc_2".into())].successes,
        80
    );
    assert_eq!(
        back.cooldowns[&marathon_store::AccountId("acc_1".into())].cooling_until,
        Some(UnixMillis(long))
    );
    // Once over, a cooldown is dropped at the next merge.
    let later = b
        .merge_hot(&HotState::default(), UnixMillis(long + 1))
        .unwrap();
    assert_eq!(
        later.cooldowns[&marathon_store::AccountId("acc_1".into())].cooling_until,
        None
    );
}
