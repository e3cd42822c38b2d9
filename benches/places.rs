//! What a WHATSAT costs on the server's side: the offline places search and
//! the Google-styled JSON text of its answer.
//!
//! Run with `cargo bench --bench places`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use herd::places::geonames::GeoNames;
use herd::places::json::to_styled_string;
use herd::places::{NearbyQuery, Places};

/// Central Paris, where a 10 km circle holds 55 places.
const PARIS: (f64, f64) = (48.8566, 2.3522);
/// Milan, with 876 places within 50 km: about the densest answer there is.
const MILAN: (f64, f64) = (45.46, 9.19);
/// The SPEC's example client, in Westwood, Los Angeles (8 places in 10 km).
const WESTWOOD: (f64, f64) = (34.068930, -118.445127);

fn search(c: &mut Criterion) {
    let geonames = GeoNames::new();
    assert_eq!(geonames.search(PARIS.0, PARIS.1, 10_000.0, 20).len(), 20);
    for (name, (lat, lng), radius_m) in [
        ("search Paris 10 km, 20 results", PARIS, 10_000.0),
        ("search Milan 50 km, 20 results", MILAN, 50_000.0),
        ("search Westwood 10 km, 20 results", WESTWOOD, 10_000.0),
        (
            "search mid-Pacific 50 km, 20 results",
            (-40.0, -130.0),
            50_000.0,
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| geonames.search(black_box(lat), black_box(lng), black_box(radius_m), 20))
        });
    }
}

fn render(c: &mut Criterion) {
    let query = NearbyQuery {
        lat: PARIS.0,
        lng: PARIS.1,
        radius_m: 10_000.0,
        radius_m_text: "10000".to_owned(),
        limit: 20,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime needs no resources");
    let answer = runtime
        .block_on(GeoNames::new().nearby(&query))
        .expect("the offline provider always answers");
    c.bench_function("render 20-result answer", |b| {
        b.iter(|| to_styled_string(black_box(&answer)))
    });
    c.bench_function("nearby + render, 10 km, 20 results", |b| {
        b.iter(|| {
            let answer = runtime.block_on(GeoNames::new().nearby(black_box(&query)));
            to_styled_string(&answer.expect("the offline provider always answers"))
        })
    });
}

criterion_group!(benches, search, render);
criterion_main!(benches);
