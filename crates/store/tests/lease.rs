//! Timed leases shared between processes (the usage poller's "one poll per
//! account and interval across every proxy").

use std::os::unix::fs::PermissionsExt;

use marathon_store::{AccountId, FileStore, MemoryStore, Store, UnixMillis};

fn id() -> AccountId {
    AccountId("acct_1".into())
}

fn check(a: &dyn Store, b: &dyn Store) {
    let t = |s: u64| UnixMillis(1_000_000 + s * 1000);
    // One holder at a time: the second process is turned away until the end.
    assert!(a.try_lease(&id(), "usage-poll", t(0), t(120)).unwrap());
    assert!(!b.try_lease(&id(), "usage-poll", t(1), t(121)).unwrap());
    assert!(!a.try_lease(&id(), "usage-poll", t(119), t(239)).unwrap());
    assert!(b.try_lease(&id(), "usage-poll", t(120), t(240)).unwrap());
    // Another lease name is independent.
    assert!(a.try_lease(&id(), "other", t(121), t(122)).unwrap());
    // A throttled endpoint pushes everyone's next try out.
    b.set_lease(&id(), "usage-poll", t(900)).unwrap();
    assert!(!a.try_lease(&id(), "usage-poll", t(241), t(361)).unwrap());
    assert!(a.try_lease(&id(), "usage-poll", t(900), t(1020)).unwrap());
}

/// Guards the cross-process claim: without the shared lease file two
/// proxies on one machine would each poll every account.
#[test]
fn file_store_leases_are_shared_between_instances() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileStore::open(dir.path()).unwrap();
    let b = FileStore::open(dir.path()).unwrap();
    check(&a, &b);
    let lease = dir.path().join("locks/acct_1.usage-poll.lease");
    let mode = std::fs::metadata(&lease).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Names that could leave the locks directory are refused.
    assert!(
        a.try_lease(&id(), "../x", UnixMillis(0), UnixMillis(1))
            .is_err()
    );
}

#[test]
fn memory_store_leases_behave_the_same() {
    let s = MemoryStore::new();
    check(&s, &s);
}
