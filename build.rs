//! Builds the embedded GeoNames places index (read by `src/places/geonames.rs`).
//!
//! A server must listen within 100 ms of launch, so nothing about the index
//! may cost start-up time: this script parses `assets/geonames/cities1000.csv`,
//! arranges the places as an implicit k-d tree over unit vectors, and writes
//! one little-endian blob to `$OUT_DIR/geonames.bin` that the binary embeds
//! and reads in place.
//!
//! Blob layout (all integers little-endian):
//!
//! ```text
//! magic           8 bytes  "HERDGEO1"
//! place_count     u32
//! string_count    u32
//! repeat_count    u32
//! string_offsets  (string_count + 1) x u32, into string_bytes
//! string_bytes    UTF-8, every distinct name, vicinity and country code once
//! places          place_count x 21 bytes, in k-d tree order:
//!                   lat_e5 i32, lon_e5 i32 (degrees x 100 000),
//!                   name u32, vicinity u32, cc u32 (string indices),
//!                   axis u8 (0 x, 1 y, 2 z: the node's splitting axis)
//! repeats         repeat_count x (place u32, occurrence u32), by place:
//!                   rows repeating an earlier row's lat, lon, name and cc
//! ```
//!
//! The tree is implicit: the node of the index range `lo..hi` is
//! `mid = lo + (hi - lo) / 2`, with `lo..mid` on or below its coordinate
//! along its axis and `mid + 1..hi` on or above it.

#[path = "src/places/kdtree_build.rs"]
mod kdtree_build;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the places come from, relative to the crate root.
const CSV_PATH: &str = "assets/geonames/cities1000.csv";
/// The columns `CSV_PATH` must have, in this order.
const HEADER: [&str; 6] = ["lat", "lon", "name", "admin1", "admin2", "cc"];
/// Identifies the format; `geonames.rs` checks it.
const MAGIC: &[u8; 8] = b"HERDGEO1";
/// Bytes of one place record in the blob.
const RECORD_LEN: usize = 21;

/// One CSV row, coordinates in fixed point.
struct Row {
    lat_e5: i32,
    lon_e5: i32,
    name: String,
    admin1: String,
    admin2: String,
    cc: String,
}

fn main() {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out_dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    let csv_path = Path::new(&manifest_dir).join(CSV_PATH);
    println!("cargo::rerun-if-changed={CSV_PATH}");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/places/kdtree_build.rs");
    tell_version();

    let text = std::fs::read_to_string(&csv_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", csv_path.display()));
    let rows = parse_rows(&text);
    let blob = build_blob(&rows);
    let out = PathBuf::from(out_dir).join("geonames.bin");
    std::fs::write(&out, blob).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// Sets `HERD_VERSION` for `herd --version`: the package version and, in
/// a git checkout, the commit it is built from. A build without git (a
/// source tarball, or no git installed) says the version alone.
fn tell_version() {
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let git = |args: &[&str]| -> Option<String> {
        let output = std::process::Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => println!("cargo::rustc-env=HERD_VERSION={version} (commit {commit})"),
        None => println!("cargo::rustc-env=HERD_VERSION={version}"),
    }
    // Built again when HEAD moves: a checkout, or a commit on the branch.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo::rerun-if-changed={path}");
        }
    }
}

/// Reads the places; any surprise in our own shipped data stops the build.
fn parse_rows(text: &str) -> Vec<Row> {
    let mut records = parse_csv(text).into_iter();
    let header = records.next().expect("the places CSV has a header");
    assert_eq!(header, HEADER, "unexpected columns in {CSV_PATH}");
    records
        .enumerate()
        .map(|(i, fields)| {
            let line = i + 2;
            let [lat, lon, name, admin1, admin2, cc]: [String; 6] = fields
                .try_into()
                .unwrap_or_else(|f: Vec<_>| panic!("{CSV_PATH} row {line}: {} fields", f.len()));
            let lat_e5 = parse_e5(&lat)
                .filter(|v| v.abs() <= 90 * 100_000)
                .unwrap_or_else(|| panic!("{CSV_PATH} row {line}: bad latitude {lat:?}"));
            let lon_e5 = parse_e5(&lon)
                .filter(|v| v.abs() <= 180 * 100_000)
                .unwrap_or_else(|| panic!("{CSV_PATH} row {line}: bad longitude {lon:?}"));
            Row {
                lat_e5,
                lon_e5,
                name,
                admin1,
                admin2,
                cc,
            }
        })
        .collect()
}

/// RFC 4180 CSV: fields may be double-quoted, with `""` for a quote and
/// commas or line breaks inside; records end with CRLF or LF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            _ => field.push(c),
        }
    }
    assert!(!in_quotes, "{CSV_PATH} ends inside a quoted field");
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Decimal degrees with at most five decimals (GeoNames' precision) as an
/// exact integer of 1e-5 degrees: `-118.44513` -> `-11844513`.
fn parse_e5(text: &str) -> Option<i32> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 3
        || fraction.len() > 5
        || !all_digits(whole)
        || !all_digits(fraction)
    {
        return None;
    }
    if digits.contains('.') && fraction.is_empty() {
        return None;
    }
    let whole: i32 = whole.parse().ok()?;
    let fraction: i32 = format!("{fraction:0<5}").parse().ok()?;
    let magnitude = whole * 100_000 + fraction;
    Some(if negative { -magnitude } else { magnitude })
}

/// The point on the unit sphere; `geonames.rs` has the same function, so the
/// tree's order holds for the vectors it computes at query time.
fn unit_vector(lat_e5: i32, lon_e5: i32) -> [f64; 3] {
    let lat = (f64::from(lat_e5) / 1e5).to_radians();
    let lon = (f64::from(lon_e5) / 1e5).to_radians();
    let (sin_lat, cos_lat) = lat.sin_cos();
    let (sin_lon, cos_lon) = lon.sin_cos();
    [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat]
}

/// Deduplicating string table, in order of first use.
#[derive(Default)]
struct Strings {
    index: HashMap<String, u32>,
    list: Vec<String>,
}

impl Strings {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.list.len()).expect("fewer than 2^32 strings");
        self.index.insert(s.to_owned(), i);
        self.list.push(s.to_owned());
        i
    }
}

fn build_blob(rows: &[Row]) -> Vec<u8> {
    let points: Vec<[f64; 3]> = rows
        .iter()
        .map(|r| unit_vector(r.lat_e5, r.lon_e5))
        .collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut axes = vec![0u8; rows.len()];
    kdtree_build::build_tree(&mut order, &points, &mut axes);

    // Occurrence numbers for rows that repeat an earlier row's identity, so
    // that every place gets its own place_id. Counted in CSV order, so the
    // first row keeps the plain id.
    let mut seen: HashMap<(i32, i32, &str, &str), u32> = HashMap::new();
    let occurrence: Vec<u32> = rows
        .iter()
        .map(|r| {
            let n = seen
                .entry((r.lat_e5, r.lon_e5, &r.name, &r.cc))
                .or_insert(0);
            *n += 1;
            *n
        })
        .collect();

    let mut strings = Strings::default();
    let mut places = Vec::with_capacity(rows.len() * RECORD_LEN);
    let mut repeats = Vec::new();
    for (position, (&row_index, &axis)) in order.iter().zip(&axes).enumerate() {
        let row = &rows[row_index];
        // Google's vicinity is "street, town"; ours goes from the smallest
        // division we know to the country.
        let vicinity = [&row.admin2, &row.admin1, &row.cc]
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        places.extend_from_slice(&row.lat_e5.to_le_bytes());
        places.extend_from_slice(&row.lon_e5.to_le_bytes());
        places.extend_from_slice(&strings.intern(&row.name).to_le_bytes());
        places.extend_from_slice(&strings.intern(&vicinity).to_le_bytes());
        places.extend_from_slice(&strings.intern(&row.cc).to_le_bytes());
        places.push(axis);
        if occurrence[row_index] > 1 {
            repeats.push((to_u32(position), occurrence[row_index]));
        }
    }

    let string_bytes: usize = strings.list.iter().map(String::len).sum();
    let mut blob = Vec::with_capacity(64 + 4 * strings.list.len() + string_bytes + places.len());
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&to_u32(rows.len()).to_le_bytes());
    blob.extend_from_slice(&to_u32(strings.list.len()).to_le_bytes());
    blob.extend_from_slice(&to_u32(repeats.len()).to_le_bytes());
    let mut offset = 0;
    blob.extend_from_slice(&0u32.to_le_bytes());
    for s in &strings.list {
        offset += s.len();
        blob.extend_from_slice(&to_u32(offset).to_le_bytes());
    }
    for s in &strings.list {
        blob.extend_from_slice(s.as_bytes());
    }
    blob.extend_from_slice(&places);
    for (position, occurrence) in repeats {
        blob.extend_from_slice(&position.to_le_bytes());
        blob.extend_from_slice(&occurrence.to_le_bytes());
    }
    blob
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("the places data is far below 4 GiB")
}
