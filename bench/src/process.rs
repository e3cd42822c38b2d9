//! What `/proc` tells about a server process on this machine: its memory
//! and how many files (sockets included) it holds open, and this process's
//! own open-file limit.

use serde_json::{Value, json};

/// A process's resident memory, as `/proc/PID/status` shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// The highest resident set size so far (`VmHWM`), KiB.
    pub peak_kib: u64,
}

impl Memory {
    /// The memory of process `pid`, if it exists and `/proc` is readable.
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Memory {
            rss_kib: status_kib(&status, "VmRSS:")?,
            peak_kib: status_kib(&status, "VmHWM:")?,
        })
    }

    pub fn to_json(self) -> Value {
        json!({
            "rss_mib": mib(self.rss_kib),
            "peak_rss_mib": mib(self.peak_kib),
        })
    }

    /// `RSS 123.4 MiB (peak 130.0 MiB)`.
    pub fn row(self) -> String {
        format!(
            "RSS {:.1} MiB (peak {:.1} MiB)",
            mib(self.rss_kib),
            mib(self.peak_kib)
        )
    }
}

/// KiB to MiB, to a tenth.
fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// The value of a `Name:   1234 kB` line.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many files process `pid` holds open (its sockets included).
pub fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// This process's soft and hard open-file limits, as `/proc/self/limits`
/// shows them (`unlimited` or a number).
pub fn open_file_limits() -> Option<(String, String)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.to_string()))
}

/// The soft open-file limit as a number (`usize::MAX` when unlimited).
pub fn soft_open_file_limit() -> Option<usize> {
    let (soft, _) = open_file_limits()?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_lines() {
        let status = "Name:\therd\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(102_400));
        assert_eq!(status_kib(status, "VmHWM:"), Some(204_800));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        assert_eq!(mib(102_400), 100.0);
    }

    #[test]
    fn reads_this_process() {
        let memory = Memory::of(std::process::id()).expect("/proc/self is readable");
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
        assert!(open_files(std::process::id()).is_some_and(|files| files >= 3));
        assert!(soft_open_file_limit().is_some_and(|limit| limit > 0));
    }
}
