//! `herd places import`: an OpenStreetMap extract (`.osm.pbf`, as Geofabrik
//! or BBBike publish them) into a places database for the `osm` provider.
//!
//! Every named point of interest becomes a place: nodes and ways tagged
//! `amenity`, `shop`, `tourism`, `leisure`, `historic`, `office`, `craft`,
//! `healthcare`, or a railway station or airport. A way's place is the
//! centre of its nodes (on the sphere). Relations (large multipolygons) are
//! left out. Types are mapped from the tags onto Google's (`cafe`, `store`,
//! `lodging`, ...), and the vicinity is the address from the `addr:*` tags,
//! or else the name of the nearest settlement (`place=*`) in the extract.
//!
//! The extract is read twice, decoding blocks on every core: once for the
//! places, settlements and the nodes their ways use, once for those nodes'
//! locations. Only the nodes of places' ways are kept in memory, so a
//! country fits in a laptop's memory.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use osmpbf::{Element, ElementReader};

use super::osm::{NewPlace, OsmKind, e7_to_degrees, write_database};
use super::sphere::{self, TreePoints, degrees_of, unit_vector_deg};

/// How far a settlement may be to lend a place its name as the vicinity.
const SETTLEMENT_REACH_M: f64 = 10_000.0;

/// What an import found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Places written.
    pub places: usize,
    /// Of which from nodes and from ways.
    pub from_nodes: usize,
    pub from_ways: usize,
    /// Ways left out because none of their nodes is in the extract.
    pub ways_without_nodes: usize,
    /// Bytes of the database file.
    pub bytes: usize,
}

/// A named point of interest as found in the extract.
struct Found {
    kind: OsmKind,
    id: i64,
    name: String,
    types: Vec<&'static str>,
    street: Option<String>,
    city: Option<String>,
    /// A node's location, or a way's node ids.
    location: Location,
}

enum Location {
    Point { lat_e7: i32, lon_e7: i32 },
    Nodes(Vec<i64>),
}

/// A named settlement, for vicinities.
struct Settlement {
    lat_e7: i32,
    lon_e7: i32,
    name: String,
}

/// What one pass over some elements found.
#[derive(Default)]
struct Scan {
    found: Vec<Found>,
    settlements: Vec<Settlement>,
}

impl Scan {
    fn merge(mut self, mut other: Scan) -> Scan {
        if self.found.len() < other.found.len() {
            std::mem::swap(&mut self.found, &mut other.found);
        }
        self.found.append(&mut other.found);
        self.settlements.append(&mut other.settlements);
        self
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Pbf {
        path: std::path::PathBuf,
        source: osmpbf::Error,
    },
    #[error(
        "{} is not an OSM PBF file (an .osm.pbf extract, such as Geofabrik and BBBike publish)",
        .0.display()
    )]
    NotPbf(std::path::PathBuf),
    #[error("{0} holds no named places (is it an OSM extract?)")]
    NoPlaces(std::path::PathBuf),
    #[error("writing the places database: {0}")]
    Database(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_owned();
    move |source| ImportError::Io { what, path, source }
}

fn pbf(path: &Path) -> impl FnOnce(osmpbf::Error) -> ImportError {
    let path = path.to_owned();
    move |source| ImportError::Pbf { path, source }
}

/// Imports the extract at `input` into a new database at `output`, with a
/// progress bar on standard error when `show_progress` is set (and it is a
/// terminal).
pub fn import(
    input: &Path,
    output: &Path,
    show_progress: bool,
) -> Result<ImportSummary, ImportError> {
    let size = std::fs::metadata(input)
        .map_err(io("reading", input))?
        .len();
    if !looks_like_pbf(input).map_err(io("reading", input))? {
        return Err(ImportError::NotPbf(input.to_owned()));
    }

    // Pass 1: places, settlements, and which nodes the places' ways need.
    let bar = progress_bar(show_progress, size, "1/2 finding places");
    let scan = reader(input, &bar)?
        .par_map_reduce(scan_element, Scan::default, Scan::merge)
        .map_err(pbf(input))?;
    bar.finish();
    let Scan {
        mut found,
        settlements,
    } = scan;
    // Blocks are decoded in parallel: sort for a file that depends only on
    // the data.
    found.sort_unstable_by_key(|place| (place.kind, place.id));

    let mut wanted: Vec<i64> = found
        .iter()
        .filter_map(|place| match &place.location {
            Location::Nodes(nodes) => Some(nodes.iter().copied()),
            Location::Point { .. } => None,
        })
        .flatten()
        .collect();
    wanted.sort_unstable();
    wanted.dedup();

    // Pass 2: where those nodes are.
    let mut locations: Vec<Option<(i32, i32)>> = vec![None; wanted.len()];
    if !wanted.is_empty() {
        let bar = progress_bar(show_progress, size, "2/2 locating ways");
        let located = reader(input, &bar)?
            .par_map_reduce(
                |element| {
                    let (id, lat_e7, lon_e7) = match element {
                        Element::Node(node) => {
                            (node.id(), node.decimicro_lat(), node.decimicro_lon())
                        }
                        Element::DenseNode(node) => {
                            (node.id(), node.decimicro_lat(), node.decimicro_lon())
                        }
                        _ => return Vec::new(),
                    };
                    match wanted.binary_search(&id) {
                        Ok(at) => vec![(at, lat_e7, lon_e7)],
                        Err(_) => Vec::new(),
                    }
                },
                Vec::new,
                |mut a, mut b| {
                    if a.len() < b.len() {
                        std::mem::swap(&mut a, &mut b);
                    }
                    a.append(&mut b);
                    a
                },
            )
            .map_err(pbf(input))?;
        bar.finish();
        for (at, lat_e7, lon_e7) in located {
            locations[at] = Some((lat_e7, lon_e7));
        }
    }

    let spinner = progress_bar(show_progress, 0, "writing the database");
    let settlements = SettlementIndex::new(settlements);
    let mut summary = ImportSummary::default();
    let mut places = Vec::with_capacity(found.len());
    for place in found {
        let (lat_e7, lon_e7) = match &place.location {
            Location::Point { lat_e7, lon_e7 } => (*lat_e7, *lon_e7),
            Location::Nodes(nodes) => {
                let points = nodes.iter().filter_map(|id| {
                    let at = wanted.binary_search(id).ok()?;
                    locations[at]
                });
                match centre(points) {
                    Some(centre) => centre,
                    None => {
                        summary.ways_without_nodes += 1;
                        continue;
                    }
                }
            }
        };
        match place.kind {
            OsmKind::Node => summary.from_nodes += 1,
            OsmKind::Way => summary.from_ways += 1,
        }
        let city = place
            .city
            .or_else(|| settlements.nearest(lat_e7, lon_e7).map(str::to_owned));
        let vicinity = [place.street, city]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        places.push(NewPlace {
            kind: place.kind,
            osm_id: place.id,
            lat_e7,
            lon_e7,
            name: place.name,
            vicinity,
            types: place.types,
        });
    }
    let source = input.file_name().map_or_else(
        || input.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    if places.is_empty() {
        return Err(ImportError::NoPlaces(input.to_owned()));
    }
    let bytes = write_database(&places, &source).map_err(ImportError::Database)?;
    summary.places = places.len();
    summary.bytes = bytes.len();

    // Written aside and renamed, so that a server never reads half a file.
    let mut temporary = output.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary).map_err(io("creating", &temporary))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("writing", &temporary))?;
    std::fs::rename(&temporary, output).map_err(io("renaming into place", &temporary))?;
    spinner.finish_and_clear();
    Ok(summary)
}

/// Whether the file at `path` starts as an OSM PBF file must: the length
/// of the first blob header (a 4-byte big-endian length, under 64 KiB),
/// then that header, whose first field is its type, "OSMHeader". Anything
/// else would otherwise fail in the decoder with a message about sizes.
fn looks_like_pbf(path: &Path) -> std::io::Result<bool> {
    const START: &[u8] = b"\x0a\x09OSMHeader";
    let mut head = [0u8; 4 + START.len()];
    let mut file = std::fs::File::open(path)?;
    match std::io::Read::read_exact(&mut file, &mut head) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(error) => return Err(error),
    }
    let header_length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Ok((START.len() as u32..=64 * 1024).contains(&header_length) && head[4..] == *START)
}

fn reader(
    input: &Path,
    bar: &ProgressBar,
) -> Result<ElementReader<std::io::BufReader<indicatif::ProgressBarIter<std::fs::File>>>, ImportError>
{
    let file = std::fs::File::open(input).map_err(io("opening", input))?;
    Ok(ElementReader::new(std::io::BufReader::with_capacity(
        1 << 20,
        bar.wrap_read(file),
    )))
}

fn progress_bar(show: bool, bytes: u64, message: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    if bytes == 0 {
        let spinner = ProgressBar::new_spinner().with_message(message);
        spinner.enable_steady_tick(Duration::from_millis(100));
        return spinner;
    }
    ProgressBar::new(bytes)
        .with_style(
            ProgressStyle::with_template(
                "{msg:20} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        )
        .with_message(message)
}

/// What pass 1 keeps of one element.
fn scan_element(element: Element<'_>) -> Scan {
    let mut tags: Vec<(&str, &str)> = Vec::new();
    let (kind, id, location) = match &element {
        Element::Node(node) => {
            tags.extend(node.tags());
            (
                OsmKind::Node,
                node.id(),
                Some((node.decimicro_lat(), node.decimicro_lon())),
            )
        }
        Element::DenseNode(node) => {
            tags.extend(node.tags());
            (
                OsmKind::Node,
                node.id(),
                Some((node.decimicro_lat(), node.decimicro_lon())),
            )
        }
        Element::Way(way) => {
            tags.extend(way.tags());
            (OsmKind::Way, way.id(), None)
        }
        Element::Relation(_) => return Scan::default(),
    };
    let tag = |key: &str| {
        tags.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let Some(name) = tag("name") else {
        return Scan::default();
    };
    let mut scan = Scan::default();
    if let Some((lat_e7, lon_e7)) = location
        && tag("place").is_some_and(is_settlement)
    {
        scan.settlements.push(Settlement {
            lat_e7,
            lon_e7,
            name: name.to_owned(),
        });
    }
    let Some(types) = google_types(&tags) else {
        return scan;
    };
    let street = tag("addr:street").map(|street| match tag("addr:housenumber") {
        Some(number) => format!("{street} {number}"),
        None => street.to_owned(),
    });
    let location = match (location, &element) {
        (Some((lat_e7, lon_e7)), _) => Location::Point { lat_e7, lon_e7 },
        (None, Element::Way(way)) => Location::Nodes(way.refs().collect()),
        (None, _) => return scan,
    };
    scan.found.push(Found {
        kind,
        id,
        name: name.to_owned(),
        types,
        street,
        city: tag("addr:city").map(str::to_owned),
        location,
    });
    scan
}

/// Settlements whose name makes a good vicinity.
fn is_settlement(place: &str) -> bool {
    matches!(
        place,
        "city" | "town" | "village" | "hamlet" | "suburb" | "quarter" | "neighbourhood"
    )
}

/// The centre of a way's nodes: the direction of the sum of their unit
/// vectors, which needs no care at the antimeridian. A closed way's last
/// node repeats its first and is counted once.
fn centre(points: impl Iterator<Item = (i32, i32)>) -> Option<(i32, i32)> {
    let points: Vec<(i32, i32)> = points.collect();
    let open = match points.as_slice() {
        [first, .., last] if first == last => &points[..points.len() - 1],
        all => all,
    };
    if open.is_empty() {
        return None;
    }
    let mut sum = [0.0f64; 3];
    for &(lat_e7, lon_e7) in open {
        let v = unit_vector_deg(e7_to_degrees(lat_e7), e7_to_degrees(lon_e7));
        for axis in 0..3 {
            sum[axis] += v[axis];
        }
    }
    if sum.iter().all(|c| c.abs() < 1e-12) {
        // Points all around the globe: any of them will do.
        return Some(open[0]);
    }
    let (lat, lng) = degrees_of(sum);
    Some((to_e7(lat, 90.0), to_e7(lng, 180.0)))
}

fn to_e7(degrees: f64, limit: f64) -> i32 {
    // In range by construction; the clamp keeps the cast exact.
    (degrees.clamp(-limit, limit) * 1e7).round() as i32
}

/// Settlements in a k-d tree, for the nearest one's name.
struct SettlementIndex {
    settlements: Vec<Settlement>,
    vectors: Vec<[f64; 3]>,
    axes: Vec<u8>,
}

impl SettlementIndex {
    fn new(settlements: Vec<Settlement>) -> Self {
        let vectors: Vec<[f64; 3]> = settlements
            .iter()
            .map(|s| unit_vector_deg(e7_to_degrees(s.lat_e7), e7_to_degrees(s.lon_e7)))
            .collect();
        let mut order: Vec<usize> = (0..settlements.len()).collect();
        let mut axes = vec![0u8; settlements.len()];
        sphere::build_tree(&mut order, &vectors, &mut axes);
        let mut slots: Vec<Option<Settlement>> = settlements.into_iter().map(Some).collect();
        let settlements: Vec<Settlement> = order
            .iter()
            .map(|&i| slots[i].take().expect("build_tree permutes the indices"))
            .collect();
        let vectors = order.iter().map(|&i| vectors[i]).collect();
        Self {
            settlements,
            vectors,
            axes,
        }
    }

    fn nearest(&self, lat_e7: i32, lon_e7: i32) -> Option<&str> {
        let hit = sphere::nearest(
            self,
            e7_to_degrees(lat_e7),
            e7_to_degrees(lon_e7),
            SETTLEMENT_REACH_M,
            1,
        );
        hit.first()
            .map(|hit| self.settlements[hit.index].name.as_str())
    }
}

impl TreePoints for SettlementIndex {
    fn len(&self) -> usize {
        self.settlements.len()
    }

    fn unit_vector(&self, index: usize) -> [f64; 3] {
        self.vectors[index]
    }

    fn degrees(&self, index: usize) -> (f64, f64) {
        let s = &self.settlements[index];
        (e7_to_degrees(s.lat_e7), e7_to_degrees(s.lon_e7))
    }

    fn axis(&self, index: usize) -> usize {
        usize::from(self.axes[index])
    }
}

/// The keys that make a named element a point of interest, in the order
/// their types are listed.
const POI_KEYS: [&str; 8] = [
    "amenity",
    "shop",
    "tourism",
    "leisure",
    "historic",
    "healthcare",
    "office",
    "craft",
];

/// Google-style types for an element's tags, most specific first and
/// ending with `point_of_interest` and `establishment` as Google's do; or
/// `None` if the tags do not make a point of interest.
pub fn google_types(tags: &[(&str, &str)]) -> Option<Vec<&'static str>> {
    let tag = |key: &str| tags.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let mut types: Vec<&'static str> = Vec::new();
    let mut is_poi = false;
    let mut add = |more: &[&'static str]| {
        for t in more {
            if !types.contains(t) {
                types.push(t);
            }
        }
    };
    for key in POI_KEYS {
        let Some(value) = tag(key) else { continue };
        if value == "no" || value.is_empty() {
            continue;
        }
        is_poi = true;
        add(match key {
            "amenity" => amenity_types(value, tag("religion")),
            "shop" => shop_types(value),
            "tourism" => tourism_types(value),
            "leisure" => leisure_types(value),
            "historic" => &["tourist_attraction"],
            "healthcare" => healthcare_types(value),
            "office" => office_types(value),
            _ => craft_types(value),
        });
    }
    match (tag("railway"), tag("public_transport"), tag("aeroway")) {
        (Some("station" | "halt"), _, _) => {
            is_poi = true;
            if tag("station") == Some("subway") {
                add(&["subway_station"]);
            } else {
                add(&["train_station"]);
            }
            add(&["transit_station"]);
        }
        (_, Some("station"), _) => {
            is_poi = true;
            add(&["transit_station"]);
        }
        (_, _, Some("aerodrome")) => {
            is_poi = true;
            add(&["airport"]);
        }
        _ => {}
    }
    if !is_poi {
        return None;
    }
    add(&["point_of_interest", "establishment"]);
    Some(types)
}

fn amenity_types(value: &str, religion: Option<&str>) -> &'static [&'static str] {
    match value {
        "restaurant" => &["restaurant", "food"],
        "cafe" => &["cafe", "food"],
        "fast_food" => &["meal_takeaway", "restaurant", "food"],
        "food_court" => &["restaurant", "food"],
        "ice_cream" => &["food"],
        "bar" | "pub" | "biergarten" => &["bar"],
        "nightclub" => &["night_club"],
        "bank" => &["bank", "finance"],
        "atm" => &["atm", "finance"],
        "bureau_de_change" => &["finance"],
        "pharmacy" => &["pharmacy", "health", "store"],
        "hospital" => &["hospital", "health"],
        "clinic" | "doctors" => &["doctor", "health"],
        "dentist" => &["dentist", "health"],
        "veterinary" => &["veterinary_care"],
        "school" | "kindergarten" | "college" => &["school"],
        "university" => &["university"],
        "library" => &["library"],
        "place_of_worship" => match religion {
            Some("christian") => &["church", "place_of_worship"],
            Some("muslim") => &["mosque", "place_of_worship"],
            Some("jewish") => &["synagogue", "place_of_worship"],
            Some("hindu") => &["hindu_temple", "place_of_worship"],
            _ => &["place_of_worship"],
        },
        "fuel" => &["gas_station"],
        "charging_station" => &["electric_vehicle_charging_station"],
        "parking" | "parking_entrance" | "bicycle_parking" => &["parking"],
        "car_rental" => &["car_rental"],
        "car_wash" => &["car_wash"],
        "taxi" => &["taxi_stand"],
        "bus_station" => &["bus_station", "transit_station"],
        "police" => &["police"],
        "fire_station" => &["fire_station"],
        "post_office" => &["post_office"],
        "townhall" => &["city_hall", "local_government_office"],
        "courthouse" => &["courthouse"],
        "embassy" => &["embassy"],
        "cinema" => &["movie_theater"],
        "casino" => &["casino"],
        "theatre" | "arts_centre" => &["tourist_attraction"],
        "marketplace" => &["store"],
        "gym" => &["gym"],
        _ => &[],
    }
}

fn shop_types(value: &str) -> &'static [&'static str] {
    match value {
        "supermarket" => &["supermarket", "grocery_or_supermarket", "food", "store"],
        "convenience" | "kiosk" => &["convenience_store", "food", "store"],
        "bakery" | "pastry" => &["bakery", "food", "store"],
        "butcher" | "greengrocer" | "deli" | "cheese" | "seafood" | "confectionery" => {
            &["food", "store"]
        }
        "alcohol" | "wine" | "beverages" => &["liquor_store", "store"],
        "clothes" | "fashion" | "boutique" => &["clothing_store", "store"],
        "shoes" => &["shoe_store", "store"],
        "books" => &["book_store", "store"],
        "electronics" | "computer" | "mobile_phone" | "hifi" => &["electronics_store", "store"],
        "furniture" | "interior_decoration" => &["furniture_store", "home_goods_store", "store"],
        "hardware" | "doityourself" => &["hardware_store", "home_goods_store", "store"],
        "houseware" | "kitchen" => &["home_goods_store", "store"],
        "jewelry" => &["jewelry_store", "store"],
        "florist" => &["florist", "store"],
        "pet" => &["pet_store", "store"],
        "bicycle" => &["bicycle_store", "store"],
        "car" => &["car_dealer", "store"],
        "car_repair" | "tyres" => &["car_repair"],
        "department_store" => &["department_store", "store"],
        "mall" => &["shopping_mall"],
        "hairdresser" => &["hair_care"],
        "beauty" | "cosmetics" => &["beauty_salon"],
        "chemist" => &["drugstore", "store"],
        "laundry" | "dry_cleaning" => &["laundry"],
        "travel_agency" => &["travel_agency"],
        _ => &["store"],
    }
}

fn tourism_types(value: &str) -> &'static [&'static str] {
    match value {
        "hotel" | "motel" | "hostel" | "guest_house" | "apartment" | "chalet" => &["lodging"],
        "camp_site" => &["campground"],
        "caravan_site" => &["rv_park"],
        "museum" => &["museum"],
        "gallery" => &["art_gallery"],
        "zoo" => &["zoo"],
        "aquarium" => &["aquarium"],
        "theme_park" => &["amusement_park"],
        "attraction" | "viewpoint" | "artwork" => &["tourist_attraction"],
        _ => &[],
    }
}

fn leisure_types(value: &str) -> &'static [&'static str] {
    match value {
        "park" | "garden" | "nature_reserve" | "playground" => &["park"],
        "fitness_centre" | "sports_centre" => &["gym"],
        "stadium" => &["stadium"],
        "bowling_alley" => &["bowling_alley"],
        "water_park" => &["amusement_park"],
        _ => &[],
    }
}

fn healthcare_types(value: &str) -> &'static [&'static str] {
    match value {
        "hospital" => &["hospital", "health"],
        "pharmacy" => &["pharmacy", "health", "store"],
        "dentist" => &["dentist", "health"],
        "physiotherapist" => &["physiotherapist", "health"],
        "doctor" | "clinic" => &["doctor", "health"],
        _ => &["health"],
    }
}

fn office_types(value: &str) -> &'static [&'static str] {
    match value {
        "government" => &["local_government_office"],
        "insurance" => &["insurance_agency"],
        "estate_agent" => &["real_estate_agency"],
        "lawyer" => &["lawyer"],
        "accountant" | "tax_advisor" => &["accounting"],
        "travel_agent" => &["travel_agency"],
        _ => &[],
    }
}

fn craft_types(value: &str) -> &'static [&'static str] {
    match value {
        "electrician" => &["electrician"],
        "plumber" => &["plumber"],
        "painter" => &["painter"],
        "locksmith" => &["locksmith"],
        "roofer" => &["roofing_contractor"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(tags: &[(&str, &str)], expected: Option<&[&str]>) {
        assert_eq!(google_types(tags).as_deref(), expected, "{tags:?}");
    }

    #[test]
    fn tags_map_onto_google_types() {
        const POI: [&str; 2] = ["point_of_interest", "establishment"];
        let with_poi = |specific: &[&'static str]| -> Vec<&'static str> {
            specific.iter().chain(POI.iter()).copied().collect()
        };
        check(
            &[("amenity", "cafe"), ("name", "X")],
            Some(&with_poi(&["cafe", "food"])),
        );
        check(
            &[("amenity", "place_of_worship"), ("religion", "christian")],
            Some(&with_poi(&["church", "place_of_worship"])),
        );
        check(
            &[("shop", "supermarket")],
            Some(&with_poi(&[
                "supermarket",
                "grocery_or_supermarket",
                "food",
                "store",
            ])),
        );
        check(&[("shop", "something_odd")], Some(&with_poi(&["store"])));
        check(&[("tourism", "hotel")], Some(&with_poi(&["lodging"])));
        check(&[("tourism", "museum")], Some(&with_poi(&["museum"])));
        check(&[("leisure", "park")], Some(&with_poi(&["park"])));
        check(
            &[("historic", "memorial")],
            Some(&with_poi(&["tourist_attraction"])),
        );
        check(&[("office", "company")], Some(&POI));
        check(
            &[("railway", "station"), ("station", "subway")],
            Some(&with_poi(&["subway_station", "transit_station"])),
        );
        // Several keys: all their types, once each, in key order.
        check(
            &[("shop", "books"), ("amenity", "cafe")],
            Some(&with_poi(&["cafe", "food", "book_store", "store"])),
        );
        // Not points of interest.
        check(&[("highway", "residential"), ("name", "Main St")], None);
        check(&[("building", "yes")], None);
        check(&[("amenity", "no")], None);
        check(&[("railway", "rail")], None);
    }

    #[test]
    fn a_closed_way_is_centred_on_its_nodes() {
        let square = [
            (600_000_000, 240_000_000),
            (600_000_000, 240_100_000),
            (600_100_000, 240_100_000),
            (600_100_000, 240_000_000),
            (600_000_000, 240_000_000),
        ];
        let (lat_e7, lon_e7) = centre(square.into_iter()).unwrap();
        assert!((lat_e7 - 600_050_000).abs() < 100, "{lat_e7}");
        assert!((lon_e7 - 240_050_000).abs() < 10, "{lon_e7}");
        // Across the antimeridian.
        let (_, lon_e7) = centre([(0, 1_799_000_000), (0, -1_799_000_000)].into_iter()).unwrap();
        assert!(lon_e7.unsigned_abs() > 1_799_900_000, "{lon_e7}");
        assert_eq!(centre(std::iter::empty()), None);
        assert_eq!(centre([(5, 6)].into_iter()), Some((5, 6)));
    }
}
