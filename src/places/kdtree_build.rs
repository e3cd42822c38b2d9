//! Lays out points as an implicit k-d tree (see `sphere`).
//!
//! Kept free of any crate import, so that `build.rs` can include this very
//! file to build the embedded GeoNames tree at compile time, the same way
//! `herd places import` builds an OpenStreetMap one at run time.

/// Arranges `items` (indices into `points`) in place as an implicit k-d tree
/// and records each node's axis at its position in `axes` (which is as long
/// as `items`).
///
/// Each node splits on the axis along which its points spread widest: places
/// lie on a curved surface in clusters, so cycling x, y, z would waste levels
/// on an axis that barely varies locally. Ties in a coordinate are broken by
/// index, a total order, so the layout depends only on the data. `build.rs`
/// builds the GeoNames tree the same way.
pub fn build_tree(items: &mut [usize], points: &[[f64; 3]], axes: &mut [u8]) {
    build_subtree(items, 0, points, axes);
}

fn build_subtree(items: &mut [usize], offset: usize, points: &[[f64; 3]], axes: &mut [u8]) {
    if items.is_empty() {
        return;
    }
    let spreads = [0, 1, 2].map(|axis| spread(items, points, axis));
    let axis = (0..3)
        .max_by(|&a, &b| spreads[a].total_cmp(&spreads[b]))
        .expect("three axes to choose from");
    let mid = items.len() / 2;
    items.select_nth_unstable_by(mid, |&a, &b| {
        points[a][axis].total_cmp(&points[b][axis]).then(a.cmp(&b))
    });
    axes[offset + mid] = u8::try_from(axis).expect("axis < 3");
    let (left, rest) = items.split_at_mut(mid);
    build_subtree(left, offset, points, axes);
    build_subtree(&mut rest[1..], offset + mid + 1, points, axes);
}

fn spread(items: &[usize], points: &[[f64; 3]], axis: usize) -> f64 {
    let (min, max) = items
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &i| {
            (min.min(points[i][axis]), max.max(points[i][axis]))
        });
    max - min
}
