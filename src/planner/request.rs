//! A client request as the planner sees it: the statements of one simple Query, or of one
//! extended-protocol batch up to Sync or Flush, each with its parameter values (literals put
//! back by the router, or a Bind's values, formats and types), and how the client ended it, which
//! says what it expects back. The same shape for both protocols, so they share one planner.

use crate::router::params::ParamSource;
use crate::router::{Route, ShardKey, StatementFacts};

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
}

/// What the planner plans: the statements of one request, in order.
pub struct Request<'a> {
    pub statements: Vec<Statement<'a>>,
    pub ending: Ending,
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
