//! What one client line costs before any IO: framing a pipelined buffer
//! into lines, parsing a line into a request, and writing the AT line.
//!
//! Run with `cargo bench --bench protocol`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd::protocol::framing::{Frame, LineFramer};
use herd::protocol::{Request, format_at, invalid_reply, parse_at_line, parse_request};

/// The SPEC's reference IAMAT.
const IAMAT: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503";
/// The AT line Hill answers it with.
const AT: &[u8] =
    b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503";
/// A receipt time 0.263873386 s after the client time of `IAMAT`.
const RECEIVED_NANOS: i128 = 1_621_464_828_223_371_889;

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_request");
    let lines: [(&str, &[u8]); 7] = [
        ("IAMAT", IAMAT),
        ("IAMAT, short fields", b"IAMAT k +34-118 1621464827"),
        ("WHATSAT", b"WHATSAT kiwi.cs.ucla.edu 10 5"),
        (
            "WHATSAT, fractional radius",
            b"WHATSAT kiwi.cs.ucla.edu 0.001 1",
        ),
        ("invalid: unknown verb", b"HELLO kiwi.cs.ucla.edu 10 5"),
        (
            "invalid: latitude out of range",
            b"IAMAT kiwi.cs.ucla.edu +90.0000000001-118.445127 1621464827.959498503",
        ),
        (
            "invalid: five fields",
            b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503 extra",
        ),
    ];
    for (name, line) in lines {
        let valid = !name.starts_with("invalid");
        assert_eq!(parse_request(line).is_ok(), valid, "{name}");
        group.bench_function(name, |b| b.iter(|| parse_request(black_box(line))));
    }
    group.finish();
}

fn format(c: &mut Criterion) {
    let Ok(Request::Iamat(iamat)) = parse_request(IAMAT) else {
        panic!("the reference IAMAT parses");
    };
    assert_eq!(format_at("Hill", RECEIVED_NANOS, &iamat), AT);
    c.bench_function("format_at", |b| {
        b.iter(|| {
            format_at(
                black_box("Hill"),
                black_box(RECEIVED_NANOS),
                black_box(&iamat),
            )
        })
    });
    c.bench_function("invalid_reply", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            invalid_reply(black_box(b"HELLO kiwi.cs.ucla.edu 10 5"), &mut out);
        })
    });
    // What a server does with each AT line a neighbour floods to it.
    assert!(parse_at_line(AT).is_some());
    c.bench_function("parse_at_line", |b| b.iter(|| parse_at_line(black_box(AT))));
}

/// A pipelining client's burst: `count` IAMAT lines back to back, some with
/// `\r\n` endings, as one read would bring them.
fn pipelined(count: usize) -> Vec<u8> {
    let mut buffer = Vec::new();
    for i in 0..count {
        buffer.extend_from_slice(
            format!("IAMAT client-{i}.example.org +34.068930-118.445127 1621464827.{i:09}")
                .as_bytes(),
        );
        buffer.extend_from_slice(if i % 4 == 0 { b"\r\n" } else { b"\n" });
    }
    buffer
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("LineFramer");
    for count in [1, 64, 1000] {
        let bytes = pipelined(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(
            format!("{count} pipelined IAMAT lines ({} bytes)", bytes.len()),
            |b| {
                // One framer for the whole run, as a connection keeps one.
                let mut framer = LineFramer::new(1 << 20);
                b.iter(|| {
                    framer.buffer().extend_from_slice(black_box(&bytes));
                    let mut lines = 0;
                    while let Some(frame) = framer.next_frame() {
                        assert!(matches!(frame, Frame::Line(_)));
                        lines += 1;
                    }
                    assert_eq!(lines, count);
                })
            },
        );
        // Framing and parsing together: the server's per-line work before
        // it touches the store.
        group.bench_function(
            format!("{count} pipelined IAMAT lines, framed and parsed"),
            |b| {
                let mut framer = LineFramer::new(1 << 20);
                b.iter(|| {
                    framer.buffer().extend_from_slice(black_box(&bytes));
                    while let Some(Frame::Line(line)) = framer.next_frame() {
                        assert!(parse_request(&line).is_ok());
                    }
                })
            },
        );
    }
    // One burst arriving in 1 KiB reads, so lines straddle reads and the
    // framer resumes its scan.
    let bytes = pipelined(1000);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 pipelined IAMAT lines in 1 KiB reads", |b| {
        let mut framer = LineFramer::new(1 << 20);
        b.iter(|| {
            let mut lines = 0;
            for chunk in bytes.chunks(1024) {
                framer.buffer().extend_from_slice(black_box(chunk));
                while framer.next_frame().is_some() {
                    lines += 1;
                }
            }
            assert_eq!(lines, 1000);
        })
    });
    group.finish();
}

criterion_group!(benches, parse, format, framing);
criterion_main!(benches);
