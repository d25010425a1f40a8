//! What exec must do for a request: the planner's answer.

use crate::router::split_insert::ShardRows;
use crate::router::unnest_insert::UnnestInsert;
use crate::router::{LocalCommand, Route};

use super::Target;

/// What running a request takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// No statement: EmptyQueryResponse.
    Empty,
    /// pgshard's own command, answered without a server.
    Local(LocalCommand),
    /// A statement on a cursor the proxy serves (a DECLARE over several shards, or
    /// FETCH/MOVE/CLOSE of such a cursor).
    ServedCursor,
    /// `COPY … FROM STDIN` into a sharded table: the rows are split by key.
    CopyIn,
    /// `COPY … TO STDOUT` of a sharded table: every shard's rows, one COPY for the client.
    CopyOut(Vec<u32>),
    /// An INSERT whose rows belong to several shards, each shard getting its own rows (from an
    /// UNNEST of arrays when `unnest` is set).
    SplitInsert {
        rows: Vec<ShardRows>,
        unnest: Option<UnnestInsert>,
    },
    /// A lone INSERT that omits its shard key: plan again with generated keys reserved.
    NeedsKeys,
    /// One shard, several shards with a merge, or every shard alike.
    Run(Target),
    /// A simple Query of several statements that cannot run as one string on one shard (they
    /// reach several shards, or one of them needs its own path): each statement runs in turn,
    /// all in one transaction as in Postgres (the client's block, or an implicit one that
    /// commits at the end, with two phases when several shards joined).
    InTurn,
}

/// A plan, with what the request's text became and the cursor bookkeeping it implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub plan: Plan,
    /// The text to send instead of the client's (an INSERT given generated keys).
    pub rewritten: Option<String>,
    /// The route of each statement, after lookups, generated keys and cursors.
    pub routes: Vec<Route>,
    /// Cursors the request declares or closes, for the session to record.
    pub cursor_effects: Vec<crate::session::cursors::Effect>,
}
