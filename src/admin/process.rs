//! The process's own figures, read from Linux's `/proc/self` at each
//! scrape: CPU time, memory, open files, threads, start time.

/// What `/proc/self` says about this process now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub threads: u64,
    pub start_time_seconds: f64,
}

/// Reads `/proc/self`; `None` where there is none (not Linux).
pub fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| parse_boot_time(&text));
    let ticks = ticks_per_second();
    let page = page_size();
    let mut process = parse_stat(&stat, ticks, page, boot_time?)?;
    process.open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    process.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    Some(process)
}

/// The fields of `/proc/self/stat` that matter, with the clock's ticks per
/// second, the page size and the boot time (Unix seconds).
fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: f64) -> Option<Process> {
    // The command name, in parentheses, may hold spaces: fields count from
    // after its closing one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field numbers of proc(5), less the 3 before this slice.
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Process {
        cpu_seconds: (utime + stime) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: boot_time + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page),
        open_fds: 0,
        max_fds: None,
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // pid (comm) state ppid ... as proc(5) numbers them; the name holds
        // a space and a parenthesis.
        let mut fields: Vec<String> = (4..=52).map(|n| n.to_string()).collect();
        fields[14 - 4] = "250".into(); // utime
        fields[15 - 4] = "50".into(); // stime
        fields[20 - 4] = "3".into(); // threads
        fields[22 - 4] = "1000".into(); // starttime
        fields[23 - 4] = "8192".into(); // vsize
        fields[24 - 4] = "10".into(); // rss pages
        let stat = format!("42 (herd (x) y) S {}", fields.join(" "));
        let process = parse_stat(&stat, 100.0, 4096, 1_700_000_000.0).unwrap();
        assert_eq!(process.cpu_seconds, 3.0);
        assert_eq!(process.threads, 3);
        assert_eq!(process.start_time_seconds, 1_700_000_010.0);
        assert_eq!(
            (process.virtual_bytes, process.resident_bytes),
            (8192, 40960)
        );
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_can_be_read() {
        let process = read().expect("Linux has /proc/self");
        assert!(process.resident_bytes > 0 && process.threads >= 1 && process.open_fds >= 3);
    }
}
