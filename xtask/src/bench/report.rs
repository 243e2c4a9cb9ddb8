//! Measurements, their medians over runs, and the Markdown report.
use std::collections::BTreeMap;

/// One number of one server in one scenario, over several runs.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn median(&self) -> Option<f64> {
        let mut sorted: Vec<f64> = self.0.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        Some(if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        })
    }
}

/// The q-th quantile (0..=1) of `values`, by nearest rank.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// A scenario's table: rows of (case, server), columns of metrics, each a set of samples.
pub struct Table {
    pub title: String,
    pub description: String,
    pub columns: Vec<String>,
    /// (case, server) → column → samples, in the order they were first recorded.
    pub rows: Vec<((String, String), BTreeMap<String, Samples>)>,
    /// The column whose ratio to Wisp's is reported, and whether higher is better.
    pub ratio_of: Option<(String, bool)>,
}

impl Table {
    pub fn new(title: &str, description: &str, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            description: description.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            ratio_of: None,
        }
    }

    fn row(&self, case: &str, server: &str) -> Option<&BTreeMap<String, Samples>> {
        self.rows
            .iter()
            .find(|((c, s), _)| c == case && s == server)
            .map(|(_, columns)| columns)
    }

    pub fn record(&mut self, case: &str, server: &str, column: &str, value: f64) {
        let index = match self
            .rows
            .iter()
            .position(|((c, s), _)| c == case && s == server)
        {
            Some(index) => index,
            None => {
                self.rows
                    .push(((case.into(), server.into()), BTreeMap::new()));
                self.rows.len() - 1
            }
        };
        self.rows[index]
            .1
            .entry(column.into())
            .or_default()
            .0
            .push(value);
    }

    /// Whether every row has a number in every column: the smoke test's check.
    pub fn complete(&self) -> Result<(), String> {
        if self.rows.is_empty() {
            return Err(format!("{}: no measurements", self.title));
        }
        for ((case, server), columns) in &self.rows {
            for column in &self.columns {
                if columns.get(column).and_then(Samples::median).is_none() {
                    return Err(format!("{}: {server} ({case}) has no {column}", self.title));
                }
            }
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut text = format!("### {}\n\n{}\n\n", self.title, self.description);
        let mut header = vec!["Case".to_string(), "Server".to_string()];
        header.extend(self.columns.iter().cloned());
        if let Some((column, _)) = &self.ratio_of {
            header.push(format!("{column} vs Wisp"));
        }
        text.push_str(&format!("| {} |\n", header.join(" | ")));
        text.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        // Grouped by case, in the order cases and servers were first measured.
        let mut cases: Vec<&String> = Vec::new();
        for ((case, _), _) in &self.rows {
            if !cases.contains(&case) {
                cases.push(case);
            }
        }
        let ordered = cases
            .into_iter()
            .flat_map(|case| self.rows.iter().filter(move |((c, _), _)| c == case));
        for ((case, server), columns) in ordered {
            let mut cells = vec![case.clone(), server.clone()];
            for column in &self.columns {
                cells.push(
                    columns
                        .get(column)
                        .and_then(Samples::median)
                        .map_or_else(|| "-".into(), format_number),
                );
            }
            if let Some((column, higher_is_better)) = &self.ratio_of {
                let wisp = self
                    .row(case, "Wisp")
                    .and_then(|row| row.get(column))
                    .and_then(Samples::median);
                let this = columns.get(column).and_then(Samples::median);
                cells.push(match (wisp, this) {
                    (Some(wisp), Some(this)) if this > 0.0 && wisp > 0.0 => {
                        // How many times better Wisp is than this server.
                        let ratio = if *higher_is_better {
                            wisp / this
                        } else {
                            this / wisp
                        };
                        format!("Wisp {ratio:.2}×")
                    }
                    _ => "-".into(),
                });
            }
            text.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        text.push('\n');
        text
    }
}

fn format_number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(Samples(vec![3.0, 1.0, 2.0]).median(), Some(2.0));
        assert_eq!(Samples(vec![4.0, 1.0, 2.0, 3.0]).median(), Some(2.5));
        assert_eq!(Samples(vec![]).median(), None);
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn tables_report_ratios_and_gaps() {
        let mut table = Table::new("T", "d", &["rate"]);
        table.ratio_of = Some(("rate".into(), true));
        table.record("c", "Wisp", "rate", 300.0);
        table.record("c", "Kea", "rate", 100.0);
        assert!(table.complete().is_ok());
        let text = table.markdown();
        assert!(text.contains("| c | Kea | 100 | Wisp 3.00× |"), "{text}");
        table.columns.push("p99".into());
        assert!(table.complete().unwrap_err().contains("no p99"));
    }
}
