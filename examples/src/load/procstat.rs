//! The proxy's own cost, read from `/proc`: CPU time from `/proc/<pid>/stat` (`utime` +
//! `stime`, every thread of the process, in clock ticks) and resident memory from
//! `/proc/<pid>/status` (`VmRSS`).
//!
//! A proxy may be several processes (nginx: a master and a worker), so every reading is the
//! sum over a set of pids.

use std::fs;
use std::io;
use std::process::Command;
use std::sync::OnceLock;

/// The processes whose cost is measured.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pids: Vec<u32>,
}

impl Watched {
    /// Watches `pids` (none: every reading is zero, as for the direct baseline).
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// Whether no process is watched.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// The watched pids.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// CPU time (user + system) used so far by all watched processes, in microseconds.
    pub fn cpu_micros(&self) -> io::Result<u64> {
        let per_tick = 1_000_000 / clock_ticks_per_second();
        let mut ticks = 0;
        for pid in &self.pids {
            ticks += cpu_ticks(*pid)?;
        }
        Ok(ticks * per_tick)
    }

    /// Resident memory of all watched processes, in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        let mut total = 0;
        for pid in &self.pids {
            total += rss_kib(*pid)?;
        }
        Ok(total)
    }
}

impl Watched {
    /// Open file descriptors of all watched processes (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> io::Result<u64> {
        let mut total = 0;
        for pid in &self.pids {
            total += fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        }
        Ok(total)
    }
}

/// `utime + stime` of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

/// Extracts `utime + stime` (fields 14 and 15) from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may contain spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the command come field 3 (state) onwards; utime is field 14, stime field 15.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Extracts the state letter (field 3: `R`, `S`, `Z`, …) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether `pid` has exited: `/proc/<pid>` is gone, or the process is a zombie (`Z`) or dead
/// (`X`) waiting for its parent to collect it (the benchmark's proxies are the script's
/// children, not the load tool's, so they stay zombies until the script waits for them).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(parse_stat_state(&stat), Some('Z' | 'X')),
        Err(_) => true,
    }
}

/// The machine's online CPUs (`processor` lines of `/proc/cpuinfo`), whatever this process is
/// pinned to; falls back to the cores this process may run on.
pub fn machine_cores() -> usize {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .map(|text| {
            text.lines()
                .filter(|line| line.split(':').next().map(str::trim) == Some("processor"))
                .count()
        })
        .filter(|count| *count > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`, in clock ticks:
/// `(all, steal)` where `all` sums every column and `steal` is the time the hypervisor ran
/// something else while a virtual CPU wanted to run.
pub fn machine_ticks() -> io::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    parse_machine_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/stat"))
}

/// Extracts `(all, steal)` ticks from the text of `/proc/stat` (see [`machine_ticks`]).
/// `guest` and `guest_nice` are already counted in `user` and `nice`, so they are left out.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let steal = *fields.get(7)?;
    Some((fields.iter().sum(), steal))
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS in /proc/{pid}/status"),
        )
    })
}

/// Extracts `VmRSS` (in kB, which the kernel means as KiB) from `/proc/<pid>/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The kernel's clock tick rate for `/proc` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "1234 (we ird) (name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_the_state_and_sees_exits() {
        let stat = "1234 (we ird) (name) Z 1 1234 1234 0 -1 4194560 100 0 0 0 250 75";
        assert_eq!(parse_stat_state(stat), Some('Z'));
        assert_eq!(parse_stat_state("garbage"), None);
        assert!(!process_gone(std::process::id()));
        // Beyond the kernel's pid_max (at most 2^22).
        assert!(process_gone(u32::MAX));
        assert!(machine_cores() >= 1);
    }

    #[test]
    fn parses_machine_ticks() {
        let stat = "cpu  100 5 50 800 10 1 4 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((1000, 30)));
        assert_eq!(parse_machine_ticks("cpu0 1 2\n"), None);
        assert!(machine_ticks().unwrap().0 > 0);
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\ttether\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = Watched::new(vec![std::process::id()]);
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.open_fds().unwrap() > 0);
        me.cpu_micros().unwrap();
    }
}
