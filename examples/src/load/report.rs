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
        }
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
        let name = if size >= 1024 && size % 1024 == 0 {
            format!("{} KiB", size / 1024)
        } else {
            format!("{size} B")
        };
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
    rows.retain(|m| records.iter().any(|r| r.scenario == m.scenario));
    rows
}

/// The per-round values of one row for one label, in round order.
fn round_values(records: &[Record], measure: &Measure, label: &str) -> Vec<f64> {
    let value = |label: &str, round: u32| {
        records
            .iter()
            .find(|r| r.scenario == measure.scenario && r.label == label && r.round == round)
            .and_then(|r| r.metrics.get(measure.metric).copied())
    };
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
    /// Whether the target is met (`None`: no target, or a figure is missing).
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
            let met = match (measure.target, ratio) {
                (Some(target), Some(ratio)) => Some(match measure.better {
                    Better::Higher => ratio >= target.ratio,
                    _ => ratio <= target.ratio,
                }),
                _ => None,
            };
            Row {
                measure,
                values,
                best_rival,
                ratio,
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
            None => String::new(),
        };
        let met = match (m.target, row.met) {
            (None, _) => "",
            (Some(_), Some(true)) => "met",
            (Some(_), Some(false)) => "**not met**",
            (Some(_), None) => "—",
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

    #[test]
    fn numbers() {
        assert_eq!(number(1_234_567.4, 0), "1,234,567");
        assert_eq!(number(-12_345.0, 0), "-12,345");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(1.234, 2), "1.23");
        assert_eq!(number(f64::NAN, 2), "—");
    }
}
