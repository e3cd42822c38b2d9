//! What the store costs per report: keeping a new or newer location,
//! turning away one that is not newer, a neighbour's update (`Store::apply`:
//! a second copy, a first one), looking a client up for WHATSAT, reading
//! batches of the sequence for a neighbour (`Store::since`), and checking
//! again a report a link held back (`Store::still_to_send`).
//!
//! Run with `cargo bench --bench store`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use herd::protocol::time::Timestamp;
use herd::replica::store::{Applied, Batch, Source, Store};

/// Clients in the stores that updates, lookups and scans run against.
const CLIENTS: usize = 100_000;
/// Reports per `since` call, as the flood asks for them.
const BATCH: usize = 256;

fn client_id(i: usize) -> String {
    format!("client-{i}.example.org")
}

/// The `k`th client to visit: a stride through all of them, so that
/// updates and lookups land all over the store, as real clients' do, and
/// each round visits every client once.
fn scattered(k: usize) -> usize {
    k * 7919 % CLIENTS
}

/// A report as the store takes it: an AT line and its client time.
struct Report {
    at_line: Vec<u8>,
    client_time: Timestamp,
}

/// The report of client `i` at client time `secs` (as a server that got it
/// from a client would store it).
fn report(i: usize, secs: u64) -> Report {
    let lat = 34.0 + (i % 1000) as f64 / 1000.0;
    let lng = -118.0 - (i / 1000 % 1000) as f64 / 1000.0;
    let at_line = format!(
        "AT Hill +0.000412507 {} {lat:+.6}{lng:+.6} {secs}.959498503",
        client_id(i)
    );
    Report {
        at_line: at_line.into_bytes(),
        client_time: Timestamp::new(secs, 959_498_503).expect("nanos below a second"),
    }
}

/// A store holding `CLIENTS` clients, every other one from neighbour 0.
fn filled() -> Store {
    let store = Store::new();
    for i in 0..CLIENTS {
        let source = if i % 2 == 0 {
            Source::Client
        } else {
            Source::Neighbour(0)
        };
        let report = report(i, 1_000);
        assert!(
            store
                .update(&report.at_line, report.client_time, source)
                .stored()
                .is_some()
        );
    }
    assert_eq!(store.len(), CLIENTS);
    store
}

/// The next `count` reports of clients visited in `scattered` order, from
/// the `next`th visit on: each round moves every client's time one second
/// on, so each report is newer than the one a `filled` store holds,
/// whichever sample it falls in.
fn newer_reports(next: &mut usize, count: u64) -> Vec<Report> {
    let reports = (0..count as usize)
        .map(|k| {
            let n = *next + k;
            report(scattered(n % CLIENTS), 1_001 + (n / CLIENTS) as u64)
        })
        .collect();
    *next += count as usize;
    reports
}

/// Times `store.update` over `reports`, which are built beforehand so that
/// only the store's work is counted.
fn time_updates<'a>(
    store: &Store,
    reports: impl IntoIterator<Item = &'a Report>,
    expect_newer: bool,
) -> Duration {
    let start = Instant::now();
    for report in reports {
        let newer = store
            .update(
                black_box(&report.at_line),
                report.client_time,
                Source::Client,
            )
            .stored()
            .is_some();
        debug_assert_eq!(newer, expect_newer);
    }
    start.elapsed()
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("Store::update");

    // New clients into a store that starts empty for each sample and grows
    // to the sample's size, as a server filling up from nothing does.
    group.bench_function("new client", |b| {
        b.iter_custom(|iters| {
            let store = Store::new();
            let reports: Vec<Report> = (0..iters as usize).map(|i| report(i, 1_000)).collect();
            time_updates(&store, &reports, true)
        })
    });

    let store = filled();
    let mut next = 0usize;
    group.bench_function(format!("existing client, newer ({CLIENTS} clients)"), |b| {
        b.iter_custom(|iters| {
            let reports = newer_reports(&mut next, iters);
            time_updates(&store, &reports, true)
        })
    });

    // The report every server gets back from its other neighbours during a
    // flood: equal time, not newer, changes nothing.
    let stale: Vec<Report> = (0..CLIENTS).map(|i| report(i, 1_000)).collect();
    group.bench_function(
        format!("existing client, not newer ({CLIENTS} clients)"),
        |b| {
            b.iter_custom(|iters| {
                let reports: Vec<&Report> = (0..iters as usize)
                    .map(|k| &stale[scattered(k % CLIENTS)])
                    .collect();
                time_updates(&store, reports, false)
            })
        },
    );
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("Store::apply");
    let store = filled();
    // A second copy of a stored report, over a link outside the tree: the
    // line is compared with the stored one and never parsed.
    let same: Vec<Report> = (0..CLIENTS).map(|i| report(i, 1_000)).collect();
    group.bench_function(format!("second copy ({CLIENTS} clients)"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for k in 0..iters as usize {
                let report = &same[scattered(k % CLIENTS)];
                let applied = store.apply(black_box(&report.at_line), Source::Neighbour(1), || {
                    unreachable!("a second copy is not parsed")
                });
                debug_assert_eq!(applied, Applied::Same);
            }
            start.elapsed()
        })
    });
    // A first copy, newer than what is stored: checked (here by a closure
    // that only hands back the time, so that the store's own work is what
    // is timed) and stored.
    let mut next = 0usize;
    group.bench_function(format!("first copy, newer ({CLIENTS} clients)"), |b| {
        b.iter_custom(|iters| {
            let reports = newer_reports(&mut next, iters);
            let start = Instant::now();
            for report in &reports {
                let applied = store.apply(black_box(&report.at_line), Source::Neighbour(1), || {
                    Some(report.client_time)
                });
                debug_assert!(matches!(applied, Applied::Stored(_)));
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("Store::get");
    let store = filled();
    let ids: Vec<Vec<u8>> = (0..CLIENTS)
        .map(|k| client_id(scattered(k)).into_bytes())
        .collect();
    let mut k = 0;
    group.bench_function(format!("known client ({CLIENTS} clients)"), |b| {
        b.iter(|| {
            k = (k + 1) % CLIENTS;
            store.get(black_box(&ids[k])).expect("every id is stored")
        })
    });
    group.bench_function(format!("unknown client ({CLIENTS} clients)"), |b| {
        b.iter(|| store.get(black_box(b"nobody.example.org")))
    });
    group.finish();
}

fn since(c: &mut Criterion) {
    let mut group = c.benchmark_group("Store::since");
    let store = filled();
    let head = store.head();
    let mut out = Batch::new();
    // Catch-up of a neighbour that has nothing: the first batch.
    group.bench_function(format!("first batch of {BATCH} from {CLIENTS}"), |b| {
        b.iter(|| {
            out.clear();
            store.since(black_box(0), None, BATCH, &mut out);
            assert_eq!(out.len(), BATCH);
        })
    });
    // Live flooding: a neighbour a few reports behind the head.
    group.bench_function("last 16 reports", |b| {
        b.iter(|| {
            out.clear();
            let reached = store
                .since(black_box(head - 16), None, BATCH, &mut out)
                .reached;
            assert_eq!((out.len(), reached), (16, head));
        })
    });
    // Streaming to neighbour 0, which sent every other report: those are
    // left out, so a batch scans twice as many entries.
    group.bench_function(
        format!("batch of {BATCH} leaving out a neighbour's half"),
        |b| {
            b.iter(|| {
                out.clear();
                store.since(black_box(head / 2), Some((0, 0)), BATCH, &mut out);
                assert_eq!(out.len(), BATCH);
            })
        },
    );
    group.finish();
}

fn still_to_send(c: &mut Criterion) {
    let mut group = c.benchmark_group("Store::still_to_send");
    let store = filled();
    // Reports all over the store, as a link picked them and held them back.
    let mut all = Batch::new();
    store.since(0, None, CLIENTS, &mut all);
    let picked: Vec<_> = all.iter().map(|(picked, _)| picked).collect();
    assert_eq!(picked.len(), CLIENTS);
    let mut out = Batch::new();
    let mut k = 0;
    group.bench_function(format!("held report ({CLIENTS} clients)"), |b| {
        b.iter(|| {
            k = (k + 1) % CLIENTS;
            out.clear();
            // To a neighbour other than 0: every report still goes.
            assert!(store.still_to_send(black_box(picked[scattered(k)]), (1, 0), &mut out));
        })
    });
    group.finish();
}

criterion_group!(benches, update, apply, get, since, still_to_send);
criterion_main!(benches);
