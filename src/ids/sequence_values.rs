//! Sequence values for a multi-row INSERT whose rows pgshard splits between shards.
//!
//! Each shard numbers a sharded table's sequences in a range of its own (see
//! [`super::sequence_ranges`]), so rows of one INSERT that land on several shards would get ids
//! ascending per shard, not in the order of the rows, as one Postgres gives them. ORMs rely on
//! that order: SQLAlchemy matches the ids an INSERT returns to its new objects by sorting them.
//! So before such an INSERT is split, pgshard draws the values of every sequence column the
//! INSERT leaves to its default from one shard's sequence, in row order, and writes them into
//! the rows. The values stay unique: they come from one sequence, whose range no other shard
//! numbers in.

use crate::sql_text::quote_literal;

/// A column numbered by a sequence the table owns (`serial`, `bigserial`, an identity column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceColumn {
    pub column: String,
    /// The sequence, as `regclass` text.
    pub sequence: String,
    /// `GENERATED ALWAYS AS IDENTITY`: a value is taken only with `OVERRIDING SYSTEM VALUE`.
    pub always_identity: bool,
}

/// Why drawn values could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrawError {
    #[error("the shard returned {found} values of sequence {sequence} for {wanted} rows")]
    Count {
        sequence: String,
        found: usize,
        wanted: usize,
    },
    #[error("the shard returned {0:?} as a value of sequence {1}")]
    NotANumber(String, String),
}

/// Field and record separators of [`lookup_sql`]'s answer: no name holds them in practice, and
/// a name that does is only left out (its column is then numbered as before).
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';

/// The SQL that asks a shard for `table`'s sequence columns (`table` as `regclass` text), one
/// value: `column FIELD sequence FIELD identity` records joined by RECORD, empty when it has
/// none; no row when the table does not exist there.
pub fn lookup_sql(table: &str) -> String {
    let table = quote_literal(table);
    format!(
        "SELECT coalesce((SELECT string_agg(concat_ws(chr(31), a.attname, \
         pg_get_serial_sequence(a.attrelid::regclass::text, a.attname), a.attidentity), chr(30) \
         ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = to_regclass({table}) \
         AND a.attnum > 0 AND NOT a.attisdropped \
         AND pg_get_serial_sequence(a.attrelid::regclass::text, a.attname) IS NOT NULL), '') \
         WHERE to_regclass({table}) IS NOT NULL"
    )
}

/// Reads [`lookup_sql`]'s answer.
pub fn parse_lookup(answer: &str) -> Vec<SequenceColumn> {
    answer
        .split(RECORD)
        .filter_map(|record| {
            let mut fields = record.split(FIELD);
            let (column, sequence, identity) = (fields.next()?, fields.next()?, fields.next());
            (fields.next().is_none() && !column.is_empty()).then(|| SequenceColumn {
                column: column.to_string(),
                sequence: sequence.to_string(),
                always_identity: identity == Some("a"),
            })
        })
        .collect()
}

/// The sequence columns an INSERT listing `listed` leaves to their defaults.
pub fn omitted<'a>(columns: &'a [SequenceColumn], listed: &[String]) -> Vec<&'a SequenceColumn> {
    columns
        .iter()
        .filter(|c| !listed.iter().any(|l| l == &c.column))
        .collect()
}

/// The SQL that takes `rows` values of `sequence`, as one comma-separated value in the order
/// they were taken (the order of the rows that get them).
pub fn draw_sql(sequence: &str, rows: usize) -> String {
    format!(
        "SELECT string_agg(nextval({}::regclass)::text, ',' ORDER BY g) FROM generate_series(1, {rows}) g",
        quote_literal(sequence)
    )
}

/// Reads [`draw_sql`]'s answer: exactly `rows` values.
pub fn parse_drawn(sequence: &str, answer: &str, rows: usize) -> Result<Vec<i64>, DrawError> {
    let values = answer
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| DrawError::NotANumber(v.to_string(), sequence.to_string()))
        })
        .collect::<Result<Vec<i64>, DrawError>>()?;
    if values.len() != rows {
        return Err(DrawError::Count {
            sequence: sequence.to_string(),
            found: values.len(),
            wanted: rows,
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, sequence: &str, always_identity: bool) -> SequenceColumn {
        SequenceColumn {
            column: name.into(),
            sequence: sequence.into(),
            always_identity,
        }
    }

    #[test]
    fn reads_sequence_columns() {
        let answer = "id\u{1f}public.t_id_seq\u{1f}\u{1e}g\u{1f}public.t_g_seq\u{1f}a\u{1e}\
                      Odd\u{1f}public.\"t_Odd_seq\"\u{1f}d";
        assert_eq!(
            parse_lookup(answer),
            vec![
                column("id", "public.t_id_seq", false),
                column("g", "public.t_g_seq", true),
                column("Odd", "public.\"t_Odd_seq\"", false),
            ]
        );
        assert_eq!(parse_lookup(""), vec![]);
        assert_eq!(parse_lookup("x\u{1f}s\u{1f}\u{1f}extra"), vec![]);
    }

    #[test]
    fn omitted_columns_are_the_unlisted_ones() {
        let columns = [column("id", "s1", false), column("n", "s2", false)];
        let listed = vec!["customer_id".to_string(), "n".to_string()];
        assert_eq!(omitted(&columns, &listed), vec![&columns[0]]);
        let all = vec!["id".to_string(), "n".to_string()];
        assert!(omitted(&columns, &all).is_empty());
    }

    #[test]
    fn drawn_values_come_back_in_order_and_counted() {
        let sql = draw_sql("public.\"t_Odd_seq\"", 3);
        assert!(
            sql.contains("nextval('public.\"t_Odd_seq\"'::regclass)")
                && sql.contains("generate_series(1, 3)"),
            "{sql}"
        );
        assert_eq!(parse_drawn("s", "5,6,9", 3), Ok(vec![5, 6, 9]));
        assert!(matches!(
            parse_drawn("s", "5,6", 3),
            Err(DrawError::Count { found: 2, .. })
        ));
        assert!(matches!(
            parse_drawn("s", "5,x,7", 3),
            Err(DrawError::NotANumber(..))
        ));
    }

    #[test]
    fn lookup_quotes_the_table() {
        let sql = lookup_sql("app.\"O'Line\"");
        assert!(sql.contains("to_regclass('app.\"O''Line\"')"), "{sql}");
    }
}
