//! `herd-bench chart`: the SVG the bench script writes, from a small
//! fabricated set of figures.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `herd-bench chart ARGS` with `input` on standard input.
fn chart(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .arg("chart")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running herd-bench chart");
    child
        .stdin
        .take()
        .expect("a piped standard input")
        .write_all(input.as_bytes())
        .expect("writing the figures");
    child
        .wait_with_output()
        .expect("waiting for herd-bench chart")
}

/// Every text of the document, joined: what a reader sees.
fn texts(svg: &roxmltree::Document) -> String {
    svg.descendants()
        .filter(|node| node.is_text())
        .filter_map(|node| node.text())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn throughput_against_the_baselines_is_a_well_formed_svg_with_every_label() {
    let figures = "\
IAMAT, five-server herd <16 conns>\therd\t812345.6
IAMAT, five-server herd <16 conns>\tasyncio\t15234
IAMAT, five-server herd <16 conns>\tnode\t50321
IAMAT, one server\therd\t1402000
IAMAT, one server\tasyncio\t21000
IAMAT, one server\tnode\t61000
IAMAT, one server\tloopback limit\t1840000
WHATSAT & places\therd\t250000
";
    let output = chart(
        &["--title", "IAMAT throughput", "--unit", "req/s", "--log"],
        figures,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 SVG");
    let svg = roxmltree::Document::parse(&text).expect("well-formed XML");
    assert_eq!(svg.root_element().tag_name().name(), "svg");
    assert_eq!(
        svg.root_element().tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let shown = texts(&svg);
    for label in [
        "IAMAT throughput",
        "herd",
        "asyncio",
        "node",
        "loopback limit",
        "IAMAT, five-server herd <16 conns>",
        "WHATSAT & places",
        "1,840,000 req/s",
    ] {
        assert!(shown.contains(label), "{label:?} missing from:\n{shown}");
    }
    // A bar for each figure, one colour per series.
    let bars: Vec<_> = svg
        .descendants()
        .filter(|node| node.has_tag_name("rect") && node.has_children())
        .collect();
    assert_eq!(bars.len(), 8);
    let colours: std::collections::HashSet<_> = bars
        .iter()
        .filter_map(|bar| bar.attribute("fill"))
        .collect();
    assert_eq!(colours.len(), 4);
}

#[test]
fn a_propagation_distribution_draws_on_a_linear_axis() {
    let figures = "\
p50\therd\t0.21
p50\tasyncio\t1.9
p99\therd\t0.45
p99\tasyncio\t4.2
max\therd\t0.9
max\tasyncio\t7.5
";
    let series = "herd,asyncio,node,loopback limit";
    let output = chart(
        &[
            "--title",
            "Propagation Hill -> Campbell",
            "--unit",
            "ms",
            "--series",
            series,
        ],
        figures,
    );
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8 SVG");
    let svg = roxmltree::Document::parse(&text).expect("well-formed XML");
    let shown = texts(&svg);
    for label in [
        "Propagation Hill -> Campbell",
        "herd",
        "asyncio",
        "p50",
        "p99",
        "max",
    ] {
        assert!(shown.contains(label), "{label:?} missing from:\n{shown}");
    }
    // Named series without values are not in the legend, but keep their
    // colours: asyncio is second here as where node takes part.
    assert!(!shown.contains("node"), "{shown}");
    let asyncio_bar = svg
        .descendants()
        .find(|node| {
            node.has_tag_name("rect")
                && node.children().any(|title| {
                    title.has_tag_name("title")
                        && title.text().is_some_and(|text| text.starts_with("asyncio"))
                })
        })
        .expect("a bar for asyncio");
    assert_eq!(asyncio_bar.attribute("fill"), Some("#e69f00"));
}

#[test]
fn figures_it_cannot_draw_are_refused_with_a_reason() {
    let output = chart(&["--title", "t"], "p50\therd\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 1"), "{stderr}");
    let output = chart(&["--title", "t", "--log"], "p50\therd\t0\n");
    assert!(!output.status.success());
    let output = chart(&["--title", "t"], "");
    assert!(!output.status.success());
}
