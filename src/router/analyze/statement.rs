//! The facts of one statement, as the router and the session read them: its kind, the tables
//! it names, the shard-key values it pins, and what makes it special (a merge, a pin, a refusal).

/// What kind of statement this is, as far as the session and the router care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE, and EXPLAIN of those.
    Select,
    Insert,
    Update,
    Delete,
    /// COPY; `from_stdin` is true for COPY … FROM STDIN.
    Copy {
        from_stdin: bool,
    },
    /// BEGIN / START TRANSACTION (the original text is replayed on each shard it reaches).
    Begin,
    /// COMMIT / END (also COMMIT AND CHAIN).
    Commit,
    /// ROLLBACK / ABORT (not ROLLBACK TO SAVEPOINT).
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO SAVEPOINT.
    Savepoint,
    /// A session-level `SET name = …` (value as SQL text to replay) or `RESET name` (value `None`).
    Set {
        name: String,
        value: Option<String>,
    },
    /// `SET LOCAL …`, `SET TRANSACTION …`: transaction-scoped, nothing to remember.
    SetLocal,
    /// `RESET ALL`.
    ResetAll,
    /// `SHOW name`.
    Show {
        name: String,
    },
    /// `DISCARD …`; `all` for `DISCARD ALL`, the only one that resets settings and deallocates
    /// prepared statements (PLANS, SEQUENCES and TEMP keep both).
    Discard {
        all: bool,
    },
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
    /// `SET LOCAL pgshard.name = value`: for the open block only.
    SetProxyLocal { name: String, value: Option<String> },
    /// `SHOW pgshard.name`.
    ShowProxy { name: String },
    /// `SELECT pgshard.next_id()`.
    NextId,
    /// `DEALLOCATE ALL`: the client's prepared statements live in the proxy (server-side ones
    /// are shared under digest names), so forgetting them is all of it. psycopg sends it after
    /// every rollback once it prepared a statement.
    DeallocateAll,
    /// `LISTEN channel`: the proxy's listening connection carries it (see `notify`).
    Listen { channel: String },
    /// `UNLISTEN channel`, or `UNLISTEN *` (`None`).
    Unlisten { channel: Option<String> },
    /// `NOTIFY channel [, 'payload']`: run on the channel shard, at COMMIT inside a block.
    Notify { channel: String, payload: String },
    /// `SELECT pg_notify(channel, payload)` of constants or parameters: a NOTIFY (queued to
    /// COMMIT inside a block) answered with its one row, a `void` column named `column`.
    PgNotify {
        channel: NotifyArg,
        payload: NotifyArg,
        column: String,
    },
}

/// An argument of `pg_notify` as the statement gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyArg {
    Text(String),
    Null,
    /// `$n` (1-based): a Bind parameter, or in the simple protocol the n-th extracted literal.
    Param(usize),
}

/// Where a shard-key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// An integer constant written in the statement.
    Const(i64),
    /// A string constant written in the statement (`'…'`, `'…'::uuid`): read as the key's type.
    Text(String),
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
    /// A read that takes row locks (`FOR UPDATE`, `FOR SHARE`, …): a standby refuses it
    /// (25006), so it never goes to a replica.
    pub locks_rows: bool,
    /// `INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING`: whether its conflict target names
    /// the shard key. Split over shards one row at a time only then, and only for distinct keys
    /// (else two rows of one statement could meet in the target).
    pub conflict_update_where: Option<bool>,
    /// Set when the statement binds the client to one server connection for the rest of its session
    /// (LISTEN, session advisory locks, temporary tables, WITH HOLD cursors, PREPARE): names the feature.
    pub session_bound: Option<String>,
    /// Set when the statement can never be answered exactly across shards (a join of sharded tables that
    /// is not co-located, a subquery over a sharded table, an UPDATE of the shard key): names what is missing.
    pub refuse: Option<super::Refused>,
    /// Set when running on several shards would need more than concatenation (ORDER BY, LIMIT/OFFSET,
    /// aggregates, GROUP BY, DISTINCT, window functions, …): names the construct.
    pub needs_merge: Option<String>,
    /// For a SELECT with `needs_merge`: how to run it on several shards and merge the answers
    /// exactly, or the construct that cannot be merged exactly.
    pub merge: Option<Result<std::sync::Arc<crate::router::merge_plan::MergePlan>, String>>,
    /// An INSERT, UPDATE or DELETE without RETURNING, or DDL: it answers with no rows, so an
    /// Execute's row limit (pgjdbc's `executeUpdate` sends 1) changes nothing and it runs whole.
    pub returns_no_rows: bool,
    /// For an INSERT into a sharded table whose column list omits the key: the number of VALUES rows
    /// that need generated ids.
    pub missing_key_rows: Option<usize>,
    /// With `missing_key_rows`: the key column is listed, but every VALUES row gives it as
    /// `gen_random_uuid()` (a uuid key). pgshard draws those version-4 UUIDs itself and writes
    /// them in place of the calls, so it knows each row's shard.
    pub random_uuid_keys: bool,
    /// Set when the proxy answers the statement itself.
    pub local: Option<LocalCommand>,
    /// The first sharded table the statement names and its shard key column, `(table, key)`, so
    /// refusals can name them.
    pub shard_key: Option<(String, String)>,
    /// The type of that table's shard key, which says how its key values are read and hashed.
    pub key_type: crate::router::KeyType,
    /// A leading `/* pgshard: … */` routing hint, or why it is malformed.
    pub hint: Option<Result<crate::router::hint::Hint, String>>,
    /// For COPY: its table, column list, format and options.
    pub copy: Option<Box<crate::router::copy_facts::CopyFacts>>,
    /// True when a reference table (copied whole to every shard) is named.
    pub reference: bool,
    /// The sharded table (quoted for SQL) a CREATE TABLE or ALTER TABLE makes or changes: the
    /// sequences of its columns are numbered in each shard's own range after it runs
    /// ([`crate::ids::sequence_ranges`]).
    pub numbered_table: Option<String>,
    /// True when the statement must change every shard the same way and any one shard's answer is
    /// the answer: DDL or maintenance of sharded or reference tables, writes to reference tables,
    /// VACUUM/ANALYZE/CLUSTER/REINDEX of the whole database.
    pub every_shard: bool,
    /// True when Postgres refuses the statement inside a transaction block (CREATE/DROP INDEX
    /// CONCURRENTLY, REINDEX CONCURRENTLY, VACUUM, CREATE/DROP DATABASE, ALTER SYSTEM, CLUSTER of
    /// the whole database, …): it must run on each shard outside any block, never under two-phase
    /// commit.
    pub no_transaction_block: bool,
    /// The indexes a DROP/ALTER/COMMENT ON/REINDEX INDEX names without naming their table: the
    /// session looks their tables up on the shards and routes by them.
    pub indexes: Vec<crate::router::index_owner::IndexName>,
    /// For `INSERT … SELECT * FROM UNNEST($a, …)` into a sharded table: its array parameters,
    /// split per shard by the key's array (`key` is then `ArrayParam`).
    pub unnest: Option<crate::router::unnest_insert::UnnestInsert>,
    /// For `INSERT … SELECT * FROM UNNEST($a, …)` into a sharded table whose column list omits
    /// the key: the `$n` of each UNNEST argument; the session adds a key array of generated keys.
    pub unnest_keyless: Option<Vec<usize>>,
    /// For DECLARE, FETCH, MOVE and CLOSE: the cursor and what is done with it, so the session
    /// keeps a cursor's statements where it lives.
    pub cursor: Option<crate::router::cursor::CursorOp>,
    /// Set when the statement may leave state on its server connection that outlives the
    /// transaction (see `frontend::session_pins`): the session keeps that connection until it
    /// has checked.
    pub pin: Option<SessionPin>,
    /// For `SELECT set_config('name', 'value', false)`: the setting it makes, `(name, SQL
    /// value)`, tracked like SET; `Err` names a session-level call pgshard cannot follow.
    pub set_config: Option<Result<(String, String), String>>,
    /// For `SELECT set_config(…)` whose arguments come with the Bind: what to read there; the
    /// session turns it into `set_config` when it binds the statement.
    pub set_config_bound: Option<crate::router::set_config::BoundCall>,
    /// The shard of the tenant schema (`[[sharded_schemas]]`) whose tables the statement names:
    /// it runs there, whole (see `router::schemas`).
    pub schema_shard: Option<u32>,
    /// The tenant schemas the statement names (lowercase): routing reads their shard from the
    /// map in use, so a statement prepared before a tenant moved follows it.
    pub tenants: Vec<String>,
    /// For a SELECT of the system catalogs only (or of no relation) where tenant schemas exist:
    /// its parameters; when one's value names a tenant (`WHERE nspname = $1`, `table_schema =
    /// 'tenant_a'`), the statement runs on that tenant's shard, else inside a block on the one
    /// shard the block reached (the OIDs an earlier catalog query of the block found are that
    /// shard's), else on the current tenant's (see `router::schemas`).
    pub catalog_params: Option<Vec<usize>>,
    /// For a SELECT over its one UPDATE or DELETE CTE of a sharded table (see
    /// `analyze::write_cte`): a write that runs whole on each shard it reaches, its rows merged.
    pub write_in_cte: bool,
}

/// Session state that binds a client to its server connection past the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionPin {
    /// A session-level advisory lock (`pg_advisory_lock` and friends).
    AdvisoryLock,
    /// A temporary table (or other temporary relation).
    TempTable,
    /// A cursor declared `WITH HOLD`.
    HoldCursor,
}

impl SessionPin {
    /// The reason's name in SHOW CLIENTS and the pin metric's `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            SessionPin::AdvisoryLock => "advisory_lock",
            SessionPin::TempTable => "temp_table",
            SessionPin::HoldCursor => "hold_cursor",
        }
    }
}

impl StatementFacts {
    /// True when the statement names its shard-key values (`=`, `IN`, `= ANY`, INSERT rows).
    pub fn key_values_named(&self) -> bool {
        !matches!(self.key, KeyFacts::Unknown)
    }

    /// Facts for a statement that names no table and needs nothing special.
    pub fn plain(kind: StatementKind) -> StatementFacts {
        StatementFacts {
            kind,
            sharded: false,
            unsharded: false,
            key: KeyFacts::Unknown,
            is_write: false,
            locks_rows: false,
            conflict_update_where: None,
            session_bound: None,
            refuse: None,
            needs_merge: None,
            merge: None,
            returns_no_rows: false,
            missing_key_rows: None,
            random_uuid_keys: false,
            local: None,
            shard_key: None,
            key_type: crate::router::KeyType::Int,
            hint: None,
            copy: None,
            reference: false,
            numbered_table: None,
            every_shard: false,
            no_transaction_block: false,
            indexes: Vec::new(),
            unnest: None,
            unnest_keyless: None,
            pin: None,
            set_config: None,
            set_config_bound: None,
            schema_shard: None,
            tenants: Vec::new(),
            catalog_params: None,
            write_in_cte: false,
            cursor: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Analysis
