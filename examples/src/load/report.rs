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

/// The rows for the scenarios present in `records`, in a fixed order.
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
        rows.push(
            Measure::new(
                format!("echo {name}: proxy CPU µs/message"),
                &scenario,
                "cpu_us_per_msg",
                Lower,
                2,
            )
            .target(0.8, ""),
        );
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
            .target(1.0, ""),
    );
    rows.push(
        Measure::new("latency: added p99.9 µs", "latency", "p999_us", Lower, 1).minus_direct(),
    );
    rows.push(
        Measure::new("handshakes/s", "handshake", "handshakes_per_s", Higher, 0).target(1.2, ""),
    );
    rows.push(Measure::new(
        "proxy CPU µs/handshake",
        "handshake",
        "cpu_us_per_handshake",
        Lower,
        1,
    ));
    rows.push(
        Measure::new(
            "idle: proxy KiB/session",
            "idle",
            "kib_per_session",
            Lower,
            2,
        )
        .target(0.5, "aim < 2 KiB"),
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
    rows.push(Measure::new("HTTP: requests/s", "http", "reqs_per_s", Higher, 0).target(1.0, ""));
    rows.push(Measure::new(
        "HTTP: proxy CPU µs/request",
        "http",
        "cpu_us_per_req",
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

/// The bound on Tether's RSS growth per idle session in the scale check, in KiB.
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

/// The per-round values of one row for one label, in round order.
fn round_values(records: &[Record], measure: &Measure, label: &str) -> Vec<f64> {
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
            Some(v * measure.scale)
        })
        .collect()
}

/// One computed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's definition.
    pub measure: Measure,
    /// Per label: the per-round values and their median.
    pub values: BTreeMap<String, (Vec<f64>, Option<f64>)>,
    /// The better of the rivals' medians.
    pub best_rival: Option<f64>,
    /// Tether ÷ the better rival.
    pub ratio: Option<f64>,
    /// The bound of the row's [`Limit`], resolved (`None`: no limit, or its metric is missing).
    pub limit: Option<f64>,
    /// Whether the target (or the limit) is met (`None`: none set, or a figure is missing).
    pub met: Option<bool>,
}

/// Computes every row.
pub fn rows(records: &[Record]) -> Vec<Row> {
    let labels = labels(records);
    measures(records)
        .into_iter()
        .map(|measure| {
            let values: BTreeMap<String, (Vec<f64>, Option<f64>)> = labels
                .iter()
                .filter(|label| !(measure.minus_direct && label.as_str() == DIRECT))
                .map(|label| {
                    let v = round_values(records, &measure, label);
                    let m = median(&v);
                    (label.clone(), (v, m))
                })
                .filter(|(_, (v, _))| !v.is_empty())
                .collect();
            let rival_medians = RIVALS
                .iter()
                .filter_map(|r| values.get(*r).and_then(|(_, m)| *m));
            let best_rival = match measure.better {
                Better::Lower => rival_medians.reduce(f64::min),
                Better::Higher => rival_medians.reduce(f64::max),
                Better::Neither => None,
            };
            let tether = values.get(TETHER).and_then(|(_, m)| *m);
            let ratio = match (tether, best_rival) {
                // A ratio over a non-positive figure (an added latency lost in the noise) says
                // nothing.
                (Some(t), Some(b)) if b > 0.0 => Some(t / b),
                _ => None,
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
            let met = match (measure.target, ratio, limit, tether) {
                (Some(target), Some(ratio), _, _) => Some(meets(ratio, target.ratio)),
                (None, _, Some(bound), Some(tether)) => Some(meets(tether, bound)),
                _ => None,
            };
            Row {
                measure,
                values,
                best_rival,
                ratio,
                limit,
                met,
            }
        })
        .collect()
}

/// The labels present, in table order: direct, nginx, HAProxy, Tether, then any others.
pub fn labels(records: &[Record]) -> Vec<String> {
    let mut known: Vec<String> = [DIRECT, RIVALS[0], RIVALS[1], TETHER]
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

/// The markdown report: `meta` lines as a list, then the table, then warnings.
pub fn markdown(records: &[Record], meta: &[(String, String)]) -> String {
    let labels = labels(records);
    let rows = rows(records);
    let mut out = String::new();
    for (key, value) in meta {
        let _ = writeln!(out, "- **{key}**: {value}");
    }
    out.push('\n');
    let _ = write!(out, "| measure |");
    for label in &labels {
        let _ = write!(out, " {} |", display_label(label));
    }
    out.push_str(" Tether ÷ best of nginx, HAProxy | target | met? |\n|---|");
    for _ in &labels {
        out.push_str("---:|");
    }
    out.push_str("---:|---|---|\n");
    for row in &rows {
        let m = &row.measure;
        let _ = write!(out, "| {} |", m.title);
        for label in &labels {
            let cell = match row.values.get(label) {
                Some((_, Some(v))) => number(*v, m.decimals),
                _ => String::new(),
            };
            let _ = write!(out, " {cell} |");
        }
        let ratio = match (row.ratio, m.better) {
            (Some(r), _) => format!("{r:.2}"),
            (None, Better::Neither) => String::new(),
            // Tether-only rows (scale check, workers step): nothing to compare with.
            (None, _) if !RIVALS.iter().any(|r| row.values.contains_key(*r)) => String::new(),
            (None, _) if row.best_rival.is_some_and(|b| b <= 0.0) => "n/a (best ≤ 0)".into(),
            (None, _) => "—".into(),
        };
        let target = match m.target {
            Some(t) => {
                let op = if m.better == Better::Higher {
                    "≥"
                } else {
                    "≤"
                };
                if t.note.is_empty() {
                    format!("{op} {:.1}", t.ratio)
                } else {
                    format!("{op} {:.1} ({})", t.ratio, t.note)
                }
            }
            None => match &m.limit {
                Some(limit) => {
                    let op = if m.better == Better::Higher {
                        "≥"
                    } else {
                        "≤"
                    };
                    let bound = match (row.limit, &limit.bound) {
                        (Some(v), _) => number(v, m.decimals),
                        (None, Bound::Metric(metric)) => (*metric).to_owned(),
                        (None, Bound::Value(v)) => number(*v, m.decimals),
                    };
                    if limit.note.is_empty() {
                        format!("{op} {bound}")
                    } else {
                        format!("{op} {bound} ({})", limit.note)
                    }
                }
                None => String::new(),
            },
        };
        let met = match (m.target.is_some() || m.limit.is_some(), row.met) {
            (false, _) => "",
            (true, Some(true)) => "met",
            (true, Some(false)) => "**not met**",
            (true, None) => "—",
        };
        let _ = writeln!(out, " {ratio} | {target} | {met} |");
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

/// The JSON summary: meta, every row with its per-round values, warnings and the raw records.
pub fn json_summary(records: &[Record], meta: &[(String, String)]) -> Value {
    let rows: Vec<Value> = rows(records)
        .into_iter()
        .map(|row| {
            let values: serde_json::Map<String, Value> = row
                .values
                .iter()
                .map(|(label, (rounds, median))| {
                    (label.clone(), json!({ "median": median, "rounds": rounds }))
                })
                .collect();
            json!({
                "measure": row.measure.title,
                "scenario": row.measure.scenario,
                "metric": row.measure.metric,
                "minus_direct": row.measure.minus_direct,
                "values": values,
                "best_rival": row.best_rival,
                "tether_over_best": row.ratio,
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
        .collect();
    let meta: serde_json::Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "meta": meta,
        "rows": rows,
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
        let rows = rows(&sample());
        let cpu = rows
            .iter()
            .find(|r| r.measure.metric == "cpu_us_per_msg")
            .unwrap();
        // Medians: nginx 4, HAProxy 3, Tether 2 → 2 ÷ 3.
        assert_eq!(cpu.best_rival, Some(3.0));
        assert!((cpu.ratio.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(cpu.met, Some(true));

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
        assert_eq!(added.values[TETHER].0, vec![15.0, 15.0, 15.0]);
        assert_eq!(added.ratio, Some(1.5));
        assert_eq!(added.met, Some(false));
    }

    #[test]
    fn markdown_has_every_label_and_target() {
        let text = markdown(&sample(), &[("date".into(), "today".into())]);
        assert!(text.contains("- **date**: today"));
        assert!(text.contains("| measure | direct | nginx | HAProxy | Tether |"));
        assert!(text.contains(
            "| echo 64 B: proxy CPU µs/message |  | 4.00 | 3.00 | 2.00 | 0.67 | ≤ 0.8 | met |"
        ));
        assert!(text.contains(
            "| latency: added p99 µs |  | 20.0 | 10.0 | 15.0 | 1.50 | ≤ 1.0 | **not met** |"
        ));
        let summary = json_summary(&sample(), &[]);
        assert_eq!(summary["records"].as_array().unwrap().len(), 21);
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
            "| workers = 1: echo 64 B messages/s |  | 102 |  |  |  |",
            "| workers = 1: proxy CPU % (100 = one core) |  | 95 |  |  |  |",
            "| workers = 2: echo 64 B messages/s |  | 122 |  |  |  |",
            "| workers = 2: proxy CPU % (100 = one core) |  | 140 |  |  |  |",
            "| workers = 2 ÷ workers = 1: echo 64 B messages/s |  | 1.20 |  | ≥ 1.70 (2 cores: the \
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
        assert!((ratio.values[TETHER].1.unwrap() - 122.0 / 102.0).abs() < 1e-9);
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
