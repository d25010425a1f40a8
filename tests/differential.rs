//! Differential test of scatter-gather merges: the same rows in ten shards behind pgshard and in
//! one plain Postgres, hundreds of generated keyless SELECTs (ORDER BY with ties and NULLs,
//! LIMIT/OFFSET, aggregates, GROUP BY/HAVING, DISTINCT) run on both, in the simple protocol (text
//! results) and the extended protocol (binary results), answers compared exactly.
//! The seed is printed; set PGSHARD_DIFF_SEED to replay one.

mod common;

use common::answers::Raw;

use std::collections::HashMap;
use std::time::Instant;

use common::proxy::{self, connect, start_proxy_with};
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::Strategy;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

const ROWS: i64 = 3000;
const QUERIES: usize = 320;

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

/// A generated query and how to compare its answers.
struct Query {
    sql: String,
    /// Extended-protocol parameters (the simple protocol gets the same values as literals in
    /// `simple_sql`).
    params: Vec<i64>,
    simple_sql: String,
    /// Output positions of the ORDER BY keys, when every key is an output column; `None` with
    /// `exact_order` false means the order is unspecified.
    key_columns: Option<Vec<usize>>,
    /// The ORDER BY makes the order total: compare row by row.
    exact_order: bool,
    offset: bool,
    limit: bool,
}

const COLUMNS: &[&str] = &["i", "b", "n", "f", "t", "flag", "d", "ts", "u", "g"];
const NUMERIC_COLUMNS: &[&str] = &["i", "b", "n", "f", "g"];
const MINMAX_COLUMNS: &[&str] = &["i", "b", "n", "f", "t", "d", "ts", "g"];
const GROUP_COLUMNS: &[&str] = &["g", "t", "flag", "d", "i"];

fn filter(r: &mut Rng) -> String {
    match r.below(7) {
        0 => format!(" WHERE i > {}", r.range(-50, 50)),
        1 => " WHERE t IS NOT NULL".into(),
        2 => " WHERE flag".into(),
        3 => format!(" WHERE d < date '2020-01-01' + {}", r.range(0, 400)),
        4 => format!(" WHERE g = {} OR n < 0", r.range(0, 10)),
        _ => String::new(),
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

/// LIMIT/OFFSET clause text for both protocols, and the extended protocol's parameters.
fn limit_offset(r: &mut Rng, first_param: usize) -> (String, String, Vec<i64>, bool, bool) {
    let limit = r.chance(60).then(|| r.range(0, 60));
    let offset = r.chance(40).then(|| r.range(0, 40));
    let as_params = r.chance(50);
    let mut ext = String::new();
    let mut simple = String::new();
    let mut params = Vec::new();
    let mut n = first_param;
    for (word, v) in [("LIMIT", limit), ("OFFSET", offset)] {
        if let Some(v) = v {
            simple.push_str(&format!(" {word} {v}"));
            if as_params {
                ext.push_str(&format!(" {word} ${n}"));
                params.push(v);
                n += 1;
            } else {
                ext.push_str(&format!(" {word} {v}"));
            }
        }
    }
    (ext, simple, params, limit.is_some(), offset.is_some())
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
    let key_columns = keys_in_output.then(|| {
        key_cols
            .iter()
            .map(|k| cols.iter().position(|c| c == k).unwrap_or(0))
            .collect()
    });
    let star = r.chance(10);
    let select = if star {
        "*".to_string()
    } else {
        cols.join(", ")
    };
    let where_ = filter(r);
    let (ext, simple, params, limit, offset) = limit_offset(r, 1);
    let base = format!(
        "SELECT {select} FROM dtest{where_} ORDER BY {}",
        keys.join(", ")
    );
    Query {
        sql: format!("{base}{ext}"),
        simple_sql: format!("{base}{simple}"),
        params,
        key_columns: if star { None } else { key_columns },
        exact_order: exact,
        offset,
        limit,
    }
}

fn aggregate_list(r: &mut Rng) -> Vec<String> {
    let mut out = vec![];
    for _ in 0..1 + r.below(5) {
        let agg = match r.below(7) {
            0 => "count(*)".to_string(),
            1 => format!("count({})", r.pick(COLUMNS)),
            2 => format!("sum({})", r.pick(NUMERIC_COLUMNS)),
            3 => format!("avg({})", r.pick(NUMERIC_COLUMNS)),
            4 => format!("min({})", r.pick(MINMAX_COLUMNS)),
            5 => format!("max({})", r.pick(MINMAX_COLUMNS)),
            _ => "count(DISTINCT id)".to_string(),
        };
        let agg = if r.chance(15) {
            format!("{agg} FILTER (WHERE g < 5)")
        } else {
            agg
        };
        out.push(if r.chance(20) {
            format!("{agg} AS a{}", out.len())
        } else {
            agg
        });
    }
    out
}

fn plain_aggregates(r: &mut Rng) -> Query {
    let sql = format!(
        "SELECT {} FROM dtest{}",
        aggregate_list(r).join(", "),
        filter(r)
    );
    Query {
        simple_sql: sql.clone(),
        sql,
        params: vec![],
        key_columns: None,
        exact_order: false,
        offset: false,
        limit: false,
    }
}

fn grouped(r: &mut Rng) -> Query {
    let g = *r.pick(GROUP_COLUMNS);
    let aggs = aggregate_list(r);
    let mut sql = format!(
        "SELECT {g}, {} FROM dtest{} GROUP BY {g}",
        aggs.join(", "),
        filter(r)
    );
    let mut simple = sql.clone();
    let mut params = Vec::new();
    if r.chance(50) {
        let (ext_h, simple_h) = match r.below(5) {
            0 => {
                let k = r.range(0, 400);
                params.push(k);
                ("count(*) > $1".to_string(), format!("count(*) > {k}"))
            }
            1 => {
                let k = r.range(-500, 500);
                (format!("sum(i) < {k}"), format!("sum(i) < {k}"))
            }
            2 => (
                "min(t) >= 'b' OR max(n) IS NULL".to_string(),
                "min(t) >= 'b' OR max(n) IS NULL".to_string(),
            ),
            3 => (
                "avg(f) > 0.5 AND NOT count(*) = 0".to_string(),
                "avg(f) > 0.5 AND NOT count(*) = 0".to_string(),
            ),
            _ => (
                format!("{g} IS NOT NULL AND count(b) >= 3"),
                format!("{g} IS NOT NULL AND count(b) >= 3"),
            ),
        };
        sql.push_str(&format!(" HAVING {ext_h}"));
        simple.push_str(&format!(" HAVING {simple_h}"));
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
        sql.push_str(&order);
        simple.push_str(&order);
        exact = true;
        let (ext, s, p, l, o) = limit_offset(r, params.len() + 1);
        sql.push_str(&ext);
        simple.push_str(&s);
        params.extend(p);
        limit = l;
        offset = o;
    }
    Query {
        sql,
        simple_sql: simple,
        params,
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
    let mut sql = format!("SELECT DISTINCT {cols} FROM dtest{}", filter(r));
    let exact = r.chance(60);
    let mut simple;
    let mut params = Vec::new();
    let (mut limit, mut offset) = (false, false);
    if exact {
        sql.push_str(&format!(" ORDER BY {cols}"));
        simple = sql.clone();
        let (ext, s, p, l, o) = limit_offset(r, 1);
        sql.push_str(&ext);
        simple.push_str(&s);
        params = p;
        limit = l;
        offset = o;
    } else {
        simple = sql.clone();
    }
    Query {
        sql,
        simple_sql: simple,
        params,
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

async fn run_extended(c: &Client, q: &Query) -> Result<Answer, tokio_postgres::Error> {
    let params: Vec<&(dyn ToSql + Sync)> =
        q.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let st = c.prepare(&q.sql).await?;
    let rows = c.query(&st, &params).await?;
    let columns = st
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().oid()))
        .collect();
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| row.get::<_, Raw>(i)).collect())
        .collect();
    Ok(Answer { columns, rows })
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
        })
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
    let through = connect(&proxy).await;
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut with_rows = 0;
    for n in 0..QUERIES {
        let q = generate(&mut r);
        let want_ext = run_extended(&plain, &q).await;
        let got_ext = run_extended(&through, &q).await;
        match (got_ext, want_ext) {
            (Ok(g), Ok(w)) => {
                with_rows += usize::from(!w.rows.is_empty());
                if let Err(e) = compare(&q, &g, &w) {
                    failures.push(format!("#{n} extended: {}  {:?}: {e}", q.sql, q.params));
                }
            }
            (g, w) => failures.push(format!(
                "#{n} extended: {} {:?}: proxy {:?} / plain {:?}",
                q.sql,
                q.params,
                g.err(),
                w.err()
            )),
        }
        let want = run_simple(&plain, &q.simple_sql).await;
        let got = run_simple(&through, &q.simple_sql).await;
        match (got, want) {
            (Ok(g), Ok(w)) => {
                if let Err(e) = compare(&q, &g, &w) {
                    failures.push(format!("#{n} simple: {}: {e}", q.simple_sql));
                }
            }
            (g, w) => failures.push(format!(
                "#{n} simple: {}: proxy {:?} / plain {:?}",
                q.simple_sql,
                g.err(),
                w.err()
            )),
        }
        ran += 1;
    }
    println!(
        "{ran} queries x 2 protocols in {:.1}s ({with_rows} with rows), {} failures",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(with_rows > ran / 2, "most queries return rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What cannot be merged exactly is refused, naming the construct.
    for (sql, want) in [
        (
            "SELECT g FROM dtest GROUP BY g ORDER BY count(DISTINCT t)",
            "count(DISTINCT",
        ),
        ("SELECT string_agg(t, ',') FROM dtest", "string_agg"),
        (
            "SELECT id, row_number() OVER () FROM dtest",
            "window function",
        ),
        ("SELECT count(*) + (SELECT 1) FROM dtest", "subquery"),
        ("SELECT g FROM dtest GROUP BY ROLLUP (g)", "ROLLUP"),
        ("SELECT t FROM dtest ORDER BY t COLLATE \"C\"", "COLLATE"),
        ("SELECT DISTINCT ON (g) g, t FROM dtest", "DISTINCT ON"),
        ("SELECT avg(f::real) FROM dtest", "avg()"),
    ] {
        for extended in [false, true] {
            let e = if extended {
                through.query(sql, &[]).await.err()
            } else {
                through.simple_query(sql).await.err()
            };
            let e = e.unwrap_or_else(|| panic!("{sql} was not refused"));
            assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{sql}: {e:?}");
            assert!(format!("{e:?}").contains(want), "{sql}: {e:?}");
        }
    }
    // A wrong order would be caught: the comparison itself must fail on a swapped answer.
    let q = Query {
        sql: String::new(),
        simple_sql: String::new(),
        params: vec![],
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
    println!("total {:.1}s", started.elapsed().as_secs_f64());
}
