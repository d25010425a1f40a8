//! A client request as the planner sees it: the statements of one simple Query, or of one
//! extended-protocol batch up to Sync or Flush, each with its parameter values (literals put
//! back by the router, or a Bind's values, formats and types), and how the client ended it, which
//! says what it expects back. The same shape for both protocols, so they share one planner.

use smallvec::SmallVec;

use crate::router::params::ParamSource;
use crate::router::{Route, ShardKey, StatementFacts};
use crate::txn::control::BlockView;

use super::messages::Msg;

/// How the client ended the request: what it expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A simple Query: answers, then ReadyForQuery.
    Query,
    /// An extended batch up to Sync: answers, then ReadyForQuery; the implicit transaction ends.
    Sync,
    /// An extended batch up to Flush: answers so far; the implicit transaction stays open.
    Flush,
}

/// One statement of a request.
pub struct Statement<'a> {
    /// The text the statement came in (a simple Query's whole string).
    pub sql: &'a str,
    pub facts: &'a StatementFacts,
    /// Its `$n` values (extended) or literals (simple).
    pub params: &'a (dyn ParamSource + Sync),
    /// Where a lookup the frontend made with I/O says it runs (the table of an index it names),
    /// overriding the router.
    pub looked_up: Option<Route>,
    /// Generated keys the frontend reserved for it (an INSERT that omits its shard key); `None`
    /// until reserved (a lone simple statement then plans as [`super::Plan::NeedsKeys`]).
    pub keys: Option<GivenKeys>,
}

/// What the planner plans: the statements of one request, in order.
pub struct Request<'a> {
    /// A simple Query's statements, or the statements an extended batch binds (one per Bind the
    /// planner routes, in message order).
    /// Inline for one or two (nearly every request): no allocation to plan one.
    pub statements: SmallVec<[Statement<'a>; 2]>,
    pub ending: Ending,
    /// An extended batch's messages; `None` for a simple Query.
    pub messages: Option<Messages<'a>>,
}

/// The messages of an extended batch as the frontend decoded them: what a batch adds to its
/// statements (Parse, Describe, Execute with row limits, Close), and what the frontend learnt
/// with I/O while decoding.
pub struct Messages<'a> {
    pub msgs: &'a [Msg],
    /// Each message's route as its decoding found it: a Parse or Describe any shard answers, a
    /// portal bound earlier; `None` for a Bind the planner routes and for a message that goes
    /// with a Bind of this batch.
    pub routes: &'a [Option<Route>],
    /// The index in `msgs` of the Bind of each of the request's statements.
    pub binds: &'a [usize],
    /// A message was refused while decoding: the messages after it are not in `msgs`.
    pub failed_before: bool,
    /// Writes of a looked-up column claim their values first.
    pub claims: bool,
    /// The client's block as transaction control sees it.
    pub block: BlockView,
}

/// Generated keys the frontend reserved for an INSERT that omits its shard key (the
/// reservation is I/O; the planner only places the rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenKeys {
    /// One key per row, in row order (integers, or UUIDv7s for a uuid key column).
    pub keys: Vec<ShardKey>,
    /// The column is `GENERATED ALWAYS AS IDENTITY`: the INSERT needs `OVERRIDING SYSTEM VALUE`.
    pub overriding: bool,
}
