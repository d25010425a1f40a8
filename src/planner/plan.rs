//! What exec must do for a request: the planner's answer.

use smallvec::SmallVec;

use crate::router::split_insert::ShardRows;
use crate::router::unnest_insert::UnnestInsert;
use crate::router::{LocalCommand, Route};

use super::Target;
use crate::refusal::Refusal;

/// What running a request takes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Plan {
    #[default]
    /// No statement: EmptyQueryResponse for a Query; for a batch, nothing to send (its error, if
    /// any, and its end are answered).
    Empty,
    /// pgshard's own command, answered without a server.
    Local(LocalCommand),
    /// A batch of pgshard's own commands, or of transaction control the proxy answers without a
    /// server.
    LocalBatch,
    /// A batch writing a looked-up column: claim the values in the batch's block, then run it.
    Claims,
    /// A batch binding a portal read a piece at a time over several shards: run it unit by
    /// unit, the proxy holding that portal.
    HeldPortal,
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
    /// commits at the end, with two phases when several shards joined). For a batch: unit by
    /// unit, each Execute with the messages before it.
    InTurn,
    /// A batch refused after statements of its implicit transaction already ran on `shard` (a
    /// Flush left it open there): that shard raises the refusal, so it rolls them back as
    /// Postgres would.
    RaiseOn { shard: u32, refusal: Refusal },
    /// The Bind at `message` could not be routed: the messages before it run, then `refusal`
    /// is answered (plan again without it).
    FailedAt { message: usize, refusal: Refusal },
}

/// A plan, with what the request's text became and the cursor bookkeeping it implies.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Planned {
    pub plan: Plan,
    /// The text to send instead of the client's (an INSERT given generated keys), per statement
    /// (inline for one or two statements, as nearly every request has: no allocation).
    pub rewritten: SmallVec<[Option<String>; 2]>,
    /// The route of each statement, after lookups, generated keys and cursors (inline for one or
    /// two).
    pub routes: SmallVec<[Route; 2]>,
    /// A batch's route of each message (`None`: it goes with its Bind); empty for a Query.
    pub message_routes: Vec<Option<Route>>,
    /// Cursors the request declares or closes, for the session to record.
    pub cursor_effects: Vec<crate::session::cursors::Effect>,
}

impl Planned {
    /// The text a simple Query runs instead of the client's (its one INSERT given keys).
    pub fn rewritten_text(&mut self) -> Option<String> {
        self.rewritten.iter_mut().find_map(Option::take)
    }
}
