//! `herd places ...`: work with places data.

use std::io::IsTerminal;
use std::path::Path;

/// `herd places import EXTRACT --out FILE`.
pub(crate) fn import(extract: &Path, out: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let summary = herd::places::osm_import::import(extract, out, std::io::stderr().is_terminal())?;
    println!(
        "{} places ({} from nodes, {} from ways) written to {} ({} KiB) in {:.1} s",
        summary.places,
        summary.from_nodes,
        summary.from_ways,
        out.display(),
        summary.bytes.div_ceil(1024),
        started.elapsed().as_secs_f64()
    );
    if summary.ways_without_nodes > 0 {
        println!(
            "{} ways were left out: none of their nodes is in the extract",
            summary.ways_without_nodes
        );
    }
    Ok(())
}
