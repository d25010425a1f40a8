//! Result sets the console builds: typed columns and text rows, sent the way Postgres sends a
//! query result (RowDescription, DataRows, CommandComplete).

use bytes::{BufMut, BytesMut};

use crate::wire::backend::{self as be, ROW_DESCRIPTION};
use crate::wire::frame::Frame;

/// Column types the console uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int8,
    Bool,
    Numeric,
    Timestamptz,
}

impl ColumnType {
    fn oid_and_len(self) -> (u32, i16) {
        match self {
            ColumnType::Text => (25, -1),
            ColumnType::Int8 => (20, 8),
            ColumnType::Bool => (16, 1),
            ColumnType::Numeric => (1700, -1),
            ColumnType::Timestamptz => (1184, 8),
        }
    }
}

/// A result set under construction.
pub struct ResultSet {
    columns: Vec<(&'static str, ColumnType)>,
    rows: Vec<Vec<Option<String>>>,
}

/// One cell value, in Postgres's text format for its column type.
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Cell {
    fn from(v: &str) -> Cell {
        Cell::Text(v.to_string())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(v)
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Cell {
        Cell::Int(v)
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Cell {
        Cell::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Cell {
    fn from(v: usize) -> Cell {
        Cell::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Cell {
    fn from(v: u32) -> Cell {
        Cell::Int(i64::from(v))
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Cell {
        Cell::Bool(v)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map_or(Cell::Null, Into::into)
    }
}

impl ResultSet {
    /// An empty result with these columns.
    pub fn new(columns: &[(&'static str, ColumnType)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(
            cells
                .into_iter()
                .map(|c| match c {
                    Cell::Null => None,
                    Cell::Text(s) => Some(s),
                    Cell::Int(i) => Some(i.to_string()),
                    Cell::Bool(b) => Some(if b { "t" } else { "f" }.to_string()),
                })
                .collect(),
        );
    }

    /// The rows so far, as text (unit tests read them).
    pub fn rows(&self) -> &[Vec<Option<String>>] {
        &self.rows
    }

    /// RowDescription, one DataRow per row, and CommandComplete `SHOW`.
    pub fn frames(&self) -> Vec<Frame> {
        let mut b = BytesMut::new();
        b.put_i16(self.columns.len() as i16);
        for (name, ty) in &self.columns {
            let (oid, len) = ty.oid_and_len();
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(0);
            b.put_i16(0);
            b.put_u32(oid);
            b.put_i16(len);
            b.put_i32(-1);
            b.put_i16(0);
        }
        let mut frames = vec![Frame::new(ROW_DESCRIPTION, b.freeze())];
        for row in &self.rows {
            let cells: Vec<Option<&str>> = row.iter().map(|c| c.as_deref()).collect();
            frames.push(be::data_row(&cells));
        }
        frames.push(be::command_complete("SHOW"));
        frames
    }
}
