//! A grouped bar chart as SVG, for `scripts/bench-compare.sh`'s figures
//! (pure: text in, text out). Each group (a load, a percentile) gets one
//! horizontal bar per series (a contender) that has a value in it, with
//! the value written after the bar; one colour per series, and a legend.

use std::fmt::Write as _;

use anyhow::{Context, bail};

/// One value of one series in one group.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub group: String,
    pub series: String,
    pub value: f64,
}

/// What to draw and how to label it.
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    /// The values' unit, after each value and on the axis.
    pub unit: String,
    /// A logarithmic axis, for values that differ by orders of magnitude.
    pub log: bool,
    /// Series named in the order (and so with the colours) they take,
    /// whether or not they have values, so that a contender keeps its
    /// colour from chart to chart; others follow as they first appear.
    pub series: Vec<String>,
    pub points: Vec<Point>,
}

/// Reads `group<TAB>series<TAB>value` lines (blank lines and `#` comments
/// skipped). Values must be finite and not negative, and positive on a
/// logarithmic axis.
pub fn parse_points(text: &str) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [group, series, value] = fields.as_slice() else {
            bail!("line {}: not group<TAB>series<TAB>value", number + 1);
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("line {}: the value {value:?}", number + 1))?;
        if !value.is_finite() || value < 0.0 {
            bail!(
                "line {}: a value must be finite and not negative",
                number + 1
            );
        }
        points.push(Point {
            group: (*group).to_owned(),
            series: (*series).to_owned(),
            value,
        });
    }
    Ok(points)
}

/// Series colours, in the order the series first appear (distinct for
/// readers with the common colour-vision deficiencies).
const COLOURS: &[&str] = &[
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000",
];

const WIDTH: f64 = 960.0;
const MARGIN: f64 = 16.0;
/// Room right of the longest bar for its value.
const VALUE_ROOM: f64 = 150.0;
const BAR: f64 = 16.0;
const BAR_GAP: f64 = 3.0;
const GROUP_LABEL: f64 = 20.0;
const GROUP_GAP: f64 = 14.0;

/// The chart as a standalone SVG document.
pub fn render(chart: &Chart) -> anyhow::Result<String> {
    if chart.points.is_empty() {
        bail!("nothing to draw: no values");
    }
    if chart.log && chart.points.iter().any(|point| point.value <= 0.0) {
        bail!("a logarithmic axis needs values above zero");
    }
    let series = first_appearances(
        chart
            .series
            .iter()
            .map(String::as_str)
            .chain(chart.points.iter().map(|point| point.series.as_str())),
    );
    let present = |name: &str| chart.points.iter().any(|point| point.series == name);
    let groups = first_appearances(chart.points.iter().map(|point| point.group.as_str()));
    let axis = Axis::new(&chart.points, chart.log);
    // Room left of the bars for half the first grid line's label.
    let left = MARGIN + 24.0;
    let right = WIDTH - MARGIN - VALUE_ROOM;
    let x = |value: f64| left + axis.fraction(value) * (right - left);

    let mut body = String::new();
    let mut y = MARGIN + 30.0;
    // The legend: a swatch and a name per series.
    let mut legend_x = MARGIN;
    for (index, name) in series.iter().enumerate() {
        if !present(name) {
            continue;
        }
        let _ = write!(
            body,
            r#"<rect x="{legend_x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 10.0,
            COLOURS[index % COLOURS.len()],
            legend_x + 16.0,
            y,
            escape(name)
        );
        body.push('\n');
        legend_x += 16.0 + 7.5 * name.chars().count() as f64 + 24.0;
    }
    y += 16.0;
    let plot_top = y;
    for group in &groups {
        y += GROUP_LABEL;
        let _ = writeln!(
            body,
            r#"<text x="{MARGIN:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            y - 6.0,
            escape(group)
        );
        for (index, name) in series.iter().enumerate() {
            let Some(point) = chart
                .points
                .iter()
                .find(|point| &point.group == group && &point.series == name)
            else {
                continue;
            };
            let end = x(point.value).max(left + 1.0);
            let _ = writeln!(
                body,
                r#"<rect x="{left:.1}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}">{} {}</text>"#,
                end - left,
                COLOURS[index % COLOURS.len()],
                escape(name),
                escape(&show(point.value)),
                end + 4.0,
                y + BAR - 3.0,
                escape(&show(point.value)),
                escape(&chart.unit)
            );
            y += BAR + BAR_GAP;
        }
        y += GROUP_GAP;
    }
    let plot_bottom = y;
    // Grid lines under the bars (drawn first), labelled below the plot.
    let mut grid = String::new();
    for tick in axis.ticks() {
        let at = x(tick);
        let _ = writeln!(
            grid,
            r##"<line x1="{at:.1}" y1="{plot_top:.1}" x2="{at:.1}" y2="{plot_bottom:.1}" stroke="#ddd"/><text x="{at:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            plot_bottom + 14.0,
            escape(&show_tick(tick))
        );
    }
    let axis_label = match (chart.unit.is_empty(), chart.log) {
        (true, true) => "logarithmic scale".to_owned(),
        (true, false) => String::new(),
        (false, true) => format!("{} (logarithmic scale)", chart.unit),
        (false, false) => chart.unit.clone(),
    };
    let height = plot_bottom + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{MARGIN:.1}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
        MARGIN + 8.0,
        escape(&chart.title)
    );
    svg.push_str(&grid);
    svg.push_str(&body);
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>
</svg>"##,
        (left + right) / 2.0,
        plot_bottom + 32.0,
        escape(&axis_label)
    );
    Ok(svg)
}

/// The distinct names in the order they first appear.
fn first_appearances<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        if !seen.iter().any(|known| known == name) {
            seen.push(name.to_owned());
        }
    }
    seen
}

/// Where values fall along the bars: linear from zero, or logarithmic
/// between whole powers of ten around the values.
struct Axis {
    log: bool,
    low: f64,
    high: f64,
}

impl Axis {
    fn new(points: &[Point], log: bool) -> Self {
        let max = points.iter().map(|point| point.value).fold(0.0, f64::max);
        if log {
            let min = points
                .iter()
                .map(|point| point.value)
                .fold(f64::INFINITY, f64::min);
            // From the power of ten at or below the smallest value to a
            // little beyond the largest, so the longest bar has room.
            let low = min.log10().floor();
            let high = (max * 1.1).log10().max(low + 1.0);
            Axis { log, low, high }
        } else {
            let high = if max > 0.0 { nice_ceiling(max) } else { 1.0 };
            Axis {
                log,
                low: 0.0,
                high,
            }
        }
    }

    /// How far along the axis `value` lies, from 0 to 1.
    fn fraction(&self, value: f64) -> f64 {
        let at = if self.log {
            (value.log10() - self.low) / (self.high - self.low)
        } else {
            value / self.high
        };
        at.clamp(0.0, 1.0)
    }

    /// The values marked with a grid line.
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            // Whole powers of ten (`low` is a whole number).
            let decades = (self.high - self.low).floor() as i32;
            (0..=decades)
                .map(|k| 10f64.powf(self.low + f64::from(k)))
                .collect()
        } else {
            (0..=5).map(|k| self.high * f64::from(k) / 5.0).collect()
        }
    }
}

/// The smallest round number at or above `value`, one that divides into
/// five readable steps.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|&end| end >= value)
        .unwrap_or(10.0 * power)
}

/// A value with three or so significant digits and thousands separators.
fn show(value: f64) -> String {
    if value >= 1000.0 {
        let whole = value.round() as u64;
        let digits = whole.to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        grouped
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// A grid line's value: as few digits as it needs.
fn show_tick(value: f64) -> String {
    if value >= 1000.0 {
        return show(value);
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Text made safe for SVG content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_points() {
        let points = parse_points("# a comment\nIAMAT\therd\t1500.5\n\nIAMAT\tnode\t20\n").unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].group, "IAMAT");
        assert_eq!(points[1].series, "node");
        assert_eq!(points[0].value, 1500.5);
        assert!(parse_points("IAMAT\therd\n").is_err());
        assert!(parse_points("IAMAT\therd\tfast\n").is_err());
        assert!(parse_points("IAMAT\therd\t-1\n").is_err());
    }

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_ceiling(0.37), 0.4);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(7.5), 8.0);
        assert_eq!(nice_ceiling(730.0), 800.0);
        assert_eq!(show_tick(1.6), "1.6");
        assert_eq!(show_tick(0.0), "0");
        assert_eq!(show_tick(20_000.0), "20,000");
        let point = |value| Point {
            group: "g".into(),
            series: "s".into(),
            value,
        };
        let log = Axis::new(&[point(2_300.0), point(1_840_000.0)], true);
        assert_eq!(log.ticks(), [1e3, 1e4, 1e5, 1e6]);
        assert_eq!(log.fraction(1e3), 0.0);
        assert!(log.fraction(1_840_000.0) > 0.95 && log.fraction(1_840_000.0) < 1.0);
    }

    #[test]
    fn values_and_text_are_written_safely() {
        assert_eq!(show(1_842_613.4), "1,842,613");
        assert_eq!(show(0.2344), "0.234");
        assert_eq!(show(12.34), "12.3");
        assert_eq!(
            escape("a <b> & \"c\"\u{1}"),
            "a &lt;b&gt; &amp; &quot;c&quot; "
        );
    }

    #[test]
    fn a_log_axis_refuses_zero() {
        let chart = Chart {
            title: "t".into(),
            unit: String::new(),
            log: true,
            series: Vec::new(),
            points: vec![Point {
                group: "g".into(),
                series: "s".into(),
                value: 0.0,
            }],
        };
        assert!(render(&chart).is_err());
    }
}
