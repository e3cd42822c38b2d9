//! The dashboard: one page, its script and style inline, built into the
//! binary so that it works on a machine with no network; and the dots of
//! its world map, drawn from the GeoNames places already built in.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use crate::places::geonames::GeoNames;

/// The page served at `/`.
pub const PAGE: &str = include_str!("dashboard.html");

/// The map's grid, in degrees: one dot per populated cell.
const CELL_DEGREES: f64 = 1.0;

/// `[[lng, lat], ...]`: the south-west corner of every grid cell that holds
/// a GeoNames place, which outlines the inhabited world. Worked out once.
pub fn map_json() -> &'static str {
    static MAP: OnceLock<String> = OnceLock::new();
    MAP.get_or_init(|| {
        let cells: BTreeSet<(i32, i32)> = GeoNames::new()
            .points()
            .map(|(lat, lng)| {
                (
                    (lng / CELL_DEGREES).floor() as i32,
                    (lat / CELL_DEGREES).floor() as i32,
                )
            })
            .collect();
        let dots: Vec<String> = cells
            .iter()
            .map(|(lng, lat)| format!("[{lng},{lat}]"))
            .collect();
        format!("[{}]", dots.join(","))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_has_the_inhabited_world_and_no_ocean() {
        let dots: Vec<(i32, i32)> = serde_json::from_str(map_json()).unwrap();
        assert!(dots.len() > 3_000, "{}", dots.len());
        // Los Angeles is inhabited; the middle of the Pacific is not.
        assert!(dots.contains(&(-119, 34)));
        assert!(!dots.contains(&(-140, 0)));
    }
}
