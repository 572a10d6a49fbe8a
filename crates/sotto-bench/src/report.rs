//! The output of a run: every scenario returns [`Table`]s, printed as
//! Markdown (for BENCHMARKS.md) and, with `--out FILE.json|FILE.csv`, written
//! to a file as well. Figures are formatted once, here, so the printed table
//! and the file agree.

use std::path::Path;

/// One table of results.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// The scenario that produced it (the CLI's name).
    pub(crate) scenario: &'static str,
    /// A one-line title.
    pub(crate) title: String,
    /// Column headers.
    pub(crate) columns: Vec<String>,
    /// Rows, one cell per column.
    pub(crate) rows: Vec<Vec<String>>,
    /// Lines printed under the table (what was measured, caveats).
    pub(crate) notes: Vec<String>,
}

impl Table {
    pub(crate) fn new(scenario: &'static str, title: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            scenario,
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "{}", self.title);
        self.rows.push(cells);
    }

    pub(crate) fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    /// The table as Markdown: a `###` title, the table, its notes.
    pub(crate) fn markdown(&self) -> String {
        let mut s = format!("### `{}`: {}\n\n", self.scenario, self.title);
        s += &format!("| {} |\n", self.columns.join(" | "));
        let align: Vec<&str> = (0..self.columns.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        s += &format!("|{}|\n", align.join("|"));
        for r in &self.rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                s += &format!("- {n}\n");
            }
        }
        s
    }
}

/// Writes every table to `path`: JSON (an array of tables, each row an
/// object keyed by column) or CSV (long form: scenario, table, row, column,
/// value), chosen by the extension.
pub(crate) fn write(
    path: &Path,
    tables: &[Table],
    header: &serde_json::Value,
) -> anyhow::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let text = match ext {
        "json" => {
            let tables: Vec<serde_json::Value> = tables
                .iter()
                .map(|t| {
                    let rows: Vec<serde_json::Value> = t
                        .rows
                        .iter()
                        .map(|r| {
                            serde_json::Value::Object(
                                t.columns
                                    .iter()
                                    .cloned()
                                    .zip(r.iter().cloned().map(serde_json::Value::String))
                                    .collect(),
                            )
                        })
                        .collect();
                    serde_json::json!({
                        "scenario": t.scenario,
                        "title": t.title,
                        "columns": t.columns,
                        "rows": rows,
                        "notes": t.notes,
                    })
                })
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({ "run": header, "tables": tables }))?
        }
        "csv" => {
            let mut s = String::from("scenario,table,row,column,value\n");
            for t in tables {
                for (i, r) in t.rows.iter().enumerate() {
                    for (c, v) in t.columns.iter().zip(r) {
                        s += &format!(
                            "{},{},{i},{},{}\n",
                            t.scenario,
                            csv(&t.title),
                            csv(c),
                            csv(v)
                        );
                    }
                }
            }
            s
        }
        other => anyhow::bail!("--out: unknown format {other:?} (use .json or .csv)"),
    };
    std::fs::write(path, text)?;
    Ok(())
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Milliseconds with two decimals.
pub(crate) fn ms(d: std::time::Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// A ratio with two decimals.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// The value at fraction `p` of a sorted list.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
