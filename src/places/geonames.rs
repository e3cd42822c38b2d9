//! The offline places provider: GeoNames' places of 1000 or more people,
//! built into the binary.
//!
//! `build.rs` turns `data/geonames/cities1000.csv` into a k-d tree over
//! points on the unit sphere and writes it as one blob (its doc comment has
//! the layout), which this module embeds and reads in place. Nothing is
//! decoded up front, so the provider costs neither start-up time nor a slow
//! first query: a search reads the few records it visits. Distances are
//! great-circle distances on a spherical Earth; the search itself is
//! `sphere::nearest`, which the OpenStreetMap provider shares.

use std::fmt::Write as _;

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::sphere::{self, Hit, TreePoints, i32_at, to_usize, u32_at, unit_vector_deg};
use super::{NearbyQuery, Places, PlacesError};

/// Written by `build.rs`.
static BLOB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/geonames.bin"));
/// Must match `build.rs`.
const MAGIC: &[u8; 8] = b"HERDGEO1";
/// Bytes of one place record: lat_e5, lon_e5, name, vicinity, cc, axis.
const RECORD_LEN: usize = 21;
/// Bytes of one repeat entry: place, occurrence.
const REPEAT_LEN: usize = 8;

/// The credit GeoNames' CC BY 4.0 licence asks for, sent with every answer.
pub const ATTRIBUTION: &str = "Place data from GeoNames (https://www.geonames.org/), CC BY 4.0";

/// The mean Earth radius (IUGG), in metres.
pub const EARTH_RADIUS_M: f64 = sphere::EARTH_RADIUS_M;

/// Every GeoNames place answers as a town would on Google.
const TYPES: [&str; 2] = ["locality", "political"];

/// The embedded GeoNames places. Cheap to create and to copy: it only points
/// into the binary.
#[derive(Clone, Copy)]
pub struct GeoNames {
    string_offsets: &'static [u8],
    string_bytes: &'static [u8],
    places: &'static [u8],
    repeats: &'static [u8],
}

/// One place found by [`GeoNames::search`].
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    /// The place's name, e.g. `Beverly Hills`.
    pub name: &'static str,
    /// Its second- and first-level divisions and country code, e.g.
    /// `Los Angeles County, California, US`.
    pub vicinity: &'static str,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lng: f64,
    /// Great-circle distance from the query point, in metres.
    pub distance_m: f64,
    /// An id that stays the same across builds and runs while the data does:
    /// `GN` and the base64url of the first 16 bytes of the SHA-256 of the
    /// CSV row's `lat,lon,name,cc` (with `#2`, `#3`, ... appended for rows
    /// that repeat an earlier row's, so that each place has its own id).
    pub place_id: String,
}

impl GeoNames {
    /// Opens the embedded places. Reads only the blob's header.
    pub fn new() -> Self {
        Self::open(BLOB).expect("build.rs writes a well-formed blob")
    }

    /// Splits the blob into its sections, checking that their sizes add up.
    fn open(blob: &'static [u8]) -> Option<Self> {
        let rest = blob.strip_prefix(MAGIC)?;
        let (header, rest) = rest.split_at_checked(12)?;
        let place_count = to_usize(u32_at(header, 0));
        let string_count = to_usize(u32_at(header, 4));
        let repeat_count = to_usize(u32_at(header, 8));
        let (string_offsets, rest) = rest.split_at_checked((string_count + 1).checked_mul(4)?)?;
        let string_len = to_usize(u32_at(string_offsets, string_count * 4));
        let (string_bytes, rest) = rest.split_at_checked(string_len)?;
        let (places, rest) = rest.split_at_checked(place_count.checked_mul(RECORD_LEN)?)?;
        let (repeats, rest) = rest.split_at_checked(repeat_count.checked_mul(REPEAT_LEN)?)?;
        rest.is_empty().then_some(Self {
            string_offsets,
            string_bytes,
            places,
            repeats,
        })
    }

    /// How many places there are: one per row of the CSV.
    pub fn len(&self) -> usize {
        self.places.len() / RECORD_LEN
    }

    /// Whether there are no places at all (never, with the shipped data).
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// The places within `radius_m` metres (great-circle) of `lat`, `lng`
    /// (degrees), nearest first, at most `limit` of them. Places at the same
    /// distance come in a fixed order (at the same point, their CSV order).
    /// A negative or NaN radius finds nothing.
    #[must_use]
    pub fn search(&self, lat: f64, lng: f64, radius_m: f64, limit: usize) -> Vec<Place> {
        self.nearest(lat, lng, radius_m, limit)
            .into_iter()
            .map(|hit| self.place(hit))
            .collect()
    }

    /// The `limit` nearest places within `radius_m` of `lat`, `lng`, nearest
    /// first: a k-nearest-neighbour search whose bound starts at the radius
    /// and shrinks to the `limit`-th best distance found so far, so that
    /// even around Milan, with 876 places within 50 km, it measures only a
    /// few dozen.
    fn nearest(&self, lat: f64, lng: f64, radius_m: f64, limit: usize) -> Vec<Hit> {
        sphere::nearest(self, lat, lng, radius_m, limit)
    }

    fn place(&self, hit: Hit) -> Place {
        let (lat_e5, lon_e5) = self.coordinates_e5(hit.index);
        Place {
            name: self.string(self.record_u32(hit.index, 8)),
            vicinity: self.string(self.record_u32(hit.index, 12)),
            lat: e5_to_degrees(lat_e5),
            lng: e5_to_degrees(lon_e5),
            distance_m: hit.distance_m,
            place_id: self.place_id(hit.index),
        }
    }

    fn place_id(&self, index: usize) -> String {
        let (lat_e5, lon_e5) = self.coordinates_e5(index);
        let name = self.string(self.record_u32(index, 8));
        let cc = self.string(self.record_u32(index, 16));
        let mut identity = format!("{},{},{name},{cc}", e5_text(lat_e5), e5_text(lon_e5));
        if let Some(occurrence) = self.occurrence(index) {
            write!(identity, "#{occurrence}").expect("writing to a String cannot fail");
        }
        let digest = Sha256::digest(identity.as_bytes());
        format!("GN{}", base64url(&digest[..16]))
    }

    /// For a place whose row repeats an earlier row's identity, which
    /// repetition it is (2 for the second row, ...).
    fn occurrence(&self, index: usize) -> Option<u32> {
        let count = self.repeats.len() / REPEAT_LEN;
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let place = to_usize(u32_at(self.repeats, mid * REPEAT_LEN));
            match place.cmp(&index) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return Some(u32_at(self.repeats, mid * REPEAT_LEN + 4));
                }
            }
        }
        None
    }

    /// Every place's latitude and longitude in degrees, in no set order:
    /// enough to draw where people live.
    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        (0..self.len()).map(|index| {
            let (lat_e5, lon_e5) = self.coordinates_e5(index);
            (e5_to_degrees(lat_e5), e5_to_degrees(lon_e5))
        })
    }

    fn record_u32(&self, index: usize, field: usize) -> u32 {
        u32_at(self.places, index * RECORD_LEN + field)
    }

    fn coordinates_e5(&self, index: usize) -> (i32, i32) {
        let record = index * RECORD_LEN;
        (i32_at(self.places, record), i32_at(self.places, record + 4))
    }

    fn axis(&self, index: usize) -> usize {
        usize::from(self.places[index * RECORD_LEN + 20])
    }

    fn string(&self, index: u32) -> &'static str {
        let at = to_usize(index) * 4;
        let start = to_usize(u32_at(self.string_offsets, at));
        let end = to_usize(u32_at(self.string_offsets, at + 4));
        std::str::from_utf8(&self.string_bytes[start..end])
            .expect("build.rs stores whole UTF-8 strings")
    }
}

impl Default for GeoNames {
    fn default() -> Self {
        Self::new()
    }
}

impl TreePoints for GeoNames {
    fn len(&self) -> usize {
        GeoNames::len(self)
    }

    fn unit_vector(&self, index: usize) -> [f64; 3] {
        let (lat_e5, lon_e5) = self.coordinates_e5(index);
        unit_vector(lat_e5, lon_e5)
    }

    fn degrees(&self, index: usize) -> (f64, f64) {
        let (lat_e5, lon_e5) = self.coordinates_e5(index);
        (e5_to_degrees(lat_e5), e5_to_degrees(lon_e5))
    }

    fn axis(&self, index: usize) -> usize {
        GeoNames::axis(self, index)
    }
}

impl std::fmt::Debug for GeoNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoNames")
            .field("places", &self.len())
            .finish()
    }
}

impl Place {
    /// The place as a result of Google's Nearby Search (legacy).
    pub fn to_json(&self) -> Value {
        json!({
            "geometry": { "location": { "lat": self.lat, "lng": self.lng } },
            "name": self.name,
            "place_id": self.place_id,
            "types": TYPES,
            "vicinity": self.vicinity,
        })
    }
}

#[async_trait]
impl Places for GeoNames {
    async fn nearby(&self, query: &NearbyQuery) -> Result<Value, PlacesError> {
        // A search takes microseconds and never waits, so it runs in place.
        let places = self.search(query.lat, query.lng, query.radius_m, query.limit);
        Ok(answer(&places))
    }

    fn answers_are_fixed(&self) -> bool {
        true
    }
}

/// The whole Nearby Search answer for `places`.
fn answer(places: &[Place]) -> Value {
    super::offline_answer(ATTRIBUTION, places.iter().map(Place::to_json).collect())
}

/// The point on the unit sphere for a stored place. `build.rs` has the same
/// function, so the tree's order holds for these vectors.
fn unit_vector(lat_e5: i32, lon_e5: i32) -> [f64; 3] {
    unit_vector_deg(e5_to_degrees(lat_e5), e5_to_degrees(lon_e5))
}

/// Degrees from 1e-5 degrees. Dividing two exact values rounds once, so
/// `3406893` gives the same `f64` as parsing `34.06893`.
fn e5_to_degrees(e5: i32) -> f64 {
    f64::from(e5) / 1e5
}

/// The shortest decimal text of a fixed-point coordinate, as GeoNames
/// writes it: `3406893` -> `34.06893`, `4256760` -> `42.5676`, `-3500000` -> `-35`.
fn e5_text(e5: i32) -> String {
    let sign = if e5 < 0 { "-" } else { "" };
    let magnitude = e5.unsigned_abs();
    let (whole, fraction) = (magnitude / 100_000, magnitude % 100_000);
    if fraction == 0 {
        format!("{sign}{whole}")
    } else {
        let fraction = format!("{fraction:05}");
        format!("{sign}{whole}.{}", fraction.trim_end_matches('0'))
    }
}

/// Base64 with the URL-safe alphabet and no padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // k bytes of input give k + 1 characters; there is no padding.
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[to_usize(sextet)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::places::json::to_styled_string;
    use crate::places::sphere::haversine_m;

    /// A small deterministic generator (splitmix64), so that failures repeat.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in [lo, hi).
        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            lo + (hi - lo) * unit
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Every place's coordinates in degrees, for brute-force scans.
    fn all_coordinates(geonames: &GeoNames) -> Vec<(f64, f64)> {
        (0..geonames.len())
            .map(|i| {
                let (lat_e5, lon_e5) = geonames.coordinates_e5(i);
                (e5_to_degrees(lat_e5), e5_to_degrees(lon_e5))
            })
            .collect()
    }

    /// What `search` must return, found by measuring every place.
    fn brute_force(
        all: &[(f64, f64)],
        lat: f64,
        lng: f64,
        radius_m: f64,
        limit: usize,
    ) -> Vec<Hit> {
        let mut hits: Vec<Hit> = all
            .iter()
            .enumerate()
            .map(|(index, &(plat, plng))| Hit {
                distance_m: haversine_m(lat, lng, plat, plng),
                index,
            })
            .filter(|hit| hit.distance_m <= radius_m)
            .collect();
        hits.sort_by(|a, b| {
            a.distance_m
                .total_cmp(&b.distance_m)
                .then(a.index.cmp(&b.index))
        });
        hits.truncate(limit);
        hits
    }

    fn names(places: &[Place]) -> Vec<&str> {
        places.iter().map(|p| p.name).collect()
    }

    /// The CSV's records, read independently of build.rs.
    fn csv_rows() -> Vec<Vec<String>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/geonames/cities1000.csv");
        let text = std::fs::read_to_string(path).expect("the places CSV is in the repository");
        let mut rows = Vec::new();
        for line in text.lines() {
            let mut fields = vec![String::new()];
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        chars.next();
                        fields.last_mut().unwrap().push('"');
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(String::new()),
                    (c, _) => fields.last_mut().unwrap().push(c),
                }
            }
            assert!(!quoted, "no line breaks inside fields: {line}");
            rows.push(fields);
        }
        assert_eq!(
            rows.remove(0),
            ["lat", "lon", "name", "admin1", "admin2", "cc"]
        );
        rows
    }

    #[test]
    fn holds_every_row_of_the_csv() {
        let geonames = GeoNames::new();
        let rows = csv_rows();
        assert_eq!(geonames.len(), rows.len());
        assert_eq!(geonames.len(), 144_563);

        // The same places, as multisets of (lat, lon, name, vicinity) text.
        let mut expected: Vec<String> = rows
            .iter()
            .map(|r| {
                let vicinity: Vec<&str> = [&r[4], &r[3], &r[5]]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .map(String::as_str)
                    .collect();
                format!("{}|{}|{}|{}", r[0], r[1], r[2], vicinity.join(", "))
            })
            .collect();
        let mut actual: Vec<String> = (0..geonames.len())
            .map(|index| {
                let place = geonames.place(Hit {
                    distance_m: 0.0,
                    index,
                });
                let (lat_e5, lon_e5) = geonames.coordinates_e5(index);
                format!(
                    "{}|{}|{}|{}",
                    e5_text(lat_e5),
                    e5_text(lon_e5),
                    place.name,
                    place.vicinity
                )
            })
            .collect();
        expected.sort_unstable();
        actual.sort_unstable();
        assert!(expected == actual, "the index differs from the CSV");
    }

    #[test]
    fn place_ids_are_unique_and_hash_the_csv_text() {
        let geonames = GeoNames::new();
        let mut ids: Vec<String> = (0..geonames.len()).map(|i| geonames.place_id(i)).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            geonames.len(),
            "38 rows of the CSV repeat others, yet ids are unique"
        );

        // First CSV row: 42.57952,1.65362,El Tarter,Canillo,,AD; the expected
        // id is SHA-256("42.57952,1.65362,El Tarter,AD") computed elsewhere.
        let found = geonames.search(42.57952, 1.65362, 1.0, 20);
        assert_eq!(names(&found), ["El Tarter"]);
        assert_eq!(found[0].place_id, "GNbV_zEAgftE6H_NjxqA1Hkw");
        assert_eq!(found[0].vicinity, "Canillo, AD");
        assert_eq!(found[0].distance_m, 0.0);

        // A row that appears twice gives two places with their own ids.
        let twins = geonames.search(-32.95331, 151.71231, 0.0, 20);
        assert_eq!(names(&twins), ["Highfields", "Highfields"]);
        assert_ne!(twins[0].place_id, twins[1].place_id);
        // Places at the same point come in CSV order: the first row, with
        // the plain id, first.
        let first = geonames.search(-32.95331, 151.71231, 0.0, 1);
        assert_eq!(first[0].place_id, twins[0].place_id);
        let sha = Sha256::digest(b"-32.95331,151.71231,Highfields,AU");
        assert_eq!(first[0].place_id, format!("GN{}", base64url(&sha[..16])));
    }

    #[test]
    fn westwood_finds_its_neighbours_nearest_first() {
        let geonames = GeoNames::new();
        let found = geonames.search(34.068930, -118.445127, 10_000.0, 20);
        assert_eq!(
            names(&found),
            [
                "Westwood, Los Angeles",
                "Century City",
                "Beverly Hills",
                "Santa Monica",
                "Culver City",
                "West Hollywood",
                "Sherman Oaks",
                "Marina del Rey",
            ]
        );
        assert!(found.windows(2).all(|w| w[0].distance_m <= w[1].distance_m));
        assert!(
            found
                .iter()
                .all(|p| p.vicinity == "Los Angeles County, California, US")
        );
        let beverly_hills = &found[2];
        assert!(
            (beverly_hills.distance_m - 4156.0).abs() < 1.0,
            "{}",
            beverly_hills.distance_m
        );
        assert_eq!(
            geonames.search(34.068930, -118.445127, 10_000.0, 3).len(),
            3
        );
    }

    #[test]
    fn tree_search_equals_brute_force() {
        let geonames = GeoNames::new();
        let all = all_coordinates(&geonames);
        let mut rng = Rng(0x5eed);
        let mut found = 0;
        for _ in 0..240 {
            let (lat, lng) = if rng.below(2) == 0 {
                // Near a random place, where answers are dense.
                let (plat, plng) = all[rng.below(all.len())];
                let lat = (plat + rng.range(-0.3, 0.3)).clamp(-90.0, 90.0);
                let mut lng = plng + rng.range(-0.3, 0.3);
                if lng > 180.0 {
                    lng -= 360.0;
                } else if lng < -180.0 {
                    lng += 360.0;
                }
                (lat, lng)
            } else {
                // Uniform on the sphere.
                (
                    rng.range(-1.0, 1.0).asin().to_degrees(),
                    rng.range(-180.0, 180.0),
                )
            };
            let (radius_m, limit) = match rng.below(6) {
                0 => (rng.range(0.0, 2_000.0), usize::MAX),
                1..=3 => (rng.range(0.0, 50_000.0), usize::MAX),
                4 => (rng.range(0.0, 50_000.0), 1 + rng.below(20)),
                _ => (rng.range(0.0, 3_000_000.0), 1 + rng.below(20)),
            };
            let expected = brute_force(&all, lat, lng, radius_m, limit);
            let actual = geonames.nearest(lat, lng, radius_m, limit);
            assert_eq!(
                actual, expected,
                "at {lat},{lng} within {radius_m} m, limit {limit}"
            );
            found += actual.len();
        }
        // Most of the comparisons were about something.
        assert!(found > 1_000, "{found}");
    }

    #[test]
    fn the_whole_earth_fits_in_a_big_enough_radius() {
        let geonames = GeoNames::new();
        let everything = geonames.nearest(12.0, 34.0, 2.1e7, usize::MAX).len();
        assert_eq!(everything, geonames.len());
    }

    #[test]
    fn searches_across_the_antimeridian() {
        let geonames = GeoNames::new();
        let all = all_coordinates(&geonames);
        // Chukotka: Anadyr at 177.5 E, Beringovskiy at 179.35 E, Egvekinot
        // at 179.12 W.
        for lng in [180.0, -180.0, 179.9, -179.9] {
            let found = geonames.search(65.0, lng, 300_000.0, 20);
            let mut found_names = names(&found);
            found_names.sort_unstable();
            assert_eq!(
                found_names,
                ["Anadyr", "Beringovskiy", "Egvekinot"],
                "at lng {lng}"
            );
            let hits = geonames.nearest(65.0, lng, 300_000.0, 20);
            assert_eq!(hits, brute_force(&all, 65.0, lng, 300_000.0, 20));
        }
        // Fiji: Levuka at 179.32 E, seen from just west of the antimeridian.
        let found = geonames.search(-17.5, -179.9, 150_000.0, 20);
        assert!(names(&found).contains(&"Levuka"), "{:?}", names(&found));
        assert!(found.iter().all(|p| p.lng > 179.0));
        assert_eq!(
            geonames.nearest(-17.5, -179.9, 150_000.0, 20),
            brute_force(&all, -17.5, -179.9, 150_000.0, 20)
        );
    }

    #[test]
    fn searches_at_the_poles() {
        let geonames = GeoNames::new();
        let all = all_coordinates(&geonames);
        for lng in [-180.0, -90.0, 0.0, 45.0, 180.0] {
            assert!(geonames.search(90.0, lng, 50_000.0, 20).is_empty());
            assert!(geonames.search(-90.0, lng, 50_000.0, 20).is_empty());
            // Longyearbyen is 11.78 degrees from the North Pole (1310 km),
            // McMurdo Station 12.15 degrees from the South Pole (1351 km).
            let north = geonames.search(90.0, lng, 1_320_000.0, 20);
            assert_eq!(names(&north), ["Longyearbyen"], "at lng {lng}");
            let south = geonames.search(-90.0, lng, 1_400_000.0, 20);
            assert_eq!(names(&south), ["McMurdo Station"], "at lng {lng}");
            for lat in [90.0, -90.0, 89.99, -89.99] {
                assert_eq!(
                    geonames.nearest(lat, lng, 3_000_000.0, usize::MAX),
                    brute_force(&all, lat, lng, 3_000_000.0, usize::MAX),
                    "at {lat},{lng}"
                );
            }
        }
    }

    #[test]
    fn limit_keeps_the_nearest() {
        let geonames = GeoNames::new();
        // Central Manila: hundreds of places within 50 km.
        let everything = geonames.search(14.5995, 120.9842, 50_000.0, usize::MAX);
        assert!(everything.len() > 100, "{}", everything.len());
        for limit in [0, 1, 2, 5, 19, 20] {
            assert_eq!(
                geonames.search(14.5995, 120.9842, 50_000.0, limit),
                everything[..limit]
            );
        }
    }

    #[test]
    fn strange_radii_find_nothing_and_do_not_panic() {
        let geonames = GeoNames::new();
        assert!(geonames.search(34.0, -118.0, -1.0, 20).is_empty());
        assert!(geonames.search(34.0, -118.0, f64::NAN, 20).is_empty());
        assert!(geonames.search(f64::NAN, -118.0, 1000.0, 20).is_empty());
        assert!(geonames.search(34.0, f64::INFINITY, 1000.0, 20).is_empty());
    }

    #[test]
    fn coordinates_print_as_geonames_writes_them() {
        assert_eq!(e5_text(3406893), "34.06893");
        assert_eq!(e5_text(-11844513), "-118.44513");
        assert_eq!(e5_text(4256760), "42.5676");
        assert_eq!(e5_text(-3500000), "-35");
        assert_eq!(e5_text(0), "0");
        assert_eq!(e5_text(-1), "-0.00001");
        assert_eq!(e5_to_degrees(3406893), 34.06893);
    }

    #[test]
    fn base64url_matches_rfc_4648() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
    }

    #[tokio::test]
    async fn nearby_answers_like_google() {
        let geonames = GeoNames::new();
        let query = NearbyQuery {
            lat: 34.068930,
            lng: -118.445127,
            radius_m: 10_000.0,
            radius_m_text: "10000".to_owned(),
            limit: 2,
        };
        let answer = geonames
            .nearby(&query)
            .await
            .expect("the offline provider always answers");
        let westwood_id = geonames.search(34.05612, -118.43063, 10.0, 1)[0]
            .place_id
            .clone();
        let century_city_id = geonames.search(34.05557, -118.41786, 10.0, 1)[0]
            .place_id
            .clone();
        let expected = format!(
            r#"{{
   "html_attributions" : [ "Place data from GeoNames (https://www.geonames.org/), CC BY 4.0" ],
   "results" : [
      {{
         "geometry" : {{
            "location" : {{
               "lat" : 34.05612,
               "lng" : -118.43063
            }}
         }},
         "name" : "Westwood, Los Angeles",
         "place_id" : "{westwood_id}",
         "types" : [ "locality", "political" ],
         "vicinity" : "Los Angeles County, California, US"
      }},
      {{
         "geometry" : {{
            "location" : {{
               "lat" : 34.05557,
               "lng" : -118.41786
            }}
         }},
         "name" : "Century City",
         "place_id" : "{century_city_id}",
         "types" : [ "locality", "political" ],
         "vicinity" : "Los Angeles County, California, US"
      }}
   ],
   "status" : "OK"
}}
"#
        );
        assert_eq!(to_styled_string(&answer), expected);
    }

    #[tokio::test]
    async fn the_middle_of_the_ocean_has_zero_results() {
        let query = NearbyQuery {
            lat: -40.0,
            lng: -130.0,
            radius_m: 50_000.0,
            radius_m_text: "50000".to_owned(),
            limit: 20,
        };
        let answer = GeoNames::new()
            .nearby(&query)
            .await
            .expect("the offline provider always answers");
        assert_eq!(
            answer,
            json!({"html_attributions": [ATTRIBUTION], "results": [], "status": "ZERO_RESULTS"})
        );
    }
}
