//! Statement analysis: what one parsed statement means for routing (which tables, which key
//! values, is it a write, does it need a merge, does it bind the session). Computed once per
//! statement shape, over pg_query's parse tree; one file per statement family (select, write,
//! utility, ddl) on top of a whole-tree scan (`scan`) and the top-level table analysis
//! (`tables`). The rest of the crate reads it as `router::facts`.

mod ddl;
pub(crate) mod lock_limit;
mod outer_join;
mod refused;
mod scan;
mod select;
mod statement;
mod tables;
#[cfg(test)]
mod test_support;
mod utility;
mod walk;
mod walk_children;
mod write;
mod write_cte;

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

pub use super::names::ShardedTables;
pub use refused::{Refused, NULL_KEY_PREFIX};
pub(crate) use scan::AGGREGATES;
use scan::{node, scan_walk, FuncInfo};
pub use statement::{
    KeyFacts, KeyValue, LocalCommand, NotifyArg, SessionPin, StatementFacts, StatementKind,
};
pub(crate) use tables::{conjuncts, op_name};
pub(crate) use walk::Walk;
pub(crate) use write::is_random_uuid_call;

/// Whether the common checks (session effects, every-shard rules) still apply after a family's
/// analysis, or the facts are complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The facts are complete (transaction control, SET, SHOW, local commands, …).
    Finished,
    /// Go on with the checks every statement gets.
    Common,
}

/// The facts of one statement; nested statements (COPY's query, EXPLAIN's, PREPARE's, a
/// cursor's) are analysed by calling it again.
fn analyze_stmt(stmt: &NodeEnum, tables: &ShardedTables) -> StatementFacts {
    let mut facts = StatementFacts::plain(StatementKind::Other);
    let mut scan = scan_walk(Walk::new([stmt.to_ref()]));
    ddl::named_objects(stmt, &mut scan);
    if ddl::names_indexes(stmt, &scan, &mut facts) {
        return facts;
    }
    let flow = match stmt {
        NodeEnum::SelectStmt(s) => select::analyze_select(s, tables, &scan, &mut facts),
        NodeEnum::InsertStmt(i) => {
            write::analyze_insert(i, tables, &scan, &mut facts);
            Flow::Common
        }
        NodeEnum::UpdateStmt(u) => {
            write::analyze_update(u, tables, &scan, &mut facts);
            Flow::Common
        }
        NodeEnum::DeleteStmt(d) => {
            write::analyze_delete(d, tables, &scan, &mut facts);
            Flow::Common
        }
        NodeEnum::MergeStmt(_) => write::analyze_merge(tables, &scan, &mut facts),
        NodeEnum::CopyStmt(c) => write::analyze_copy(c, tables, &scan, &mut facts),
        NodeEnum::ExplainStmt(e) => match utility::analyze_explain(e, tables) {
            Some(inner) => return inner,
            None => Flow::Common,
        },
        NodeEnum::CreateTableAsStmt(c) => {
            ddl::analyze_create_table_as(c, tables, &scan, &mut facts)
        }
        other => utility::analyze_utility(other, tables, &scan, &mut facts)
            .unwrap_or_else(|| ddl::analyze_other(other, tables, &scan, &mut facts)),
    };
    if flow == Flow::Finished {
        return facts;
    }
    utility::session_effects(stmt, &scan, &mut facts);
    if scan.funcs.iter().any(FuncInfo::is_next_id) {
        facts.refuse = Some(Refused::NextIdElsewhere);
    }
    facts.no_transaction_block = utility::refuses_transaction_block(stmt, &scan);
    ddl::every_shard_rules(stmt, &scan, tables, &mut facts);
    if facts.kind == StatementKind::Ddl {
        // DDL answers no rows: an Execute's row limit (pgjdbc's `executeUpdate`) changes nothing.
        facts.returns_no_rows = true;
    }
    facts
}

/// The text of one statement of `sql` with the comments before it: from the end of the
/// previous statement (past its `;`), as the parser's statement location starts at the first
/// token.
fn leading_text(sql: &str, previous_end: usize) -> Option<&str> {
    let text = sql.get(previous_end..)?;
    Some(text.strip_prefix(';').unwrap_or(text))
}

/// Where a statement of `sql` ends (its `;` not included).
fn statement_end(sql: &str, raw: &pb::RawStmt) -> usize {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    match usize::try_from(raw.stmt_len).unwrap_or(0) {
        0 => sql.len(),
        len => start + len,
    }
}

/// The facts of every statement in `sql` (one per statement); `Unparsed` when it does not parse.
pub fn analyze(sql: &str, tables: &ShardedTables) -> Vec<StatementFacts> {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(_) => return vec![StatementFacts::plain(StatementKind::Unparsed)],
    };
    let mut previous_end = 0;
    let out: Vec<StatementFacts> = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| {
            let lead = leading_text(sql, previous_end);
            previous_end = statement_end(sql, raw);
            let mut facts = analyze_stmt(node(&raw.stmt)?, tables);
            facts.hint = lead.and_then(crate::router::hint::leading_hint);
            Some(facts)
        })
        .collect();
    if out.is_empty() {
        // Only comments or semicolons: nothing to route.
        return vec![StatementFacts::plain(StatementKind::Other)];
    }
    out
}
