//! What a generated key must fit: the type of a sharded table's key column, as a shard's catalog
//! reports it, and whether the column is `GENERATED ALWAYS AS IDENTITY` (which takes an explicit
//! value only with `OVERRIDING SYSTEM VALUE`).

/// How wide a generated key may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWidth {
    /// `smallint`: ids from catalog blocks, at most 32,767.
    Small,
    /// `integer` (`serial`, `int4` identity): ids from catalog blocks, at most 2,147,483,647.
    Int,
    /// `bigint` or `numeric`: the proxy's 64-bit time-ordered ids.
    Wide,
    /// `uuid`: the proxy's time-ordered UUIDv7s.
    Uuid,
}

impl KeyWidth {
    /// The largest id a column of this width holds.
    pub fn max(self) -> i64 {
        match self {
            KeyWidth::Small => i64::from(i16::MAX),
            KeyWidth::Int => i64::from(i32::MAX),
            KeyWidth::Wide | KeyWidth::Uuid => i64::MAX,
        }
    }

    /// How many ids one catalog block hands a proxy: small enough that ids stay dense across
    /// proxies and restarts, large enough that the catalog is asked rarely.
    pub fn block_len(self, wanted: usize) -> i64 {
        let base: i64 = match self {
            KeyWidth::Small => 16,
            KeyWidth::Int | KeyWidth::Wide | KeyWidth::Uuid => 1_000,
        };
        base.max(i64::try_from(wanted).unwrap_or(i64::MAX))
    }
}

/// A key column's facts, from one shard's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyColumn {
    pub width: KeyWidth,
    /// `GENERATED ALWAYS AS IDENTITY`: the INSERT needs `OVERRIDING SYSTEM VALUE`.
    pub always_identity: bool,
}

/// Why no key can be generated for a column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyColumnError {
    #[error("pgshard generates keys only for smallint, integer, bigint, numeric and uuid key columns; column {column} of {table} is {type_name}: give the key in the INSERT")]
    Unsupported {
        table: String,
        column: String,
        type_name: String,
    },
}

/// The SQL that asks a shard for a key column's type (the domain's base type for a domain) and
/// identity kind, as `type|identity`; no row when the table or column does not exist.
pub fn lookup_sql(table: &str, column: &str) -> String {
    use crate::sql_text::quote_literal;
    format!(
        "SELECT format('%s|%s', CASE WHEN t.typtype = 'd' THEN t.typbasetype::regtype::text \
         ELSE a.atttypid::regtype::text END, a.attidentity) \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = to_regclass({}) AND a.attname = {} AND NOT a.attisdropped",
        quote_literal(table),
        quote_literal(column)
    )
}

/// Reads `lookup_sql`'s answer.
pub fn parse_lookup(table: &str, column: &str, answer: &str) -> Result<KeyColumn, KeyColumnError> {
    let (type_name, identity) = answer.split_once('|').unwrap_or((answer, ""));
    let width = match type_name {
        "smallint" => KeyWidth::Small,
        "integer" => KeyWidth::Int,
        "bigint" | "numeric" => KeyWidth::Wide,
        "uuid" => KeyWidth::Uuid,
        other => {
            return Err(KeyColumnError::Unsupported {
                table: table.to_string(),
                column: column.to_string(),
                type_name: other.to_string(),
            })
        }
    };
    Ok(KeyColumn {
        width,
        always_identity: identity == "a",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_type_and_identity_kind() {
        let table = [
            ("integer|", KeyWidth::Int, false),
            ("integer|a", KeyWidth::Int, true),
            ("integer|d", KeyWidth::Int, false),
            ("smallint|", KeyWidth::Small, false),
            ("bigint|a", KeyWidth::Wide, true),
            ("numeric|", KeyWidth::Wide, false),
            ("uuid|", KeyWidth::Uuid, false),
        ];
        for (answer, width, always_identity) in table {
            assert_eq!(
                parse_lookup("t", "id", answer),
                Ok(KeyColumn {
                    width,
                    always_identity
                }),
                "{answer}"
            );
        }
        let err = parse_lookup("t", "id", "text|").unwrap_err();
        assert!(err.to_string().contains("column id of t is text"), "{err}");
    }

    #[test]
    fn widths_bound_ids_and_blocks() {
        assert_eq!(KeyWidth::Int.max(), 2_147_483_647);
        assert_eq!(KeyWidth::Small.max(), 32_767);
        assert_eq!(KeyWidth::Int.block_len(10), 1_000);
        assert_eq!(KeyWidth::Int.block_len(5_000), 5_000);
        assert_eq!(KeyWidth::Small.block_len(1), 16);
    }

    #[test]
    fn lookup_quotes_names() {
        let sql = lookup_sql("o'brien", "id");
        assert!(sql.contains("to_regclass('o''brien')"), "{sql}");
    }
}
