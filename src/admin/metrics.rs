//! `/metrics`: every counter of a server in the Prometheus text format
//! (0.0.4) or OpenMetrics, whichever the scraper asks for, encoded by
//! `prometheus-client` from the counters as read at the scrape.
//!
//! Nothing here is registered ahead: each scrape builds a registry over a
//! collector that reads the wings' counters (`stats`), the replica and the
//! links, so counting stays what it was (an atomic add) and all the work
//! of exposition happens at scrape time.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Sources;
use super::process;
use crate::stats::{Command, HistogramCounts, MESSAGE_LOG, unix_millis};

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of the server `sources` describe, in OpenMetrics if
/// `openmetrics`, else in the Prometheus text format.
pub fn encode(sources: &Arc<Sources>, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
        .sub_registry_with_prefix("herd")
        .register_collector(Box::new(ServerCollector(sources.clone())));
    let mut text = String::new();
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
    };
    encoded.expect("writing to a String does not fail");
    text
}

/// Labels as pairs; an empty list is no labels.
type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its descriptor, then each labelled sample.
fn family<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, T)>,
    mut write: impl FnMut(&mut MetricEncoder, &T) -> fmt::Result,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            write(&mut metric, &value)?;
        } else {
            write(&mut metric.encode_family(&labels)?, &value)?;
        }
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, samples, |m, v| {
        m.encode_counter::<NoLabelSet, u64, u64>(v, None)
    })
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    counters(encoder, name, help, [(Labels::new(), value)])
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(v)
    })
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    gauges(encoder, name, help, [(Labels::new(), value)])
}

fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, HistogramCounts)>,
) -> fmt::Result {
    family(
        encoder,
        name,
        help,
        MetricType::Histogram,
        samples,
        |m, h| m.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &h.bounded(), None),
    )
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: HistogramCounts,
) -> fmt::Result {
    histograms(encoder, name, help, [(Labels::new(), value)])
}

fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

/// Reads one server's counters at each scrape.
#[derive(Debug)]
struct ServerCollector(Arc<Sources>);

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let sources = &self.0;
        let s = &sources.stats;
        let e = &mut e;
        gauges(
            e,
            "server_info",
            "The server's name and version; always 1.",
            [(
                vec![
                    ("server", sources.name.clone()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ],
                1.0,
            )],
        )?;
        gauge(
            e,
            "uptime_seconds",
            "Seconds since the server started.",
            sources.started.elapsed().as_secs_f64(),
        )?;

        // Clients.
        let accepted = s.connections.get();
        gauge(
            e,
            "client_connections_open",
            "Client connections open now.",
            accepted.saturating_sub(s.connections_closed.get()) as f64,
        )?;
        counter(
            e,
            "client_connections_accepted",
            "Client connections accepted.",
            accepted,
        )?;
        counters(
            e,
            "client_connections_refused",
            "Client connections closed at once for a limit.",
            [(label("limit", "per_ip"), s.connections_refused.get())],
        )?;
        counter(
            e,
            "client_tls_handshakes_failed",
            "Connections to the TLS client port closed before their handshake was done.",
            s.tls_handshakes_failed.get(),
        )?;
        let request = |command: &str, outcome: &str, value: u64| {
            (
                vec![
                    ("command", command.to_owned()),
                    ("outcome", outcome.to_owned()),
                ],
                value,
            )
        };
        let whatsat_unknown = s.whatsat_unknown.get();
        counters(
            e,
            "requests",
            "Client lines answered, by command and outcome (invalid: answered ?).",
            [
                request("iamat", "stored", s.iamat_stored.get()),
                request("iamat", "not_newer", s.iamat_not_newer.get()),
                request("iamat", "refused", s.iamat_refused.get()),
                request("whatsat", "answered", s.whatsat.get()),
                request("whatsat", "invalid", whatsat_unknown),
                request(
                    "other",
                    "invalid",
                    s.invalid.get().saturating_sub(whatsat_unknown),
                ),
            ],
        )?;
        histograms(
            e,
            "request_duration_seconds",
            "From reading a client line to writing its reply, by command.",
            Command::ALL.map(|command| {
                (
                    label("command", command.label()),
                    s.latency(command).snapshot(),
                )
            }),
        )?;

        // The replica.
        let store = sources.replica.store();
        counters(
            e,
            "reports_stored",
            "Reports stored because they were newer, by where they came from.",
            [
                (label("source", "client"), s.iamat_stored.get()),
                (label("source", "neighbour"), s.updates_stored.get()),
            ],
        )?;
        gauge(
            e,
            "clients_held",
            "Clients whose newest report this server holds.",
            store.len() as f64,
        )?;
        let bounds = store.bounds();
        gauge(
            e,
            "clients_max",
            "The ceiling of clients taken from this server's clients (0: none).",
            bounds.max_clients as f64,
        )?;
        counter(
            e,
            "clients_expired",
            "Clients forgotten because they were not heard from for client_ttl_secs.",
            sources.replica.clients_expired(),
        )?;
        let refused = |source: &str, reason: &str, value: u64| {
            (
                vec![("source", source.to_owned()), ("reason", reason.to_owned())],
                value,
            )
        };
        counters(
            e,
            "reports_refused",
            "Reports not stored for a bound: a new client past the ceiling, or received too long ago.",
            [
                refused("client", "full", s.iamat_refused.get()),
                refused("neighbour", "full", s.updates_refused.get()),
                refused("neighbour", "expired", s.updates_expired.get()),
            ],
        )?;
        let head = store.head();
        gauge(
            e,
            "sequence_head",
            "The highest sequence number this server has given a report.",
            head as f64,
        )?;

        // Links.
        let names = sources.replica.neighbours();
        let neighbours: Vec<_> = names
            .iter()
            .enumerate()
            .filter_map(|(index, name)| Some((name.clone(), s.neighbour(index)?)))
            .collect();
        let per = |value: &dyn Fn(&crate::stats::NeighbourStats) -> u64| {
            neighbours
                .iter()
                .map(|(name, n)| (label("neighbour", name.clone()), value(n)))
                .collect::<Vec<_>>()
        };
        let mut up = Vec::new();
        for (name, n) in &neighbours {
            for (direction, gauge) in [("send", &n.sending_up), ("receive", &n.receiving_up)] {
                up.push((
                    vec![
                        ("neighbour", name.clone()),
                        ("direction", direction.to_owned()),
                    ],
                    gauge.get() as f64,
                ));
            }
        }
        gauges(
            e,
            "link_up",
            "1 while the link to a neighbour is up, per direction.",
            up,
        )?;
        counters(
            e,
            "link_flaps",
            "Times the sending link to a neighbour went down.",
            per(&|n| n.flaps.get()),
        )?;
        counters(
            e,
            "link_updates_sent",
            "Reports sent to a neighbour.",
            per(&|n| n.updates_sent.get()),
        )?;
        counters(
            e,
            "link_updates_received",
            "Reports received from a neighbour.",
            per(&|n| n.updates_received.get()),
        )?;
        counters(
            e,
            "link_sent_bytes",
            "Frame bytes sent to a neighbour.",
            per(&|n| n.bytes_sent.get()),
        )?;
        counters(
            e,
            "link_received_bytes",
            "Frame bytes received from a neighbour.",
            per(&|n| n.bytes_received.get()),
        )?;
        gauges(
            e,
            "link_backlog_reports",
            "Reports numbered here that the link to a neighbour has yet to send (an upper bound).",
            per(&|n| n.backlog(head))
                .into_iter()
                .map(|(l, v)| (l, v as f64)),
        )?;
        let now = unix_millis();
        gauges(
            e,
            "link_lag_seconds",
            "How long the link to a neighbour has been behind; 0 when caught up.",
            neighbours
                .iter()
                .map(|(name, n)| (label("neighbour", name.clone()), n.lag_seconds(head, now))),
        )?;
        gauges(
            e,
            "link_last_heard_timestamp_seconds",
            "When a frame last came from a neighbour (Unix time; 0 never).",
            neighbours.iter().map(|(name, n)| {
                (
                    label("neighbour", name.clone()),
                    n.last_heard.get() as f64 / 1000.0,
                )
            }),
        )?;
        gauge(
            e,
            "links_live",
            "Links of the whole herd that both their ends claim, as this server knows.",
            sources.links.live_links().len() as f64,
        )?;
        counter(
            e,
            "frames_sent",
            "Frames sent to neighbours.",
            s.frames_sent.get(),
        )?;
        counter(
            e,
            "frames_received",
            "Frames received from neighbours.",
            s.frames_received.get(),
        )?;
        counter(
            e,
            "watermarks_sent",
            "Watermark (W) lines sent to neighbours.",
            s.watermarks_sent.get(),
        )?;

        // Storage.
        if let Some(storage) = sources.replica.storage_stats() {
            counter(
                e,
                "storage_log_written_bytes",
                "Bytes written to the store log.",
                storage.bytes_written.get(),
            )?;
            counter(
                e,
                "storage_records",
                "Records appended to the store log.",
                storage.records.get(),
            )?;
            counter(
                e,
                "storage_fsyncs",
                "fsyncs of the store log.",
                storage.fsyncs.get(),
            )?;
            histogram(
                e,
                "storage_fsync_duration_seconds",
                "How long fsyncs of the store log took.",
                storage.fsync_latency.snapshot(),
            )?;
            counter(
                e,
                "storage_compactions",
                "Times the store log was rewritten into a snapshot.",
                storage.compactions.get(),
            )?;
            gauge(
                e,
                "storage_replayed_records",
                "Report records read back from the store log at start.",
                storage.replayed_records.get() as f64,
            )?;
        }

        // Places.
        let (queries, answer_hits) = sources.answers.counts();
        counter(e, "places_queries", "WHATSAT places queries.", queries)?;
        let provider = sources.answers.provider_stats();
        let mut hits = vec![(label("cache", "answers"), answer_hits)];
        if let Some(provider) = provider {
            hits.push((label("cache", "provider"), provider.cache_hits.get()));
        }
        counters(
            e,
            "places_cache_hits",
            "Places queries answered from a cache: rendered answers, or the remote provider's.",
            hits,
        )?;
        if let Some(provider) = provider {
            counter(
                e,
                "places_coalesced",
                "Places queries that shared an identical query's call.",
                provider.coalesced.get(),
            )?;
            counter(
                e,
                "places_upstream_calls",
                "Requests sent to the places API, retries included.",
                provider.upstream_calls.get(),
            )?;
            counters(
                e,
                "places_upstream_failures",
                "Requests to the places API that failed, by the status answered.",
                provider
                    .failures_by_status()
                    .into_iter()
                    .map(|(status, count)| (label("status", status), count)),
            )?;
            counter(
                e,
                "places_failed_answers",
                "WHATSAT answered with an error status.",
                provider.failed_answers.get(),
            )?;
            gauge(
                e,
                "places_breaker_open",
                "1 while the circuit breaker keeps calls from the places API.",
                provider.breaker_open.get() as f64,
            )?;
            counter(
                e,
                "places_breaker_opened",
                "Times the circuit breaker opened.",
                provider.breaker_opened.get(),
            )?;
            counter(
                e,
                "places_breaker_rejections",
                "Queries answered at once by the open breaker.",
                provider.breaker_rejections.get(),
            )?;
        }

        // The core database.
        counter(
            e,
            "history_reports_archived",
            "Reports written to the core database ([history]).",
            s.reports_archived.get(),
        )?;
        counter(
            e,
            "history_archive_failures",
            "Rounds of the archiver that failed.",
            s.archive_failures.get(),
        )?;

        // The message log (one per process).
        counter(
            e,
            "message_log_written_bytes",
            "Bytes written to the message log.",
            MESSAGE_LOG.bytes_written.get(),
        )?;
        counter(
            e,
            "message_log_writes",
            "Writes of the message log.",
            MESSAGE_LOG.writes.get(),
        )?;
        histogram(
            e,
            "message_log_write_duration_seconds",
            "How long writes of the message log took.",
            MESSAGE_LOG.write_latency.snapshot(),
        )?;
        Ok(())
    }
}

/// The process's own metrics, under their usual `process_` names.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let Some(process) = process::read() else {
            return Ok(());
        };
        let e = &mut e;
        family(
            e,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            MetricType::Counter,
            [(Labels::new(), process.cpu_seconds)],
            |m, v| m.encode_counter::<NoLabelSet, f64, u64>(v, None),
        )?;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size.",
            process.resident_bytes as f64,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size.",
            process.virtual_bytes as f64,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors.",
            process.open_fds as f64,
        )?;
        if let Some(max) = process.max_fds {
            gauge(
                e,
                "process_max_fds",
                "The limit on open file descriptors.",
                max as f64,
            )?;
        }
        gauge(
            e,
            "process_threads",
            "Threads of the process.",
            process.threads as f64,
        )?;
        gauge(
            e,
            "process_start_time_seconds",
            "When the process started (Unix time).",
            process.start_time_seconds,
        )?;
        Ok(())
    }
}

/// Checks that `text` reads as Prometheus text exposition: every line a
/// `# HELP`/`# TYPE` comment or a sample `name{labels} value`, every sample
/// of a family whose TYPE came first. Returns the samples by name (with
/// labels), for tests.
pub fn parse_text(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    let mut typed: Vec<(String, String)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !matches!(
                        kind,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "untyped"
                            | "unknown"
                            | "info"
                    ) {
                        return Err(fail("unknown type"));
                    }
                    if !valid_name(name) {
                        return Err(fail("bad metric name"));
                    }
                    typed.push((name.to_owned(), kind.to_owned()));
                }
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                (Some("EOF"), None, None) => {}
                _ => return Err(fail("malformed comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| fail("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| fail("bad value"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        if !valid_name(name) {
            return Err(fail("bad metric name"));
        }
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            check_labels(labels).map_err(|why| fail(&why))?;
        }
        let family = typed
            .iter()
            .rev()
            .find(|(typed_name, kind)| {
                name == typed_name
                    || ["_total", "_bucket", "_sum", "_count", "_created"]
                        .iter()
                        .any(|suffix| {
                            name.strip_suffix(suffix) == Some(typed_name.as_str())
                                && kind != "gauge"
                        })
            })
            .ok_or_else(|| fail("a sample of no TYPE"))?;
        if family.1 == "counter" && value < 0.0 {
            return Err(fail("a negative counter"));
        }
        samples.push((series.to_owned(), value));
    }
    Ok(samples)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `{key="value",...}` with escaped values.
fn check_labels(labels: &str) -> Result<(), String> {
    let inner = labels
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut rest = inner;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
        if !valid_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("an unclosed label value")?;
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_takes_exposition_text_and_refuses_nonsense() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"a\\\"b\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# EOF\n";
        let samples = parse_text(good).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(
            samples[0],
            ("a_total{x=\"1\",y=\"a\\\"b\"}".to_owned(), 3.0)
        );
        for bad in [
            "a 1\n",
            "# TYPE a counter\na -1\n",
            "# TYPE a gauge\na{x=1} 1\n",
            "# TYPE a gauge\na x\n",
            "# TYPE 1a gauge\n",
            "# TYPE a thing\n",
        ] {
            assert!(parse_text(bad).is_err(), "{bad:?}");
        }
    }
}
