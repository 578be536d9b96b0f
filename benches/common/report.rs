//! The one report format of the benches: samples with nearest-rank
//! percentiles, one way to print a duration, Markdown tables (what
//! docs/PERFORMANCE.md pastes) and a bullet list of notes.

use std::io::Write;
use std::time::Duration;

/// Timings of one measured thing.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Nearest-rank percentile (p99 of fewer than 100 samples is the maximum).
    pub fn pct(&self, p: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }
    pub fn p50(&self) -> Option<Duration> {
        self.pct(50.0)
    }
    pub fn p99(&self) -> Option<Duration> {
        self.pct(99.0)
    }
    pub fn max(&self) -> Option<Duration> {
        self.0.iter().max().copied()
    }
    pub fn min(&self) -> Option<Duration> {
        self.0.iter().min().copied()
    }
}

/// A duration with three significant digits or so: "1.51 s", "208 ms",
/// "59.3 ms", "4.12 ms", "850 µs"; "-" for none.
pub fn fmt(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.1 {
        format!("{:.0} ms", s * 1e3)
    } else if s >= 0.01 {
        format!("{:.1} ms", s * 1e3)
    } else if s >= 0.001 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// Seconds with one decimal (BuildKit's step times have 0.1 s resolution).
pub fn tenths(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

/// A Markdown table.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.head.len(), "a row of {:?}", self.head);
        self.rows.push(cells);
    }

    pub fn print(&self) {
        println!("| {} |", self.head.join(" | "));
        println!("|{}", "---|".repeat(self.head.len()));
        for r in &self.rows {
            println!("| {} |", r.join(" | "));
        }
        let _ = std::io::stdout().flush();
    }
}

/// One scenario measured for both builders.
#[derive(Default)]
pub struct SideRow {
    pub label: String,
    pub mb: Samples,
    /// memobuild's own build time (the `finished` event).
    pub mb_daemon: Samples,
    pub bk: Samples,
}

impl SideRow {
    pub fn new(label: impl Into<String>) -> SideRow {
        SideRow {
            label: label.into(),
            ..SideRow::default()
        }
    }
}

/// memobuild against BuildKit, whole-process wall times: the table the e2e
/// and run benches print, then `extra` rows (references). `docker`: whether
/// BuildKit was measured.
pub fn print_side_by_side(rows: &[SideRow], extra: Vec<Vec<String>>, docker: bool) {
    println!();
    println!("Wall time of the whole client process. p50 = median; p99 is nearest-rank,");
    println!(
        "i.e. the maximum when there are fewer than 100 runs. ratio = memobuild p50 / BuildKit p50"
    );
    println!("(< 1: memobuild is faster).");
    println!();
    let mut t = Table::new(&[
        "scenario",
        "runs (mb/bk)",
        "memobuild p50",
        "memobuild p99",
        "(daemon-side p50)",
        "BuildKit p50",
        "BuildKit p99",
        "ratio",
    ]);
    for r in rows {
        let ratio = match (r.mb.p50(), r.bk.p50()) {
            (Some(m), Some(b)) if docker => format!("{:.2}", m.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        t.row(vec![
            r.label.clone(),
            format!("{}/{}", r.mb.len(), r.bk.len()),
            fmt(r.mb.p50()),
            fmt(r.mb.p99()),
            fmt(r.mb_daemon.p50()),
            fmt(r.bk.p50()),
            fmt(r.bk.p99()),
            ratio,
        ]);
    }
    for r in extra {
        t.row(r);
    }
    t.print();
}

/// Notes after a report's tables, one bullet each.
pub fn print_notes(notes: &[String]) {
    if notes.is_empty() {
        return;
    }
    println!();
    for n in notes {
        println!("* {n}");
    }
    let _ = std::io::stdout().flush();
}
