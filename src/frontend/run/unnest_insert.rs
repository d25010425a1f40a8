//! The session's side of a split UNNEST insert (see `exec::unnest_insert`): the block, the
//! per-shard statements on this session's connections, the one answer the client gets.

use crate::exec::exchange::{Expect, Step};
use crate::exec::split_insert::SplitReply;
use crate::exec::unnest_insert::{parts_of, shard_bind, shard_texts, UnnestBatch};
use crate::frontend::session::{refusal, End, Session};
use crate::router::literals::{normalize, LiteralParams};
use crate::router::params::BindParams;
use crate::router::split_insert::ShardRows;
use crate::router::unnest_insert::{split, UnnestInsert};
use crate::wire::backend::{self as be};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Execute, Parse, Target};
use std::collections::HashMap;

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
            let bind = shard_bind(batch.bind, part);
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
