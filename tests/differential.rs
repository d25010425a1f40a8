//! Differential test of scatter-gather merges: the same rows in ten shards behind pgshard and in
//! one plain Postgres, hundreds of generated keyless SELECTs (ORDER BY with ties and NULLs,
//! LIMIT/OFFSET, aggregates and expressions over them (coalesce, NULLIF, casts, FILTER,
//! count/sum(DISTINCT any column)), GROUP BY/HAVING, DISTINCT; filters include an EXISTS subquery
//! correlated on the shard key) run on both in five ways, each answer
//! compared exactly with the plain Postgres's answer in the same way: the simple protocol
//! (constants as literals, text results); the extended protocol with the constants (WHERE values,
//! FILTER values, HAVING thresholds, LIMIT/OFFSET counts) as `$n` parameters, in binary and in
//! text format (binary results); and batches of queries pipelined on one connection, outside and
//! inside BEGIN … COMMIT. A refusal in some ways of a query answered in others is a failure.
//! The same queries also run on copies of the table sharded by a text key (`t`) and by a uuid key
//! (`u`), placed by the shards' own `hashtextextended` / `uuid_hash_extended`.
//! The seed is printed; set PGSHARD_DIFF_SEED to replay one.

mod common;

use common::answers::Raw;

use std::collections::HashMap;
use std::time::Instant;

use common::params::TextParam;
use common::proxy::{self, connect, start_proxy_with};
use common::TestCluster;
use futures_util::future::join_all;
use pgshard::config::ShardedTableConfig;
use pgshard::router::{KeyType, Strategy};
use pgshard::sql_text::quote_literal;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, SimpleQueryMessage};

const ROWS: i64 = 3000;
const QUERIES: usize = 320;
/// Queries on each keyed copy of the table.
const KEYED_QUERIES: usize = 96;
/// Copies of `dtest` sharded by a key of another type: (table, key column, key type).
const KEYED_COPIES: [(&str, &str, KeyType); 2] = [
    ("dtest_t", "t", KeyType::Text),
    ("dtest_u", "u", KeyType::Uuid),
];
/// Queries sent at once in the pipeline modes.
const PIPELINE: usize = 8;

/// A small deterministic generator (xorshift64*), so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

type Row = Vec<Raw>;

/// One answer: column names and types, rows.
#[derive(Debug, PartialEq)]
struct Answer {
    columns: Vec<(String, u32)>,
    rows: Vec<Row>,
}

const TEXTS: &[&str] = &[
    "alpha", "Alpha", "beta", "gamma", "", "zeta", "Zulu", "b", "a b", "a", "delta", "eps",
];

fn sql_row(r: &mut Rng, id: i64) -> String {
    let null = |r: &mut Rng, v: String| if r.chance(8) { "NULL".to_string() } else { v };
    let i = r.range(-50, 50).to_string();
    let b = r.range(-1_000_000_000_000, 1_000_000_000_000).to_string();
    let n = format!("{:.3}", r.range(-1_000_000, 1_000_000) as f64 / 1000.0);
    // Multiples of 1/8 with small magnitude: every partial sum is exact, so the order shards
    // add in cannot change a float sum.
    let f = format!("{}", r.range(-800, 800) as f64 / 8.0);
    let t = format!("'{}'", r.pick(TEXTS));
    let flag = if r.chance(50) { "true" } else { "false" }.to_string();
    let d = format!("date '2020-01-01' + {}", r.range(0, 400));
    let ts = format!(
        "timestamptz '2021-01-01 00:00:00+00' + interval '{} seconds'",
        r.range(0, 86_400 * 30)
    );
    let u = format!("'{:016x}{:016x}'::uuid", r.next(), r.next());
    let g = r.range(0, 10).to_string();
    format!(
        "({id}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {g})",
        null(r, i),
        null(r, b),
        null(r, n),
        null(r, f),
        null(r, t),
        null(r, flag),
        null(r, d),
        null(r, ts),
        null(r, u)
    )
}

const CREATE: &str = "CREATE TABLE dtest (id bigint PRIMARY KEY, i int, b bigint, n numeric(12,3), f float8, t text, flag bool, d date, ts timestamptz, u uuid, g int)";

/// A parameter of a generated query, typed as Postgres infers the `$n` it fills, so that
/// tokio-postgres accepts it for the prepared statement and sends it in binary.
#[derive(Debug, Clone)]
enum Param {
    Int4(i32),
    Int8(i64),
    Float8(f64),
    Text(String),
}

impl Param {
    /// The value as tokio-postgres binds it: binary format, checked against the inferred type.
    fn as_binary(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Int4(v) => v,
            Param::Int8(v) => v,
            Param::Float8(v) => v,
            Param::Text(v) => v,
        }
    }

    /// The value's text form, as a text-format parameter carries it.
    fn text(&self) -> String {
        match self {
            Param::Int4(v) => v.to_string(),
            Param::Int8(v) => v.to_string(),
            Param::Float8(v) => v.to_string(),
            Param::Text(v) => v.clone(),
        }
    }

    /// The value as a literal in the simple protocol's spelling of the query.
    fn literal(&self) -> String {
        match self {
            Param::Text(v) => quote_literal(v),
            other => other.text(),
        }
    }
}

/// One generated statement in two spellings built side by side: with `$n` placeholders and
/// their values for the extended protocol, and with the same values as literals for the simple
/// protocol, so both spellings always mean the same query.
#[derive(Debug, Default)]
struct Sql {
    extended: String,
    simple: String,
    params: Vec<Param>,
}

impl Sql {
    /// Appends text that is the same in both spellings.
    fn push(&mut self, text: &str) {
        self.extended.push_str(text);
        self.simple.push_str(text);
    }

    /// Appends a constant: the next `$n` in the extended spelling, a literal in the simple one.
    fn param(&mut self, p: Param) {
        self.params.push(p.clone());
        self.extended.push_str(&format!("${}", self.params.len()));
        self.simple.push_str(&p.literal());
    }
}

/// A generated query and how to compare its answers.
#[derive(Debug)]
struct Query {
    sql: Sql,
    /// Output positions of the ORDER BY keys, when every key is an output column; `None` with
    /// `exact_order` false means the order is unspecified.
    key_columns: Option<Vec<usize>>,
    /// The ORDER BY makes the order total: compare row by row.
    exact_order: bool,
    offset: bool,
    limit: bool,
}

/// The columns of `dtest` in table order: what `SELECT *` outputs.
const TABLE_COLUMNS: &[&str] = &["id", "i", "b", "n", "f", "t", "flag", "d", "ts", "u", "g"];
const COLUMNS: &[&str] = &["i", "b", "n", "f", "t", "flag", "d", "ts", "u", "g"];
const NUMERIC_COLUMNS: &[&str] = &["i", "b", "n", "f", "g"];
/// Numeric columns whose sums do not depend on the order of addition (no float).
const EXACT_COLUMNS: &[&str] = &["i", "b", "n", "g"];
const MINMAX_COLUMNS: &[&str] = &["i", "b", "n", "f", "t", "d", "ts", "g"];
const GROUP_COLUMNS: &[&str] = &["g", "t", "flag", "d", "i"];

/// An optional WHERE clause; its constants become parameters.
fn filter(r: &mut Rng, sql: &mut Sql) {
    match r.below(8) {
        0 => {
            sql.push(" WHERE i > ");
            sql.param(Param::Int4(r.range(-50, 50) as i32));
        }
        1 => sql.push(" WHERE t IS NOT NULL"),
        2 => sql.push(" WHERE flag"),
        3 => {
            // `date + $n` alone is ambiguous (integer, interval, time): the cast says which.
            sql.push(" WHERE d < date '2020-01-01' + ");
            sql.param(Param::Int4(r.range(0, 400) as i32));
            sql.push("::int4");
        }
        4 => {
            sql.push(" WHERE g = ");
            sql.param(Param::Int4(r.range(0, 10) as i32));
            sql.push(" OR n < ");
            sql.param(Param::Int4(0));
            sql.push("::int4");
        }
        5 => {
            sql.push(" WHERE t >= ");
            sql.param(Param::Text(r.pick(TEXTS).to_string()));
        }
        6 => {
            // A subquery correlated on the shard key: each shard answers it alone.
            sql.push(" WHERE EXISTS (SELECT 1 FROM dtest d2 WHERE d2.id = dtest.id AND d2.i > ");
            sql.param(Param::Int4(r.range(-50, 50) as i32));
            sql.push(")");
        }
        _ => {}
    }
}

const DIRECTIONS: &[&str] = &[
    "",
    " ASC",
    " DESC",
    " NULLS FIRST",
    " DESC NULLS LAST",
    " ASC NULLS FIRST",
    " DESC NULLS FIRST",
];

fn direction(r: &mut Rng) -> &'static str {
    let i = r.below(DIRECTIONS.len() as u64) as usize;
    DIRECTIONS[i]
}

/// An optional LIMIT and OFFSET, their counts as parameters; says which of the two it added.
fn limit_offset(r: &mut Rng, sql: &mut Sql) -> (bool, bool) {
    let limit = r.chance(60).then(|| r.range(0, 60));
    let offset = r.chance(40).then(|| r.range(0, 40));
    for (word, v) in [(" LIMIT ", limit), (" OFFSET ", offset)] {
        if let Some(v) = v {
            sql.push(word);
            sql.param(Param::Int8(v));
        }
    }
    (limit.is_some(), offset.is_some())
}

fn ordered_rows(r: &mut Rng) -> Query {
    let mut cols: Vec<&str> = COLUMNS.iter().copied().filter(|_| r.chance(40)).collect();
    if cols.is_empty() {
        cols.push("id");
    }
    let nkeys = 1 + r.below(3) as usize;
    let mut keys: Vec<String> = Vec::new();
    let mut key_cols: Vec<&str> = Vec::new();
    for _ in 0..nkeys {
        let c = *r.pick(COLUMNS);
        if key_cols.contains(&c) {
            continue;
        }
        key_cols.push(c);
        keys.push(format!("{c}{}", direction(r)));
    }
    let keys_in_output = key_cols.iter().all(|k| cols.contains(k));
    // Keys that are not output columns are hidden columns: make the order total with id.
    let exact = !keys_in_output || r.chance(30);
    if exact {
        keys.push("id".into());
        if !cols.contains(&"id") && r.chance(50) {
            cols.push("id");
        }
    }
    let star = r.chance(10);
    // `*` outputs every column, so its sort keys are output columns too: without their
    // positions, ties cut by LIMIT would be compared as if no order were asked for.
    let output: Vec<&str> = if star {
        TABLE_COLUMNS.to_vec()
    } else {
        cols.clone()
    };
    let key_columns = key_cols
        .iter()
        .map(|k| output.iter().position(|c| c == k))
        .collect::<Option<Vec<usize>>>();
    let select = if star {
        "*".to_string()
    } else {
        output.join(", ")
    };
    let mut sql = Sql::default();
    sql.push(&format!("SELECT {select} FROM dtest"));
    filter(r, &mut sql);
    sql.push(&format!(" ORDER BY {}", keys.join(", ")));
    let (limit, offset) = limit_offset(r, &mut sql);
    Query {
        sql,
        key_columns,
        exact_order: exact,
        offset,
        limit,
    }
}

/// One to five aggregates, comma-separated; a FILTER's constant becomes a parameter.
fn aggregate_list(r: &mut Rng, sql: &mut Sql) {
    for n in 0..1 + r.below(5) {
        if n > 0 {
            sql.push(", ");
        }
        let agg = match r.below(13) {
            0 => "count(*)".to_string(),
            1 => format!("count({})", r.pick(COLUMNS)),
            2 => format!("sum({})", r.pick(NUMERIC_COLUMNS)),
            3 => format!("avg({})", r.pick(NUMERIC_COLUMNS)),
            4 => format!("min({})", r.pick(MINMAX_COLUMNS)),
            5 => format!("max({})", r.pick(MINMAX_COLUMNS)),
            6 => "count(DISTINCT id)".to_string(),
            // The shapes ORMs and reports write, finished over the merged aggregates.
            7 => format!("coalesce(sum({}), 0)", r.pick(EXACT_COLUMNS)),
            8 => format!("sum({}) / NULLIF(count(*), 0)", r.pick(EXACT_COLUMNS)),
            9 => format!("count(DISTINCT {})", r.pick(COLUMNS)),
            10 => "count(*)::int".to_string(),
            11 => format!("avg({})::numeric(20,2)", r.pick(EXACT_COLUMNS)),
            _ => format!("sum(DISTINCT {})", r.pick(EXACT_COLUMNS)),
        };
        // FILTER follows an aggregate call, not an expression over one.
        let call = !agg.contains("::") && !agg.contains(", 0)") && !agg.contains(" / ");
        sql.push(&agg);
        if call && r.chance(15) {
            sql.push(" FILTER (WHERE g < ");
            sql.param(Param::Int4(r.range(0, 10) as i32));
            sql.push(")");
        }
        if r.chance(20) {
            sql.push(&format!(" AS a{n}"));
        }
    }
}

fn plain_aggregates(r: &mut Rng) -> Query {
    let mut sql = Sql::default();
    sql.push("SELECT ");
    aggregate_list(r, &mut sql);
    sql.push(" FROM dtest");
    filter(r, &mut sql);
    Query {
        sql,
        key_columns: None,
        exact_order: false,
        offset: false,
        limit: false,
    }
}

/// A HAVING condition over the groups; its thresholds become parameters.
fn having(r: &mut Rng, g: &str, sql: &mut Sql) {
    sql.push(" HAVING ");
    match r.below(5) {
        0 => {
            sql.push("count(*) > ");
            sql.param(Param::Int8(r.range(0, 400)));
        }
        1 => {
            sql.push("sum(i) < ");
            sql.param(Param::Int8(r.range(-500, 500)));
        }
        2 => {
            sql.push("min(t) >= ");
            sql.param(Param::Text(r.pick(TEXTS).to_string()));
            sql.push(" OR max(n) IS NULL");
        }
        3 => {
            // Multiples of 1/8: the same float in every spelling.
            sql.push("avg(f) > ");
            sql.param(Param::Float8(r.range(-8, 8) as f64 / 8.0));
            sql.push(" AND NOT count(*) = ");
            sql.param(Param::Int8(0));
        }
        _ => {
            sql.push(&format!("{g} IS NOT NULL AND count(b) >= "));
            sql.param(Param::Int8(r.range(0, 6)));
        }
    }
}

fn grouped(r: &mut Rng) -> Query {
    let g = *r.pick(GROUP_COLUMNS);
    let mut sql = Sql::default();
    sql.push(&format!("SELECT {g}, "));
    aggregate_list(r, &mut sql);
    sql.push(" FROM dtest");
    filter(r, &mut sql);
    sql.push(&format!(" GROUP BY {g}"));
    if r.chance(50) {
        having(r, g, &mut sql);
    }
    let mut exact = false;
    let mut limit = false;
    let mut offset = false;
    if r.chance(60) {
        // The group column makes the order total.
        let order = if r.chance(50) {
            format!(" ORDER BY 2{}, 1{}", direction(r), direction(r))
        } else {
            format!(" ORDER BY {g}{}", direction(r))
        };
        sql.push(&order);
        exact = true;
        (limit, offset) = limit_offset(r, &mut sql);
    }
    Query {
        sql,
        key_columns: None,
        exact_order: exact,
        offset,
        limit,
    }
}

fn distinct(r: &mut Rng) -> Query {
    let a = *r.pick(GROUP_COLUMNS);
    let b = *r.pick(&["flag", "g", "t"]);
    let cols = if a == b {
        a.to_string()
    } else {
        format!("{a}, {b}")
    };
    let mut sql = Sql::default();
    sql.push(&format!("SELECT DISTINCT {cols} FROM dtest"));
    filter(r, &mut sql);
    let exact = r.chance(60);
    let (mut limit, mut offset) = (false, false);
    if exact {
        sql.push(&format!(" ORDER BY {cols}"));
        (limit, offset) = limit_offset(r, &mut sql);
    }
    Query {
        sql,
        key_columns: None,
        exact_order: exact,
        offset,
        limit,
    }
}

fn generate(r: &mut Rng) -> Query {
    match r.below(10) {
        0..=3 => ordered_rows(r),
        4 | 5 => plain_aggregates(r),
        6..=8 => grouped(r),
        _ => distinct(r),
    }
}

/// How the extended protocol sends a query's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamFormat {
    /// Typed binary values (tokio-postgres's, asyncpg's, pgx's way).
    Binary,
    /// Text with the type left to the server (psycopg's, node-postgres's, pgjdbc's way).
    Text,
}

/// Prepares and runs `q` in the extended protocol on a client or inside a transaction; run
/// concurrently on one connection, these calls are pipelined by tokio-postgres.
async fn run_extended<C: GenericClient + Sync>(
    c: &C,
    q: &Query,
    format: ParamFormat,
) -> Result<Answer, tokio_postgres::Error> {
    let texts: Vec<TextParam> = q.sql.params.iter().map(|p| TextParam(p.text())).collect();
    let params: Vec<&(dyn ToSql + Sync)> = match format {
        ParamFormat::Binary => q.sql.params.iter().map(Param::as_binary).collect(),
        ParamFormat::Text => texts.iter().map(|p| p as &(dyn ToSql + Sync)).collect(),
    };
    let (columns, rows) = common::answers::extended_answer(c, &q.sql.extended, &params).await?;
    Ok(Answer { columns, rows })
}

/// Sends all `queries` at once on one connection (binary parameters) and waits for the answers.
async fn run_pipeline<C: GenericClient + Sync>(
    c: &C,
    queries: &[&Query],
) -> Vec<Result<Answer, tokio_postgres::Error>> {
    join_all(
        queries
            .iter()
            .map(|q| run_extended(c, q, ParamFormat::Binary)),
    )
    .await
}

/// The same pipeline inside BEGIN … COMMIT; `Err` when the block itself fails.
async fn run_pipeline_in_block(
    c: &mut Client,
    queries: &[&Query],
) -> Result<Vec<Result<Answer, tokio_postgres::Error>>, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let answers = run_pipeline(&tx, queries).await;
    tx.commit().await?;
    Ok(answers)
}

async fn run_simple(c: &Client, sql: &str) -> Result<Answer, tokio_postgres::Error> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| (c.name().to_string(), 0)).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if columns.is_empty() {
                    columns = row
                        .columns()
                        .iter()
                        .map(|c| (c.name().to_string(), 0))
                        .collect();
                }
                rows.push(
                    (0..row.len())
                        .map(|i| Raw(row.get(i).map(|s| s.as_bytes().to_vec())))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok(Answer { columns, rows })
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

/// Compares two answers of `q`; `Err` says how they differ.
fn compare(q: &Query, got: &Answer, want: &Answer) -> Result<(), String> {
    if !got.columns.is_empty() && got.columns != want.columns {
        return Err(format!(
            "columns differ: {:?} vs {:?}",
            got.columns, want.columns
        ));
    }
    if got.rows.len() != want.rows.len() {
        return Err(format!(
            "{} rows vs {} rows",
            got.rows.len(),
            want.rows.len()
        ));
    }
    if q.exact_order {
        if let Some(i) = (0..got.rows.len()).find(|&i| got.rows[i] != want.rows[i]) {
            return Err(format!(
                "row {i} differs: {:?} vs {:?}",
                got.rows[i], want.rows[i]
            ));
        }
        return Ok(());
    }
    let Some(keys) = &q.key_columns else {
        // No order to check: the same rows.
        if sorted(got.rows.clone()) != sorted(want.rows.clone()) {
            return Err("different rows (as multisets)".into());
        }
        return Ok(());
    };
    // Ordered with ties: the sort keys in exactly the same order, and the same rows within each
    // run of equal keys, except runs cut by OFFSET (the first) or LIMIT (the last).
    let project = |r: &Row| keys.iter().map(|&k| r[k].clone()).collect::<Vec<_>>();
    for i in 0..got.rows.len() {
        if project(&got.rows[i]) != project(&want.rows[i]) {
            return Err(format!(
                "sort keys of row {i} differ: {:?} vs {:?}",
                project(&got.rows[i]),
                project(&want.rows[i])
            ));
        }
    }
    let mut start = 0;
    let n = got.rows.len();
    while start < n {
        let key = project(&got.rows[start]);
        let mut end = start;
        while end < n && project(&got.rows[end]) == key {
            end += 1;
        }
        let boundary = (start == 0 && q.offset) || (end == n && (q.limit || q.offset));
        if !boundary
            && sorted(got.rows[start..end].to_vec()) != sorted(want.rows[start..end].to_vec())
        {
            return Err(format!("rows {start}..{end} with equal sort keys differ"));
        }
        start = end;
    }
    Ok(())
}

/// The ways each generated query is sent; every one must give the plain Postgres's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The simple protocol, constants as literals, text results.
    Simple,
    /// Parse/Bind/Execute/Sync, constants as typed binary parameters, binary results.
    Binary,
    /// The same with text-format parameters of unspecified type.
    Text,
    /// A batch of queries sent at once without waiting, binary parameters.
    Pipeline,
    /// The same pipeline inside BEGIN … COMMIT.
    PipelineInBlock,
}

/// How one mode's answer from pgshard compared with the plain Postgres's.
#[derive(Debug)]
enum Outcome {
    Equal,
    /// Both answered, differently.
    Differs(String),
    /// pgshard refused (0A000) what the plain Postgres answered.
    Refused(String),
    /// Any other error on either side.
    Error(String),
}

/// Compares the proxy's answer `got` with the plain Postgres's `want` for `q`.
fn judge(
    q: &Query,
    got: Result<Answer, tokio_postgres::Error>,
    want: Result<Answer, tokio_postgres::Error>,
) -> Outcome {
    match (got, want) {
        (Ok(g), Ok(w)) => match compare(q, &g, &w) {
            Ok(()) => Outcome::Equal,
            Err(e) => Outcome::Differs(e),
        },
        (Err(e), Ok(_)) if e.code().map(|c| c.code()) == Some("0A000") => {
            Outcome::Refused(format!("{e:?}"))
        }
        (g, w) => Outcome::Error(format!("proxy {:?} / plain {:?}", g.err(), w.err())),
    }
}

/// Failures among one query's outcomes: wrong answers, errors, and a refusal in some modes of a
/// query answered in others (a refusal in every mode is a failure too: the generator only makes
/// queries the merges support).
fn failures_of(n: usize, q: &Query, outcomes: &[(Mode, Outcome)]) -> Vec<String> {
    let spelled = |mode: Mode| match mode {
        Mode::Simple => q.sql.simple.clone(),
        _ => format!("{} {:?}", q.sql.extended, q.sql.params),
    };
    let mut out = Vec::new();
    for (mode, outcome) in outcomes {
        match outcome {
            Outcome::Equal | Outcome::Refused(_) => {}
            Outcome::Differs(e) | Outcome::Error(e) => {
                out.push(format!("#{n} {mode:?}: {}: {e}", spelled(*mode)))
            }
        }
    }
    let refused: Vec<Mode> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Refused(_)))
        .map(|(m, _)| *m)
        .collect();
    if let Some((_, Outcome::Refused(e))) = outcomes
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Refused(_)))
    {
        let answered: Vec<Mode> = outcomes
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Refused(_)))
            .map(|(m, _)| *m)
            .collect();
        out.push(format!(
            "#{n} refused in {refused:?}, answered in {answered:?}: {}: {e}",
            spelled(refused[0])
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_answers_equal_one_postgres() {
    let seed: u64 = std::env::var("PGSHARD_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2024);
    println!("differential seed: {seed} (set PGSHARD_DIFF_SEED to replay)");
    let started = Instant::now();
    let (cluster, single) = tokio::join!(
        TestCluster::start(10, Strategy::Hash),
        TestCluster::start(1, Strategy::Hash)
    );
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.sharded_tables.push(ShardedTableConfig {
            name: "dtest".into(),
            key: "id".into(),
            key_type: None,
        });
        // Created after the proxy starts: the key types are named.
        for (name, key, key_type) in KEYED_COPIES {
            c.sharded_tables.push(ShardedTableConfig {
                name: name.into(),
                key: key.into(),
                key_type: Some(key_type),
            });
        }
    })
    .await;
    // The same rows: in the plain Postgres, and in the shards by the proxy's map.
    let plain = proxy::shard(&single.info, single.info.shard_ids()[0]).await;
    plain.batch_execute(CREATE).await.expect("create on plain");
    let map = proxy.proxy.map.current();
    let mut per_shard: HashMap<u32, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    let mut r = Rng(seed | 1);
    for id in 1..=ROWS {
        let row = sql_row(&mut r, id);
        per_shard
            .entry(map.shard_for(id))
            .or_default()
            .push(row.clone());
        all.push(row);
    }
    for id in cluster.info.shard_ids() {
        let c = proxy::shard(&cluster.info, id).await;
        c.batch_execute(CREATE).await.expect("create on shard");
        if let Some(rows) = per_shard.get(&id) {
            c.batch_execute(&format!("INSERT INTO dtest VALUES {}", rows.join(", ")))
                .await
                .expect("load shard");
        }
    }
    plain
        .batch_execute(&format!("INSERT INTO dtest VALUES {}", all.join(", ")))
        .await
        .expect("load plain");
    assert!(per_shard.len() >= 9, "rows spread over the shards");
    // The keyed copies: the rows whose key is not NULL, each shard keeping those the map's SQL
    // twin gives it.
    for (name, key, key_type) in KEYED_COPIES {
        let copy = format!(
            "CREATE TABLE {name} (LIKE dtest INCLUDING ALL); INSERT INTO {name} SELECT * FROM dtest WHERE {key} IS NOT NULL"
        );
        plain.batch_execute(&copy).await.expect("copy on plain");
        for id in cluster.info.shard_ids() {
            let c = proxy::shard(&cluster.info, id).await;
            let owned = map.sql_owned_by_typed(key, key_type, id);
            c.batch_execute(&format!(
                "CREATE TABLE {name} (LIKE dtest INCLUDING ALL); CREATE TABLE d_all (LIKE dtest); \
                 INSERT INTO d_all VALUES {rows}; \
                 INSERT INTO {name} SELECT * FROM d_all WHERE {key} IS NOT NULL AND {owned}; \
                 DROP TABLE d_all",
                rows = all.join(", "),
            ))
            .await
            .expect("copy on shard");
        }
    }
    let mut through = connect(&proxy).await;
    let mut plain = plain;
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut with_rows = 0;
    let mut in_block = 0;
    let rounds = std::iter::once(("dtest", "id", QUERIES)).chain(
        KEYED_COPIES
            .iter()
            .map(|(name, key, _)| (*name, *key, KEYED_QUERIES)),
    );
    for (table, key, count) in rounds {
        for first in (0..count).step_by(PIPELINE) {
            let mut queries: Vec<Query> = (first..count.min(first + PIPELINE))
                .map(|_| generate(&mut r))
                .collect();
            for q in &mut queries {
                let from = format!(" FROM {table}");
                // The key-correlated EXISTS shape correlates on the copy's own shard key.
                let correlated = format!("d2.{key} = {table}.{key}");
                for sql in [&mut q.sql.simple, &mut q.sql.extended] {
                    *sql = sql
                        .replace(" FROM dtest", &from)
                        .replace("d2.id = dtest.id", &correlated);
                }
                assert!(q.sql.simple.contains(&from), "{}", q.sql.simple);
            }
            let mut outcomes: Vec<Vec<(Mode, Outcome)>> =
                queries.iter().map(|_| Vec::new()).collect();
            for (q, out) in queries.iter().zip(&mut outcomes) {
                let (got, want) = tokio::join!(
                    run_simple(&through, &q.sql.simple),
                    run_simple(&plain, &q.sql.simple)
                );
                if let Ok(w) = &want {
                    with_rows += usize::from(!w.rows.is_empty());
                }
                out.push((Mode::Simple, judge(q, got, want)));
                for (mode, format) in [
                    (Mode::Binary, ParamFormat::Binary),
                    (Mode::Text, ParamFormat::Text),
                ] {
                    let (got, want) = tokio::join!(
                        run_extended(&through, q, format),
                        run_extended(&plain, q, format)
                    );
                    out.push((mode, judge(q, got, want)));
                }
            }
            let all: Vec<&Query> = queries.iter().collect();
            let (got, want) =
                tokio::join!(run_pipeline(&through, &all), run_pipeline(&plain, &all));
            for ((q, out), (g, w)) in queries
                .iter()
                .zip(&mut outcomes)
                .zip(got.into_iter().zip(want))
            {
                out.push((Mode::Pipeline, judge(q, g, w)));
            }
            // A refused query would abort the block and every query after it, as in Postgres: the
            // block runs the queries both sides answered in every other mode.
            let answered: Vec<usize> = (0..queries.len())
                .filter(|&i| {
                    outcomes[i]
                        .iter()
                        .all(|(_, o)| matches!(o, Outcome::Equal | Outcome::Differs(_)))
                })
                .collect();
            let block: Vec<&Query> = answered.iter().map(|&i| &queries[i]).collect();
            let (got, want) = tokio::join!(
                run_pipeline_in_block(&mut through, &block),
                run_pipeline_in_block(&mut plain, &block)
            );
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    for ((&i, g), w) in answered.iter().zip(got).zip(want) {
                        outcomes[i].push((Mode::PipelineInBlock, judge(&queries[i], g, w)));
                    }
                }
                (g, w) => failures.push(format!(
                    "{table} #{first}.. PipelineInBlock: the block failed: proxy {:?} / plain {:?}",
                    g.err(),
                    w.err()
                )),
            }
            in_block += block.len();
            for (i, (q, out)) in queries.iter().zip(&outcomes).enumerate() {
                failures.extend(
                    failures_of(first + i, q, out)
                        .into_iter()
                        .map(|f| format!("{table}: {f}")),
                );
            }
            ran += queries.len();
        }
    }
    println!(
        "{ran} queries x 5 modes ({in_block} of them in blocks) in {:.1}s ({with_rows} with rows), {} failures",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(with_rows > ran / 2, "most queries return rows");
    assert!(
        in_block > ran / 2,
        "most queries ran in a pipeline in a block"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What the merge cannot reproduce runs over the table's rows read first (window functions,
    // DISTINCT ON, string_agg, ROLLUP, COLLATE, subqueries beside aggregates): the same answer
    // as one Postgres, in both protocols.
    for sql in [
        "SELECT g FROM dtest GROUP BY g ORDER BY count(DISTINCT t), g",
        "SELECT g, string_agg(t, ',' ORDER BY t, id) FROM dtest GROUP BY g ORDER BY g",
        "SELECT id, row_number() OVER (PARTITION BY g ORDER BY id) FROM dtest ORDER BY id",
        "SELECT count(*) + (SELECT 1) FROM dtest",
        "SELECT g, count(*) FROM dtest GROUP BY ROLLUP (g) ORDER BY g NULLS FIRST",
        "SELECT t FROM dtest ORDER BY t COLLATE \"C\" NULLS FIRST, id LIMIT 50",
        "SELECT DISTINCT ON (g) g, t FROM dtest ORDER BY g, t NULLS FIRST, id",
    ] {
        let want = run_simple(&plain, sql).await.expect(sql);
        let got = run_simple(&through, sql).await;
        assert_eq!(got.as_ref().ok(), Some(&want), "simple {sql}: {got:?}");
        let want = common::answers::extended_answer(&plain, sql, &[])
            .await
            .expect(sql);
        let got = common::answers::extended_answer(&through, sql, &[]).await;
        assert_eq!(got.as_ref().ok(), Some(&want), "extended {sql}: {got:?}");
    }
    // A wrong order would be caught: the comparison itself must fail on a swapped answer.
    let q = Query {
        sql: Sql::default(),
        key_columns: Some(vec![0]),
        exact_order: false,
        offset: false,
        limit: false,
    };
    let row = |k: u8, v: u8| vec![Raw(Some(vec![k])), Raw(Some(vec![v]))];
    let want = Answer {
        columns: vec![],
        rows: vec![row(1, 1), row(1, 2), row(2, 3)],
    };
    let tie_swapped = Answer {
        columns: vec![],
        rows: vec![row(1, 2), row(1, 1), row(2, 3)],
    };
    let misordered = Answer {
        columns: vec![],
        rows: vec![row(2, 3), row(1, 1), row(1, 2)],
    };
    assert!(compare(&q, &tie_swapped, &want).is_ok());
    assert!(compare(&q, &misordered, &want).is_err());
    // A query refused in one way and answered in the others is a failure of its own.
    let refused_once = [
        (Mode::Simple, Outcome::Equal),
        (Mode::Binary, Outcome::Refused("0A000".into())),
        (Mode::Pipeline, Outcome::Equal),
    ];
    let reported = failures_of(0, &q, &refused_once);
    assert!(
        reported.len() == 1 && reported[0].contains("refused in [Binary]"),
        "{reported:?}"
    );
    assert!(failures_of(0, &q, &[(Mode::Text, Outcome::Equal)]).is_empty());
    println!("total {:.1}s", started.elapsed().as_secs_f64());
}
