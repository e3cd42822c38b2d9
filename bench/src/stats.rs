//! Latency histograms and their summaries.
//!
//! Connections record into a few shared shards through a small local batch,
//! so that a thousand connections do not each own a large histogram and the
//! lock is taken once per batch, not once per reply.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Nanoseconds: 1 ns to one hour at three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("the bounds are constants that hdrhistogram accepts")
}

/// A latency histogram shared by many connections.
pub struct Shards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Shards {
    pub fn new(count: usize) -> Self {
        Shards {
            shards: (0..count.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// All shards merged into one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let shard = shard.lock().expect("no thread panics while recording");
            all.add(&*shard)
                .expect("histograms with the same bounds always merge");
        }
        all
    }
}

/// A connection's batch of latencies, flushed into one shard of `Shards`.
pub struct Batch {
    shard: usize,
    values: Vec<u64>,
}

impl Batch {
    const SIZE: usize = 256;

    pub fn new(connection: usize, shards: &Shards) -> Self {
        Batch {
            shard: connection % shards.shards.len(),
            values: Vec::with_capacity(Self::SIZE),
        }
    }

    pub fn record(&mut self, latency: Duration, shards: &Shards) {
        self.values
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1));
        if self.values.len() == Self::SIZE {
            self.flush(shards);
        }
    }

    pub fn flush(&mut self, shards: &Shards) {
        if self.values.is_empty() {
            return;
        }
        let mut shard = shards.shards[self.shard]
            .lock()
            .expect("no thread panics while recording");
        for &value in &self.values {
            shard.saturating_record(value);
        }
        self.values.clear();
    }
}

/// Percentiles in microseconds, the shape used in tables and JSON.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Summary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: histogram.len(),
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p99_9: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "p50": round(self.p50),
            "p90": round(self.p90),
            "p99": round(self.p99),
            "p99_9": round(self.p99_9),
            "max": round(self.max),
            "mean": round(self.mean),
        })
    }

    /// One table row: `p50 ... p90 ... p99 ... p99.9 ... max ... mean ...`.
    pub fn row(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  (n={})",
            show_us(self.p50),
            show_us(self.p90),
            show_us(self.p99),
            show_us(self.p99_9),
            show_us(self.max),
            show_us(self.mean),
            self.count
        )
    }
}

/// Rounds to a tenth of a microsecond, enough for JSON output.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Microseconds shown with a unit that keeps three or so digits.
pub fn show_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_reach_the_merged_histogram() {
        let shards = Shards::new(3);
        let mut batch = Batch::new(7, &shards);
        for micros in 1..=1000 {
            batch.record(Duration::from_micros(micros), &shards);
        }
        batch.flush(&shards);
        let summary = Summary::of(&shards.merged());
        assert_eq!(summary.count, 1000);
        assert!((summary.p50 - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max - 1000.0).abs() < 1.0, "{summary:?}");
    }

    #[test]
    fn units_keep_a_few_digits() {
        assert_eq!(show_us(123.4), "123 µs");
        assert_eq!(show_us(1234.0), "1.23 ms");
        assert_eq!(show_us(12345.0), "12.3 ms");
        assert_eq!(show_us(2_500_000.0), "2.50 s");
    }
}
