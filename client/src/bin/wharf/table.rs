//! Human output: aligned text tables (a header row and data rows, columns padded to their
//! widest cell and separated by two spaces, no trailing spaces) and counted nouns.

use std::fmt::Write as _;

/// `count` and `noun`, plural unless the count is one: `1 partition`, `3 partitions`.
/// For the nouns the CLI counts, whose plurals all add an `s`.
pub fn counted(count: impl Into<u64>, noun: &str) -> String {
    let count = count.into();
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A table being built.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header_cells: Vec<String> = self
            .headers
            .iter()
            .map(|header| header.to_string())
            .collect();
        for row in std::iter::once(&header_cells).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `-` for a missing value.
pub fn or_dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "PARTITIONS"]);
        table.row(vec!["orders".to_string(), "6".to_string()]);
        table.row(vec!["x".to_string(), "12".to_string()]);
        assert_eq!(
            table.render(),
            "NAME    PARTITIONS\norders  6\nx       12\n"
        );
    }

    #[test]
    fn one_is_singular_and_other_counts_plural() {
        assert_eq!(counted(1u32, "partition"), "1 partition");
        assert_eq!(counted(0u64, "message"), "0 messages");
        assert_eq!(counted(3u32, "record"), "3 records");
    }

    #[test]
    fn missing_values_render_as_dash() {
        assert_eq!(or_dash(None), "-");
        assert_eq!(or_dash(Some(7)), "7");
    }
}
