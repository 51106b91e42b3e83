//! The tables the list commands print (`ls`, `workers`, `user ls`, `usage`): every column
//! padded to its widest cell; on a terminal narrower than the table, the widest text columns are
//! cut with `…`. Output that is not a terminal is never cut, so scripts see whole cells.

use std::io::IsTerminal;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right, and the column may be cut on a narrow terminal.
    Left,
    /// Numbers: padded on the left, never cut.
    Right,
}

/// The fewest characters a cut column keeps (the last one being `…`).
const MIN_CUT_WIDTH: usize = 8;
/// The space between two columns.
const GAP: &str = "  ";

/// A table: a header line and rows of cells, all with as many cells as there are columns.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            header: columns.iter().map(|(t, _)| (*t).to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty and extra ones are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, cut to `max_width` characters a line when one is given.
    pub fn render(&self, max_width: Option<usize>) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        if let Some(max) = max_width {
            self.shrink(&mut widths, max);
        }
        let mut out = self.line(&self.header, &widths);
        for row in &self.rows {
            out.push_str(&self.line(row, &widths));
        }
        out
    }

    /// Narrows the widest text column, one character at a time, until the table fits in `max`
    /// or every text column is down to [`MIN_CUT_WIDTH`].
    fn shrink(&self, widths: &mut [usize], max: usize) {
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP.len() * w.len().saturating_sub(1);
        while total(widths) > max {
            let widest = (0..widths.len())
                .filter(|&i| self.align[i] == Align::Left && widths[i] > MIN_CUT_WIDTH)
                .max_by_key(|&i| (widths[i], std::cmp::Reverse(i)));
            match widest {
                Some(i) => widths[i] -= 1,
                None => return,
            }
        }
    }

    /// One line: each cell cut to and padded to its column's width, without trailing spaces.
    fn line(&self, cells: &[String], widths: &[usize]) -> String {
        let mut parts = Vec::with_capacity(cells.len());
        for ((cell, &w), &align) in cells.iter().zip(widths).zip(&self.align) {
            let cell = cut(cell, w);
            parts.push(match align {
                Align::Left => format!("{cell:<w$}"),
                Align::Right => format!("{cell:>w$}"),
            });
        }
        let mut line = parts.join(GAP).trim_end().to_string();
        line.push('\n');
        line
    }

    /// Prints the table on stdout, cut to the terminal's width when stdout is a terminal.
    pub fn print(&self) {
        print!("{}", self.render(terminal_width()));
    }
}

/// A cell's width in characters.
fn width(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to `w` characters, its last one `…` when it was cut.
fn cut(text: &str, w: usize) -> String {
    if width(text) <= w {
        return text.to_string();
    }
    let mut out: String = text.chars().take(w.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The width of the terminal stdout is, from `COLUMNS` or the terminal itself; `None` when
/// stdout is not a terminal.
pub fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(columns);
    }
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1".into(), "short".into()]);
        t.row(vec![
            "0190b7c2-1234-7abc-8def-0123456789ab".into(),
            "100".into(),
            "x".into(),
        ]);
        t
    }

    #[test]
    fn columns_are_padded_to_their_widest_cell() {
        assert_eq!(
            table().render(None),
            "NAME                                    N  NOTE\n\
             a                                       1  short\n\
             0190b7c2-1234-7abc-8def-0123456789ab  100  x\n"
        );
    }

    #[test]
    fn a_narrow_terminal_cuts_the_widest_text_column() {
        let text = table().render(Some(30));
        for line in text.lines() {
            assert!(width(line) <= 30, "{line:?} is wider than 30");
        }
        assert!(text.contains("0190b7c2-1234-7ab…  100  x"), "{text}");
        assert!(text.contains("  1  short"), "{text}");
    }

    #[test]
    fn a_terminal_too_narrow_for_anything_keeps_the_minimum() {
        let text = table().render(Some(5));
        assert!(text.contains("0190b7c…"), "{text}");
        assert!(text.contains("100"), "numbers are never cut: {text}");
    }

    #[test]
    fn a_row_with_missing_cells_is_padded() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(None), "A  B\nx\n");
    }
}
