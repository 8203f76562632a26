//! The standard `process_*` metrics of the Prometheus client libraries, read from `/proc/self`
//! at scrape time (Linux; elsewhere the families are left out): resident and virtual memory,
//! open and maximum file descriptors, CPU time and start time. Nothing is kept between scrapes.

use std::fmt::Write as _;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`): 100 on every Linux architecture Tether
/// builds for (it is part of the kernel's user ABI, independent of the kernel's own `HZ`).
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says of this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// `VmRSS`, bytes.
    pub resident_memory_bytes: u64,
    /// `VmSize`, bytes.
    pub virtual_memory_bytes: u64,
    /// Entries in `/proc/self/fd`.
    pub open_fds: u64,
    /// The soft `Max open files` limit (`None` when unlimited).
    pub max_fds: Option<u64>,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no procfs.
    pub fn read() -> Option<ProcessStats> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut stats = ProcessStats::parse(&status, &stat, &limits, &boot)?;
        stats.open_fds = open_fds;
        Some(stats)
    }

    /// The facts of `/proc/self/status`, `/proc/self/stat`, `/proc/self/limits` and
    /// `/proc/stat` (for the boot time); `open_fds` is left at 0.
    pub fn parse(status: &str, stat: &str, limits: &str, boot: &str) -> Option<ProcessStats> {
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            let n: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
            Some(n * 1024)
        };
        // The command name (field 2) is in parentheses and may hold spaces: count fields from
        // after its closing parenthesis, where field 3 (state) starts.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime, starttime) = (field(14)?, field(15)?, field(22)?);
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l["Max open files".len()..].split_whitespace().next())
            .and_then(|soft| soft.parse().ok());
        Some(ProcessStats {
            resident_memory_bytes: kib("VmRSS:").unwrap_or(0),
            virtual_memory_bytes: kib("VmSize:").unwrap_or(0),
            open_fds: 0,
            max_fds,
            cpu_seconds: (utime + stime) / USER_HZ,
            start_time_seconds: btime + starttime / USER_HZ,
        })
    }

    /// Appends the `process_*` families in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_memory_bytes.to_string(),
        );
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_memory_bytes.to_string(),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.to_string(),
        );
        if let Some(max) = self.max_fds {
            family(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                max.to_string(),
            );
        }
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.to_string(),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\ttether\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
    // A command name with a space and a parenthesis, as a renamed thread might have.
    const STAT: &str = "4242 (tether (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 123456 512 18446744073709551615";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
    const BOOT: &str = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";

    #[test]
    fn parses_proc_self() {
        let s = ProcessStats::parse(STATUS, STAT, LIMITS, BOOT).unwrap();
        assert_eq!(s.resident_memory_bytes, 2048 * 1024);
        assert_eq!(s.virtual_memory_bytes, 123456 * 1024);
        assert_eq!(s.max_fds, Some(1024));
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.start_time_seconds, 1700000000.0 + 123.45);
    }

    #[test]
    fn unlimited_descriptors_have_no_max_sample() {
        let limits = LIMITS.replace("1024  ", "unlimited");
        let s = ProcessStats::parse(STATUS, STAT, &limits, BOOT).unwrap();
        assert_eq!(s.max_fds, None);
        let mut out = String::new();
        s.render(&mut out);
        assert!(!out.contains("process_max_fds"), "{out}");
        assert!(
            out.contains("process_resident_memory_bytes 2097152\n"),
            "{out}"
        );
    }

    #[test]
    fn reads_this_process() {
        if let Some(s) = ProcessStats::read() {
            assert!(s.resident_memory_bytes > 0);
            assert!(s.open_fds > 0);
            assert!(s.start_time_seconds > 1.0e9);
        }
    }
}
