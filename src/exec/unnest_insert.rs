//! Running `INSERT … SELECT * FROM UNNEST(arrays)` whose rows belong to several shards: each
//! shard runs the statement with its own arrays (see `router::unnest_insert`), all inside one
//! block, and the client gets one answer as from one Postgres (RETURNING rows in array order).

use crate::refusal::refusal;
use crate::router::literals::{normalize, Literal};
use crate::router::merge_plan::SqlTemplate;
use crate::router::split_insert::ShardInsert;
use crate::router::unnest_insert::ShardArrays;
use crate::wire::backend::ErrorFields;
use crate::wire::frontend::Bind;

/// An extended-protocol batch that runs one UNNEST insert: what the client sent.
pub struct UnnestBatch<'a> {
    pub sql: &'a str,
    pub param_types: &'a [u32],
    pub bind: &'a Bind,
    /// The client sent the Parse in this batch (it gets a ParseComplete).
    pub parsed: bool,
    /// The client described the portal.
    pub describe: bool,
}

/// The text each shard runs: the simple-protocol statement with its array literals replaced.
pub fn shard_texts(
    sql: &str,
    arrays: &[ShardArrays],
    literals: &[Literal],
) -> Result<Vec<String>, ErrorFields> {
    let norm_text = normalize(sql).text;
    let template = SqlTemplate::from_sql(&norm_text).map_err(|e| ErrorFields::error("XX000", e))?;
    arrays
        .iter()
        .map(|part| {
            let mut lits = literals.to_vec();
            for (n, value) in &part.values {
                let text = value
                    .as_ref()
                    .and_then(|v| String::from_utf8(v.clone()).ok())
                    .ok_or_else(|| refusal("an UNNEST array literal could not be written back"))?;
                let slot = n
                    .checked_sub(1)
                    .and_then(|i| lits.get_mut(i))
                    .ok_or_else(|| ErrorFields::error("XX000", "an UNNEST literal went missing"))?;
                *slot = Literal::Escaped(text);
            }
            template
                .with_literals(&lits)
                .ok_or_else(|| ErrorFields::error("XX000", "a rewritten INSERT lost a literal"))
        })
        .collect()
}

/// The client's Bind with `part`'s arrays in place of the UNNEST parameters, for the unnamed
/// statement and portal of one shard.
pub fn shard_bind(bind: &Bind, part: &ShardArrays) -> Bind {
    let mut bind = bind.clone();
    bind.portal = String::new();
    bind.statement = String::new();
    for (n, value) in &part.values {
        if let Some(slot) = n.checked_sub(1).and_then(|i| bind.params.get_mut(i)) {
            *slot = value.clone().map(bytes::Bytes::from);
        }
    }
    bind
}

/// Each shard's part as a split INSERT (its shard, text and rows), for assembling the answer.
pub fn parts_of(arrays: &[ShardArrays], texts: Vec<String>) -> Vec<ShardInsert> {
    arrays
        .iter()
        .zip(texts)
        .map(|(a, sql)| ShardInsert {
            shard: a.shard,
            sql,
            rows: a.rows.clone(),
            row_statements: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_texts_carry_each_shards_arrays() {
        let sql = "INSERT INTO users (user_id, name) SELECT * FROM UNNEST('{1,2}'::bigint[], '{\"it''s\",b}'::text[]) RETURNING user_id, 'x'";
        let literals = normalize(sql).literals;
        let arrays = vec![
            ShardArrays {
                shard: 1,
                rows: vec![1],
                values: vec![(1, Some(b"{2}".to_vec())), (2, Some(b"{b}".to_vec()))],
            },
            ShardArrays {
                shard: 2,
                rows: vec![0],
                values: vec![(1, Some(b"{1}".to_vec())), (2, Some(b"{it's}".to_vec()))],
            },
        ];
        let texts = shard_texts(sql, &arrays, &literals).unwrap();
        assert_eq!(
            texts,
            vec![
                "INSERT INTO users (user_id, name) SELECT * FROM UNNEST(E'{2}'::bigint[], E'{b}'::text[]) RETURNING user_id, 'x'",
                "INSERT INTO users (user_id, name) SELECT * FROM UNNEST(E'{1}'::bigint[], E'{it''s}'::text[]) RETURNING user_id, 'x'",
            ]
        );
    }
}
