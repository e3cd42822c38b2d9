//! The OpenStreetMap provider on real data: `herd places import` on the
//! central Helsinki extract in `testdata/osm/` (© OpenStreetMap
//! contributors, ODbL; see the NOTICE there), and WHATSAT through a
//! running server answered from the imported database.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::process::ProcessHerd;
use common::{Herd, herd_binary};
use herd::places::osm::{OsmDatabase, OsmKind};
use herd::places::sphere::haversine_m;

const SOLO: &[(&str, &[&str])] = &[("Solo", &[])];

fn extract() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/osm/Helsinki.osm.pbf")
}

/// Runs `herd places import` on the Helsinki extract into `out`; returns
/// what it printed.
fn import(out: &Path) -> String {
    let output = Command::new(herd_binary())
        .args(["places", "import"])
        .arg(extract())
        .arg("--out")
        .arg(out)
        .output()
        .expect("running herd places import");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn imported() -> (tempfile::TempDir, OsmDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("helsinki.places");
    import(&out);
    let database = OsmDatabase::load(&out).expect("the import wrote a database");
    (dir, database)
}

#[test]
fn import_keeps_every_named_poi_of_central_helsinki() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("helsinki.places");
    let printed = import(&out);
    assert!(printed.contains(" places ("), "{printed}");
    let database = OsmDatabase::load(&out).unwrap();
    // About 1,400 named POI nodes and some dozens of ways (parks, museums,
    // the library...).
    assert!(
        (1_300..=1_600).contains(&database.len()),
        "{} places",
        database.len()
    );
    assert_eq!(database.source(), "Helsinki.osm.pbf");
    let ways = database.places().filter(|p| p.kind == OsmKind::Way).count();
    assert!((30..200).contains(&ways), "{ways} ways");
    assert!(database.places().all(|p| !p.name.is_empty()));
    // Everything lies in central Helsinki.
    assert!(
        database
            .places()
            .all(|p| haversine_m(60.17, 24.94, p.lat, p.lng) < 5_000.0)
    );
    // A second import writes the same bytes.
    let again = dir.path().join("again.places");
    import(&again);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap());
}

#[test]
fn known_places_are_found_where_they_are() {
    let (_dir, database) = imported();
    // Name, its real location (from the institutions' and Wikipedia's
    // pages), a type it must have.
    for (name, lat, lng, kind) in [
        ("Kiasma", 60.17194, 24.93667, "museum"),
        ("Ateneum", 60.17028, 24.94417, "museum"),
        ("Stockmann", 60.16861, 24.94194, "department_store"),
        (
            "Helsingin keskustakirjasto Oodi",
            60.17361,
            24.93806,
            "library",
        ),
        ("Musiikkitalo", 60.17361, 24.93556, "point_of_interest"),
    ] {
        let found = database.search(lat, lng, 150.0, 20);
        let place = found
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} is not within 150 m of {lat},{lng}"));
        assert!(place.types.contains(&kind), "{name}: {:?}", place.types);
        assert_eq!(
            place.types[place.types.len() - 2..],
            ["point_of_interest", "establishment"]
        );
    }
    let kiasma = &database.search(60.17194, 24.93667, 150.0, 20);
    let kiasma = kiasma.iter().find(|p| p.name == "Kiasma").unwrap();
    assert_eq!(kiasma.vicinity, "Mannerheiminaukio 2, Helsinki");
    assert_eq!(kiasma.place_id(), "osm-way-8042215");
}

#[test]
fn tags_map_onto_google_types_across_the_extract() {
    let (_dir, database) = imported();
    let count = |wanted: &str| {
        database
            .places()
            .filter(|p| p.types.contains(&wanted))
            .count()
    };
    for (kind, at_least) in [
        ("restaurant", 150),
        ("cafe", 50),
        ("bar", 40),
        ("store", 200),
        ("clothing_store", 50),
        ("lodging", 15),
        ("museum", 4),
        ("tourist_attraction", 50),
        ("park", 5),
        ("bank", 5),
        ("church", 3),
    ] {
        assert!(count(kind) >= at_least, "{kind}: {}", count(kind));
    }
    // Every place has a vicinity: an address, or its district.
    let without = database.places().filter(|p| p.vicinity.is_empty()).count();
    assert!(
        without < database.len() / 20,
        "{without} without a vicinity"
    );
}

#[test]
fn whatsat_is_answered_from_the_imported_database() {
    // The database path is relative to the config file's folder.
    let mut herd = Herd::configure(
        SOLO,
        "[places]\nprovider = \"osm\"\ndatabase = \"helsinki.places\"\n",
    );
    import(&herd.dir.path().join("helsinki.places"));
    herd.launch("Solo");
    let mut client = herd.client("Solo");
    // At Kiasma's door.
    client.iamat("helsinki.visitor", "+60.17194+024.93667");
    client.send_line("WHATSAT helsinki.visitor 0.2 3");
    let (at, json) = client.read_answer();
    assert!(at.starts_with("AT Solo "), "{at}");
    let answer: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(answer["status"], "OK");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["name"], "Kiasma");
    assert_eq!(results[0]["place_id"], "osm-way-8042215");
    assert_eq!(results[0]["vicinity"], "Mannerheiminaukio 2, Helsinki");
    assert!(
        answer["html_attributions"][0]
            .as_str()
            .unwrap()
            .contains("© OpenStreetMap contributors")
    );
    // Nearest first.
    let distance = |result: &Value| {
        let location = &result["geometry"]["location"];
        haversine_m(
            60.17194,
            24.93667,
            location["lat"].as_f64().unwrap(),
            location["lng"].as_f64().unwrap(),
        )
    };
    assert!(
        results
            .windows(2)
            .all(|w| distance(&w[0]) <= distance(&w[1]))
    );
    assert!(json.starts_with("{\n   \"html_attributions\" : [\n      \"© OpenStreetMap"));

    // Far from Helsinki there is nothing.
    client.iamat("kiwi", "+34.068930-118.445127");
    client.send_line("WHATSAT kiwi 50 20");
    let (_, json) = client.read_answer();
    let answer: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(answer["status"], "ZERO_RESULTS");
    assert_eq!(answer["results"], Value::Array(Vec::new()));
}

#[test]
fn a_missing_or_foreign_database_stops_the_server_at_start() {
    // What `herd serve` says as it exits: a process's.
    let herd = ProcessHerd::configure(
        SOLO,
        "[places]\nprovider = \"osm\"\ndatabase = \"nowhere.places\"\n",
    );
    let output = herd.command("Solo").output().expect("running a server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nowhere.places"), "{stderr}");

    let herd = ProcessHerd::configure(
        SOLO,
        "[places]\nprovider = \"osm\"\ndatabase = \"Helsinki.osm.pbf\"\n",
    );
    std::fs::copy(extract(), herd.dir.path().join("Helsinki.osm.pbf")).unwrap();
    let output = herd.command("Solo").output().expect("running a server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("herd places import"), "{stderr}");
}

#[test]
fn importing_something_else_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.places");
    // Text, an OSM XML extract, and nothing at all: none is an OSM PBF.
    let others: [(&str, &[u8]); 3] = [
        ("bogus.osm.pbf", b"this is not a protocol buffer at all"),
        (
            "helsinki.osm",
            b"<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\">\n</osm>\n",
        ),
        ("empty.osm.pbf", b""),
    ];
    for (name, bytes) in others {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let output = Command::new(herd_binary())
            .args(["places", "import"])
            .arg(&path)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{name} is not an OSM PBF file")),
            "{stderr}"
        );
        assert!(!out.exists());
    }
}
