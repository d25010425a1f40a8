//! Generated keys for `INSERT INTO t (c1, …) SELECT * FROM UNNEST($1, …)` into a sharded table
//! whose column list omits the shard key (Django's `bulk_create` of objects without pks): the
//! session counts the rows, takes that many generated keys, and this module adds the key column
//! and an array of those keys to the statement, so it becomes an ordinary UNNEST insert split by
//! key (see `unnest_insert`). Pure: counting rows and rewriting text.

use super::key_type::{format_uuid, ShardKey};
use super::params::ParamSource;
use super::pg_array;
use super::rewrite::{matching, scan_tokens, RewriteError};
use super::unnest_insert::UnnestError;
use crate::sql_text::quote_ident;

/// How many rows `UNNEST` of the arrays `$n` (`args`) yields: the longest array's length (a
/// shorter one is padded with NULLs; a NULL array yields none).
pub fn rows(args: &[usize], params: &dyn ParamSource) -> Result<usize, UnnestError> {
    let mut rows = 0;
    for &n in args {
        let raw = params.raw(n).ok_or(UnnestError::Missing(n))?;
        if let Some(bytes) = raw.value {
            let decoded = pg_array::decode(&bytes, raw.binary)
                .map_err(|error| UnnestError::Array { param: n, error })?;
            rows = rows.max(decoded.elements.len());
        }
    }
    Ok(rows)
}

/// The text form of an array of keys (`{1,2,3}`, or uuids as `uuid_out` writes them).
pub fn key_array_text(keys: &[ShardKey]) -> String {
    let items: Vec<String> = keys
        .iter()
        .map(|k| match k {
            ShardKey::Int(k) => k.to_string(),
            ShardKey::Uuid(u) => format_uuid(u),
            ShardKey::Text(t) => t.clone(),
        })
        .collect();
    let elements: Vec<Option<&[u8]>> = items.iter().map(|s| Some(s.as_bytes())).collect();
    pg_array::encode_text(&elements)
}

/// `sql` with `key` first in its column list and `key_arg` (an array of the keys, e.g.
/// `$4::bigint[]` or `'{1,2}'::bigint[]`) first among the UNNEST arguments, so row `i` gets
/// element `i` of the key array; with `overriding`, also `OVERRIDING SYSTEM VALUE` before the
/// SELECT (a `GENERATED ALWAYS AS IDENTITY` key takes a value only so).
pub fn add_key(
    sql: &str,
    key: &str,
    key_arg: &str,
    overriding: bool,
) -> Result<String, RewriteError> {
    let mut tokens = scan_tokens(sql).map_err(RewriteError::Scan)?;
    tokens.retain(|t| !(t.2.starts_with("/*") || t.2.starts_with("--")));
    let into = tokens
        .iter()
        .position(|t| t.2 == "into")
        .ok_or(RewriteError::Shape)?;
    let open = (into..tokens.len())
        .find(|&j| tokens[j].2 == "(")
        .ok_or(RewriteError::Shape)?;
    let close = matching(&tokens, open).ok_or(RewriteError::Shape)?;
    let select = close + 1;
    if tokens.get(select).map(|t| t.2.as_str()) != Some("select") {
        return Err(RewriteError::Shape);
    }
    let call = (select..tokens.len())
        .find(|&j| tokens[j].2 == "unnest" && tokens.get(j + 1).map(|t| t.2.as_str()) == Some("("))
        .ok_or(RewriteError::Shape)?;
    let mut inserts = vec![
        (tokens[open].1, format!("{}, ", quote_ident(key))),
        (tokens[call + 1].1, format!("{key_arg}, ")),
    ];
    if overriding {
        inserts.push((tokens[select].0, "OVERRIDING SYSTEM VALUE ".to_string()));
    }
    let mut out = sql.to_string();
    inserts.sort_by_key(|(at, _)| *at);
    for (at, text) in inserts.into_iter().rev() {
        out.insert_str(at, &text);
    }
    Ok(out)
}

/// The Bind format codes for `n` parameters plus one more in text format: the client's codes
/// made one per parameter (none means all text, one applies to all).
pub fn formats_plus_text(formats: &[i16], n: usize) -> Vec<i16> {
    let mut out: Vec<i16> = match formats {
        [] => vec![0; n],
        [one] => vec![*one; n],
        many => many.to_vec(),
    };
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::literals::{normalize, LiteralParams};
    use crate::router::params::BindParams;
    use bytes::Bytes;

    #[test]
    fn adds_the_key_column_and_its_array_first() {
        let django = "INSERT INTO \"shop_order\" (\"customer\", \"amount\") SELECT * FROM UNNEST(($1)::varchar(40)[], ($2)::integer[]) RETURNING \"shop_order\".\"id\"";
        assert_eq!(
            add_key(django, "id", "$3::bigint[]", false).unwrap(),
            "INSERT INTO \"shop_order\" (id, \"customer\", \"amount\") SELECT * FROM UNNEST($3::bigint[], ($1)::varchar(40)[], ($2)::integer[]) RETURNING \"shop_order\".\"id\""
        );
        assert_eq!(
            add_key(
                "insert into public.t as x (v) select * from pg_catalog.unnest('{a}'::text[])",
                "order",
                "'{7}'::bigint[]",
                true
            )
            .unwrap(),
            "insert into public.t as x (\"order\", v) OVERRIDING SYSTEM VALUE select * from pg_catalog.unnest('{7}'::bigint[], '{a}'::text[])"
        );
        // A comment or string that reads "unnest(" is not the call.
        assert_eq!(
            add_key(
                "insert into t (v) /* unnest( */ select * from unnest('unnest('::text || '', $1::text[])",
                "id",
                "$2::bigint[]",
                false
            )
            .unwrap(),
            "insert into t (id, v) /* unnest( */ select * from unnest($2::bigint[], 'unnest('::text || '', $1::text[])"
        );
        assert_eq!(
            add_key("insert into t (v) values (1)", "id", "$2", false),
            Err(RewriteError::Shape)
        );
    }

    #[test]
    fn counts_rows_as_unnest_does() {
        let values = [
            Some(Bytes::from_static(b"{a,b,c}")),
            Some(Bytes::from_static(b"{1}")),
            None,
        ];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(rows(&[1, 2, 3], &p), Ok(3));
        assert_eq!(rows(&[2, 3], &p), Ok(1));
        assert_eq!(rows(&[3], &p), Ok(0));
        assert_eq!(rows(&[4], &p), Err(UnnestError::Missing(4)));
        let binary = Bytes::from(pg_array::encode(
            pg_array::ArrayFormat::Binary { element_type: 23 },
            &[Some(&[0, 0, 0, 1][..]), None],
        ));
        let values = [Some(binary)];
        let p = BindParams {
            values: &values,
            formats: &[1],
            types: &[],
        };
        assert_eq!(rows(&[1], &p), Ok(2));
        let norm = normalize(
            "insert into t (a, b) select * from unnest('{x,y}'::text[], '{1,2,3,4}'::int[])",
        );
        assert_eq!(rows(&[1, 2], &LiteralParams(&norm.literals)), Ok(4));
        let bad = [Some(Bytes::from_static(b"{\"x}"))];
        let p = BindParams {
            values: &bad,
            formats: &[],
            types: &[],
        };
        assert!(matches!(
            rows(&[1], &p),
            Err(UnnestError::Array { param: 1, .. })
        ));
    }

    #[test]
    fn key_arrays_and_formats() {
        let ints = [1, -2, 30].map(ShardKey::Int);
        assert_eq!(key_array_text(&ints), "{1,-2,30}");
        assert_eq!(key_array_text(&[]), "{}");
        let uuid = ShardKey::Uuid([0xab; 16]);
        assert_eq!(
            key_array_text(&[uuid.clone(), uuid]),
            "{abababab-abab-abab-abab-abababababab,abababab-abab-abab-abab-abababababab}"
        );
        assert_eq!(formats_plus_text(&[], 2), vec![0, 0, 0]);
        assert_eq!(formats_plus_text(&[1], 2), vec![1, 1, 0]);
        assert_eq!(formats_plus_text(&[1, 0], 2), vec![1, 0, 0]);
    }
}
