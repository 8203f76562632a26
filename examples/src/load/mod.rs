//! The benchmark's load tool and fast echo backend (issue 8): Tether against nginx and HAProxy.
//!
//! `bench/run.sh` starts [`server`] (the `fast_echo` binary) as the backend behind every proxy
//! and drives each proxy with the `load` binary, one scenario at a time:
//!
//! | scenario | what it does | figures |
//! |---|---|---|
//! | [`scenarios::echo`] | N connections, a window of messages in flight on each | messages/s, proxy CPU µs per message |
//! | [`scenarios::latency`] | a fixed total message rate spread over N connections | RTT p50/p99/p99.9 |
//! | [`scenarios::handshake`] | W workers: connect, upgrade, one echo, close | handshakes/s, proxy CPU µs per handshake |
//! | [`scenarios::idle`] | N idle sessions, then one echo on each | proxy RSS growth per session, sessions alive |
//! | [`scenarios::idle_http`] | N plain connections that send nothing | proxy RSS growth per connection before its first request |
//! | [`scenarios::drain`] | N idle sessions, then SIGTERM to the proxy | close frames and codes, time to the last close and to exit, RSS growth per session |
//! | [`scenarios::http`] | `wrk` with keep-alive | requests/s, proxy CPU µs per request |
//!
//! Each run appends one JSON [`Record`] line to a file; [`report`] turns the lines of a whole
//! benchmark into medians, ratios against the targets, a markdown table and a JSON summary.
//!
//! The proxy's cost comes from `/proc` ([`procstat`]): CPU time is the fair figure when the load
//! generator shares the machine, because it does not depend on how hard the generator can push.
//!
//! Every target is checked to be in `127.0.0.0/8`, every scenario ends by itself (a duration or a
//! count, and a hard timeout), and nothing waits on a fixed delay for something to happen: the
//! only timers are the measurement windows and the fixed-rate sender.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod client;
pub mod frame;
pub mod http;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod server;
pub mod stats;

/// The error type of the load tool: every failure ends the run with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One scenario run against one target: a line of the raw results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Scenario identifier, e.g. `echo_64B`, `latency`, `handshake`, `idle`, `drain`, `http`, or
    /// the `--id` given (`workers2_echo_64B`).
    pub scenario: String,
    /// What was measured: `direct`, `nginx`, `haproxy`, `tether`, …
    pub label: String,
    /// The round (1-based) the run belongs to.
    pub round: u32,
    /// The processes whose cost was measured.
    pub pids: Vec<u32>,
    /// The scenario's parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The figures, by name (see each scenario for its names and units).
    pub metrics: BTreeMap<String, f64>,
}

impl Record {
    /// Appends this record as one JSON line to `path`.
    pub fn append_to(&self, path: &Path) -> io::Result<()> {
        let mut line = serde_json::to_string(self).map_err(io::Error::other)?;
        line.push('\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(line.as_bytes())
    }
}

/// Parses a duration written as `500ms`, `3s`, `2m` or a number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, BoxError> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {text:?} (use 500ms, 3s, 2m)"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("bad duration {text:?}").into());
    }
    Ok(std::time::Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn record_lines_round_trip() {
        let record = Record {
            scenario: "echo_64B".into(),
            label: "tether".into(),
            round: 2,
            pids: vec![42],
            params: BTreeMap::from([("connections".into(), 64.into())]),
            metrics: BTreeMap::from([("msgs_per_s".into(), 1.5e5)]),
        };
        let dir = std::env::temp_dir().join(format!("tether-load-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raw.jsonl");
        record.append_to(&path).unwrap();
        record.append_to(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let back: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, vec![record.clone(), record]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
