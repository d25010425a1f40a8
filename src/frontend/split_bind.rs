//! A prepared multi-row `INSERT … VALUES ($1, $2), ($3, $4)` whose rows belong to several shards,
//! run as one unit of an extended-protocol batch: each shard gets an INSERT of its own rows with
//! its `$n` renumbered and only its parameter values (format codes kept), and the client gets one
//! answer as a single Postgres gives it — RETURNING rows in VALUES order, `INSERT 0 <total>`.
//! An `INSERT … SELECT * FROM UNNEST($1, …)` whose rows split runs the same way, each shard's
//! statement bound to its own arrays. The unit runs inside the batch's block (see `pipeline`),
//! so the parts commit together.

use super::extended::{quiet_sync, Msg};
use super::pipeline::UnitEnd;
use super::session::{refusal, End, Session};
use crate::exec::exchange::{Expect, Step};
use crate::exec::split_insert::{assemble, Assembled};
use crate::exec::unnest_insert::{parts_of, shard_bind};
use crate::router::params::BindParams;
use crate::router::split_insert::{split, ShardInsert, ShardRows};
use crate::router::split_params::{pick, renumber};
use crate::router::unnest_insert::{split as split_arrays, UnnestInsert};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Execute, Parse, Target as NamedTarget};

/// One shard's messages: its INSERT, bound to its values, described and executed.
fn part_steps(sql: &str, bind: &Bind, types: &[u32]) -> Result<Vec<Frame>, ErrorFields> {
    let renumbered = renumber(sql).map_err(|e| refusal(e.to_string()))?;
    let params = pick(&renumbered.origin, &bind.params, &bind.param_formats, types)
        .map_err(|e| ErrorFields::error("08P01", e.to_string()))?;
    let unnamed = NamedTarget {
        kind: b'P',
        name: String::new(),
    };
    Ok(vec![
        Parse {
            name: String::new(),
            query: renumbered.sql,
            param_types: params.types,
        }
        .encode(),
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: params.formats,
            params: params.values,
            result_formats: bind.result_formats.clone(),
        }
        .encode(),
        unnamed.encode(fe::DESCRIBE),
        Execute {
            portal: String::new(),
            max_rows: 0,
        }
        .encode(),
    ])
}

/// Each shard's INSERT of a multi-row VALUES list, and its messages.
#[allow(clippy::type_complexity)]
fn values_parts(
    sql: &str,
    bind: &Bind,
    types: &[u32],
    plan: &[ShardRows],
) -> Result<(Vec<ShardInsert>, Vec<(u32, Vec<Frame>)>), ErrorFields> {
    let parts = split(sql, plan).map_err(|e| refusal(e.to_string()))?;
    let mut frames = Vec::with_capacity(parts.len());
    for part in &parts {
        let steps = if part.per_row() {
            // One INSERT per row: each bound to its own row's values.
            let mut steps = Vec::new();
            for statement in &part.row_statements {
                steps.extend(part_steps(statement, bind, types)?);
            }
            steps
        } else {
            part_steps(&part.sql, bind, types)?
        };
        frames.push((part.shard, steps));
    }
    Ok((parts, frames))
}

/// Each shard's part of an `INSERT … SELECT * FROM UNNEST($1, …)`: the same statement bound to
/// the shard's own arrays, and its messages.
#[allow(clippy::type_complexity)]
fn unnest_parts(
    sql: &str,
    unnest: &UnnestInsert,
    bind: &Bind,
    types: &[u32],
    plan: &[ShardRows],
) -> Result<(Vec<ShardInsert>, Vec<(u32, Vec<Frame>)>), ErrorFields> {
    let params = BindParams {
        values: &bind.params,
        formats: &bind.param_formats,
        types,
    };
    let arrays = split_arrays(unnest, &params, plan).map_err(|e| refusal(e.to_string()))?;
    let unnamed = NamedTarget {
        kind: b'P',
        name: String::new(),
    };
    let frames = arrays
        .iter()
        .map(|part| {
            let steps = vec![
                Parse {
                    name: String::new(),
                    query: sql.to_string(),
                    param_types: types.to_vec(),
                }
                .encode(),
                shard_bind(bind, part).encode(),
                unnamed.encode(fe::DESCRIBE),
                Execute {
                    portal: String::new(),
                    max_rows: 0,
                }
                .encode(),
            ];
            (part.shard, steps)
        })
        .collect();
    Ok((
        parts_of(&arrays, vec![sql.to_string(); arrays.len()]),
        frames,
    ))
}

/// The client's answer to the unit's messages, in their order, from the assembled result.
fn answer(unit: &[Msg], done: &Assembled) -> Vec<Frame> {
    let description = done
        .frames
        .iter()
        .find(|f| f.tag == be::ROW_DESCRIPTION)
        .cloned();
    let mut out = Vec::new();
    for msg in unit {
        match msg {
            Msg::Parse(..) => out.push(be::parse_complete()),
            Msg::Bind { .. } => out.push(be::bind_complete()),
            Msg::DescribePortal(_) => out.push(description.clone().unwrap_or_else(be::no_data)),
            Msg::DescribeStatement(_) => {}
            Msg::Execute(_) => {
                out.extend(
                    done.frames
                        .iter()
                        .filter(|f| f.tag != be::ROW_DESCRIPTION)
                        .cloned(),
                );
                out.push(be::command_complete(&format!("INSERT 0 {}", done.inserted)));
            }
            Msg::CloseStatement | Msg::ClosePortal(_) => out.push(be::close_complete()),
        }
    }
    out
}

/// What the client sees of the unit's messages before its failure: the Parse and Bind answers.
fn answer_before_failure(unit: &[Msg]) -> Vec<Frame> {
    unit.iter()
        .take_while(|m| matches!(m, Msg::Parse(..) | Msg::Bind { .. }))
        .map(|m| match m {
            Msg::Parse(..) => be::parse_complete(),
            _ => be::bind_complete(),
        })
        .collect()
}

impl Session {
    /// Runs a unit whose Bind routed to a split INSERT (`plan`).
    pub(super) async fn run_split_unit(
        &mut self,
        unit: &[Msg],
        plan: &[ShardRows],
    ) -> Result<UnitEnd, End> {
        let _timed = crate::telemetry::QueryTimer::start(crate::telemetry::RouteKind::SplitInsert);
        let fail = |s: &mut Session, fields: ErrorFields| {
            for frame in answer_before_failure(unit) {
                s.io.push(&frame);
            }
            s.push_error_in_batch(fields);
            Ok(UnitEnd::Failed)
        };
        if unit.iter().any(|m| matches!(m, Msg::DescribeStatement(_))) {
            return fail(self, refusal(
                "describing a multi-row INSERT whose rows belong to several shards is not supported in the same Sync as its execution: describe it with a Sync of its own",
            ));
        }
        if self.proxy.rebalance.fence().is_some() {
            return fail(self, refusal(
                "a multi-row INSERT whose rows belong to several shards cannot be split while a rebalancing job moves keys: insert each shard's rows separately, or retry after the job",
            ));
        }
        let Some((bind, statement, rewritten)) = unit.iter().find_map(|m| match m {
            Msg::Bind {
                bind,
                statement,
                rewritten,
            } => Some((bind, statement, rewritten)),
            _ => None,
        }) else {
            return fail(self, refusal("a split INSERT without its Bind"));
        };
        let sql = rewritten.as_deref().unwrap_or(&statement.sql);
        let unnest = statement.facts.first().and_then(|f| f.unnest.as_ref());
        let (parts, frames) = match unnest {
            Some(unnest) => match unnest_parts(sql, unnest, bind, &statement.param_types, plan) {
                Ok(p) => p,
                Err(fields) => return fail(self, fields),
            },
            None => {
                let numbered = match self.number_split_rows(sql, plan).await {
                    Ok(n) => n,
                    Err(fields) => return fail(self, fields),
                };
                let sql = numbered.as_deref().unwrap_or(sql);
                match values_parts(sql, bind, &statement.param_types, plan) {
                    Ok(p) => p,
                    Err(fields) => return fail(self, fields),
                }
            }
        };
        let shards: Vec<u32> = parts.iter().map(|p| p.shard).collect();
        for &shard in &shards {
            if let Err(fields) = self.ensure_conn(shard, true).await {
                return fail(self, fields);
            }
        }
        let answers = self
            .run_collected(&shards, |conn| {
                let Some((_, part)) = frames.iter().find(|(s, _)| *s == conn.shard) else {
                    return Vec::new();
                };
                let expects = [
                    Expect::Parse { register: None },
                    Expect::Bind,
                    Expect::DescribePortal,
                    Expect::Execute,
                ];
                // Parse, Bind, Describe, Execute: once, or once per row's INSERT.
                let mut steps: Vec<Step> = part
                    .iter()
                    .zip(expects.iter().cycle())
                    .map(|(frame, expect)| Step::Send {
                        frame: frame.clone(),
                        expect: expect.clone(),
                        forward: true,
                    })
                    .collect();
                steps.push(quiet_sync());
                steps
            })
            .await;
        match assemble(&parts, &answers) {
            Ok(done) => {
                for frame in answer(unit, &done) {
                    self.io.push(&frame);
                }
                Ok(UnitEnd::Ran)
            }
            Err(fields) => fail(self, fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frontend::Parse;
    use std::sync::Arc;

    fn statement() -> Arc<crate::frontend::session::Prepared> {
        Arc::new(crate::frontend::session::Prepared {
            sql: String::new(),
            param_types: Vec::new(),
            facts: Arc::from(Vec::new()),
            server_name: String::new(),
        })
    }

    fn bind() -> Bind {
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: Vec::new(),
            params: Vec::new(),
            result_formats: Vec::new(),
        }
    }

    #[test]
    fn answers_follow_the_clients_messages() {
        let parse = Parse {
            name: String::new(),
            query: String::new(),
            param_types: Vec::new(),
        };
        let unit = vec![
            Msg::Parse(parse, statement()),
            Msg::Bind {
                bind: bind(),
                statement: statement(),
                rewritten: None,
            },
            Msg::DescribePortal(NamedTarget {
                kind: b'P',
                name: String::new(),
            }),
            Msg::Execute(Execute {
                portal: String::new(),
                max_rows: 0,
            }),
        ];
        let desc = be::row_description(&[("user_id", be::INT8_OID)]);
        let rows = [be::data_row(&[Some("1")]), be::data_row(&[Some("2")])];
        let done = Assembled {
            frames: vec![desc.clone(), rows[0].clone(), rows[1].clone()],
            inserted: 2,
        };
        let want = vec![
            be::parse_complete(),
            be::bind_complete(),
            desc,
            rows[0].clone(),
            rows[1].clone(),
            be::command_complete("INSERT 0 2"),
        ];
        assert_eq!(answer(&unit, &done), want);
        // Without RETURNING the Describe gets NoData.
        let done = Assembled {
            frames: Vec::new(),
            inserted: 3,
        };
        assert_eq!(
            answer(&unit, &done),
            vec![
                be::parse_complete(),
                be::bind_complete(),
                be::no_data(),
                be::command_complete("INSERT 0 3"),
            ]
        );
        assert_eq!(
            answer_before_failure(&unit),
            vec![be::parse_complete(), be::bind_complete()]
        );
    }
}
