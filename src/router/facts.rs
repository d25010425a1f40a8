//! Parser facts: what one parsed statement means for routing (which tables, which key values, is it
//! a write, does it need a merge, does it bind the session). Computed once per statement shape.

/// What kind of statement this is, as far as the session and the router care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE, and EXPLAIN of those.
    Select,
    Insert,
    Update,
    Delete,
    /// COPY; `from_stdin` is true for COPY … FROM STDIN.
    Copy { from_stdin: bool },
    /// BEGIN / START TRANSACTION (the original text is replayed on each shard it reaches).
    Begin,
    /// COMMIT / END (also COMMIT AND CHAIN).
    Commit,
    /// ROLLBACK / ABORT (not ROLLBACK TO SAVEPOINT).
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO SAVEPOINT.
    Savepoint,
    /// A session-level `SET name = …` (value as SQL text to replay) or `RESET name` (value `None`).
    Set { name: String, value: Option<String> },
    /// `SET LOCAL …`, `SET TRANSACTION …`: transaction-scoped, nothing to remember.
    SetLocal,
    /// `RESET ALL`.
    ResetAll,
    /// `SHOW name`.
    Show { name: String },
    /// `DISCARD …`.
    Discard,
    /// CREATE/ALTER/DROP and other DDL.
    Ddl,
    /// The text did not parse; the first shard reports the exact syntax error.
    Unparsed,
    /// Anything else (utility commands, CALL, DO, …).
    Other,
}

/// A statement the proxy answers itself, never sent to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalCommand {
    /// `SET pgshard.name = value` (value unquoted) or `RESET pgshard.name` (value `None`).
    SetProxy { name: String, value: Option<String> },
    /// `SHOW pgshard.name`.
    ShowProxy { name: String },
    /// `SELECT pgshard.next_id()`.
    NextId,
}

/// Where a shard-key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// A constant written in the statement.
    Const(i64),
    /// `$n` (1-based): a Bind parameter, or in the simple protocol the n-th extracted literal.
    Param(usize),
}

/// What the statement's WHERE clause (or INSERT rows) pins the shard key to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFacts {
    /// No usable condition on the key: every shard may hold matching rows.
    Unknown,
    /// The key is one of these values (`=`, `IN (…)`, one per INSERT row in VALUES order).
    Values(Vec<KeyValue>),
    /// `key = ANY($n)` with an array parameter.
    ArrayParam(usize),
}

/// Everything the router and the session need to know about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    pub kind: StatementKind,
    /// True when a sharded table is named anywhere in the statement.
    pub sharded: bool,
    /// True when a table that is not sharded (user table or catalog) is named.
    pub unsharded: bool,
    /// The shard key values, when the statement pins them.
    pub key: KeyFacts,
    /// True when the statement may modify data (INSERT/UPDATE/DELETE/COPY FROM/DDL, data-modifying CTEs,
    /// SELECT … FOR UPDATE counts as a read).
    pub is_write: bool,
    /// Set when the statement binds the client to one server connection for the rest of its session
    /// (LISTEN, session advisory locks, temporary tables, WITH HOLD cursors, PREPARE): names the feature.
    pub session_bound: Option<String>,
    /// Set when the statement can never be answered exactly across shards (a join of sharded tables that
    /// is not co-located, a subquery over a sharded table, an UPDATE of the shard key): names what is missing.
    pub refuse: Option<String>,
    /// Set when running on several shards would need more than concatenation (ORDER BY, LIMIT/OFFSET,
    /// aggregates, GROUP BY, DISTINCT, window functions, …): names the construct.
    pub needs_merge: Option<String>,
    /// For an INSERT into a sharded table whose column list omits the key: the number of VALUES rows
    /// that need generated ids.
    pub missing_key_rows: Option<usize>,
    /// Set when the proxy answers the statement itself.
    pub local: Option<LocalCommand>,
}

impl StatementFacts {
    /// Facts for a statement that names no table and needs nothing special.
    pub fn plain(kind: StatementKind) -> StatementFacts {
        StatementFacts {
            kind,
            sharded: false,
            unsharded: false,
            key: KeyFacts::Unknown,
            is_write: false,
            session_bound: None,
            refuse: None,
            needs_merge: None,
            missing_key_rows: None,
            local: None,
        }
    }
}
