//! The statements pgshard runs on a lookup table (see `config/lookups.rs`) and how their answers
//! read: the lookup of values before a read, and the claim of a value by a write, in the
//! write's transaction. Pure: the session runs them on its connections.
//!
//! A claim keeps this invariant: every row whose column holds `v` has its key in the lookup
//! row of `v`. A lookup row may outlive its base row (DELETE, or an UPDATE to another value,
//! leaves it): such a stale row only sends a read to a shard that answers with no row, which is
//! the right answer, and the next claim of `v` replaces it after checking the row it names no
//! longer holds `v`.

use bytes::Bytes;

use crate::config::lookups::{KEY_COLUMN, VALUE_COLUMN};
use crate::exec::merge::row::split_row;
use crate::router::ShardKey;
use crate::sql_text::quote_ident;

/// The lookup rows of `values` (all on one shard): `(value, key)` as text.
pub fn read_sql(lookup_table: &str, values: &[ShardKey]) -> String {
    let list: Vec<String> = values.iter().map(ShardKey::sql_literal).collect();
    format!(
        "SELECT {VALUE_COLUMN}::text, {KEY_COLUMN}::text FROM {lookup_table} WHERE {VALUE_COLUMN} IN ({})",
        list.join(", ")
    )
}

/// Claims `value` for `key`: locks the value's lookup row and answers its key as text when there
/// is one (the caller decides), else inserts `(value, key)` and answers no row. Two writers of
/// a new value meet on the primary key: the second gets a unique violation, as on one Postgres.
pub fn claim_sql(lookup_table: &str, value: &ShardKey, key: &ShardKey) -> String {
    let (v, k) = (value.sql_literal(), key.sql_literal());
    format!(
        "WITH old AS (SELECT {KEY_COLUMN} FROM {lookup_table} WHERE {VALUE_COLUMN} = {v} FOR UPDATE), \
         ins AS (INSERT INTO {lookup_table} ({VALUE_COLUMN}, {KEY_COLUMN}) SELECT {v}, {k} WHERE NOT EXISTS (SELECT 1 FROM old)) \
         SELECT {KEY_COLUMN}::text FROM old"
    )
}

/// Whether the base row of `key` still holds `value` (one row when it does).
pub fn holds_sql(
    base_table: &str,
    key_column: &str,
    column: &str,
    key: &ShardKey,
    value: &ShardKey,
) -> String {
    format!(
        "SELECT 1 FROM {base_table} WHERE {} = {} AND {} = {}",
        quote_ident(key_column),
        key.sql_literal(),
        quote_ident(column),
        value.sql_literal()
    )
}

/// Points the (locked) lookup row of `value` at `key`.
pub fn move_sql(lookup_table: &str, value: &ShardKey, key: &ShardKey) -> String {
    format!(
        "UPDATE {lookup_table} SET {KEY_COLUMN} = {} WHERE {VALUE_COLUMN} = {}",
        key.sql_literal(),
        value.sql_literal()
    )
}

/// The text columns of one answer row; `None` when malformed or NULL.
pub fn text_columns(body: &Bytes) -> Option<Vec<String>> {
    split_row(body)
        .ok()?
        .into_iter()
        .map(|c| c.and_then(|b| String::from_utf8(b.to_vec()).ok()))
        .collect()
}

/// The error a claim of a value another row holds gets: Postgres's unique violation, naming the
/// lookup.
pub fn duplicate(
    lookup_table: &str,
    column: &str,
    value: &str,
) -> crate::wire::backend::ErrorFields {
    let mut e = crate::wire::backend::ErrorFields::error(
        "23505",
        format!("duplicate key value violates unique constraint of lookup {lookup_table}"),
    );
    e.detail = Some(format!("Key ({column})=({value}) already exists."));
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::backend as be;

    #[test]
    fn statements_and_rows() {
        let v = ShardKey::Text("o'k@x".into());
        let k = ShardKey::Int(7);
        assert_eq!(
            read_sql("lk", &[v.clone(), ShardKey::Text("b".into())]),
            "SELECT value::text, key::text FROM lk WHERE value IN ('o''k@x', 'b')"
        );
        let claim = claim_sql("lk", &v, &k);
        assert!(
            claim.contains("SELECT 'o''k@x', 7 WHERE NOT EXISTS"),
            "{claim}"
        );
        assert_eq!(
            holds_sql("users", "user_id", "email", &k, &v),
            "SELECT 1 FROM users WHERE user_id = 7 AND email = 'o''k@x'"
        );
        assert_eq!(
            move_sql("lk", &v, &k),
            "UPDATE lk SET key = 7 WHERE value = 'o''k@x'"
        );
        let row = be::data_row(&[Some("a"), Some("7")]);
        assert_eq!(text_columns(&row.body), Some(vec!["a".into(), "7".into()]));
        assert_eq!(text_columns(&be::data_row(&[None]).body), None);
    }
}
