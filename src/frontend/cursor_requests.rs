//! Client requests on cursors: keeps each cursor statement on the shard its cursor lives on, and
//! answers the statements on cursors the proxy serves (DECLARE over several shards, then its
//! FETCH/MOVE/CLOSE, and Describe of its portal) in both protocols. The rows come from
//! `exec::cursor`; where cursors live is `cursors::Cursors`.

use std::collections::HashMap;
use std::sync::Arc;

use super::extended::{parameter_description, Msg};
use super::session::{aborted, refusal, End, Prepared, Session};
use crate::exec::binary_rows;
use crate::refusal::Refusal;
use crate::router::cursor::{declared_query, CursorOp};
use crate::router::StatementFacts;
use crate::wire::backend::{self as be, ErrorFields, TxStatus};

/// A statement on a proxy-served cursor must come alone.
fn alone() -> Refusal {
    Refusal::unsupported("a statement on a cursor that spans several shards (served by pgshard) must be sent on its own, not together with other statements")
}

impl Session {
    /// Simple protocol: answers a statement on a proxy-served cursor (the planner's
    /// [`crate::planner::Plan::ServedCursor`]).
    pub async fn serve_cursor_query(
        &mut self,
        sql: &str,
        facts: &[StatementFacts],
    ) -> Result<(), End> {
        let ([_], Some(op)) = (facts, facts.first().and_then(|f| f.cursor.as_ref())) else {
            self.reply_error(alone());
            return Ok(());
        };
        if self.status() == TxStatus::Failed {
            self.reply_error(aborted());
            return Ok(());
        }
        match self.run_cursor_op(op, sql, true, &[]).await? {
            Ok(()) => {
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
            }
            Err(fields) => self.reply_error(fields),
        }
        Ok(())
    }

    /// Runs one statement on a proxy-served cursor and queues its answer (`describe`: FETCH sends
    /// its RowDescription first, as in the simple protocol).
    /// `formats`: the result formats a Bind of a FETCH asked for (none: text).
    async fn run_cursor_op(
        &mut self,
        op: &CursorOp,
        sql: &str,
        describe: bool,
        formats: &[i16],
    ) -> Result<Result<(), ErrorFields>, End> {
        match op {
            CursorOp::Declare(d) => {
                let Some(query) = declared_query(sql) else {
                    return Ok(Err(ErrorFields::error(
                        "42601",
                        "DECLARE CURSOR needs a query after FOR",
                    )));
                };
                if let Err(fields) = self.declare_merged(d, query).await? {
                    return Ok(Err(fields));
                }
                self.io.push(&be::command_complete("DECLARE CURSOR"));
            }
            CursorOp::Fetch {
                name,
                motion,
                is_move,
            } => {
                let mut fetched = match self.fetch_merged(name, motion, *is_move) {
                    Ok(f) => f,
                    Err(fields) => return Ok(Err(fields)),
                };
                if let (true, Some(d)) = (binary_rows::wants_binary(formats), &fetched.description)
                {
                    let rows = std::mem::take(&mut fetched.rows);
                    fetched.rows = match self.rows_in_formats(d, rows, formats).await? {
                        Ok(rows) => rows,
                        Err(fields) => return Ok(Err(fields)),
                    };
                }
                if let Some(d) = fetched.description.filter(|_| describe) {
                    self.io.push(&d);
                }
                for row in &fetched.rows {
                    self.io.push(row);
                }
                self.io.push(&fetched.complete);
            }
            CursorOp::Close { name: Some(name) } => {
                self.state.cursors.close(name);
                self.io.push(&be::command_complete("CLOSE CURSOR"));
            }
            CursorOp::Close { name: None } => {
                self.state.cursors.close_all();
                self.io.push(&be::command_complete("CLOSE CURSOR ALL"));
            }
        }
        Ok(Ok(()))
    }

    /// Answers a batch on cursors the proxy serves (`ours`, `others`: see
    /// [`crate::planner::served::ServedPortals`]).
    pub(super) async fn cursor_batch(
        &mut self,
        msgs: &[Msg],
        ours: &HashMap<&str, Arc<Prepared>>,
        others: bool,
        sync: bool,
    ) -> Result<(), End> {
        let outcome = if others {
            Err(alone().into())
        } else {
            self.answer_cursor_batch(msgs, ours).await?
        };
        if let Err(fields) = outcome {
            self.push_error_in_batch(fields);
            self.state.skip_until_sync = !sync;
        }
        if sync {
            let status = self.status();
            self.io.push(&be::ready_for_query(status));
        }
        Ok(())
    }

    async fn answer_cursor_batch(
        &mut self,
        msgs: &[Msg],
        ours: &HashMap<&str, Arc<Prepared>>,
    ) -> Result<Result<(), ErrorFields>, End> {
        let op_of = |st: &Prepared| st.facts.first().and_then(|f| f.cursor.clone());
        let mut binds: HashMap<&str, &crate::wire::frontend::Bind> = HashMap::new();
        for msg in msgs {
            match msg {
                Msg::Parse(..) => self.io.push(&be::parse_complete()),
                Msg::Bind { bind, .. } => {
                    binds.insert(bind.portal.as_str(), bind);
                    self.io.push(&be::bind_complete());
                }
                Msg::DescribeStatement(st) => {
                    self.io.push(&parameter_description(&st.param_types));
                    let described = match op_of(st) {
                        Some(CursorOp::Fetch {
                            name,
                            is_move: false,
                            ..
                        }) => self.merged_description(&name),
                        _ => None,
                    };
                    self.io.push(&described.unwrap_or_else(be::no_data));
                }
                Msg::DescribePortal(t) => {
                    let name = match ours.get(t.name.as_str()).and_then(|st| op_of(st)) {
                        Some(CursorOp::Fetch {
                            name,
                            is_move: false,
                            ..
                        }) => Some(name),
                        Some(_) => None,
                        None => Some(t.name.clone()),
                    };
                    let described = name.and_then(|n| self.merged_description(&n));
                    // A FETCH bound with binary result formats describes its columns so.
                    let formats = binds
                        .get(t.name.as_str())
                        .map_or(&[][..], |b| b.result_formats.as_slice());
                    let described = match described {
                        Some(d) if binary_rows::wants_binary(formats) => {
                            match binary_rows::described(&d, formats) {
                                Ok(d) => Some(d),
                                Err(e) => {
                                    return Ok(Err(ErrorFields::error("08P01", e.to_string())))
                                }
                            }
                        }
                        other => other,
                    };
                    self.io.push(&described.unwrap_or_else(be::no_data));
                }
                Msg::Execute(e) => {
                    let Some(st) = ours.get(e.portal.as_str()) else {
                        if let Err(fields) = self.execute_held(e) {
                            return Ok(Err(fields));
                        }
                        continue;
                    };
                    if e.max_rows > 0 {
                        return Ok(Err(refusal(
                            "Execute with a row limit on a cursor statement that spans several shards is not supported; use FETCH n",
                        )));
                    }
                    let Some(op) = op_of(st) else {
                        return Ok(Err(alone().into()));
                    };
                    if let (CursorOp::Declare(d), Some(bind)) = (&op, binds.get(e.portal.as_str()))
                    {
                        if !bind.params.is_empty() {
                            let Some(query) = declared_query(&st.sql) else {
                                return Ok(Err(ErrorFields::error(
                                    "42601",
                                    "DECLARE CURSOR needs a query after FOR",
                                )));
                            };
                            if let Err(fields) =
                                self.declare_bound(d, query, bind, &st.param_types).await?
                            {
                                return Ok(Err(fields));
                            }
                            self.io.push(&be::command_complete("DECLARE CURSOR"));
                            continue;
                        }
                    }
                    let formats = binds
                        .get(e.portal.as_str())
                        .map_or(&[][..], |b| b.result_formats.as_slice());
                    if let Err(fields) = self.run_cursor_op(&op, &st.sql, false, formats).await? {
                        return Ok(Err(fields));
                    }
                }
                Msg::CloseStatement => self.io.push(&be::close_complete()),
                Msg::ClosePortal(t) => {
                    self.state.cursors.close(&t.name);
                    self.io.push(&be::close_complete());
                }
            }
        }
        Ok(Ok(()))
    }
}
