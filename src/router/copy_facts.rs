//! What a COPY statement says about its data stream: target table, column list, format and the
//! options that change how rows and fields are delimited. The proxy needs these to split a
//! `COPY … FROM STDIN` between shards and to merge the shards' `COPY … TO STDOUT` streams.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// Columns named by a FORCE_NOT_NULL / FORCE_NULL option.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ColumnSet {
    #[default]
    None,
    All,
    Some(Vec<String>),
}

impl ColumnSet {
    /// True when the set names `column`.
    pub fn contains(&self, column: &str) -> bool {
        match self {
            ColumnSet::None => false,
            ColumnSet::All => true,
            ColumnSet::Some(v) => v.iter().any(|c| c == column),
        }
    }
}

/// The facts of one COPY statement. Option values are as written; `None` means Postgres's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFacts {
    /// `(schema, table)` for a COPY of a table (schema empty when not written); `None` for
    /// `COPY (query) TO`.
    pub table: Option<(String, String)>,
    /// The column list, when one is written.
    pub columns: Option<Vec<String>>,
    pub format: CopyFormat,
    pub delimiter: Option<u8>,
    pub null: Option<String>,
    pub header: bool,
    pub quote: Option<u8>,
    pub escape: Option<u8>,
    pub force_not_null: ColumnSet,
    pub force_null: ColumnSet,
    /// Set when the stream cannot be split exactly (an encoding whose multi-byte characters may
    /// contain ASCII bytes): names what is missing.
    pub unsupported: Option<String>,
}

/// Encodings whose multi-byte characters can contain bytes that look like ASCII delimiters,
/// quotes or backslashes (normalized: lowercase, letters and digits only).
const ASCII_UNSAFE_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "shiftjis2004",
    "big5",
    "gbk",
    "uhc",
    "gb18030",
    "johab",
    "win932",
    "win936",
    "win949",
    "win950",
    "windows932",
    "windows936",
    "windows949",
    "windows950",
    "cp932",
    "cp936",
    "cp949",
    "cp950",
];

/// True when a client encoding can be split byte-wise (every multi-byte character is made of bytes
/// ≥ 0x80).
pub fn encoding_is_ascii_safe(name: &str) -> bool {
    let norm: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    !ASCII_UNSAFE_ENCODINGS.contains(&norm.as_str())
}

fn node(n: &Option<Box<pb::Node>>) -> Option<&NodeEnum> {
    n.as_ref().and_then(|b| b.node.as_ref())
}

/// The text of a string-ish option argument.
fn arg_text(arg: Option<&NodeEnum>) -> Option<String> {
    match arg? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::Integer(i) => Some(i.ival.to_string()),
        NodeEnum::Boolean(b) => Some(b.boolval.to_string()),
        NodeEnum::Float(f) => Some(f.fval.clone()),
        _ => None,
    }
}

/// A boolean option the way Postgres reads it (no argument means true).
fn arg_bool(arg: Option<&NodeEnum>) -> bool {
    match arg {
        None => true,
        Some(NodeEnum::Boolean(b)) => b.boolval,
        Some(NodeEnum::Integer(i)) => i.ival != 0,
        Some(other) => match arg_text(Some(other)) {
            Some(t) => !matches!(
                t.to_ascii_lowercase().as_str(),
                "false" | "off" | "0" | "no"
            ),
            None => true,
        },
    }
}

fn one_byte(arg: Option<&NodeEnum>) -> Option<u8> {
    let text = arg_text(arg)?;
    match text.as_bytes() {
        [b] => Some(*b),
        _ => None,
    }
}

fn column_set(arg: Option<&NodeEnum>) -> ColumnSet {
    match arg {
        Some(NodeEnum::AStar(_)) => ColumnSet::All,
        Some(NodeEnum::List(l)) => ColumnSet::Some(
            l.items
                .iter()
                .filter_map(|n| match n.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => ColumnSet::None,
    }
}

/// Reads the facts of a parsed COPY statement.
pub fn analyze(c: &pb::CopyStmt) -> CopyFacts {
    let mut f = CopyFacts {
        table: c
            .relation
            .as_ref()
            .map(|r| (r.schemaname.clone(), r.relname.clone())),
        columns: None,
        format: CopyFormat::Text,
        delimiter: None,
        null: None,
        header: false,
        quote: None,
        escape: None,
        force_not_null: ColumnSet::None,
        force_null: ColumnSet::None,
        unsupported: None,
    };
    if !c.attlist.is_empty() {
        f.columns = Some(
            c.attlist
                .iter()
                .filter_map(|n| match n.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect(),
        );
    }
    for opt in &c.options {
        let Some(NodeEnum::DefElem(d)) = opt.node.as_ref() else {
            continue;
        };
        let arg = node(&d.arg);
        match d.defname.as_str() {
            "format" => {
                f.format = match arg_text(arg).map(|t| t.to_ascii_lowercase()).as_deref() {
                    Some("csv") => CopyFormat::Csv,
                    Some("binary") => CopyFormat::Binary,
                    _ => CopyFormat::Text,
                }
            }
            "delimiter" => f.delimiter = one_byte(arg),
            "null" => f.null = arg_text(arg),
            "header" => {
                f.header = match arg_text(arg).map(|t| t.to_ascii_lowercase()).as_deref() {
                    Some("match") => true,
                    _ => arg_bool(arg),
                }
            }
            "quote" => f.quote = one_byte(arg),
            "escape" => f.escape = one_byte(arg),
            "force_not_null" => f.force_not_null = column_set(arg),
            "force_null" => f.force_null = column_set(arg),
            "encoding" => {
                if let Some(enc) = arg_text(arg).filter(|e| !encoding_is_ascii_safe(e)) {
                    f.unsupported = Some(format!(
                        "COPY in encoding {enc} (whose characters may contain ASCII bytes) across shards is not supported; use UTF8"
                    ));
                }
            }
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sql: &str) -> CopyFacts {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.clone());
        match stmt {
            Some(NodeEnum::CopyStmt(c)) => analyze(&c),
            other => panic!("not a COPY: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_column_list() {
        let f = facts("copy users from stdin");
        assert_eq!(f.table, Some((String::new(), "users".into())));
        assert_eq!(f.columns, None);
        assert_eq!(f.format, CopyFormat::Text);
        assert!(!f.header);
        let f = facts("COPY public.users (user_id, Name) FROM STDIN");
        assert_eq!(f.table, Some(("public".into(), "users".into())));
        assert_eq!(f.columns, Some(vec!["user_id".into(), "name".into()]));
    }

    #[test]
    fn modern_options() {
        let f = facts(
            "copy users (user_id, name) from stdin with (format csv, header match, delimiter ';', null 'x', force_not_null (user_id), quote '''', escape '\\')",
        );
        assert_eq!(f.format, CopyFormat::Csv);
        assert!(f.header);
        assert_eq!(f.delimiter, Some(b';'));
        assert_eq!(f.null.as_deref(), Some("x"));
        assert_eq!(f.quote, Some(b'\''));
        assert_eq!(f.escape, Some(b'\\'));
        assert!(f.force_not_null.contains("user_id"));
        assert!(!f.force_null.contains("user_id"));
        let f = facts("copy users from stdin (format binary, header false, force_null *)");
        assert_eq!(f.format, CopyFormat::Binary);
        assert!(!f.header);
        assert!(f.force_null.contains("anything"));
        assert!(facts("copy users from stdin (header 1)").header);
        assert!(!facts("copy users from stdin (header off)").header);
        assert!(facts("copy users from stdin (header)").header);
    }

    #[test]
    fn legacy_options() {
        let f = facts("copy users from stdin with csv header delimiter ',' force not null user_id");
        assert_eq!(f.format, CopyFormat::Csv);
        assert!(f.header);
        assert!(f.force_not_null.contains("user_id"));
        assert_eq!(
            facts("copy users from stdin binary").format,
            CopyFormat::Binary
        );
        assert_eq!(
            facts("copy users to stdout with delimiter '|' null as 'N'").delimiter,
            Some(b'|')
        );
    }

    #[test]
    fn query_form_and_encodings() {
        let f = facts("copy (select * from users) to stdout (format csv, header)");
        assert_eq!(f.table, None);
        assert!(f.header);
        assert!(facts("copy users from stdin (encoding 'SJIS')")
            .unsupported
            .is_some());
        assert!(facts("copy users from stdin (encoding 'LATIN1')")
            .unsupported
            .is_none());
        assert!(encoding_is_ascii_safe("UTF8"));
        assert!(!encoding_is_ascii_safe("Shift_JIS_2004"));
    }
}
