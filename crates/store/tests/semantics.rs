//! The same behaviour from every backend: each test runs against the memory
//! store and the file store.

use std::sync::Arc;
use std::time::Duration;

use marathon_core::{ManualClock, UnixMillis};
use marathon_store::{
    AccountKind, AccountState, AddResult, Credential, FileStore, Map, MemoryStore, NewAccount,
    Secret, Store, StoreError,
};

const T0: UnixMillis = UnixMillis(1_750_000_000_000);

fn backends(
    clock: &Arc<ManualClock>,
) -> Vec<(&'static str, Box<dyn Store>, Option<tempfile::TempDir>)> {
    let tmp = tempfile::tempdir().unwrap();
    let file = FileStore::open_with_clock(tmp.path(), clock.clone()).unwrap();
    vec![
        (
            "memory",
            Box::new(MemoryStore::with_clock(clock.clone())),
            None,
        ),
        ("file", Box::new(file), Some(tmp)),
    ]
}

fn oauth(provider: &str, identity: Option<&str>, access: &str, refresh: &str) -> NewAccount {
    NewAccount {
        provider: provider.into(),
        label: None,
        kind: AccountKind::Oauth,
        priority: 0,
        identity: identity.map(str::to_string),
        credential: Credential::Oauth {
            access: Secret::new(access),
            refresh: Some(Secret::new(refresh)),
            expires_at: Some(UnixMillis(T0.0 + 3_600_000)),
            id_token: None,
            scopes: vec![],
        },
        extras: Map::new(),
        source: None,
    }
}

fn access_of(c: &Credential) -> &str {
    match c {
        Credential::Oauth { access, .. } => access.expose(),
        Credential::ApiKey { key } => key.expose(),
    }
}

#[test]
fn dedupe_by_identity_replaces_the_credential_and_keeps_label_and_priority() {
    let clock = Arc::new(ManualClock::new(T0));
    for (name, store, _dir) in backends(&clock) {
        let first = store
            .add(oauth("codex", Some("dev@example.com"), "at-1", "rt-1"))
            .unwrap();
        let AddResult::Added(first) = first else {
            panic!("{name}: first add is Added")
        };
        assert_eq!(first.label, "dev@example.com", "{name}");
        store
            .update(&first.id, &mut |a| {
                a.label = "work".into();
                a.priority = 3;
                a.state = AccountState::NeedsLogin;
            })
            .unwrap();
        clock.advance(Duration::from_secs(60));
        let mut again = oauth("codex", Some("dev@example.com"), "at-2", "rt-2");
        again
            .extras
            .insert("chatgpt_account_id".into(), "acct-1".into());
        let second = store.add(again).unwrap();
        let AddResult::Updated(second) = second else {
            panic!("{name}: same identity is Updated")
        };
        assert_eq!(second.id, first.id, "{name}");
        assert_eq!(second.label, "work", "{name}: label kept");
        assert_eq!(second.priority, 3, "{name}: priority kept");
        assert_eq!(
            second.state,
            AccountState::Active,
            "{name}: a fresh login clears needs_login"
        );
        assert_eq!(access_of(&second.credential), "at-2", "{name}");
        assert_eq!(second.extras["chatgpt_account_id"], "acct-1", "{name}");
        assert_eq!(second.created_at, T0, "{name}");
        assert_eq!(second.updated_at, UnixMillis(T0.0 + 60_000), "{name}");
        // Same identity at another provider is another account.
        let other = store
            .add(oauth("anthropic", Some("dev@example.com"), "at-3", "rt-3"))
            .unwrap();
        assert!(matches!(other, AddResult::Added(_)), "{name}");
        assert_eq!(store.list().unwrap().len(), 2, "{name}");
        clock.set(T0);
    }
}

/// A login that names no identity (Claude Code, opencode's Anthropic login)
/// added twice used to become two accounts holding one single-use refresh
/// token: whichever refreshed first spent it, and the other was logged out.
/// The same refresh token (or, without one, access token) now means the
/// same account.
#[test]
fn the_same_refresh_token_is_the_same_account() {
    let clock = Arc::new(ManualClock::new(T0));
    for (name, store, _dir) in backends(&clock) {
        let AddResult::Added(first) = store.add(oauth("anthropic", None, "at-1", "rt-1")).unwrap()
        else {
            panic!("{name}: first add is Added")
        };
        // The tool refreshed its access token but kept the refresh token.
        let again = store.add(oauth("anthropic", None, "at-2", "rt-1")).unwrap();
        let AddResult::Updated(again) = again else {
            panic!("{name}: the same refresh token is an update")
        };
        assert_eq!(again.id, first.id, "{name}");
        assert_eq!(access_of(&again.credential), "at-2", "{name}");
        // Without a refresh token, the same access token is the same login.
        let mut no_refresh = oauth("anthropic", None, "at-2", "unused");
        if let Credential::Oauth { refresh, .. } = &mut no_refresh.credential {
            *refresh = None;
        }
        assert!(
            matches!(store.add(no_refresh).unwrap(), AddResult::Updated(ref a) if a.id == first.id),
            "{name}"
        );
        // Other tokens, or another provider, are another account.
        assert!(matches!(
            store.add(oauth("anthropic", None, "at-3", "rt-3")).unwrap(),
            AddResult::Added(_)
        ));
        assert!(matches!(
            store.add(oauth("google", None, "at-2", "rt-1")).unwrap(),
            AddResult::Added(_)
        ));
        assert_eq!(store.list().unwrap().len(), 3, "{name}");
    }
}

#[test]
fn defaulted_labels_never_clash_and_explicit_ones_are_checked() {
    let clock = Arc::new(ManualClock::new(T0));
    for (name, store, _dir) in backends(&clock) {
        let a = store
            .add(NewAccount::api_key("openai", None, Secret::new("sk-1")))
            .unwrap();
        assert_eq!(a.account().label, "openai-1", "{name}");
        let b = store
            .add(NewAccount::api_key(
                "openai",
                Some("openai-2".into()),
                Secret::new("sk-2"),
            ))
            .unwrap();
        assert_eq!(b.account().label, "openai-2", "{name}");
        let c = store
            .add(NewAccount::api_key("openai", None, Secret::new("sk-3")))
            .unwrap();
        assert_eq!(c.account().label, "openai-3", "{name}");
        // An identity used as a label by another account gets a suffix.
        store
            .add(NewAccount::api_key(
                "anthropic",
                Some("ana@example.com".into()),
                Secret::new("k"),
            ))
            .unwrap();
        let d = store
            .add(oauth("anthropic", Some("ana@example.com"), "at", "rt"))
            .unwrap();
        assert_eq!(d.account().label, "ana@example.com-2", "{name}");
        for bad in ["", " padded", "tab\there"] {
            let err = store
                .add(NewAccount::api_key(
                    "openai",
                    Some(bad.into()),
                    Secret::new("sk-x"),
                ))
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Invalid(_)),
                "{name}: {bad:?} → {err}"
            );
        }
        let err = store
            .add(NewAccount::api_key("Open AI", None, Secret::new("sk-y")))
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{name}: {err}");
        let mut mismatched = NewAccount::api_key("openai", None, Secret::new("sk-z"));
        mismatched.kind = AccountKind::Oauth;
        assert!(
            matches!(store.add(mismatched), Err(StoreError::Invalid(_))),
            "{name}"
        );
        assert_eq!(
            store.list().unwrap().len(),
            5,
            "{name}: failed adds stored nothing"
        );
    }
}

#[test]
fn update_cannot_change_the_id_and_keeps_kind_consistent() {
    let clock = Arc::new(ManualClock::new(T0));
    for (name, store, _dir) in backends(&clock) {
        let a = store
            .add(NewAccount::api_key(
                "openai",
                Some("k".into()),
                Secret::new("sk-1"),
            ))
            .unwrap();
        let id = a.account().id.clone();
        let updated = store
            .update(&id, &mut |acc| {
                acc.id = marathon_store::AccountId("hijack".into());
                acc.credential = Credential::Oauth {
                    access: Secret::new("at"),
                    refresh: None,
                    expires_at: None,
                    id_token: None,
                    scopes: vec![],
                };
            })
            .unwrap();
        assert_eq!(updated.id, id, "{name}");
        assert_eq!(updated.kind, AccountKind::Oauth, "{name}");
        assert!(
            store
                .get(&marathon_store::AccountId("hijack".into()))
                .unwrap()
                .is_none(),
            "{name}"
        );
        let missing = marathon_store::AccountId("acc_missing".into());
        assert!(
            matches!(
                store.update(&missing, &mut |_| {}),
                Err(StoreError::NotFound(_))
            ),
            "{name}"
        );
        assert!(store.find("openai", "k").unwrap().is_some(), "{name}");
        assert!(store.find("openai", "nope").unwrap().is_none(), "{name}");
    }
}

#[test]
fn account_locks_serialise_threads() {
    let clock = Arc::new(ManualClock::new(T0));
    for (name, store, _dir) in backends(&clock) {
        let store: Arc<dyn Store> = Arc::from(store);
        let id = marathon_store::AccountId("acc_shared".into());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, id, inside, max_inside) = (
                    store.clone(),
                    id.clone(),
                    inside.clone(),
                    max_inside.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let _g = store.lock_account(&id, Duration::from_secs(10)).unwrap();
                        let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        max_inside.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            max_inside.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{name}: one holder at a time"
        );
        let _held = store.lock_account(&id, Duration::ZERO).unwrap();
        let err = store
            .lock_account(&id, Duration::from_millis(20))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::LockTimeout { .. }),
            "{name}: {err}"
        );
    }
}
