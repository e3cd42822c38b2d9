//! The self-hosted OpenStreetMap provider: named points of interest from an
//! OSM extract, imported by `herd places import` (see `osm_import`) into a
//! places database file, and searched through the k-d tree of `sphere`.
//!
//! For users who do not want to pay Google or send their clients'
//! locations to a third party. OSM data is © OpenStreetMap contributors,
//! available under the Open Database License; every answer says so in
//! `html_attributions`.
//!
//! Database layout (all integers little-endian):
//!
//! ```text
//! magic           8 bytes  "HERDOSM1" (the 1 is the format version)
//! place_count     u32
//! string_count    u32
//! source          u32      string index: what the data was imported from
//! checksum        u32      CRC-32 of everything after these 24 bytes
//! string_offsets  (string_count + 1) x u32, into string_bytes
//! string_bytes    UTF-8: names, vicinities, type lists ("cafe,food,..."), once each
//! places          place_count x 30 bytes, in k-d tree order:
//!                   lat_e7 i32, lon_e7 i32 (degrees x 10 000 000, OSM's own precision),
//!                   osm_id i64, name u32, vicinity u32, types u32 (string indices),
//!                   kind u8 (0 node, 1 way), axis u8 (the node's splitting axis)
//! ```
//!
//! A server loads the file on a thread of its own when it starts, so it
//! listens at once however big the file is; WHATSATs that arrive before the
//! load is done wait for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{error, info};

use super::sphere::{self, TreePoints, i32_at, to_usize, u32_at, unit_vector_deg};
use super::{NearbyQuery, Places, PlacesError};

/// Identifies the format and its version.
pub const MAGIC: &[u8; 8] = b"HERDOSM1";
/// Bytes before the string offsets.
const HEADER_LEN: usize = 24;
/// Bytes of one place record.
pub const RECORD_LEN: usize = 30;

/// The credit the ODbL asks for, sent with every answer.
pub const ATTRIBUTION: &str =
    "© OpenStreetMap contributors, ODbL (https://www.openstreetmap.org/copyright)";

/// An OSM element type that a place can come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OsmKind {
    Node,
    Way,
}

impl OsmKind {
    fn code(self) -> u8 {
        match self {
            OsmKind::Node => 0,
            OsmKind::Way => 1,
        }
    }

    fn word(self) -> &'static str {
        match self {
            OsmKind::Node => "node",
            OsmKind::Way => "way",
        }
    }
}

/// A place as the importer hands it to [`write_database`].
#[derive(Clone, Debug, PartialEq)]
pub struct NewPlace {
    pub kind: OsmKind,
    pub osm_id: i64,
    pub lat_e7: i32,
    pub lon_e7: i32,
    pub name: String,
    pub vicinity: String,
    /// Google-style types, most specific first.
    pub types: Vec<&'static str>,
}

/// One place found by [`OsmDatabase::search`].
#[derive(Clone, Debug, PartialEq)]
pub struct OsmPlace<'a> {
    pub name: &'a str,
    pub vicinity: &'a str,
    pub types: Vec<&'a str>,
    pub lat: f64,
    pub lng: f64,
    /// Great-circle distance from the query point, in metres.
    pub distance_m: f64,
    pub kind: OsmKind,
    pub osm_id: i64,
}

impl OsmPlace<'_> {
    /// `osm-node-123` or `osm-way-456`: the element it came from, so that
    /// `https://www.openstreetmap.org/node/123` shows it, stable for as long
    /// as the element exists.
    pub fn place_id(&self) -> String {
        format!("osm-{}-{}", self.kind.word(), self.osm_id)
    }

    /// The place as a result of Google's Nearby Search (legacy).
    pub fn to_json(&self) -> Value {
        json!({
            "geometry": { "location": { "lat": self.lat, "lng": self.lng } },
            "name": self.name,
            "place_id": self.place_id(),
            "types": self.types,
            "vicinity": self.vicinity,
        })
    }
}

/// Writes `places` as a database file's bytes; `source` says where they
/// came from. Arranges them as a k-d tree.
pub fn write_database(places: &[NewPlace], source: &str) -> Result<Vec<u8>, String> {
    let too_many = |what: &str| format!("too many {what} for one database (at most 2^32)");
    let vectors: Vec<[f64; 3]> = places
        .iter()
        .map(|p| unit_vector_deg(e7_to_degrees(p.lat_e7), e7_to_degrees(p.lon_e7)))
        .collect();
    let mut order: Vec<usize> = (0..places.len()).collect();
    let mut axes = vec![0u8; places.len()];
    sphere::build_tree(&mut order, &vectors, &mut axes);

    let mut strings = Strings::default();
    let source_index = strings.intern(source);
    let mut records = Vec::with_capacity(places.len() * RECORD_LEN);
    for (&index, &axis) in order.iter().zip(&axes) {
        let place = &places[index];
        records.extend_from_slice(&place.lat_e7.to_le_bytes());
        records.extend_from_slice(&place.lon_e7.to_le_bytes());
        records.extend_from_slice(&place.osm_id.to_le_bytes());
        records.extend_from_slice(&strings.intern(&place.name).to_le_bytes());
        records.extend_from_slice(&strings.intern(&place.vicinity).to_le_bytes());
        records.extend_from_slice(&strings.intern(&place.types.join(",")).to_le_bytes());
        records.push(place.kind.code());
        records.push(axis);
    }

    let mut body = Vec::new();
    let mut offset: u32 = 0;
    body.extend_from_slice(&offset.to_le_bytes());
    for s in &strings.list {
        let len = u32::try_from(s.len()).map_err(|_| too_many("string bytes"))?;
        offset = offset
            .checked_add(len)
            .ok_or_else(|| too_many("string bytes"))?;
        body.extend_from_slice(&offset.to_le_bytes());
    }
    for s in &strings.list {
        body.extend_from_slice(s.as_bytes());
    }
    body.extend_from_slice(&records);

    let mut file = Vec::with_capacity(HEADER_LEN + body.len());
    file.extend_from_slice(MAGIC);
    let place_count = u32::try_from(places.len()).map_err(|_| too_many("places"))?;
    let string_count = u32::try_from(strings.list.len()).map_err(|_| too_many("strings"))?;
    file.extend_from_slice(&place_count.to_le_bytes());
    file.extend_from_slice(&string_count.to_le_bytes());
    file.extend_from_slice(&source_index.to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    file.extend_from_slice(&body);
    Ok(file)
}

/// Deduplicating string table, in order of first use.
#[derive(Default)]
struct Strings {
    index: std::collections::HashMap<String, u32>,
    list: Vec<String>,
}

impl Strings {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        // The caller checks the count when writing the header.
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.index.insert(s.to_owned(), i);
        self.list.push(s.to_owned());
        i
    }
}

/// A places database in memory, checked whole when loaded so that reading
/// it can never fail.
pub struct OsmDatabase {
    bytes: Vec<u8>,
    place_count: usize,
    string_count: usize,
    /// Where the string offsets, string bytes and places start.
    offsets_at: usize,
    strings_at: usize,
    places_at: usize,
    source: String,
}

impl OsmDatabase {
    /// Reads and checks a database file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|error| format!("reading {}: {error}", path.display()))?;
        Self::from_bytes(bytes).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// Checks a database file's bytes: its header, checksum, the sizes of
    /// its sections, every string and every record.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, String> {
        check_header(&bytes)?;
        let place_count = to_usize(u32_at(&bytes, 8));
        let string_count = to_usize(u32_at(&bytes, 12));
        let source = to_usize(u32_at(&bytes, 16));
        let checksum = u32_at(&bytes, 20);
        if crc32fast::hash(&bytes[HEADER_LEN..]) != checksum {
            return Err("checksum mismatch: the file is damaged".into());
        }
        let truncated = || "the file is truncated or has extra bytes".to_owned();
        let offsets_at = HEADER_LEN;
        let strings_at = (string_count + 1)
            .checked_mul(4)
            .and_then(|len| offsets_at.checked_add(len))
            .filter(|&at| at <= bytes.len())
            .ok_or_else(truncated)?;
        let string_len = to_usize(u32_at(&bytes, strings_at - 4));
        let places_at = strings_at
            .checked_add(string_len)
            .filter(|&at| at <= bytes.len())
            .ok_or_else(truncated)?;
        if place_count.checked_mul(RECORD_LEN) != Some(bytes.len() - places_at) {
            return Err(truncated());
        }
        let database = Self {
            bytes,
            place_count,
            string_count,
            offsets_at,
            strings_at,
            places_at,
            source: String::new(),
        };
        let mut previous = 0;
        for i in 0..=string_count {
            let offset = to_usize(u32_at(&database.bytes, offsets_at + 4 * i));
            if offset < previous || offset > string_len {
                return Err(format!("string {i} is out of bounds"));
            }
            if i > 0 {
                let text = &database.bytes[strings_at + previous..strings_at + offset];
                std::str::from_utf8(text).map_err(|_| format!("string {} is not UTF-8", i - 1))?;
            }
            previous = offset;
        }
        if source >= string_count {
            return Err("the source is not a string".into());
        }
        for index in 0..place_count {
            let record = database.record(index);
            let (lat_e7, lon_e7) = (i32_at(record, 0), i32_at(record, 4));
            let strings_ok = [16, 20, 24]
                .iter()
                .all(|&at| to_usize(u32_at(record, at)) < string_count);
            if lat_e7.unsigned_abs() > 900_000_000
                || lon_e7.unsigned_abs() > 1_800_000_000
                || !strings_ok
                || record[28] > 1
                || record[29] > 2
            {
                return Err(format!("place record {index} is invalid"));
            }
        }
        let source = database.string(source).to_owned();
        Ok(Self { source, ..database })
    }

    /// How many places it holds.
    pub fn len(&self) -> usize {
        self.place_count
    }

    /// Whether it holds no places.
    pub fn is_empty(&self) -> bool {
        self.place_count == 0
    }

    /// What the data was imported from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The places within `radius_m` metres of `lat`, `lng`, nearest first,
    /// at most `limit` of them.
    pub fn search(&self, lat: f64, lng: f64, radius_m: f64, limit: usize) -> Vec<OsmPlace<'_>> {
        sphere::nearest(self, lat, lng, radius_m, limit)
            .into_iter()
            .map(|hit| self.place(hit.index, hit.distance_m))
            .collect()
    }

    /// Every place, in the file's order (for tests and tools).
    pub fn places(&self) -> impl Iterator<Item = OsmPlace<'_>> {
        (0..self.place_count).map(|index| self.place(index, 0.0))
    }

    /// The whole Nearby Search answer for a query.
    pub fn answer(&self, query: &NearbyQuery) -> Value {
        let places = self.search(query.lat, query.lng, query.radius_m, query.limit);
        super::offline_answer(ATTRIBUTION, places.iter().map(OsmPlace::to_json).collect())
    }

    fn place(&self, index: usize, distance_m: f64) -> OsmPlace<'_> {
        let record = self.record(index);
        let types = self.string(to_usize(u32_at(record, 24)));
        OsmPlace {
            name: self.string(to_usize(u32_at(record, 16))),
            vicinity: self.string(to_usize(u32_at(record, 20))),
            types: if types.is_empty() {
                Vec::new()
            } else {
                types.split(',').collect()
            },
            lat: e7_to_degrees(i32_at(record, 0)),
            lng: e7_to_degrees(i32_at(record, 4)),
            distance_m,
            kind: if record[28] == 0 {
                OsmKind::Node
            } else {
                OsmKind::Way
            },
            osm_id: i64::from_le_bytes(record[8..16].try_into().expect("an 8-byte slice")),
        }
    }

    fn record(&self, index: usize) -> &[u8] {
        let at = self.places_at + index * RECORD_LEN;
        &self.bytes[at..at + RECORD_LEN]
    }

    fn string(&self, index: usize) -> &str {
        let start = to_usize(u32_at(&self.bytes, self.offsets_at + 4 * index));
        let end = to_usize(u32_at(&self.bytes, self.offsets_at + 4 * index + 4));
        std::str::from_utf8(&self.bytes[self.strings_at + start..self.strings_at + end])
            .expect("from_bytes checked every string")
    }
}

impl TreePoints for OsmDatabase {
    fn len(&self) -> usize {
        self.place_count
    }

    fn unit_vector(&self, index: usize) -> [f64; 3] {
        let (lat, lng) = self.degrees(index);
        unit_vector_deg(lat, lng)
    }

    fn degrees(&self, index: usize) -> (f64, f64) {
        let record = self.record(index);
        (
            e7_to_degrees(i32_at(record, 0)),
            e7_to_degrees(i32_at(record, 4)),
        )
    }

    fn axis(&self, index: usize) -> usize {
        usize::from(self.record(index)[29])
    }
}

impl std::fmt::Debug for OsmDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OsmDatabase")
            .field("places", &self.place_count)
            .field("strings", &self.string_count)
            .field("source", &self.source)
            .finish()
    }
}

/// Checks the magic and the header's length.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(
            "not a herd places database (make one with `herd places import REGION.osm.pbf --out FILE`)"
                .into(),
        );
    }
    Ok(())
}

/// The OpenStreetMap provider: a database loaded in the background.
pub struct OsmPlaces {
    path: PathBuf,
    database: watch::Receiver<Option<Result<Arc<OsmDatabase>, String>>>,
}

impl OsmPlaces {
    /// Checks that `path` is a places database (its first bytes only, so
    /// that a wrong path stops the server at once) and loads it whole on a
    /// thread of its own.
    pub fn open(path: &Path) -> Result<Self, String> {
        let mut header = [0u8; HEADER_LEN];
        std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
            .map_err(|error| format!("reading places database {}: {error}", path.display()))?;
        check_header(&header).map_err(|error| format!("{}: {error}", path.display()))?;
        let (sender, database) = watch::channel(None);
        let to_load = path.to_owned();
        std::thread::Builder::new()
            .name("herd-osm-load".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let loaded = OsmDatabase::load(&to_load).map(Arc::new);
                match &loaded {
                    Ok(database) => info!(
                        path = %to_load.display(),
                        places = database.len(),
                        source = database.source(),
                        took_ms = started.elapsed().as_millis(),
                        "OpenStreetMap places loaded"
                    ),
                    Err(reason) => error!(%reason, "cannot load the OpenStreetMap places"),
                }
                let _ = sender.send(Some(loaded));
            })
            .map_err(|error| format!("starting the places loader: {error}"))?;
        Ok(Self {
            path: path.to_owned(),
            database,
        })
    }

    /// The database, once loaded.
    pub async fn database(&self) -> Result<Arc<OsmDatabase>, String> {
        let mut receiver = self.database.clone();
        let loaded = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| format!("loading {} stopped", self.path.display()))?;
        loaded.clone().expect("waited for Some")
    }
}

#[async_trait]
impl Places for OsmPlaces {
    async fn nearby(&self, query: &NearbyQuery) -> Result<Value, PlacesError> {
        // A search takes microseconds and never waits, so it runs in place.
        let database = self.database().await.map_err(PlacesError::Unavailable)?;
        Ok(database.answer(query))
    }

    /// The database does not change while the server runs (and a failed
    /// load stays failed until a restart).
    fn answers_are_fixed(&self) -> bool {
        true
    }
}

/// Degrees from 1e-7 degrees.
pub fn e7_to_degrees(e7: i32) -> f64 {
    f64::from(e7) / 1e7
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::places::json::to_styled_string;

    fn place(osm_id: i64, lat: f64, lng: f64, name: &str) -> NewPlace {
        NewPlace {
            kind: if osm_id % 2 == 0 {
                OsmKind::Node
            } else {
                OsmKind::Way
            },
            osm_id,
            lat_e7: (lat * 1e7).round() as i32,
            lon_e7: (lng * 1e7).round() as i32,
            name: name.to_owned(),
            vicinity: "Mannerheimintie 1, Helsinki".to_owned(),
            types: vec!["cafe", "food", "point_of_interest", "establishment"],
        }
    }

    fn sample() -> Vec<u8> {
        let places: Vec<NewPlace> = (0..500)
            .map(|i| {
                let t = f64::from(i);
                place(
                    i64::from(i),
                    60.17 + (t * 0.37).sin() * 0.02,
                    24.94 + (t * 0.91).cos() * 0.04,
                    &format!("Place {i}"),
                )
            })
            .collect();
        write_database(&places, "sample").unwrap()
    }

    #[test]
    fn a_written_database_reads_back() {
        let database = OsmDatabase::from_bytes(sample()).unwrap();
        assert_eq!(database.len(), 500);
        assert_eq!(database.source(), "sample");
        let mut names: Vec<String> = database.places().map(|p| p.name.to_owned()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 500);
        let found = database.search(60.17, 24.94, 1_000.0, 5);
        assert_eq!(found.len(), 5);
        assert!(found.windows(2).all(|w| w[0].distance_m <= w[1].distance_m));
        // The same as measuring every place.
        let mut all: Vec<(f64, String)> = database
            .places()
            .map(|p| {
                (
                    sphere::haversine_m(60.17, 24.94, p.lat, p.lng),
                    p.name.to_owned(),
                )
            })
            .filter(|(d, _)| *d <= 1_000.0)
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let expected: Vec<&str> = all.iter().take(5).map(|(_, n)| n.as_str()).collect();
        let actual: Vec<&str> = found.iter().map(|p| p.name).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = sample();
        assert!(OsmDatabase::from_bytes(good[..good.len() - 1].to_vec()).is_err());
        let mut flipped = good.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 1;
        assert!(
            OsmDatabase::from_bytes(flipped)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(
            OsmDatabase::from_bytes(b"HERDGEO1 whatever else".to_vec())
                .unwrap_err()
                .contains("herd places import")
        );
        assert!(OsmDatabase::from_bytes(Vec::new()).is_err());
        let empty = write_database(&[], "nothing").unwrap();
        let database = OsmDatabase::from_bytes(empty).unwrap();
        assert!(database.is_empty());
        assert!(database.search(60.0, 24.0, 50_000.0, 20).is_empty());
    }

    #[test]
    fn answers_are_google_shaped_with_the_odbl_credit() {
        let places = vec![
            place(10, 60.1718, 24.9366, "Kiasma <café>"),
            place(11, 60.1700, 24.9400, "Far"),
        ];
        let database = OsmDatabase::from_bytes(write_database(&places, "t").unwrap()).unwrap();
        let query = NearbyQuery {
            lat: 60.1718,
            lng: 24.9366,
            radius_m: 100.0,
            radius_m_text: "100".into(),
            limit: 20,
        };
        assert_eq!(
            to_styled_string(&database.answer(&query)),
            r#"{
   "html_attributions" : [
      "© OpenStreetMap contributors, ODbL (https://www.openstreetmap.org/copyright)"
   ],
   "results" : [
      {
         "geometry" : {
            "location" : {
               "lat" : 60.1718,
               "lng" : 24.9366
            }
         },
         "name" : "Kiasma \u003ccafé\u003e",
         "place_id" : "osm-node-10",
         "types" : [ "cafe", "food", "point_of_interest", "establishment" ],
         "vicinity" : "Mannerheimintie 1, Helsinki"
      }
   ],
   "status" : "OK"
}
"#
        );
        let far_away = NearbyQuery {
            lat: 0.0,
            lng: 0.0,
            ..query
        };
        assert_eq!(database.answer(&far_away)["status"], "ZERO_RESULTS");
    }

    #[tokio::test]
    async fn the_provider_loads_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.places");
        std::fs::write(&path, sample()).unwrap();
        let provider = OsmPlaces::open(&path).unwrap();
        let query = NearbyQuery {
            lat: 60.17,
            lng: 24.94,
            radius_m: 1000.0,
            radius_m_text: "1000".into(),
            limit: 3,
        };
        let answer = provider.nearby(&query).await.unwrap();
        assert_eq!(answer["results"].as_array().unwrap().len(), 3);

        assert!(OsmPlaces::open(&dir.path().join("missing")).is_err());
        let not_ours = dir.path().join("not-ours");
        std::fs::write(&not_ours, b"just some text, long enough for a header").unwrap();
        assert!(OsmPlaces::open(&not_ours).is_err());
        // A header that is fine on a damaged file: found when loading.
        let damaged = dir.path().join("damaged");
        let mut bytes = sample();
        bytes.truncate(bytes.len() - 7);
        std::fs::write(&damaged, bytes).unwrap();
        let provider = OsmPlaces::open(&damaged).unwrap();
        assert!(matches!(
            provider.nearby(&query).await,
            Err(PlacesError::Unavailable(_))
        ));
    }
}
