//! Selection cost: one `pick` plus one `record(success)`, at 2, 100 and
//! 10,000 accounts, per strategy, with nothing else in flight and with 16
//! requests in flight. DESIGN §8 asks that 10,000 accounts cost at most 1.5x
//! of 2 accounts; compare the `…/10000` and `…/2` lines.
//!
//! `cargo bench -p marathon-core --bench pick -- --warm-up-time 1 --measurement-time 3`

// criterion_group! generates an undocumented pub fn; a bench has no API to document.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use marathon_core::pool::{Pick, PickRequest, Pool, PoolConfig};
use marathon_core::strategy::Strategy;
use marathon_core::{AccountId, AccountKind, AccountMeta, Class, Classification, UnixMillis};

fn pool(strategy: Strategy, n: usize) -> Pool {
    let mut p = Pool::new(
        "anthropic",
        PoolConfig {
            strategy,
            ..PoolConfig::default()
        },
        1,
    );
    for i in 0..n {
        p.upsert(AccountMeta {
            id: AccountId(format!("acct-{i:05}").into()),
            provider: "anthropic".into(),
            label: format!("account-{i}"),
            kind: AccountKind::Oauth,
            priority: (i % 7) as i32,
            enabled: true,
        });
    }
    p
}

fn ok() -> Classification {
    Classification {
        class: Class::Success,
        status: Some(200),
        reason: "ok".into(),
        reset: None,
        usage: vec![],
    }
}

fn pick_record(c: &mut Criterion) {
    let ok = ok();
    for strategy in [Strategy::Sticky, Strategy::RoundRobin, Strategy::LeastUsed] {
        let mut group = c.benchmark_group(format!("pick_record/{strategy}"));
        for n in [2usize, 100, 10_000] {
            let mut p = pool(strategy, n);
            let mut now = UnixMillis(1_764_330_000_000);
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    now.0 += 1;
                    match p.pick(now, black_box(&PickRequest::default())) {
                        Pick::Account { id, .. } => black_box(p.record(&id, &ok, now)),
                        Pick::Exhausted(_) => unreachable!("all accounts are ready"),
                    }
                })
            });
        }
        group.finish();
    }
}

/// Requests held this long in the second group: each iteration picks one and
/// finishes the oldest, so least-used orders accounts across several
/// in-flight counts (with 2 accounts, around 8 each) rather than 0 and 1.
const IN_FLIGHT: usize = 16;

fn pick_id(p: &mut Pool, now: UnixMillis) -> AccountId {
    match p.pick(now, &PickRequest::default()) {
        Pick::Account { id, .. } => id,
        Pick::Exhausted(_) => unreachable!("all accounts are ready"),
    }
}

fn pick_record_in_flight(c: &mut Criterion) {
    let ok = ok();
    for strategy in [Strategy::Sticky, Strategy::RoundRobin, Strategy::LeastUsed] {
        let mut group = c.benchmark_group(format!("pick_record_{IN_FLIGHT}_in_flight/{strategy}"));
        for n in [2usize, 100, 10_000] {
            let mut p = pool(strategy, n);
            let mut now = UnixMillis(1_764_330_000_000);
            let mut out: VecDeque<AccountId> = VecDeque::with_capacity(IN_FLIGHT + 1);
            for _ in 0..IN_FLIGHT {
                out.push_back(pick_id(&mut p, now));
            }
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    now.0 += 1;
                    out.push_back(pick_id(&mut p, now));
                    if let Some(oldest) = out.pop_front() {
                        black_box(p.record(&oldest, &ok, now));
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pick_record, pick_record_in_flight);
criterion_main!(benches);
