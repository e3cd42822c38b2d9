//! Points on a spherical Earth: great-circle distances, and the search of an
//! implicit k-d tree over unit vectors that the GeoNames and OpenStreetMap
//! providers share.
//!
//! A tree is a sequence of points in which the node of the index range
//! `lo..hi` is `mid = lo + (hi - lo) / 2`, with `lo..mid` on or below its
//! coordinate along its axis and `mid + 1..hi` on or above it. `build.rs`
//! lays out the embedded GeoNames tree and `herd places import` an
//! OpenStreetMap one, both with `kdtree_build::build_tree`. Distances are great-circle distances; the
//! tree prunes with chord lengths, which grow with the great-circle angle, so
//! poles and the antimeridian are not special cases.

use std::collections::BinaryHeap;

/// The mean Earth radius (IUGG), in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Added to the chord bound when pruning, so that rounding in the chord (from
/// unit vectors) and in the haversine distance (from degrees) can never make
/// the tree skip a place that the exact filter would keep. About 6 mm on
/// Earth; the tree only visits a few more nodes for it.
const CHORD_SLACK: f64 = 1e-9;

/// What a tree search needs to know about the points it holds.
pub(crate) trait TreePoints {
    /// How many points the tree holds.
    fn len(&self) -> usize;
    /// Point `index` on the unit sphere, exactly as the tree was built from.
    fn unit_vector(&self, index: usize) -> [f64; 3];
    /// Point `index` in degrees (latitude, longitude), for its distance.
    fn degrees(&self, index: usize) -> (f64, f64);
    /// The axis (0 x, 1 y, 2 z) that node `index` splits on.
    fn axis(&self, index: usize) -> usize;
}

/// A point within the radius: how far, and where it is in the tree.
///
/// Hits order by distance, then by tree position: a total order, so that
/// which of several equidistant points make the cut never depends on the
/// path the search took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hit {
    pub distance_m: f64,
    pub index: usize,
}

impl Ord for Hit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.distance_m
            .total_cmp(&other.distance_m)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Hit {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Hit {}

/// The `limit` nearest points within `radius_m` of `lat`, `lng`, nearest
/// first: a k-nearest-neighbour search whose bound starts at the radius and
/// shrinks to the `limit`-th best distance found so far, so that even in a
/// dense region it measures only a few dozen points. A negative or NaN
/// radius finds nothing.
pub(crate) fn nearest<T: TreePoints + ?Sized>(
    tree: &T,
    lat: f64,
    lng: f64,
    radius_m: f64,
    limit: usize,
) -> Vec<Hit> {
    if limit == 0 || radius_m.is_nan() || radius_m < 0.0 {
        return Vec::new();
    }
    let query = unit_vector_deg(lat, lng);
    // The best hits so far, worst on top.
    let mut best: BinaryHeap<Hit> = BinaryHeap::new();
    let mut bound_m = radius_m;
    let mut reach = chord_reach(bound_m);

    // Ranges of the implicit tree still to visit, each with a lower bound on
    // the chord from the query to any point in it. Each level of the tree
    // leaves at most one range pending.
    let mut pending = Vec::with_capacity(64);
    pending.push((0, tree.len(), 0.0));
    while let Some((lo, hi, lower_bound)) = pending.pop() {
        if lo >= hi || lower_bound > reach {
            continue;
        }
        let mid = lo + (hi - lo) / 2;
        let point = tree.unit_vector(mid);
        // The chord test is a cheap filter; the haversine distance, computed
        // as for any other caller, decides.
        let chord_squared: f64 = (0..3).map(|i| (point[i] - query[i]).powi(2)).sum();
        if chord_squared <= reach * reach {
            let (plat, plng) = tree.degrees(mid);
            let distance_m = haversine_m(lat, lng, plat, plng);
            let hit = Hit {
                distance_m,
                index: mid,
            };
            if distance_m <= bound_m
                && best
                    .peek()
                    .is_none_or(|worst| best.len() < limit || hit < *worst)
            {
                if best.len() == limit {
                    best.pop();
                }
                best.push(hit);
                if best.len() == limit {
                    let worst = best.peek().expect("limit > 0 hits are kept");
                    bound_m = worst.distance_m;
                    reach = chord_reach(bound_m);
                }
            }
        }
        // Points before `mid` lie at or below its coordinate on its axis, so
        // their chord to the query is at least `offset`; those after it at
        // least `-offset`. Visit the query's side first, so that the bound
        // shrinks early.
        let axis = tree.axis(mid);
        let offset = query[axis] - point[axis];
        let below = (lo, mid, lower_bound.max(offset));
        let above = (mid + 1, hi, lower_bound.max(-offset));
        let (near, far) = if offset <= 0.0 {
            (below, above)
        } else {
            (above, below)
        };
        pending.push(far);
        pending.push(near);
    }
    best.into_sorted_vec()
}

pub(crate) use super::kdtree_build::build_tree;

/// The chord, on the unit sphere, that a point within `radius_m` can be from
/// the query point, plus the slack that absorbs rounding.
fn chord_reach(radius_m: f64) -> f64 {
    let angle = radius_m / EARTH_RADIUS_M;
    let chord = if angle >= std::f64::consts::PI {
        2.0
    } else {
        2.0 * (angle / 2.0).sin()
    };
    chord + CHORD_SLACK
}

/// Great-circle distance in metres between two points given in degrees, by
/// the haversine formula, which stays accurate for short distances.
pub fn haversine_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    // Across the antimeridian, take the short way round: 179.9 to -179.9 is
    // 0.2 degrees, and computing it as such keeps its precision.
    let mut delta_lng = lng2 - lng1;
    if delta_lng > 180.0 {
        delta_lng -= 360.0;
    } else if delta_lng < -180.0 {
        delta_lng += 360.0;
    }
    // hav(angle) = sin²(angle / 2), which rounding can push just past 1.
    let hav = ((phi2 - phi1) / 2.0).sin().powi(2)
        + phi1.cos() * phi2.cos() * (delta_lng.to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * hav.clamp(0.0, 1.0).sqrt().asin()
}

/// The point on the unit sphere at `lat`, `lng` (degrees).
pub fn unit_vector_deg(lat: f64, lng: f64) -> [f64; 3] {
    let (sin_lat, cos_lat) = lat.to_radians().sin_cos();
    let (sin_lng, cos_lng) = lng.to_radians().sin_cos();
    [cos_lat * cos_lng, cos_lat * sin_lng, sin_lat]
}

/// Latitude and longitude (degrees) of a non-zero vector's direction.
pub fn degrees_of(vector: [f64; 3]) -> (f64, f64) {
    let [x, y, z] = vector;
    let lat = z.atan2(x.hypot(y)).to_degrees();
    let lng = y.atan2(x).to_degrees();
    (lat, lng)
}

/// The little-endian `u32` at `at` (the caller has checked the length).
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("a 4-byte slice"))
}

/// The little-endian `i32` at `at` (the caller has checked the length).
pub(crate) fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(bytes[at..at + 4].try_into().expect("a 4-byte slice"))
}

pub(crate) fn to_usize(n: u32) -> usize {
    usize::try_from(n).expect("usize is at least 32 bits on every supported target")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points held in memory, for testing the builder and the search together.
    struct Cloud {
        degrees: Vec<(f64, f64)>,
        vectors: Vec<[f64; 3]>,
        axes: Vec<u8>,
    }

    impl Cloud {
        fn new(points: &[(f64, f64)]) -> Cloud {
            let vectors: Vec<[f64; 3]> = points
                .iter()
                .map(|&(lat, lng)| unit_vector_deg(lat, lng))
                .collect();
            let mut order: Vec<usize> = (0..points.len()).collect();
            let mut axes = vec![0; points.len()];
            build_tree(&mut order, &vectors, &mut axes);
            Cloud {
                degrees: order.iter().map(|&i| points[i]).collect(),
                vectors: order.iter().map(|&i| vectors[i]).collect(),
                axes,
            }
        }
    }

    impl TreePoints for Cloud {
        fn len(&self) -> usize {
            self.degrees.len()
        }
        fn unit_vector(&self, index: usize) -> [f64; 3] {
            self.vectors[index]
        }
        fn degrees(&self, index: usize) -> (f64, f64) {
            self.degrees[index]
        }
        fn axis(&self, index: usize) -> usize {
            usize::from(self.axes[index])
        }
    }

    #[test]
    fn built_tree_search_equals_brute_force() {
        // A deterministic spiral of points around Helsinki and a few far away.
        let mut points = Vec::new();
        for i in 0..3000 {
            let t = f64::from(i);
            points.push((
                60.17 + (t * 0.37).sin() * 0.05,
                24.94 + (t * 0.91).cos() * 0.1,
            ));
        }
        points.extend([(90.0, 0.0), (-90.0, 0.0), (0.0, 180.0), (0.0, -179.99)]);
        let cloud = Cloud::new(&points);
        for (lat, lng, radius_m, limit) in [
            (60.17, 24.94, 2_000.0, 20),
            (60.17, 24.94, 50_000.0, 5),
            (60.2, 25.0, 500.0, usize::MAX),
            (0.0, 179.995, 2_000.0, 20),
            (89.9, 10.0, 20_000.0, 20),
        ] {
            let mut expected: Vec<Hit> = (0..cloud.len())
                .map(|index| {
                    let (plat, plng) = cloud.degrees[index];
                    Hit {
                        distance_m: haversine_m(lat, lng, plat, plng),
                        index,
                    }
                })
                .filter(|hit| hit.distance_m <= radius_m)
                .collect();
            expected.sort();
            expected.truncate(limit);
            assert_eq!(
                nearest(&cloud, lat, lng, radius_m, limit),
                expected,
                "{lat},{lng} {radius_m} {limit}"
            );
        }
    }

    #[test]
    fn degrees_of_inverts_unit_vector() {
        for (lat, lng) in [
            (60.17, 24.94),
            (-33.9, 151.2),
            (0.0, -180.0 + 1e-9),
            (45.0, 0.0),
        ] {
            let (lat2, lng2) = degrees_of(unit_vector_deg(lat, lng));
            assert!((lat - lat2).abs() < 1e-9 && (lng - lng2).abs() < 1e-9);
        }
    }
}
