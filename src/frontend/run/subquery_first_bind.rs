//! `run::subquery_first` for the extended protocol: drivers bind a statement's parameters on
//! the server (psycopg 3, asyncpg, SQLAlchemy), so an uncorrelated subquery over sharded tables
//! arrives as `… IN (SELECT id FROM users WHERE name = $1)` with its values in a Bind. Before
//! such a batch runs, the subquery runs on its own with the parameters it uses (renumbered,
//! text or binary as sent), its result is written into the statement's text, and the Bind is
//! pointed at that rewritten statement; the batch then runs as usual, so the client sees the
//! answers of its own Parse/Bind/Describe/Execute.

use std::sync::Arc;

use bytes::Bytes;

use crate::exec::exchange::{Expect, Step};
use crate::exec::merged::BoundMerge;
use crate::frontend::extended::{bind_statement_name, server_statement_name};
use crate::frontend::run::subquery_first::{liftable, splice_held, FIRST};
use crate::frontend::session::{End, Session};
use crate::router::insert_select::literal_arrays_as_params;
use crate::router::params::BindParams;
use crate::router::split_params::{pick, renumber, PartParams};
use crate::router::subquery_first::RunFirst;
use crate::router::{StatementFacts, StatementKind};
use crate::session::Prepared;
use crate::wire::backend::ErrorFields;
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Execute, Parse, Target as NamedTarget};

/// The client statement name the rewritten statement is registered under for the Bind. A
/// control character no driver puts in a name; each batch that needs it replaces it.
const REWRITTEN: &str = "\u{1}pgshard subquery run first";

/// Whether a statement may be refused as it stands: one running a subquery first may lift (see
/// [`liftable`]), one that may run whole on one shard, or a read the merge cannot reproduce
/// (its rows may be read first, see `router::pull_up`).
fn refused(facts: &[StatementFacts]) -> bool {
    matches!(facts, [f] if f.refuse.is_some() || crate::router::pull_up::unmergeable(f))
}

/// A Bind whose statement may have something run first: its index in the batch, the Bind, its
/// statement's text, parameter types and facts.
type Liftable = (usize, Bind, String, Vec<u32>, Arc<[StatementFacts]>);

/// Most subqueries one Bind gets run first (nested ones count one each).
const MAX_RUN_FIRST: usize = 16;

/// Type for a parameter the rewritten text no longer uses (it was used by a subquery only), when
/// the client left its type to the server: any value of its format reads as this type.
fn unused_param_type(binary: bool) -> u32 {
    if binary {
        17 // bytea
    } else {
        25 // text
    }
}

/// The statement the batch's one Bind names (text and Parse's types): from a Parse earlier in
/// the batch, or prepared before.
fn bound_statement(
    frames: &[Frame],
    at: usize,
    name: &str,
    prepared: Option<&Arc<Prepared>>,
) -> Option<(String, Vec<u32>)> {
    let parsed = frames[..at]
        .iter()
        .filter(|f| f.tag == fe::PARSE)
        .filter_map(|f| Parse::decode(&f.body).ok())
        .rfind(|p| p.name == name);
    match parsed {
        Some(p) => Some((p.query, p.param_types)),
        None => prepared.map(|p| (p.sql.clone(), p.param_types.clone())),
    }
}

/// The format code of 0-based parameter `i` as Bind gives it.
fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// Parse's types for the rewritten text: the client's, with a type for each parameter only the
/// subqueries used and the client left unspecified (Postgres cannot infer it any more).
fn rewritten_types(sql: &str, types: &[u32], bind: &Bind) -> Result<Vec<u32>, ErrorFields> {
    let used = renumber(sql).map_err(|e| ErrorFields::error("XX000", e.to_string()))?;
    let mut out: Vec<u32> = (0..bind.params.len())
        .map(|i| types.get(i).copied().unwrap_or(0))
        .collect();
    for (i, ty) in out.iter_mut().enumerate() {
        if *ty == 0 && !used.origin.contains(&i) {
            *ty = unused_param_type(format_of(&bind.param_formats, i) == 1);
        }
    }
    Ok(out)
}

/// `INSERT … SELECT` with its SELECT's rows written in as array literals: the arrays become
/// parameters of the Bind (text format), so the statement splits per shard as an UNNEST of
/// array parameters does. Other texts come back as they are.
fn with_array_params(
    outer: String,
    mut bind: Bind,
    mut types: Vec<u32>,
) -> (String, Bind, Vec<u32>) {
    let Some((text, arrays)) = literal_arrays_as_params(&outer, bind.params.len() + 1) else {
        return (outer, bind, types);
    };
    let formats: Vec<i16> = (0..bind.params.len())
        .map(|i| format_of(&bind.param_formats, i))
        .chain(arrays.iter().map(|_| 0))
        .collect();
    types.resize(bind.params.len(), 0);
    types.extend(arrays.iter().map(|_| 0));
    bind.params
        .extend(arrays.into_iter().map(|a| Some(Bytes::from(a))));
    bind.param_formats = formats;
    (text, bind, types)
}

/// Parse, Bind (text results), Describe and Execute of `text` with `params`, then Sync: every
/// answer goes to the proxy, which keeps the rows.
fn extended_steps(text: &str, params: &PartParams) -> Vec<Step> {
    let send = |frame: Frame, expect: Expect| Step::Send {
        frame,
        expect,
        forward: true,
    };
    let parse = Parse {
        name: String::new(),
        query: text.to_string(),
        param_types: params.types.clone(),
    };
    let bind = Bind {
        portal: String::new(),
        statement: String::new(),
        param_formats: params.formats.clone(),
        params: params.values.clone(),
        result_formats: Vec::new(),
    };
    let portal = NamedTarget {
        kind: b'P',
        name: String::new(),
    };
    let execute = Execute {
        portal: String::new(),
        max_rows: 0,
    };
    vec![
        send(parse.encode(), Expect::Parse { register: None }),
        send(bind.encode(), Expect::Bind),
        send(portal.encode(fe::DESCRIBE), Expect::DescribePortal),
        send(execute.encode(), Expect::Execute),
        send(fe::sync(), Expect::Sync),
    ]
}

impl Session {
    /// Before an extended batch runs: each Bind (of a lone statement, or of a pipeline's
    /// statements up to the first that writes) naming a statement refused only for an
    /// uncorrelated subquery over sharded tables gets that subquery run first with its
    /// parameters, and is pointed at the statement with its result written in. A statement
    /// after a write of the same batch is left alone: its subquery must see that write.
    /// `Ok(true)` when the batch is answered already (a subquery failed: its error, then
    /// ReadyForQuery).
    pub async fn bind_subqueries_first(&mut self, sync: bool) -> Result<bool, End> {
        for (n, lift) in self.liftable_binds().into_iter().enumerate() {
            if self.lift_bind(n, lift, sync).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs first what the Bind `lift` describes needs (see [`Self::bind_subqueries_first`]);
    /// `n`: its place among the batch's lifted Binds (each gets a statement name of its own).
    async fn lift_bind(&mut self, n: usize, lift: Liftable, sync: bool) -> Result<bool, End> {
        let (at, bind, sql, types, facts) = lift;
        let whole = {
            let bound = BindParams {
                values: &bind.params,
                formats: &bind.param_formats,
                types: &types,
            };
            self.whole_on_one_shard(&sql, &facts, Some(&bound))
        };
        if let Some(facts) = whole {
            // Runs whole on one shard: the same text, its facts pinned there.
            let server_name = server_statement_name(&sql, &types);
            self.rebind(
                n,
                at,
                bind,
                Prepared {
                    sql,
                    param_types: types,
                    facts,
                    server_name,
                },
            );
            return Ok(false);
        }
        let mut pulled = {
            let bound = BindParams {
                values: &bind.params,
                formats: &bind.param_formats,
                types: &types,
            };
            self.pull_up_of(&sql, &facts, &bound)
        };
        if !liftable(&facts) && pulled.is_none() {
            return Ok(false);
        }
        let mut outer = sql.clone();
        for _ in 0..MAX_RUN_FIRST {
            let next = match pulled.take() {
                Some(pull) => Ok(Some(pull)),
                None => self.next_run_first(&outer, true),
            };
            let run = match next {
                Ok(Some(first)) => self.run_first_bound(&first, &outer, &bind, &types).await?,
                Ok(None) => break,
                Err(fields) => Err(fields),
            };
            match run {
                Ok(text) => outer = text,
                Err(fields) => {
                    self.batch.clear();
                    self.refuse_batch(fields, sync).await?;
                    return Ok(true);
                }
            }
        }
        if outer == sql {
            return Ok(false);
        }
        let (outer, bind, types) = with_array_params(outer, bind, types);
        let param_types = match rewritten_types(&outer, &types, &bind) {
            Ok(t) => t,
            Err(fields) => {
                self.batch.clear();
                self.refuse_batch(fields, sync).await?;
                return Ok(true);
            }
        };
        let facts = self
            .proxy
            .router
            .analyze_prepared_in(&outer, &self.search_path());
        let server_name = server_statement_name(&outer, &param_types);
        self.rebind(
            n,
            at,
            bind,
            Prepared {
                sql: outer,
                param_types,
                facts,
                server_name,
            },
        );
        Ok(false)
    }

    /// Registers `statement` under the `n`th [`REWRITTEN`] name and points the batch's Bind at
    /// `at` to it.
    fn rebind(&mut self, n: usize, at: usize, bind: Bind, statement: Prepared) {
        let name = format!("{REWRITTEN} {n}");
        self.state
            .statements
            .insert(name.clone(), Arc::new(statement));
        let rebound = Bind {
            statement: name,
            ..bind
        };
        self.batch[at] = rebound.encode();
    }

    /// The batch's Binds whose statements may have something run first (see
    /// [`Self::bind_subqueries_first`]), in order.
    fn liftable_binds(&self) -> Vec<Liftable> {
        // A failed block answers its aborted error on the normal path; an implicit transaction
        // a Flush left open has begun, where a subquery run on its own does not belong. A batch
        // ended by Flush with nothing open yet (node-postgres sends Parse, Bind, Describe,
        // Execute, Flush, then Sync) is like one ended by Sync.
        if self.state.open_batch_shard.is_some()
            || self.block_failed()
            || self.state.txn.as_ref().is_some_and(|t| t.refused)
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        let binds = self
            .batch
            .iter()
            .enumerate()
            .filter(|(_, f)| f.tag == fe::BIND);
        for (at, frame) in binds {
            let Some(name) = bind_statement_name(&frame.body) else {
                break;
            };
            let (lift, writes) = self.liftable_at(at, name);
            out.extend(lift);
            if writes {
                break;
            }
        }
        out
    }

    /// The Bind at `at` (of statement `name`) when its statement is refused (for a subquery
    /// pgshard may run first, or as a whole: it may run whole on one shard), with the text,
    /// types and facts of its statement; and whether that statement may change data (what a
    /// later statement of the batch reads).
    fn liftable_at(&self, at: usize, name: &str) -> (Option<Liftable>, bool) {
        // A statement parsed in this batch (an unnamed one, each time): its text read in place
        // and analyzed once for the batch (routing asks again).
        let parsed_text = self.batch[..at]
            .iter()
            .filter(|f| f.tag == fe::PARSE)
            .filter_map(|f| fe::parse_texts(&f.body).ok())
            .rfind(|(parsed, _)| *parsed == name);
        // The hot path: a Bind of a statement prepared before, whose facts say nothing runs
        // first, costs no decoding.
        let facts = match parsed_text {
            Some((_, query)) => self.analyze_parsed(query),
            None => match self.state.statements.get(name) {
                Some(st) => st.facts.clone(),
                None => return (None, true),
            },
        };
        let writes =
            !matches!(facts.as_ref(), [f] if f.kind == StatementKind::Select && !f.is_write);
        if !refused(&facts) {
            return (None, writes);
        }
        let lift = Bind::decode(&self.batch[at].body).ok().and_then(|bind| {
            let (sql, types) = bound_statement(
                &self.batch,
                at,
                &bind.statement,
                self.state.statements.get(&bind.statement),
            )?;
            Some((at, bind, sql, types, facts))
        });
        (lift, writes)
    }

    /// Runs `first`'s subquery with the parameters of `bind` it uses and returns `outer` with
    /// its result in place, or the error the client gets.
    async fn run_first_bound(
        &mut self,
        first: &RunFirst,
        outer: &str,
        bind: &Bind,
        types: &[u32],
    ) -> Result<Result<String, ErrorFields>, End> {
        let picked = renumber(first.inner()).and_then(|r| {
            pick(&r.origin, &bind.params, &bind.param_formats, types).map(|p| (r.sql, p))
        });
        let (inner, params) = match picked {
            Ok(p) => p,
            Err(e) => return Ok(Err(ErrorFields::error("08P01", e.to_string()))),
        };
        let facts = self
            .proxy
            .router
            .analyze_prepared_in(&inner, &self.search_path());
        let bound_params = BindParams {
            values: &params.values,
            formats: &params.formats,
            types: &params.types,
        };
        let (target, scatter) = match self.first_target(&facts, &bound_params) {
            Ok(t) => t,
            Err(fields) => return Ok(Err(fields)),
        };
        if let Err(fields) = self.choose_group_names(facts.first()).await {
            return Ok(Err(fields));
        }
        let merge = match facts.first().and_then(|f| f.merge.as_ref()) {
            Some(Ok(plan)) if scatter => {
                let chosen = self.group_plans.plan(plan).and_then(|plan| {
                    BoundMerge::new(plan.clone(), &bound_params, true)
                        .map(|bound| (plan.shard_sql.with_placeholders(), bound))
                });
                match chosen {
                    Ok(m) => Some(m),
                    Err(fields) => return Ok(Err(fields)),
                }
            }
            _ => None,
        };
        let (text, bound) = match merge {
            Some((text, bound)) => (text, Some(bound)),
            None => (inner, None),
        };
        let held = self
            .run_kept_with(&text, &facts, target, bound, FIRST, |t| {
                extended_steps(t, &params)
            })
            .await?;
        Ok(splice_held(first, outer, held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bind(values: usize, formats: Vec<i16>) -> Bind {
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: formats,
            params: vec![Some(Bytes::from_static(b"1")); values],
            result_formats: Vec::new(),
        }
    }

    /// (rewritten text, client's types, Bind's formats, parameter count, types of the
    /// rewritten Parse)
    type Case<'a> = (&'a str, &'a [u32], Vec<i16>, usize, &'a [u32]);

    #[test]
    fn types_of_parameters_only_subqueries_used() {
        let cases: &[Case] = &[
            ("SELECT 1 WHERE x = $2", &[], vec![], 2, &[25, 0]),
            ("SELECT 1 WHERE x = $2", &[0, 0], vec![1], 2, &[17, 0]),
            (
                "SELECT 1 WHERE x = $1",
                &[0, 20, 0],
                vec![0, 1, 0],
                3,
                &[0, 20, 25],
            ),
            ("SELECT $1, $2", &[23, 0], vec![], 2, &[23, 0]),
        ];
        for (sql, types, formats, n, want) in cases {
            let got = rewritten_types(sql, types, &bind(*n, formats.clone()));
            assert_eq!(got.as_deref(), Ok(*want), "{sql}");
        }
    }
}
