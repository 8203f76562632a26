//! Turns the raw records of one benchmark run into medians, the ratios the targets are stated
//! in, a markdown table and a JSON summary.
//!
//! Every figure is the median over rounds of the per-round values. An added latency is computed
//! per round (the proxy's percentile minus the direct percentile of the same round) before the
//! median is taken. A ratio is Tether's median over the better of nginx's and HAProxy's medians
//! (the lower for costs and latencies, the higher for rates).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::stats::median;
use super::Record;

/// The label of the direct (no proxy) baseline.
pub const DIRECT: &str = "direct";
/// The label of the proxy under test.
pub const TETHER: &str = "tether";
/// The labels of the proxies Tether is compared with.
pub const RIVALS: [&str; 2] = ["nginx", "haproxy"];

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Lower is better (costs, latencies, memory).
    Lower,
    /// Higher is better (rates).
    Higher,
    /// Context only; no ratio is computed.
    Neither,
}

/// A target on the ratio Tether ÷ the better rival.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The bound on the ratio.
    pub ratio: f64,
    /// Extra words shown with the target (e.g. an absolute aim).
    pub note: &'static str,
}

/// Where the bound of a [`Limit`] comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A fixed number.
    Value(f64),
    /// Tether's median of another metric of the same scenario (e.g. `grace_seconds`).
    Metric(&'static str),
}

/// A goal on Tether's own figure rather than on a ratio to the rivals: the rows of the scale
/// check and of the `workers = 2` step, which only Tether runs. The direction follows the row's
/// [`Better`]: at most the bound for [`Better::Lower`], at least for [`Better::Higher`].
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The bound.
    pub bound: Bound,
    /// Extra words shown with the bound (what it is, or why the figure may miss it).
    pub note: String,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// What the row shows.
    pub title: String,
    /// The scenario it comes from.
    pub scenario: String,
    /// The metric within the scenario's records.
    pub metric: &'static str,
    /// Which way is better.
    pub better: Better,
    /// Whether the row is the proxy's figure minus the direct figure of the same round.
    pub minus_direct: bool,
    /// Multiply the metric by this for display (e.g. 100 for a percentage).
    pub scale: f64,
    /// Decimals to show.
    pub decimals: usize,
    /// The target, if the issue sets one.
    pub target: Option<Target>,
    /// Whether the row is the metric divided by the same metric of another scenario, same label
    /// and round (the `workers = 2` ÷ `workers = 1` row).
    pub over: Option<String>,
    /// A goal on Tether's figure itself, for rows without rivals.
    pub limit: Option<Limit>,
}

impl Measure {
    fn new(
        title: impl Into<String>,
        scenario: impl Into<String>,
        metric: &'static str,
        better: Better,
        decimals: usize,
    ) -> Self {
        Self {
            title: title.into(),
            scenario: scenario.into(),
            metric,
            better,
            minus_direct: false,
            scale: 1.0,
            decimals,
            target: None,
            over: None,
            limit: None,
        }
    }

    fn over(mut self, scenario: impl Into<String>) -> Self {
        self.over = Some(scenario.into());
        self
    }

    fn limit(mut self, bound: Bound, note: impl Into<String>) -> Self {
        self.limit = Some(Limit {
            bound,
            note: note.into(),
        });
        self
    }

    fn minus_direct(mut self) -> Self {
        self.minus_direct = true;
        self
    }

    fn scaled(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    fn target(mut self, ratio: f64, note: &'static str) -> Self {
        self.target = Some(Target { ratio, note });
        self
    }
}

/// The scenario id of the idle HTTP run (plain connections before their first request).
pub const IDLE_HTTP: &str = "idle_http";

/// The scenario id of the h2c request runs of `bench/h2.sh`.
pub const H2_REQUESTS: &str = "h2_requests";

/// The prefix of the system-call counting runs: `syscalls_handshake`, `syscalls_echo_64B`.
pub const SYSCALLS: &str = "syscalls_";

/// The label of the "before" Tether in an A/B run (`bench/ab.sh`); the "after" one is
/// [`TETHER`].
pub const BASE: &str = "base";

/// The median of the metric `opened` over every run of `scenario`, rounded, for a title.
fn held(records: &[Record], scenario: &str) -> Option<u64> {
    let opened: Vec<f64> = records
        .iter()
        .filter(|r| r.scenario == scenario)
        .filter_map(|r| r.metrics.get("opened").copied())
        .collect();
    median(&opened).map(|v| v.round() as u64)
}

/// "9,900 held" or nothing, for a title.
fn held_note(records: &[Record], scenario: &str) -> String {
    held(records, scenario).map_or_else(String::new, |n| format!(" ({} held)", number(n as f64, 0)))
}

/// The rows of issue 17's table, for the scenarios present in `records`: what the issue
/// measures, with its targets (Tether ÷ the better of nginx and HAProxy, and one absolute bound).
pub fn issue_measures(records: &[Record]) -> Vec<Measure> {
    use Better::Lower;
    let mut rows = vec![
        Measure::new(
            "CPU µs per WebSocket handshake (connect, upgrade, echo, close)",
            "handshake",
            "cpu_us_per_handshake",
            Lower,
            1,
        )
        .target(0.8, ""),
        Measure::new(
            "CPU µs per echoed 64 B message",
            "echo_64B",
            "cpu_us_per_msg",
            Lower,
            2,
        )
        .target(0.8, ""),
        Measure::new(
            "CPU µs per echoed 4 KiB message",
            "echo_4096B",
            "cpu_us_per_msg",
            Lower,
            2,
        )
        .target(0.5, ""),
        Measure::new(
            format!(
                "KiB per idle WebSocket session{}",
                held_note(records, "idle")
            ),
            "idle",
            "kib_per_session",
            Lower,
            2,
        )
        .target(0.5, "")
        .limit(Bound::Value(SCALE_KIB_PER_SESSION), "KiB"),
        Measure::new(
            format!(
                "KiB per idle HTTP connection before its first request{}",
                held_note(records, IDLE_HTTP)
            ),
            IDLE_HTTP,
            "kib_per_conn",
            Lower,
            2,
        )
        .target(0.5, ""),
        Measure::new(
            "HTTP/1.1 keep-alive: CPU µs per request (wrk)",
            "http",
            "cpu_us_per_req",
            Lower,
            2,
        )
        .target(0.8, ""),
        Measure::new(
            "HTTP/2 h2c GET: CPU µs per request (h2load, bench/h2.sh)",
            H2_REQUESTS,
            "cpu_us_per_req",
            Lower,
            2,
        ),
    ];
    rows.retain(|m| records.iter().any(|r| r.scenario == m.scenario));
    rows
}

/// The other rows (rates, latency, the state of idle runs, the Tether-only steps) for the
/// scenarios present in `records`, in a fixed order. Rows of [`issue_measures`] are not
/// repeated; issue 8's targets stay on the rows issue 17 does not restate.
pub fn measures(records: &[Record]) -> Vec<Measure> {
    use Better::{Higher, Lower, Neither};
    let mut echo_sizes: Vec<(u64, String)> = records
        .iter()
        .filter_map(|r| {
            let size = r
                .scenario
                .strip_prefix("echo_")?
                .strip_suffix('B')?
                .parse()
                .ok()?;
            Some((size, r.scenario.clone()))
        })
        .collect();
    echo_sizes.sort();
    echo_sizes.dedup();

    let mut rows = Vec::new();
    for (size, scenario) in echo_sizes {
        let name = size_name(size);
        rows.push(Measure::new(
            format!("echo {name}: messages/s"),
            &scenario,
            "msgs_per_s",
            Higher,
            0,
        ));
        if size != 64 && size != 4096 {
            rows.push(Measure::new(
                format!("echo {name}: proxy CPU µs/message"),
                &scenario,
                "cpu_us_per_msg",
                Lower,
                2,
            ));
        }
        rows.push(
            Measure::new(
                format!("echo {name}: proxy core busy %"),
                &scenario,
                "proxy_cpu_share",
                Neither,
                0,
            )
            .scaled(100.0),
        );
        rows.push(Measure::new(
            format!("echo {name}: echoes per read of the load tool"),
            &scenario,
            "client_msgs_per_read",
            Neither,
            1,
        ));
        rows.push(
            Measure::new(
                format!("echo {name}: machine CPU stolen by the hypervisor %"),
                &scenario,
                "steal_share",
                Neither,
                1,
            )
            .scaled(100.0),
        );
    }
    rows.push(Measure::new(
        "latency: RTT p50 µs",
        "latency",
        "p50_us",
        Lower,
        1,
    ));
    rows.push(Measure::new(
        "latency: RTT p99 µs",
        "latency",
        "p99_us",
        Lower,
        1,
    ));
    rows.push(Measure::new("latency: added p50 µs", "latency", "p50_us", Lower, 1).minus_direct());
    rows.push(
        Measure::new("latency: added p99 µs", "latency", "p99_us", Lower, 1)
            .minus_direct()
            .target(1.0, "issue 8"),
    );
    rows.push(
        Measure::new("latency: added p99.9 µs", "latency", "p999_us", Lower, 1).minus_direct(),
    );
    rows.push(
        Measure::new("handshakes/s", "handshake", "handshakes_per_s", Higher, 0)
            .target(1.2, "issue 8"),
    );
    rows.push(Measure::new(
        "idle: proxy KiB/session after one echo",
        "idle",
        "kib_per_session_after_echo",
        Lower,
        2,
    ));
    rows.push(Measure::new(
        "idle: sessions alive",
        "idle",
        "alive",
        Neither,
        0,
    ));
    rows.push(Measure::new(
        "idle HTTP: connections still open after the reading",
        IDLE_HTTP,
        "alive",
        Neither,
        0,
    ));
    rows.push(
        Measure::new("HTTP/1.1: requests/s", "http", "reqs_per_s", Higher, 0)
            .target(1.0, "issue 8"),
    );
    rows.push(Measure::new(
        "HTTP/2 h2c GET: requests/s",
        H2_REQUESTS,
        "reqs_per_s",
        Higher,
        0,
    ));
    rows.push(Measure::new(
        "WebSocket echo 64 B over HTTP/1.1 (Python client): CPU µs/message",
        "ws_echo_http1",
        "cpu_us_per_msg",
        Lower,
        2,
    ));
    rows.push(Measure::new(
        "WebSocket echo 64 B over HTTP/2, RFC 8441 (Python client): CPU µs/message",
        "ws_echo_h2",
        "cpu_us_per_msg",
        Lower,
        2,
    ));
    rows.extend(drain_measures(records));
    rows.extend(workers_measures(records));
    rows.retain(|m| records.iter().any(|r| r.scenario == m.scenario));
    rows
}

/// The scenario id of the drain run (the scale check).
pub const DRAIN: &str = "drain";

/// The issue's bound on Tether's RSS growth per idle session in the scale check, in KiB.
pub const SCALE_KIB_PER_SESSION: f64 = 2.3;

/// The rows of the scale check: sessions held, memory per session, and the drain at shutdown.
fn drain_measures(records: &[Record]) -> Vec<Measure> {
    use Better::{Higher, Lower, Neither};
    let any = |metric: &str| {
        records
            .iter()
            .any(|r| r.scenario == DRAIN && r.metrics.get(metric).is_some_and(|v| *v > 0.0))
    };
    let mut rows = vec![
        Measure::new("scale: idle sessions held", DRAIN, "opened", Neither, 0),
        Measure::new(
            "scale: proxy KiB/session while idle",
            DRAIN,
            "kib_per_session",
            Lower,
            2,
        )
        .limit(Bound::Value(SCALE_KIB_PER_SESSION), "KiB, issue 8"),
        Measure::new(
            "drain: sessions closed with a close frame",
            DRAIN,
            "drained",
            Higher,
            0,
        )
        .limit(Bound::Metric("opened"), "every session held"),
        Measure::new(
            "drain: close frames with code 1001",
            DRAIN,
            "close_1001",
            Neither,
            0,
        ),
    ];
    if any("close_1012") {
        rows.push(Measure::new(
            "drain: close frames with code 1012",
            DRAIN,
            "close_1012",
            Neither,
            0,
        ));
    }
    if any("close_other") {
        rows.push(Measure::new(
            "drain: close frames with another code",
            DRAIN,
            "close_other",
            Neither,
            0,
        ));
    }
    rows.push(
        Measure::new(
            "drain: sessions ended without a close frame",
            DRAIN,
            "no_close",
            Lower,
            0,
        )
        .limit(Bound::Value(0.0), ""),
    );
    rows.push(
        Measure::new(
            "drain: s from SIGTERM to the last close frame",
            DRAIN,
            "drain_seconds",
            Lower,
            2,
        )
        .limit(Bound::Metric("grace_seconds"), "s, shutdown_grace"),
    );
    rows.push(Measure::new(
        "drain: s from SIGTERM to the proxy's exit",
        DRAIN,
        "exit_seconds",
        Lower,
        2,
    ));
    rows
}

/// Reads a scenario id of the `workers = N` step, `workers{N}_echo_{size}B`: (N, size).
pub fn parse_workers_scenario(id: &str) -> Option<(u32, u64)> {
    let (workers, echo) = id.strip_prefix("workers")?.split_once("_echo_")?;
    Some((workers.parse().ok()?, echo.strip_suffix('B')?.parse().ok()?))
}

/// The scenario id of the `workers = N` step's echo run with `size`-byte messages.
pub fn workers_scenario(workers: u32, size: u64) -> String {
    format!("workers{workers}_echo_{size}B")
}

/// How a message size is shown: `64 B`, `4 KiB`.
fn size_name(size: u64) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The rows of the `workers = N` step: messages/s and proxy CPU for each worker count, and the
/// ratio of each count above one to one worker, with the goal 0.85 × N (issue 8: ≥ 1.7 for two
/// workers). The goal assumes the load generator is not the bottleneck; when the machine has
/// fewer cores than the workers plus the load tool and the backend, the note says so.
fn workers_measures(records: &[Record]) -> Vec<Measure> {
    use Better::{Higher, Neither};
    let mut runs: Vec<(u64, u32)> = records
        .iter()
        .filter_map(|r| parse_workers_scenario(&r.scenario).map(|(w, size)| (size, w)))
        .collect();
    runs.sort_unstable();
    runs.dedup();
    let mut rows = Vec::new();
    for &(size, workers) in &runs {
        let scenario = workers_scenario(workers, size);
        let name = size_name(size);
        rows.push(Measure::new(
            format!("workers = {workers}: echo {name} messages/s"),
            &scenario,
            "msgs_per_s",
            Higher,
            0,
        ));
        rows.push(
            Measure::new(
                format!("workers = {workers}: proxy CPU % (100 = one core)"),
                &scenario,
                "proxy_cpu_share",
                Neither,
                0,
            )
            .scaled(100.0),
        );
    }
    for &(size, workers) in &runs {
        if workers < 2 || !runs.contains(&(size, 1)) {
            continue;
        }
        let scenario = workers_scenario(workers, size);
        let cores = records
            .iter()
            .filter(|r| r.scenario == scenario)
            .filter_map(|r| r.params.get("cores").and_then(serde_json::Value::as_u64))
            .min();
        let note = match cores {
            Some(cores) if cores < u64::from(workers) + 2 => format!(
                "{cores} cores: the load generator and backend share them with the proxy, so \
                 the ratio is bounded by them, not by Tether"
            ),
            _ => "with a load generator that is not the bottleneck".to_owned(),
        };
        rows.push(
            Measure::new(
                format!(
                    "workers = {workers} ÷ workers = 1: echo {name} messages/s",
                    name = size_name(size)
                ),
                &scenario,
                "msgs_per_s",
                Higher,
                2,
            )
            .over(workers_scenario(1, size))
            .limit(Bound::Value(0.85 * f64::from(workers)), note),
        );
    }
    rows
}

/// The per-round values of one row for one label, by round.
fn round_values(records: &[Record], measure: &Measure, label: &str) -> BTreeMap<u32, f64> {
    let value_of = |scenario: &str, label: &str, round: u32| {
        records
            .iter()
            .find(|r| r.scenario == scenario && r.label == label && r.round == round)
            .and_then(|r| r.metrics.get(measure.metric).copied())
    };
    let value = |label: &str, round: u32| value_of(&measure.scenario, label, round);
    let mut rounds: Vec<u32> = records
        .iter()
        .filter(|r| r.scenario == measure.scenario && r.label == label)
        .map(|r| r.round)
        .collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(|round| {
            let own = value(label, round)?;
            let v = if measure.minus_direct {
                own - value(DIRECT, round)?
            } else if let Some(over) = &measure.over {
                own / value_of(over, label, round).filter(|v| *v > 0.0)?
            } else {
                own
            };
            Some((round, v * measure.scale))
        })
        .collect()
}

/// One label's figures in a row: the per-round values, their median and their range.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// The value of each round, in round order.
    pub rounds: Vec<f64>,
    /// Their median.
    pub median: Option<f64>,
    /// Their minimum and maximum.
    pub range: Option<(f64, f64)>,
}

impl Figures {
    fn new(rounds: Vec<f64>) -> Self {
        let median = median(&rounds);
        Self {
            range: range(&rounds),
            rounds,
            median,
        }
    }
}

/// The smallest and largest of `values` (NaNs ignored), or `None` when there are none.
fn range(values: &[f64]) -> Option<(f64, f64)> {
    values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// One computed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's definition.
    pub measure: Measure,
    /// Per label: the per-round values, their median and range.
    pub values: BTreeMap<String, Figures>,
    /// The better of the rivals' medians.
    pub best_rival: Option<f64>,
    /// Tether ÷ the better rival (medians).
    pub ratio: Option<f64>,
    /// The range of the per-round ratios: Tether's value of a round ÷ the better rival's value
    /// of the same round.
    pub ratio_range: Option<(f64, f64)>,
    /// The bound of the row's [`Limit`], resolved (`None`: no limit, or its metric is missing).
    pub limit: Option<f64>,
    /// Whether the target and the limit are met (`None`: none set, or a figure is missing).
    pub met: Option<bool>,
}

/// Computes the rows of the detail table ([`measures`]).
pub fn rows(records: &[Record]) -> Vec<Row> {
    compute(records, measures(records))
}

/// Computes the rows of issue 17's table ([`issue_measures`]).
pub fn issue_rows(records: &[Record]) -> Vec<Row> {
    compute(records, issue_measures(records))
}

/// Computes `measures` over `records`.
fn compute(records: &[Record], measures: Vec<Measure>) -> Vec<Row> {
    let labels = labels(records);
    measures
        .into_iter()
        .map(|measure| {
            let by_round: BTreeMap<&String, BTreeMap<u32, f64>> = labels
                .iter()
                .filter(|label| !(measure.minus_direct && label.as_str() == DIRECT))
                .map(|label| (label, round_values(records, &measure, label)))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            let values: BTreeMap<String, Figures> = by_round
                .iter()
                .map(|(label, v)| {
                    (
                        (*label).clone(),
                        Figures::new(v.values().copied().collect()),
                    )
                })
                .collect();
            let pick = |a: f64, b: f64| match measure.better {
                Better::Higher => f64::max(a, b),
                _ => f64::min(a, b),
            };
            let rival_medians = RIVALS
                .iter()
                .filter_map(|r| values.get(*r).and_then(|f| f.median));
            let best_rival = match measure.better {
                Better::Neither => None,
                _ => rival_medians.reduce(pick),
            };
            let tether = values.get(TETHER).and_then(|f| f.median);
            let ratio = match (tether, best_rival) {
                // A ratio over a non-positive figure (an added latency lost in the noise) says
                // nothing.
                (Some(t), Some(b)) if b > 0.0 => Some(t / b),
                _ => None,
            };
            let round_ratios: Vec<f64> = match (best_rival, by_round.get(&TETHER.to_owned())) {
                (Some(_), Some(own)) => own
                    .iter()
                    .filter_map(|(round, t)| {
                        let best = RIVALS
                            .iter()
                            .filter_map(|r| by_round.get(&(*r).to_owned())?.get(round).copied())
                            .reduce(pick)?;
                        (best > 0.0).then(|| t / best)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let limit = measure.limit.as_ref().and_then(|limit| match limit.bound {
                Bound::Value(v) => Some(v),
                Bound::Metric(metric) => {
                    let scenario = &measure.scenario;
                    let v: Vec<f64> = records
                        .iter()
                        .filter(|r| &r.scenario == scenario && r.label == TETHER)
                        .filter_map(|r| r.metrics.get(metric).copied())
                        .collect();
                    median(&v)
                }
            });
            let meets = |value: f64, bound: f64| match measure.better {
                Better::Higher => value >= bound,
                _ => value <= bound,
            };
            // Every goal the row sets must be met; one that cannot be judged (a figure is
            // missing) leaves the row undecided.
            let mut checks = Vec::new();
            if let Some(target) = measure.target {
                checks.push(ratio.map(|r| meets(r, target.ratio)));
            }
            if measure.limit.is_some() {
                checks.push(limit.zip(tether).map(|(bound, t)| meets(t, bound)));
            }
            let met = if checks.is_empty() {
                None
            } else {
                checks
                    .into_iter()
                    .collect::<Option<Vec<bool>>>()
                    .map(|c| c.iter().all(|m| *m))
            };
            Row {
                measure,
                values,
                best_rival,
                ratio,
                ratio_range: range(&round_ratios),
                limit,
                met,
            }
        })
        // A scenario that ran without producing this metric (a failed run) leaves no row.
        .filter(|row| !row.values.is_empty())
        .collect()
}

/// The labels present, in table order: direct, nginx, HAProxy, base (the "before" Tether of an
/// A/B run), Tether, then any others.
pub fn labels(records: &[Record]) -> Vec<String> {
    let mut known: Vec<String> = [DIRECT, RIVALS[0], RIVALS[1], BASE, TETHER]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for r in records {
        if !known.contains(&r.label) {
            known.push(r.label.clone());
        }
    }
    known.retain(|l| records.iter().any(|r| &r.label == l));
    known
}

/// How a label is shown.
fn display_label(label: &str) -> String {
    match label {
        "haproxy" => "HAProxy".into(),
        "tether" => "Tether".into(),
        other => other.into(),
    }
}

/// Formats a number with thousands separators when it has no decimals.
fn number(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    let text = format!("{value:.decimals$}");
    if decimals > 0 || value.abs() < 10_000.0 {
        return text;
    }
    let (sign, digits) = text
        .strip_prefix('-')
        .map_or(("", text.as_str()), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}")
}

/// Problems worth a reader's attention: runs with errors, lost echoes or dead sessions.
pub fn warnings(records: &[Record]) -> Vec<String> {
    let mut out = Vec::new();
    for r in records {
        let get = |k: &str| r.metrics.get(k).copied().unwrap_or(0.0);
        let mut problems = Vec::new();
        if get("errors") > 0.0 {
            problems.push(format!("{} errors", get("errors")));
        }
        if get("lost") > 0.0 {
            problems.push(format!("{} echoes lost", get("lost")));
        }
        if r.scenario == "idle"
            && (get("alive") < get("sessions") || get("opened") < get("sessions"))
        {
            problems.push(format!(
                "{} of {} sessions opened, {} alive",
                get("opened"),
                get("sessions"),
                get("alive")
            ));
        }
        if r.scenario == IDLE_HTTP
            && (get("opened") < get("connections")
                || get("accepted") < get("opened")
                || get("alive") < get("opened"))
        {
            problems.push(format!(
                "{} of {} connections opened, {} accepted when the RSS was read, {} still open \
                 after it",
                get("opened"),
                get("connections"),
                get("accepted"),
                get("alive")
            ));
        }
        if r.scenario == DRAIN {
            if get("opened") < get("sessions") {
                problems.push(format!(
                    "{} of {} sessions opened",
                    get("opened"),
                    get("sessions")
                ));
            }
            if get("no_close") > 0.0 {
                problems.push(format!(
                    "{} sessions without a close frame ({} cut, {} still open)",
                    get("no_close"),
                    get("cut"),
                    get("still_open")
                ));
            }
            if get("drained_within_grace") < get("drained") {
                problems.push(format!(
                    "{} close frames after the grace period",
                    get("drained") - get("drained_within_grace")
                ));
            }
            if get("closed_before_signal") > 0.0 {
                problems.push(format!(
                    "{} sessions closed before SIGTERM",
                    get("closed_before_signal")
                ));
            }
            if let Some(closed) = r.metrics.get("tcp_closed") {
                if *closed < get("drained") {
                    problems.push(format!(
                        "{} sessions still connected after their close frame",
                        get("drained") - closed
                    ));
                }
            }
            if r.metrics.get("exited") == Some(&0.0) {
                problems.push("the proxy did not exit".into());
            }
        }
        if !problems.is_empty() {
            out.push(format!(
                "{} {} round {}: {}",
                display_label(&r.label),
                r.scenario,
                r.round,
                problems.join(", ")
            ));
        }
    }
    out
}

/// A figure as the tables show it: the median, then the min–max over the rounds when there
/// was more than one (`1.43 (1.31–1.52)`).
fn cell(figures: &Figures, decimals: usize) -> String {
    let Some(median) = figures.median else {
        return String::new();
    };
    match figures.range {
        Some((lo, hi)) if figures.rounds.len() > 1 => format!(
            "{} ({}–{})",
            number(median, decimals),
            number(lo, decimals),
            number(hi, decimals)
        ),
        _ => number(median, decimals),
    }
}

/// A ratio with the range of its per-round ratios, when they differ.
fn ratio_cell(ratio: f64, range: Option<(f64, f64)>) -> String {
    match range {
        Some((lo, hi)) if hi > lo => format!("{ratio:.2} ({lo:.2}–{hi:.2})"),
        _ => format!("{ratio:.2}"),
    }
}

/// The target column of a row: the ratio target, the limit on Tether's own figure, or both.
fn target_text(row: &Row) -> String {
    let m = &row.measure;
    let op = if m.better == Better::Higher {
        "≥"
    } else {
        "≤"
    };
    let mut parts = Vec::new();
    if let Some(t) = m.target {
        parts.push(if t.note.is_empty() {
            format!("{op} {:.1}", t.ratio)
        } else {
            format!("{op} {:.1} ({})", t.ratio, t.note)
        });
    }
    if let Some(limit) = &m.limit {
        let bound = match (row.limit, &limit.bound) {
            (Some(v), _) => number(v, m.decimals),
            (None, Bound::Metric(metric)) => (*metric).to_owned(),
            (None, Bound::Value(v)) => number(*v, m.decimals),
        };
        let text = if limit.note.is_empty() {
            format!("{op} {bound}")
        } else {
            format!("{op} {bound} ({})", limit.note)
        };
        parts.push(if m.target.is_some() {
            format!("Tether {text}")
        } else {
            text
        });
    }
    parts.join(", ")
}

/// The met? column of a row.
fn met_text(row: &Row) -> &'static str {
    let m = &row.measure;
    match (m.target.is_some() || m.limit.is_some(), row.met) {
        (false, _) => "",
        (true, Some(true)) => "met",
        (true, Some(false)) => "**not met**",
        (true, None) => "—",
    }
}

/// The ratio column of a row.
fn ratio_text(row: &Row) -> String {
    match (row.ratio, row.measure.better) {
        (Some(r), _) => ratio_cell(r, row.ratio_range),
        (None, Better::Neither) => String::new(),
        // Tether-only rows (scale check, workers step): nothing to compare with.
        (None, _) if !RIVALS.iter().any(|r| row.values.contains_key(*r)) => String::new(),
        (None, _) if row.best_rival.is_some_and(|b| b <= 0.0) => "n/a (best ≤ 0)".into(),
        (None, _) => "—".into(),
    }
}

/// A table of `rows` with a column per label of `labels`, the ratio, target and met? columns.
fn table(out: &mut String, rows: &[Row], labels: &[String], first: &str, ratio: &str) {
    let _ = write!(out, "| {first} |");
    for label in labels {
        let _ = write!(out, " {} |", display_label(label));
    }
    let _ = write!(out, " {ratio} | target | met? |\n|---|");
    for _ in labels {
        out.push_str("---:|");
    }
    out.push_str("---:|---|---|\n");
    for row in rows {
        let _ = write!(out, "| {} |", row.measure.title);
        for label in labels {
            let text = row
                .values
                .get(label)
                .map(|f| cell(f, row.measure.decimals))
                .unwrap_or_default();
            let _ = write!(out, " {text} |");
        }
        let _ = writeln!(
            out,
            " {} | {} | {} |",
            ratio_text(row),
            target_text(row),
            met_text(row)
        );
    }
}

/// One row of the A/B table: a figure of the "before" Tether ([`BASE`]) and of the "after"
/// one ([`TETHER`]), and after ÷ before.
#[derive(Debug, Clone, PartialEq)]
pub struct AbRow {
    /// What the row shows.
    pub title: String,
    /// Decimals to show.
    pub decimals: usize,
    /// Which way is better.
    pub better: Better,
    /// The "before" figures.
    pub before: Figures,
    /// The "after" figures.
    pub after: Figures,
    /// After ÷ before (medians).
    pub ratio: Option<f64>,
    /// The range of the per-round ratios (after ÷ before of the same round).
    pub ratio_range: Option<(f64, f64)>,
}

/// The A/B rows: every row of both tables that has figures for [`BASE`] and [`TETHER`].
pub fn ab_rows(records: &[Record]) -> Vec<AbRow> {
    let mut measures = issue_measures(records);
    measures.extend(measures_for_ab(records));
    measures
        .into_iter()
        .filter_map(|m| {
            let before = round_values(records, &m, BASE);
            let after = round_values(records, &m, TETHER);
            if before.is_empty() || after.is_empty() {
                return None;
            }
            let per_round: Vec<f64> = after
                .iter()
                .filter_map(|(round, a)| {
                    let b = before.get(round)?;
                    (*b > 0.0).then(|| a / b)
                })
                .collect();
            let before = Figures::new(before.into_values().collect());
            let after = Figures::new(after.into_values().collect());
            let ratio = match (before.median, after.median) {
                (Some(b), Some(a)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            Some(AbRow {
                title: m.title,
                decimals: m.decimals,
                better: m.better,
                before,
                after,
                ratio,
                ratio_range: range(&per_round),
            })
        })
        .collect()
}

/// The detail rows worth an A/B comparison: costs and rates, not the state counters.
fn measures_for_ab(records: &[Record]) -> Vec<Measure> {
    measures(records)
        .into_iter()
        .filter(|m| m.better != Better::Neither && !m.minus_direct)
        .collect()
}

/// System calls per operation by name: (name, calls, error returns), the total first.
pub type PerOperation = Vec<(String, f64, f64)>;

/// The system-call figures of one scenario: per label, the operations done under `strace` and
/// the calls (and error returns: `EAGAIN`, `EINPROGRESS`, …) per operation, by system call name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Syscalls {
    /// The operation the counts are divided by (`handshake`, `message`).
    pub unit: String,
    /// Per label: operations, then (name, calls per operation, error returns per operation),
    /// the total first, then by calls per operation, highest first.
    pub labels: BTreeMap<String, (f64, PerOperation)>,
}

/// The system-call figures of every `syscalls_*` scenario, by scenario (the first round of
/// each label: the step runs once).
///
/// A record's metrics are `ops` (operations completed while `strace` was attached), and for
/// each system call `calls:NAME` and `errors:NAME`, with `NAME` = `total` for the sum.
pub fn syscalls(records: &[Record]) -> BTreeMap<String, Syscalls> {
    let mut out: BTreeMap<String, Syscalls> = BTreeMap::new();
    for r in records {
        let Some(what) = r.scenario.strip_prefix(SYSCALLS) else {
            continue;
        };
        let ops = r.metrics.get("ops").copied().unwrap_or(0.0);
        if ops <= 0.0 {
            continue;
        }
        let entry = out.entry(r.scenario.clone()).or_default();
        entry.unit = if what.starts_with("echo") {
            "message".into()
        } else {
            what.to_owned()
        };
        if entry.labels.contains_key(&r.label) {
            continue;
        }
        let mut calls: PerOperation = r
            .metrics
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("calls:")?;
                let errors = r.metrics.get(&format!("errors:{name}")).copied();
                Some((name.to_owned(), v / ops, errors.unwrap_or(0.0) / ops))
            })
            .collect();
        calls.sort_by(|a, b| {
            (b.0 == "total")
                .cmp(&(a.0 == "total"))
                .then(b.1.total_cmp(&a.1))
        });
        entry.labels.insert(r.label.clone(), (ops, calls));
    }
    out
}

/// How many system calls by name each syscall table shows (the union of each label's top
/// entries, so a call one proxy makes often and another never still shows).
const SYSCALL_TOP: usize = 6;

/// The markdown of the system-call tables.
fn syscall_tables(out: &mut String, records: &[Record]) {
    for (scenario, table) in syscalls(records) {
        let labels: Vec<String> = labels(records)
            .into_iter()
            .filter(|l| table.labels.contains_key(l))
            .collect();
        let mut names: Vec<String> = vec!["total".into()];
        for label in &labels {
            for (name, _, _) in table.labels[label].1.iter().take(SYSCALL_TOP + 1) {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        let per_op = |label: &String, name: &str| {
            table.labels[label]
                .1
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, c, e)| (*c, *e))
        };
        // Order by the highest count of any label, after the total.
        names[1..].sort_by(|a, b| {
            let most = |name: &str| {
                labels
                    .iter()
                    .filter_map(|l| per_op(l, name).map(|(c, _)| c))
                    .fold(0.0, f64::max)
            };
            most(b).total_cmp(&most(a))
        });
        let _ = write!(
            out,
            "\n#### System calls per {} (`{scenario}`)\n\n| system call |",
            table.unit
        );
        for label in &labels {
            let _ = write!(out, " {} |", display_label(label));
        }
        out.push_str("\n|---|");
        for _ in &labels {
            out.push_str("---:|");
        }
        out.push('\n');
        let _ = write!(out, "| {} counted under strace |", table.unit);
        for label in &labels {
            let _ = write!(out, " {} |", number(table.labels[label].0, 0));
        }
        out.push('\n');
        // A message costs a fraction of a system call (a read brings back many): one more
        // decimal there.
        let decimals = if table.unit == "message" { 3 } else { 2 };
        let shown = |v: f64| format!("{v:.decimals$}");
        for name in &names {
            let _ = write!(
                out,
                "| {} |",
                if name == "total" { "**all**" } else { name }
            );
            for label in &labels {
                let text = match per_op(label, name) {
                    Some((calls, errors)) if shown(errors) != shown(0.0) => {
                        format!("{} ({} err)", shown(calls), shown(errors))
                    }
                    Some((calls, _)) => shown(calls),
                    None => "0".into(),
                };
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }
}

/// The markdown report: `meta` lines as a list; issue 17's table (when nginx or HAProxy ran);
/// the A/B table (when a "before" Tether ran); every other figure; the system calls per
/// operation; then warnings. Every figure is the median over rounds with its min–max.
pub fn markdown(records: &[Record], meta: &[(String, String)]) -> String {
    let labels = labels(records);
    let mut out = String::new();
    for (key, value) in meta {
        let _ = writeln!(out, "- **{key}**: {value}");
    }
    out.push_str(
        "\nEvery figure is the median over the rounds, with the min–max over the rounds in \
         brackets; a ratio's brackets are the range of the per-round ratios.\n",
    );
    let rivals_ran = RIVALS.iter().any(|r| labels.iter().any(|l| l == r));
    let issue = issue_rows(records);
    if rivals_ran && !issue.is_empty() {
        out.push_str("\n### Issue 17: Tether against nginx and HAProxy\n\n");
        let issue_labels: Vec<String> = labels
            .iter()
            .filter(|l| RIVALS.contains(&l.as_str()) || l.as_str() == TETHER)
            .cloned()
            .collect();
        table(&mut out, &issue, &issue_labels, "figure", "Tether ÷ best");
    }
    let ab = ab_rows(records);
    if !ab.is_empty() {
        out.push_str(
            "\n### A/B: two Tether builds, interleaved\n\n| measure | before (base) | after \
             (Tether) | after ÷ before |\n|---|---:|---:|---:|\n",
        );
        for row in &ab {
            let ratio = row
                .ratio
                .map(|r| ratio_cell(r, row.ratio_range))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {ratio} |",
                row.title,
                cell(&row.before, row.decimals),
                cell(&row.after, row.decimals)
            );
        }
    }
    let rest = rows(records);
    if !rest.is_empty() {
        out.push_str("\n### Every other figure\n\n");
        table(
            &mut out,
            &rest,
            &labels,
            "measure",
            "Tether ÷ best of nginx, HAProxy",
        );
    }
    if records.iter().any(|r| r.scenario.starts_with(SYSCALLS)) {
        out.push_str(
            "\n### System calls per operation (`strace -f -c`, one short run each)\n\nstrace \
             slows the proxy down; the counts per operation stay valid, its times do not (and \
             are not used). `err`: calls that returned an error, mostly `EAGAIN` (nothing to \
             read) and `EINPROGRESS` (a non-blocking connect).\n",
        );
        syscall_tables(&mut out, records);
    }
    let warnings = warnings(records);
    if !warnings.is_empty() {
        out.push_str("\nWarnings (figures from these runs are in the medians above):\n\n");
        for w in warnings {
            let _ = writeln!(out, "- {w}");
        }
    }
    out
}

/// The JSON of one figure: median, min, max and the per-round values.
fn figures_json(f: &Figures) -> Value {
    json!({
        "median": f.median,
        "min": f.range.map(|r| r.0),
        "max": f.range.map(|r| r.1),
        "rounds": f.rounds,
    })
}

/// The JSON of computed rows.
fn rows_json(rows: Vec<Row>) -> Vec<Value> {
    rows.into_iter()
        .map(|row| {
            let values: serde_json::Map<String, Value> = row
                .values
                .iter()
                .map(|(label, f)| (label.clone(), figures_json(f)))
                .collect();
            json!({
                "measure": row.measure.title,
                "scenario": row.measure.scenario,
                "metric": row.measure.metric,
                "minus_direct": row.measure.minus_direct,
                "values": values,
                "best_rival": row.best_rival,
                "tether_over_best": row.ratio,
                "tether_over_best_min": row.ratio_range.map(|r| r.0),
                "tether_over_best_max": row.ratio_range.map(|r| r.1),
                "target": row.measure.target.map(|t| json!({
                    "ratio": t.ratio,
                    "higher_is_better": row.measure.better == Better::Higher,
                    "note": t.note,
                })),
                "over": row.measure.over,
                "limit": row.measure.limit.as_ref().map(|l| json!({
                    "bound": row.limit,
                    "bound_metric": match l.bound {
                        Bound::Metric(metric) => Some(metric),
                        Bound::Value(_) => None,
                    },
                    "higher_is_better": row.measure.better == Better::Higher,
                    "note": l.note,
                })),
                "met": row.met,
            })
        })
        .collect()
}

/// The JSON summary: meta, issue 17's rows, the A/B rows, every other row (each with its
/// median, min–max and per-round values), system calls per operation, warnings and the raw
/// records.
pub fn json_summary(records: &[Record], meta: &[(String, String)]) -> Value {
    let ab: Vec<Value> = ab_rows(records)
        .iter()
        .map(|row| {
            json!({
                "measure": row.title,
                "before": figures_json(&row.before),
                "after": figures_json(&row.after),
                "after_over_before": row.ratio,
                "after_over_before_min": row.ratio_range.map(|r| r.0),
                "after_over_before_max": row.ratio_range.map(|r| r.1),
            })
        })
        .collect();
    let syscalls: serde_json::Map<String, Value> = syscalls(records)
        .into_iter()
        .map(|(scenario, table)| {
            let labels: serde_json::Map<String, Value> = table
                .labels
                .into_iter()
                .map(|(label, (ops, calls))| {
                    let per_op: serde_json::Map<String, Value> = calls
                        .into_iter()
                        .map(|(name, c, e)| (name, json!({ "calls": c, "errors": e })))
                        .collect();
                    (label, json!({ "ops": ops, "per_op": per_op }))
                })
                .collect();
            (scenario, json!({ "unit": table.unit, "labels": labels }))
        })
        .collect();
    let meta: serde_json::Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "meta": meta,
        "issue17_rows": rows_json(issue_rows(records)),
        "ab_rows": ab,
        "rows": rows_json(rows(records)),
        "syscalls_per_op": syscalls,
        "warnings": warnings(records),
        "records": records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scenario: &str, label: &str, round: u32, metrics: &[(&str, f64)]) -> Record {
        Record {
            scenario: scenario.into(),
            label: label.into(),
            round,
            pids: vec![],
            params: BTreeMap::new(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn sample() -> Vec<Record> {
        let mut records = Vec::new();
        for round in 1..=3 {
            let r = f64::from(round);
            records.push(record(
                "echo_64B",
                "nginx",
                round,
                &[("cpu_us_per_msg", 2.0 + r), ("msgs_per_s", 100.0)],
            ));
            records.push(record(
                "echo_64B",
                "haproxy",
                round,
                &[("cpu_us_per_msg", 1.0 + r), ("msgs_per_s", 90.0)],
            ));
            records.push(record(
                "echo_64B",
                "tether",
                round,
                &[("cpu_us_per_msg", 1.0 + r / 2.0), ("msgs_per_s", 120.0)],
            ));
            records.push(record("latency", "direct", round, &[("p99_us", 50.0 + r)]));
            records.push(record("latency", "nginx", round, &[("p99_us", 70.0 + r)]));
            records.push(record("latency", "haproxy", round, &[("p99_us", 60.0 + r)]));
            records.push(record("latency", "tether", round, &[("p99_us", 65.0 + r)]));
        }
        records
    }

    #[test]
    fn medians_ratios_and_targets() {
        let issue = issue_rows(&sample());
        assert_eq!(issue.len(), 1);
        let cpu = &issue[0];
        assert_eq!(cpu.measure.metric, "cpu_us_per_msg");
        // Medians: nginx 4, HAProxy 3, Tether 2 → 2 ÷ 3.
        assert_eq!(cpu.best_rival, Some(3.0));
        assert!((cpu.ratio.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(cpu.met, Some(true));
        assert_eq!(cpu.values[TETHER].range, Some((1.5, 2.5)));
        // Per round: 1.5 ÷ 2, 2 ÷ 3, 2.5 ÷ 4.
        let (lo, hi) = cpu.ratio_range.unwrap();
        assert!((lo - 0.625).abs() < 1e-9 && (hi - 0.75).abs() < 1e-9);

        let rows = rows(&sample());
        assert!(!rows.iter().any(|r| r.measure.metric == "cpu_us_per_msg"));

        let rate = rows
            .iter()
            .find(|r| r.measure.metric == "msgs_per_s")
            .unwrap();
        assert_eq!(rate.best_rival, Some(100.0));
        assert_eq!(rate.met, None);

        // Added p99: nginx 20, HAProxy 10, Tether 15 → 1.5, not met.
        let added = rows
            .iter()
            .find(|r| r.measure.metric == "p99_us" && r.measure.minus_direct)
            .unwrap();
        assert!(!added.values.contains_key(DIRECT));
        assert_eq!(added.values[TETHER].rounds, vec![15.0, 15.0, 15.0]);
        assert_eq!(added.ratio, Some(1.5));
        assert_eq!(added.met, Some(false));
    }

    #[test]
    fn markdown_has_every_label_and_target() {
        let text = markdown(&sample(), &[("date".into(), "today".into())]);
        assert!(text.contains("- **date**: today"));
        for line in [
            "| figure | nginx | HAProxy | Tether | Tether ÷ best | target | met? |",
            "| CPU µs per echoed 64 B message | 4.00 (3.00–5.00) | 3.00 (2.00–4.00) | \
             2.00 (1.50–2.50) | 0.67 (0.62–0.75) | ≤ 0.8 | met |",
            "| measure | direct | nginx | HAProxy | Tether |",
            "| latency: added p99 µs |  | 20.0 (20.0–20.0) | 10.0 (10.0–10.0) | \
             15.0 (15.0–15.0) | 1.50 | ≤ 1.0 (issue 8) | **not met** |",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("A/B"));
        let summary = json_summary(&sample(), &[]);
        assert_eq!(summary["records"].as_array().unwrap().len(), 21);
    }

    #[test]
    fn idle_rows_have_both_goals() {
        let mut records = Vec::new();
        for (label, ws, http) in [
            ("nginx", 17.7, 2.0),
            ("haproxy", 4.8, 5.0),
            (TETHER, 2.2, 0.9),
        ] {
            records.push(record(
                "idle",
                label,
                1,
                &[("kib_per_session", ws), ("opened", 9900.0)],
            ));
            records.push(record(
                IDLE_HTTP,
                label,
                1,
                &[("kib_per_conn", http), ("opened", 9900.0)],
            ));
        }
        let text = markdown(&records, &[]);
        for line in [
            "| KiB per idle WebSocket session (9900 held) | 17.70 | 4.80 | 2.20 | 0.46 | \
             ≤ 0.5, Tether ≤ 2.30 (KiB) | met |",
            "| KiB per idle HTTP connection before its first request (9900 held) | 2.00 | \
             5.00 | 0.90 | 0.45 | ≤ 0.5 | met |",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // The ratio is met (2.4 ÷ 4.8 = 0.5) but the absolute bound is not.
        records[4].metrics.insert("kib_per_session".into(), 2.4);
        let idle = &issue_rows(&records)[0];
        assert_eq!(idle.ratio, Some(0.5));
        assert_eq!(idle.met, Some(false));
        // A missing rival leaves the ratio, and so the row, undecided.
        records.retain(|r| r.label == TETHER);
        assert_eq!(issue_rows(&records)[0].met, None);
    }

    #[test]
    fn ab_table_pairs_rounds() {
        let mut records = Vec::new();
        for round in 1..=4 {
            let r = f64::from(round);
            records.push(record(
                "handshake",
                BASE,
                round,
                &[("cpu_us_per_handshake", 100.0 + r)],
            ));
            records.push(record(
                "handshake",
                TETHER,
                round,
                &[("cpu_us_per_handshake", 80.0 + r)],
            ));
            records.push(record("idle", TETHER, round, &[("alive", 10.0)]));
        }
        let ab = ab_rows(&records);
        assert_eq!(ab.len(), 1);
        assert_eq!(ab[0].before.median, Some(102.5));
        assert_eq!(ab[0].after.range, Some((81.0, 84.0)));
        let text = markdown(&records, &[]);
        assert!(!text.contains("Issue 17"), "no rival ran:\n{text}");
        assert!(
            text.contains(
                "| CPU µs per WebSocket handshake (connect, upgrade, echo, close) | \
             102.5 (101.0–104.0) | 82.5 (81.0–84.0) | 0.80 (0.80–0.81) |"
            ),
            "{text}"
        );
        let json = json_summary(&records, &[]);
        assert_eq!(json["ab_rows"][0]["before"]["min"], 101.0);
    }

    #[test]
    fn syscalls_per_operation() {
        let records = vec![
            record(
                "syscalls_handshake",
                "nginx",
                1,
                &[
                    ("ops", 100.0),
                    ("calls:total", 2000.0),
                    ("errors:total", 100.0),
                    ("calls:recvfrom", 600.0),
                    ("errors:recvfrom", 100.0),
                    ("calls:epoll_wait", 500.0),
                ],
            ),
            record(
                "syscalls_handshake",
                TETHER,
                1,
                &[
                    ("ops", 50.0),
                    ("calls:total", 1100.0),
                    ("calls:epoll_ctl", 200.0),
                    ("calls:recvfrom", 300.0),
                ],
            ),
        ];
        let table = &syscalls(&records)["syscalls_handshake"];
        assert_eq!(table.unit, "handshake");
        assert_eq!(table.labels[TETHER].1[0], ("total".into(), 22.0, 0.0));
        assert_eq!(table.labels[TETHER].1[1], ("recvfrom".into(), 6.0, 0.0));
        let text = markdown(&records, &[]);
        for line in [
            "| system call | nginx | Tether |",
            "| handshake counted under strace | 100 | 50 |",
            "| **all** | 20.00 (1.00 err) | 22.00 |",
            "| recvfrom | 6.00 (1.00 err) | 6.00 |",
            "| epoll_wait | 5.00 | 0 |",
            "| epoll_ctl | 0 | 4.00 |",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let json = json_summary(&records, &[]);
        assert_eq!(
            json["syscalls_per_op"]["syscalls_handshake"]["labels"]["tether"]["per_op"]
                ["epoll_ctl"]["calls"],
            4.0
        );
    }

    #[test]
    fn warns_about_errors_and_dead_sessions() {
        let records = vec![
            record("echo_64B", "tether", 1, &[("errors", 2.0)]),
            record(
                "idle",
                "nginx",
                1,
                &[("sessions", 10.0), ("opened", 10.0), ("alive", 9.0)],
            ),
        ];
        let w = warnings(&records);
        assert_eq!(w.len(), 2);
        assert!(w[1].contains("9"));
        let closed = record(
            IDLE_HTTP,
            "haproxy",
            1,
            &[
                ("connections", 10.0),
                ("opened", 10.0),
                ("accepted", 10.0),
                ("alive", 0.0),
            ],
        );
        assert_eq!(
            warnings(&[closed]),
            vec![
                "HAProxy idle_http round 1: 10 of 10 connections opened, 10 accepted when the \
                 RSS was read, 0 still open after it"
            ]
        );
    }

    fn scale_sample(cores: u64) -> Vec<Record> {
        let mut records = vec![record("echo_64B", "nginx", 1, &[("msgs_per_s", 100.0)])];
        for round in 1..=3 {
            let r = f64::from(round);
            for (workers, rate, share) in [(1, 100.0 + r, 0.95), (2, 120.0 + r, 1.4)] {
                let mut run = record(
                    &workers_scenario(workers, 64),
                    TETHER,
                    round,
                    &[("msgs_per_s", rate), ("proxy_cpu_share", share)],
                );
                run.params.insert("cores".into(), cores.into());
                records.push(run);
            }
        }
        records.push(record(
            DRAIN,
            TETHER,
            1,
            &[
                ("sessions", 9900.0),
                ("opened", 9900.0),
                ("kib_per_session", 2.5),
                ("drained", 9899.0),
                ("drained_within_grace", 9899.0),
                ("tcp_closed", 9898.0),
                ("close_1001", 9899.0),
                ("close_1012", 0.0),
                ("close_other", 0.0),
                ("no_close", 1.0),
                ("cut", 1.0),
                ("still_open", 0.0),
                ("drain_seconds", 0.75),
                ("grace_seconds", 30.0),
                ("exit_seconds", 1.25),
                ("exited", 1.0),
            ],
        ));
        records
    }

    #[test]
    fn scale_and_workers_rows() {
        let text = markdown(&scale_sample(2), &[]);
        let expected = [
            "| measure | nginx | Tether | Tether ÷ best of nginx, HAProxy | target | met? |",
            "| scale: idle sessions held |  | 9900 |  |  |  |",
            "| scale: proxy KiB/session while idle |  | 2.50 |  | ≤ 2.30 (KiB, issue 8) | **not met** |",
            "| drain: sessions closed with a close frame |  | 9899 |  | ≥ 9900 (every session held) | **not met** |",
            "| drain: close frames with code 1001 |  | 9899 |  |  |  |",
            "| drain: sessions ended without a close frame |  | 1 |  | ≤ 0 | **not met** |",
            "| drain: s from SIGTERM to the last close frame |  | 0.75 |  | ≤ 30.00 (s, shutdown_grace) | met |",
            "| drain: s from SIGTERM to the proxy's exit |  | 1.25 |  |  |  |",
            "| workers = 1: echo 64 B messages/s |  | 102 (101–103) |  |  |  |",
            "| workers = 1: proxy CPU % (100 = one core) |  | 95 (95–95) |  |  |  |",
            "| workers = 2: echo 64 B messages/s |  | 122 (121–123) |  |  |  |",
            "| workers = 2: proxy CPU % (100 = one core) |  | 140 (140–140) |  |  |  |",
            "| workers = 2 ÷ workers = 1: echo 64 B messages/s |  | 1.20 (1.19–1.20) |  | ≥ 1.70 (2 cores: the \
             load generator and backend share them with the proxy, so the ratio is bounded by \
             them, not by Tether) | **not met** |",
        ];
        for line in expected {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Codes that did not occur get no row; the problems are listed.
        assert!(!text.contains("code 1012"));
        assert!(text.contains(
            "- Tether drain round 1: 1 sessions without a close frame (1 cut, 0 still open), \
             1 sessions still connected after their close frame"
        ));

        // Per-round ratios: (120 + r) ÷ (100 + r), median at r = 2.
        let ratio = rows(&scale_sample(8))
            .into_iter()
            .find(|r| r.measure.over.is_some())
            .unwrap();
        assert!((ratio.values[TETHER].median.unwrap() - 122.0 / 102.0).abs() < 1e-9);
        assert_eq!(ratio.limit, Some(1.7));
        assert_eq!(
            ratio.measure.limit.unwrap().note,
            "with a load generator that is not the bottleneck"
        );
        let summary = json_summary(&scale_sample(2), &[]);
        let drain = summary["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == "drain_seconds")
            .unwrap();
        assert_eq!(drain["limit"]["bound"], 30.0);
        assert_eq!(drain["limit"]["bound_metric"], "grace_seconds");
        assert_eq!(drain["met"], true);
    }

    #[test]
    fn workers_scenario_ids() {
        assert_eq!(workers_scenario(2, 64), "workers2_echo_64B");
        assert_eq!(parse_workers_scenario("workers2_echo_64B"), Some((2, 64)));
        assert_eq!(parse_workers_scenario("echo_64B"), None);
        assert_eq!(parse_workers_scenario("workers_echo_64B"), None);
        assert_eq!(parse_workers_scenario("workers2_echo_64"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(number(1_234_567.4, 0), "1,234,567");
        assert_eq!(number(-12_345.0, 0), "-12,345");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(1.234, 2), "1.23");
        assert_eq!(number(f64::NAN, 2), "—");
    }
}
