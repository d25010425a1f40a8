//! Running `INSERT … SELECT * FROM UNNEST(arrays)` whose rows belong to several shards: each
//! shard runs the statement with its own arrays (see `router::unnest_insert`), all inside one
//! block, and the client gets one answer as from one Postgres (RETURNING rows in array order).

use std::collections::HashMap;

use crate::exec::exchange::{Expect, Step};
use crate::exec::split_insert::SplitReply;
use crate::frontend::session::{refusal, End, Session};
use crate::router::literals::{normalize, Literal, LiteralParams};
use crate::router::merge_plan::SqlTemplate;
use crate::router::params::BindParams;
use crate::router::split_insert::{ShardInsert, ShardRows};
use crate::router::unnest_insert::{split, ShardArrays, UnnestInsert};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Execute, Parse, Target};

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
fn shard_texts(
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
                *slot = Literal::Str(text);
            }
            template
                .with_literals(&lits)
                .ok_or_else(|| ErrorFields::error("XX000", "a rewritten INSERT lost a literal"))
        })
        .collect()
}

fn parts_of(arrays: &[ShardArrays], texts: Vec<String>) -> Vec<ShardInsert> {
    arrays
        .iter()
        .zip(texts)
        .map(|(a, sql)| ShardInsert {
            shard: a.shard,
            sql,
            rows: a.rows.clone(),
        })
        .collect()
}

impl Session {
    /// Runs the simple-protocol UNNEST insert `sql` split by `plan` and answers the client.
    pub async fn run_unnest_insert_simple(
        &mut self,
        sql: &str,
        unnest: &UnnestInsert,
        plan: &[ShardRows],
    ) -> Result<(), End> {
        let literals = normalize(sql).literals;
        let prepared = split(unnest, &LiteralParams(&literals), plan)
            .map_err(|e| refusal(e.to_string()))
            .and_then(|arrays| {
                let texts = shard_texts(sql, &arrays, &literals)?;
                Ok(parts_of(&arrays, texts))
            });
        let parts = match prepared {
            Ok(p) => p,
            Err(fields) => {
                self.reply_error(fields);
                return Ok(());
            }
        };
        self.run_split_queries(&parts).await
    }

    /// Runs an extended-protocol batch (Parse?, Bind, Describe portal?, Execute, Sync) of an
    /// UNNEST insert split by `plan`: each shard gets the statement bound to its own arrays.
    pub async fn run_unnest_insert_extended(
        &mut self,
        batch: UnnestBatch<'_>,
        unnest: &UnnestInsert,
        plan: &[ShardRows],
    ) -> Result<(), End> {
        let params = BindParams {
            values: &batch.bind.params,
            formats: &batch.bind.param_formats,
            types: batch.param_types,
        };
        let arrays = match split(unnest, &params, plan) {
            Ok(a) => a,
            Err(e) => {
                self.reply_error(refusal(e.to_string()));
                return Ok(());
            }
        };
        let parse = Parse {
            name: String::new(),
            query: batch.sql.to_string(),
            param_types: batch.param_types.to_vec(),
        }
        .encode();
        let send = |frame: Frame, expect: Expect| Step::Send {
            frame,
            expect,
            forward: true,
        };
        let mut steps = HashMap::new();
        for part in &arrays {
            let mut bind = batch.bind.clone();
            bind.portal = String::new();
            bind.statement = String::new();
            for (n, value) in &part.values {
                if let Some(slot) = n.checked_sub(1).and_then(|i| bind.params.get_mut(i)) {
                    *slot = value.clone().map(bytes::Bytes::from);
                }
            }
            let mut s = vec![
                send(parse.clone(), Expect::Parse { register: None }),
                send(bind.encode(), Expect::Bind),
            ];
            if batch.describe {
                let describe = Target {
                    kind: b'P',
                    name: String::new(),
                };
                s.push(send(describe.encode(fe::DESCRIBE), Expect::DescribePortal));
            }
            let execute = Execute {
                portal: String::new(),
                max_rows: 0,
            };
            s.push(send(execute.encode(), Expect::Execute));
            s.push(send(fe::sync(), Expect::Sync));
            steps.insert(part.shard, s);
        }
        let parts = parts_of(&arrays, vec![batch.sql.to_string(); arrays.len()]);
        let mut head = Vec::new();
        if batch.parsed {
            head.push(be::parse_complete());
        }
        head.push(be::bind_complete());
        let reply = SplitReply {
            head,
            describe: batch.describe,
        };
        self.run_split_parts(&parts, steps, reply).await
    }
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
                "INSERT INTO users (user_id, name) SELECT * FROM UNNEST('{2}'::bigint[], '{b}'::text[]) RETURNING user_id, 'x'",
                "INSERT INTO users (user_id, name) SELECT * FROM UNNEST('{1}'::bigint[], '{it''s}'::text[]) RETURNING user_id, 'x'",
            ]
        );
    }
}
