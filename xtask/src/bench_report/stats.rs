//! The pure arithmetic of the report: medians, ratios, goals and Markdown tables.

use std::fmt::Write as _;

/// Median of the finite values (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v[mid - 1] + v[mid]) / 2.0)
    }
}

/// `a / b` when both are known, finite and `b > 0`.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// `0.82x`, or `n/a`.
pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"))
}

/// A number with `digits` decimals, or `n/a`.
pub(crate) fn fmt_num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "n/a".into(), |x| format!("{x:.digits$}"))
}

/// A whole number with thousands separators (`1,234,567`), or `n/a`.
pub(crate) fn fmt_count(x: Option<f64>) -> String {
    let Some(x) = x.filter(|x| x.is_finite()) else {
        return "n/a".into();
    };
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 { format!("-{out}") } else { out }
}

/// Which side of the target a goal's ratio must be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    /// The ratio must be at least the target (throughput-like).
    AtLeast,
    /// The ratio must be at most the target (latency-like).
    AtMost,
}

/// One goal of the issues, with what this run measured.
#[derive(Debug, Clone)]
pub(crate) struct Goal {
    /// Report section (`transport`, `redis`, ...).
    pub(crate) section: &'static str,
    /// What is compared, e.g. `Nodosum / raw QUIC, 1 KiB msgs/s`.
    pub(crate) what: String,
    /// The measured ratio; `None` when it could not be measured in this run.
    pub(crate) ratio: Option<f64>,
    pub(crate) cmp: Cmp,
    pub(crate) target: f64,
}

impl Goal {
    pub(crate) fn new(
        section: &'static str,
        what: impl Into<String>,
        ratio: Option<f64>,
        cmp: Cmp,
        target: f64,
    ) -> Self {
        Self {
            section,
            what: what.into(),
            ratio,
            cmp,
            target,
        }
    }

    /// Whether the goal is met; `None` when not measured.
    pub(crate) fn met(&self) -> Option<bool> {
        let r = self.ratio?;
        Some(match self.cmp {
            Cmp::AtLeast => r >= self.target,
            Cmp::AtMost => r <= self.target,
        })
    }

    /// `>= 0.90x` or `<= 1.20x`.
    pub(crate) fn target_text(&self) -> String {
        let op = match self.cmp {
            Cmp::AtLeast => ">=",
            Cmp::AtMost => "<=",
        };
        format!("{op} {:.2}x", self.target)
    }

    /// `met`, `**not met**` or `not measured`.
    pub(crate) fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        }
    }
}

/// The goals as one Markdown table.
pub(crate) fn goals_table(goals: &[Goal]) -> String {
    let mut t = Table::new(&["section", "goal", "measured", "target", "verdict"]);
    for g in goals {
        t.row(vec![
            g.section.to_owned(),
            g.what.clone(),
            fmt_ratio(g.ratio),
            g.target_text(),
            g.verdict().to_owned(),
        ]);
    }
    t.render()
}

/// A Markdown table.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty, extra cells dropped.
    pub(crate) fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table, ending with a newline; `|` inside cells is escaped.
    pub(crate) fn render(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut out = String::new();
        let line = |cells: &[String]| {
            format!(
                "| {} |",
                cells
                    .iter()
                    .map(|c| cell(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        let _ = writeln!(out, "{}", line(&self.header));
        let _ = writeln!(out, "|{}", "---|".repeat(self.header.len()));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_needs_a_positive_denominator() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(f64::INFINITY), Some(1.0)), None);
        assert_eq!(fmt_ratio(Some(0.8249)), "0.82x");
        assert_eq!(fmt_ratio(None), "n/a");
    }

    #[test]
    fn counts_get_separators() {
        assert_eq!(fmt_count(Some(1_234_567.4)), "1,234,567");
        assert_eq!(fmt_count(Some(999.0)), "999");
        assert_eq!(fmt_count(Some(1000.0)), "1,000");
        assert_eq!(fmt_count(Some(0.0)), "0");
        assert_eq!(fmt_count(None), "n/a");
    }

    #[test]
    fn goals_compare_on_the_right_side() {
        let at_least = Goal::new("t", "x", Some(0.9), Cmp::AtLeast, 0.9);
        assert_eq!(at_least.met(), Some(true));
        let below = Goal::new("t", "x", Some(0.89), Cmp::AtLeast, 0.9);
        assert_eq!(below.met(), Some(false));
        assert_eq!(below.verdict(), "**not met**");
        let latency = Goal::new("t", "p99", Some(1.3), Cmp::AtMost, 1.2);
        assert_eq!(latency.met(), Some(false));
        assert_eq!(latency.target_text(), "<= 1.20x");
        let unknown = Goal::new("t", "x", None, Cmp::AtMost, 1.2);
        assert_eq!(unknown.met(), None);
        assert_eq!(unknown.verdict(), "not measured");
        let table = goals_table(&[at_least, latency]);
        assert!(
            table.contains("| t | x | 0.90x | >= 0.90x | met |"),
            "{table}"
        );
        assert!(table.contains("| t | p99 | 1.30x | <= 1.20x | **not met** |"));
    }

    #[test]
    fn table_pads_rows_and_escapes_pipes() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x|y".into()]);
        assert_eq!(t.render(), "| a | b |\n|---|---|\n| x\\|y |  |\n");
    }
}
