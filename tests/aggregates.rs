//! Aggregates over several shards finished exactly: expressions over merged aggregates
//! (coalesce, NULLIF, arithmetic, round, casts), FILTER, and count/sum/avg(DISTINCT …) on any
//! column, through pgshard (4 shards) and in one plain Postgres holding the same rows, in the
//! simple protocol (text) and with prepared statements (binary, a parameter in the WHERE
//! clause); answers, column names and types compared exactly, and errors in rows OFFSET skips.
//! The table has array columns (read back exactly when its rows are read first) and an `inet`
//! column (which pgshard cannot write back: reads that do not use it are not refused for it).

mod common;

use std::collections::{HashMap, HashSet};

use common::answers::{extended_answer, Raw};
use common::params::TextParam;
use common::proxy::{self, connect, start_proxy_with};
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::Strategy;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Column names and types (0 in the simple protocol), rows.
type Answer = (Vec<(String, u32)>, Vec<Vec<Raw>>);

const CREATE: &str = "CREATE TABLE agg (id bigint PRIMARY KEY, g int, i int, b bigint, n numeric(12,3), t text, arr int[], tags text[], ip inet, d interval, tm time, ttz timetz, mac macaddr, c \"char\", o oid, j jsonb, pt point); \
                      CREATE TABLE agg_empty (id bigint PRIMARY KEY, g int, i int, b bigint, n numeric(12,3), t text, arr int[], tags text[], ip inet, d interval, tm time, ttz timetz, mac macaddr, c \"char\", o oid, j jsonb, pt point)";

/// The rows: negative numbers, NULLs, repeated values across shards, and group 99 with one
/// row (so on one shard only).
fn rows() -> Vec<(i64, String)> {
    let texts = ["a", "b", "B", "a ", "", "zz"];
    let mut out = Vec::new();
    for id in 1..=300i64 {
        let null = |v: String| if id % 11 == 0 { "NULL".into() } else { v };
        let i = null(((id * 37) % 101 - 50).to_string());
        let b = null(((id * 7_919) % 2_000_003 - 1_000_001).to_string() + "000000");
        let n = null(format!("{}.{:03}", (id * 13) % 200 - 100, (id * 7) % 1000));
        let t = if id % 13 == 0 {
            "NULL".to_string()
        } else {
            format!("'{}'", texts[(id % 6) as usize])
        };
        let arr = match id % 5 {
            0 => "NULL".to_string(),
            1 => "'{}'".to_string(),
            2 => "'{{1,2},{3,4}}'".to_string(),
            _ => format!("'{{{},{}}}'", id % 3, id % 7),
        };
        let tags = match id % 4 {
            0 => r#"'{"a,b",NULL,"x\"y",""}'"#.to_string(),
            1 => "NULL".to_string(),
            _ => format!("'{{t{}}}'", id % 3),
        };
        // Months, days and time of mixed signs (fractions of a second too), so sums carry
        // nothing between fields and averages cascade months into days into time.
        let d = if id % 17 == 0 {
            "NULL".to_string()
        } else {
            format!(
                "'{} mons {} days {}{}:{:02}:{:02}.{:03}'",
                (id % 7) - 2,
                (id * 5) % 40 - 9,
                if id % 3 == 0 { "-" } else { "" },
                (id * 11) % 60,
                (id * 13) % 60,
                (id * 7) % 60,
                (id * 29) % 1000
            )
        };
        // Times of day, times with zones (some the same instant in two zones), MAC addresses,
        // one-byte "char"s (past ASCII too) and oids, for ORDER BY, GROUP BY, min and max.
        let tm = format!(
            "'{:02}:{:02}:{:02}.{}'",
            id % 24,
            (id * 7) % 60,
            id % 60,
            id % 10
        );
        let ttz = format!(
            "'{:02}:{:02}:00{}'",
            (id * 5) % 24,
            (id * 3) % 60,
            ["+02", "+00", "-05:30", "+01"][(id % 4) as usize]
        );
        let mac = format!(
            "'08:00:2b:{:02x}:{:02x}:{:02x}'",
            id % 3,
            (id * 37) % 256,
            id % 256
        );
        let c = if id % 7 == 0 {
            "NULL".to_string()
        } else {
            format!(
                "'{}'",
                ["A", "z", "\\200", "b", "Z", "\\377"][(id % 6) as usize]
            )
        };
        // IPv4 hosts, IPv4 networks and IPv6 hosts.
        let ip = if id % 9 == 0 {
            format!("10.{}.0.0/16", id % 4)
        } else if id % 10 == 0 {
            format!("2001:db8::{id:x}")
        } else {
            format!("10.0.{}.{}", id % 3, id % 250)
        };
        let o = (id * 2_654_435_761) % 4_294_967_296;
        // jsonb of every kind: scalars, arrays and objects of several sizes, strings in mixed
        // case, numbers equal in value but not in text.
        let j = match id % 8 {
            0 => "NULL".to_string(),
            1 => format!(
                "'{{\"level\": {}, \"tag\": \"{}\"}}'",
                (id / 8) % 4,
                ["a", "B", "b", "é"][((id / 8) % 4) as usize]
            ),
            2 => format!("'[{}, \"x\"]'", id % 3),
            3 => format!("'{}.{}0'", id % 5, id % 2),
            4 => "'[]'".to_string(),
            5 => format!(
                "'\"{}\"'",
                ["Zeta", "alpha", "Alpha", "zeta"][((id / 8) % 4) as usize]
            ),
            6 => format!("'{{\"level\": [{}], \"n\": null}}'", id % 3),
            _ => ["'null'", "'true'", "'false'", "'{}'"][((id / 8) % 4) as usize].to_string(),
        };
        let g = id % 5;
        out.push((
            id,
            format!(
                "({id}, {g}, {i}, {b}, {n}, {t}, {arr}, {tags}, '{ip}', {d}, {tm}, {ttz}, {mac}, {c}, {o}, {j}, NULL)"
            ),
        ));
    }
    out.push((
        1_000_001,
        "(1000001, 99, -7, -9000000000000, -1.5, 'solo', '[0:1]={5,6}', '{solo}', NULL, '-1 years 00:00:00.000001', '24:00:00', '23:59:59.999999-12', '00:00:00:00:00:00', NULL, 0, '{\"level\": 99}', '(1,2)')".into(),
    ));
    out
}

/// The statements, each with `$1` (an int) in its WHERE clause.
const QUERIES: &[&str] = &[
    "SELECT coalesce(sum(i), 0), sum(b) / NULLIF(count(*), 0), count(*) + 1, round(avg(n), 2), sum(i)::int, min(id)::bigint, max(n) - min(n) AS spread FROM agg WHERE i > $1",
    "SELECT coalesce(sum(i), 0), sum(b) / NULLIF(count(*), 0), count(*) + 1, round(avg(n), 2), sum(i)::int, min(id)::bigint, max(n) - min(n) AS spread FROM agg_empty WHERE i > $1",
    "SELECT g, coalesce(sum(n), 0) AS s, count(*) FILTER (WHERE i > 0), sum(b) FILTER (WHERE i < 0), count(DISTINCT t), sum(DISTINCT i), avg(DISTINCT n) FROM agg WHERE i > $1 GROUP BY g ORDER BY g",
    "SELECT g, sum(i) / NULLIF(count(*), 0) AS r, sum(n) / count(*) FROM agg WHERE i > $1 GROUP BY g ORDER BY r DESC NULLS LAST, g LIMIT 3",
    "SELECT count(DISTINCT t), count(DISTINCT g), sum(DISTINCT b), avg(DISTINCT i), count(DISTINCT t) FILTER (WHERE g <> 99) FROM agg WHERE i > $1",
    "SELECT count(DISTINCT t), sum(DISTINCT i), coalesce(sum(i), -1) FROM agg_empty WHERE i > $1",
    "SELECT g, count(*), max(i) - min(i) AS spread FROM agg WHERE i > $1 GROUP BY g HAVING count(*) > 1 ORDER BY spread, g",
    "SELECT g, count(DISTINCT t) FROM agg_empty WHERE i > $1 GROUP BY g ORDER BY g",
    "SELECT g * 10 + count(*), (sum(i) * 1.5)::numeric(10,1) FROM agg WHERE i > $1 GROUP BY g ORDER BY 1",
    "SELECT g, count(*) FILTER (WHERE t IS NULL), avg(i)::int, CASE WHEN count(*) > 50 THEN 'big' ELSE 'small' END FROM agg WHERE i > $1 GROUP BY g ORDER BY 2 DESC, g OFFSET 1",
    // Constants and parameters beside aggregates: the same in every shard's row.
    "SELECT count(*), 0 AS zero, 'x'::text, $1::int AS p, NULL, sum(i) FROM agg WHERE i > $1",
    "SELECT 7, count(*), $1::int FROM agg_empty WHERE i > $1",
    // Other column-free expressions beside aggregates: computed once, as Postgres does.
    "SELECT count(*), 'label' || 1, current_date - current_date AS d, now() IS NOT NULL, $1::int + 1, pg_typeof(now()), sum(i) FROM agg WHERE i > $1",
    "SELECT upper('a') || length('abc'), count(*), current_timestamp = now() FROM agg_empty WHERE i > $1",
    // Grouped by the shard key: each group is final on its shard, whatever the aggregate.
    "SELECT id, array_agg(t ORDER BY t), percentile_cont(0.5) WITHIN GROUP (ORDER BY n), bool_and(i > 0), sum(n) FROM agg WHERE i > $1 GROUP BY id HAVING count(*) >= 1 ORDER BY sum(n) DESC NULLS LAST, id LIMIT 7 OFFSET 2",
    "SELECT g, id, string_agg(t, '|' ORDER BY t), stddev(i) FROM agg WHERE i > $1 GROUP BY id, g ORDER BY g, id DESC LIMIT 9",
    // What the merge cannot reproduce: the rows are read first and the statement runs over them.
    "SELECT g, string_agg(t, ',' ORDER BY id), array_agg(i ORDER BY id) FROM agg WHERE i > $1 GROUP BY g ORDER BY g",
    "SELECT id, rank() OVER (PARTITION BY g ORDER BY i DESC NULLS LAST, id), sum(i) OVER (ORDER BY id ROWS 2 PRECEDING) FROM agg WHERE i > $1 ORDER BY id LIMIT 25",
    "SELECT DISTINCT ON (g) g, id, i FROM agg WHERE i > $1 ORDER BY g, i DESC NULLS LAST, id",
    "SELECT bool_and(i > 0), bool_or(i > 40), stddev(b), variance(n), percentile_cont(0.5) WITHIN GROUP (ORDER BY n), json_agg(id ORDER BY id) FILTER (WHERE g = 99) FROM agg WHERE i > $1",
    "SELECT string_agg(t, ','), json_agg(id) FROM agg_empty WHERE i > $1",
    "SELECT count(*) + (SELECT 1), count(DISTINCT t) FROM agg WHERE i > $1",
    // Array columns read first come back exactly (dimensions, bounds, quoting, NULLs).
    "SELECT id, arr, tags, rank() OVER (ORDER BY arr DESC NULLS LAST, id) FROM agg WHERE i > $1 ORDER BY id LIMIT 40",
    "SELECT DISTINCT ON (g) g, tags, arr, id FROM agg WHERE i > $1 ORDER BY g, id DESC",
    "WITH x AS (SELECT id, arr, tags FROM agg WHERE i > $1) SELECT count(*), max(id), count(tags) FROM x WHERE arr IS NOT NULL",
    "SELECT (SELECT tags FROM agg WHERE i > $1 ORDER BY id LIMIT 1) AS first_tags, 1",
    // DISTINCT of a row: read first, counted by Postgres.
    "SELECT count(DISTINCT (t, g)), count(*) FROM agg WHERE i > $1",
    "SELECT g FROM agg WHERE i > $1 GROUP BY g HAVING count(DISTINCT t) > 1 ORDER BY g",
    // GROUP BY a position, and by an output column's name, which is the table's column of that
    // name when there is one and the output column otherwise.
    "SELECT i % 3 AS r, count(*) FROM agg WHERE i > $1 GROUP BY 1 ORDER BY 1",
    // Intervals (Django's Sum and Avg of a DurationField): summed field by field, averaged as
    // Postgres divides an interval by the count.
    "SELECT sum(d), avg(d), count(d), min(d), max(d) FROM agg WHERE i > $1",
    "SELECT sum(d), avg(d) FROM agg_empty WHERE i > $1",
    "SELECT g, sum(d) AS total, avg(d) FILTER (WHERE i > 0), avg(DISTINCT d) FROM agg WHERE i > $1 GROUP BY g HAVING avg(d) > interval '-1 year' ORDER BY avg(d) DESC, g",
    "SELECT t, sum(d) + interval '1 day', avg(d) * 2 FROM agg WHERE i > $1 GROUP BY t ORDER BY sum(d) NULLS FIRST, t",
    // time, timetz (one instant in two zones: the zone decides), inet/cidr, macaddr, "char"
    // and oid compared as Postgres orders them.
    "SELECT id, tm, ttz, ip, mac, c, o FROM agg WHERE i > $1 ORDER BY ttz DESC, id LIMIT 20",
    "SELECT id, ip FROM agg WHERE i > $1 ORDER BY ip, id LIMIT 25",
    "SELECT id FROM agg WHERE i > $1 ORDER BY mac DESC, c NULLS FIRST, o, tm DESC, id LIMIT 30",
    "SELECT min(tm), max(tm), min(ttz), max(ttz), min(ip), max(ip), min(o), max(o) FROM agg WHERE i > $1",
    "SELECT c, count(*), min(tm) FROM agg WHERE i > $1 GROUP BY c ORDER BY c DESC NULLS LAST",
    "SELECT DISTINCT ttz FROM agg WHERE i > $1 ORDER BY ttz LIMIT 10",
    "SELECT ip, count(*) FROM agg WHERE i > $1 GROUP BY ip HAVING count(*) > 1 ORDER BY ip DESC",
    // jsonb as Postgres orders it (Django's order_by of a JSONField key: `j -> 'level'`).
    "SELECT id, j FROM agg WHERE i > $1 ORDER BY j, id LIMIT 40",
    "SELECT id, j -> 'level' AS level FROM agg WHERE i > $1 ORDER BY j -> 'level' DESC NULLS LAST, id LIMIT 30",
    "SELECT DISTINCT j FROM agg WHERE i > $1 ORDER BY j DESC NULLS FIRST",
    "SELECT j -> 'tag' AS tag, count(*) FROM agg WHERE i > $1 GROUP BY j -> 'tag' ORDER BY 1",
    // Arrays as Postgres orders them (elements, then length, dimensions, bounds; text elements
    // in the database collation).
    "SELECT id, arr FROM agg WHERE i > $1 ORDER BY arr DESC NULLS LAST, id LIMIT 40",
    "SELECT tags, count(*) FROM agg WHERE i > $1 GROUP BY tags ORDER BY tags NULLS FIRST",
    "SELECT max(arr), min(arr), max(tags), min(tags) FROM agg WHERE i > $1",
    "SELECT DISTINCT arr FROM agg WHERE i > $1 ORDER BY arr",
    // Rows read first and written back carry time zones, addresses, MACs, "char"s and oids.
    "SELECT DISTINCT ON (g) g, ttz, ip, mac, c, o, tm FROM agg WHERE i > $1 ORDER BY g, ttz DESC, id",
    "SELECT id, rank() OVER (ORDER BY ip, mac), c FROM agg WHERE i > $1 ORDER BY id LIMIT 15",
];

/// Statements grouping by an output column's name (each with `$1`, an int, in its WHERE
/// clause): `grp`, `day`, `m` are no columns of `agg` (grouped by the output column), `t` and
/// `g` are (grouped by `agg.t`: 'b' and 'B' are two groups, both shown as 'b'; by `agg.g`, not
/// by `g % 2`).
const GROUP_BY_NAMES: &[&str] = &[
    "SELECT g AS grp, count(*) FROM agg WHERE i > $1 GROUP BY grp ORDER BY grp",
    "SELECT lower(t) AS t, count(*), sum(i) FROM agg WHERE i > $1 GROUP BY t ORDER BY t, 2, 3",
    "SELECT date_trunc('day', timestamp '2024-01-01' + id * interval '5 hours') AS day, sum(n), count(*) FROM agg WHERE i > $1 GROUP BY day HAVING count(*) > 1 ORDER BY day DESC LIMIT 20",
    "SELECT i % 4 AS m, avg(n), max(i) FROM agg WHERE i > $1 GROUP BY m HAVING sum(i) <> 0 ORDER BY avg(n) DESC NULLS LAST, m",
    "SELECT g AS grp, g * 10 + count(*) AS v, lower(t) AS t FROM agg WHERE i > $1 GROUP BY grp, t ORDER BY v, grp, t",
    "SELECT a.g % 2 AS g, count(*) FROM public.agg a WHERE a.i > $1 GROUP BY g ORDER BY g DESC, 2",
];

async fn extended(c: &Client, sql: &str, p: i32) -> Result<Answer, tokio_postgres::Error> {
    common::answers::extended_answer(c, sql, &[&p]).await
}

async fn simple(c: &Client, sql: &str) -> Result<Answer, tokio_postgres::Error> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| (c.name().to_string(), 0)).collect();
            }
            SimpleQueryMessage::Row(row) => rows.push(
                (0..row.len())
                    .map(|i| Raw(row.get(i).map(|s| s.as_bytes().to_vec())))
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok((columns, rows))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_aggregates_equal_one_postgres() {
    let (cluster, single) = tokio::join!(
        TestCluster::start(4, Strategy::Hash),
        TestCluster::start(1, Strategy::Hash)
    );
    let proxy = start_proxy_with(&cluster.info, |c| {
        for name in ["agg", "agg_empty"] {
            c.sharded_tables.push(ShardedTableConfig {
                name: name.into(),
                key: "id".into(),
                key_type: None,
            });
        }
    })
    .await;
    let mut plain = proxy::shard(&single.info, single.info.shard_ids()[0]).await;
    plain.batch_execute(CREATE).await.expect("create on plain");
    let map = proxy.proxy.map.current();
    let mut per_shard: HashMap<u32, Vec<String>> = HashMap::new();
    let all = rows();
    for (id, row) in &all {
        per_shard
            .entry(map.shard_for(*id))
            .or_default()
            .push(row.clone());
    }
    for id in cluster.info.shard_ids() {
        let c = proxy::shard(&cluster.info, id).await;
        c.batch_execute(CREATE).await.expect("create on shard");
        // The proxy's user alters it in a block below.
        c.batch_execute("ALTER TABLE agg OWNER TO app")
            .await
            .expect("owner");
        if let Some(rows) = per_shard.get(&id) {
            c.batch_execute(&format!("INSERT INTO agg VALUES {}", rows.join(", ")))
                .await
                .expect("load shard");
        }
    }
    let values: Vec<String> = all.into_iter().map(|(_, r)| r).collect();
    plain
        .batch_execute(&format!("INSERT INTO agg VALUES {}", values.join(", ")))
        .await
        .expect("load plain");
    assert_eq!(per_shard.len(), 4, "rows on every shard");
    let through = connect(&proxy).await;
    let mut failures = Vec::new();
    let mut with_rows = 0;
    for sql in QUERIES.iter().chain(GROUP_BY_NAMES) {
        for p in [-20, -1000, 1000] {
            let want = extended(&plain, sql, p)
                .await
                .expect("plain Postgres answers");
            with_rows += usize::from(!want.1.is_empty());
            match extended(&through, sql, p).await {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!("extended {sql} ${p}: {got:?} != {want:?}")),
                Err(e) => failures.push(format!("extended {sql} ${p}: {e:?}")),
            }
            let literal = sql.replace("$1", &format!("({p})"));
            let want = simple(&plain, &literal)
                .await
                .expect("plain Postgres answers");
            match simple(&through, &literal).await {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!("simple {literal}: {got:?} != {want:?}")),
                Err(e) => failures.push(format!("simple {literal}: {e:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(with_rows > QUERIES.len(), "most answers have rows");
    group_by_names_in_text_and_blocks(&mut plain, &proxy, &cluster.info).await;
    // An error in a final expression is Postgres's error, and the session goes on.
    for extended_protocol in [false, true] {
        let sql = "SELECT sum(i) / 0 FROM agg";
        let e = if extended_protocol {
            through.query(sql, &[]).await.err()
        } else {
            through.simple_query(sql).await.err()
        };
        let e = e.expect("division by zero is an error");
        assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e:?}");
    }
    // Rows OFFSET skips are still computed, as in Postgres: group 99 (first in this order,
    // skipped) overflows int.
    let sql = "SELECT g, (CASE WHEN g = 99 THEN sum(b) ELSE 0 END)::int FROM agg GROUP BY g ORDER BY g DESC OFFSET 1";
    let want = plain.simple_query(sql).await.expect_err("Postgres raises");
    for extended_protocol in [false, true] {
        let e = if extended_protocol {
            through.query(sql, &[]).await.err()
        } else {
            through.simple_query(sql).await.err()
        };
        let e = e.expect("integer out of range in a skipped row is an error");
        assert_eq!(e.code(), want.code(), "{e:?}");
        assert_eq!(
            e.as_db_error().map(|d| d.message()),
            want.as_db_error().map(|d| d.message())
        );
    }
    let n: i64 = through
        .query_one("SELECT count(*) FROM agg", &[])
        .await
        .expect("session still usable")
        .get(0);
    assert_eq!(n, 301);
    // HAVING constants bound in binary with the type the client declared (psycopg sends a
    // Python int as int2/int4/int8, a float as float8): compared as Postgres compares them.
    for (sql, ty) in [
        (
            "SELECT g, count(*) FROM agg GROUP BY g HAVING count(*) > $1 ORDER BY g",
            Type::INT2,
        ),
        (
            "SELECT g, count(*) FROM agg GROUP BY g HAVING count(*) > $1 ORDER BY g",
            Type::FLOAT8,
        ),
        (
            "SELECT g, sum(n) FROM agg GROUP BY g HAVING sum(n) > $1 ORDER BY g",
            Type::FLOAT8,
        ),
        (
            "SELECT g, sum(n) FROM agg GROUP BY g HAVING $1 < sum(n) ORDER BY g",
            Type::INT4,
        ),
        (
            "SELECT g, max(i) FROM agg GROUP BY g HAVING max(i) >= $1 ORDER BY g",
            Type::INT8,
        ),
    ] {
        let on_plain = plain
            .prepare_typed(sql, std::slice::from_ref(&ty))
            .await
            .expect(sql);
        let on_proxy = through
            .prepare_typed(sql, std::slice::from_ref(&ty))
            .await
            .expect(sql);
        let values: Vec<Box<dyn ToSql + Sync>> = match ty {
            Type::INT2 => vec![Box::new(0i16), Box::new(60i16)],
            Type::INT4 => vec![Box::new(-100i32), Box::new(250i32)],
            Type::INT8 => vec![Box::new(49i64)],
            _ => vec![Box::new(1.5f64), Box::new(60.25f64), Box::new(-2.5e3f64)],
        };
        for v in &values {
            let want = plain.query(&on_plain, &[v.as_ref()]).await.expect(sql);
            let got = through.query(&on_proxy, &[v.as_ref()]).await.expect(sql);
            let rows = |r: &[tokio_postgres::Row]| -> Vec<(i32, String)> {
                r.iter()
                    .map(|r| (r.get(0), format!("{:?}", r.get::<_, Raw>(1))))
                    .collect()
            };
            assert_eq!(rows(&got), rows(&want), "{sql} with {v:?} as {ty}");
        }
    }
    // A value each shard gives for itself (its backend, its transaction's start) is one value
    // for every group, as in one Postgres: the groups of the shard key live on all four shards.
    let sql = "SELECT id, count(*), pg_backend_pid(), now() FROM agg WHERE id < 40 GROUP BY id";
    for rows in [
        through.query(sql, &[]).await.expect(sql),
        through
            .query(&format!("{sql} HAVING count(*) > $1"), &[&0i64])
            .await
            .expect(sql),
    ] {
        assert!(rows.len() > 20, "{sql}: {} groups", rows.len());
        let pids: HashSet<i32> = rows.iter().map(|r| r.get(2)).collect();
        let nows: HashSet<std::time::SystemTime> = rows.iter().map(|r| r.get(3)).collect();
        assert_eq!((pids.len(), nows.len()), (1, 1), "{sql}: {pids:?} {nows:?}");
    }
    // Reads the merge cannot reproduce run over their table's rows read first: values that are
    // one per statement come out once, and Postgres's own errors are Postgres's.
    for sql in [
        "SELECT DISTINCT g, now() FROM agg",
        "SELECT g, count(*), random() < 2, clock_timestamp() >= now() FROM agg GROUP BY g",
    ] {
        let want = plain.query(sql, &[]).await.expect(sql).len();
        let got = through.query(sql, &[]).await.expect(sql);
        assert_eq!(got.len(), want, "{sql}");
    }
    // In a block, the rows read first are the block's own: a row it inserted is counted, and
    // gone after ROLLBACK (extended protocol, a bound parameter).
    let mut block = connect(&proxy).await;
    let sql = "SELECT count(*) FILTER (WHERE t = $1), string_agg(t, ',' ORDER BY id) IS NOT NULL FROM agg";
    let tx = block.transaction().await.expect("begin");
    tx.execute(
        "INSERT INTO agg (id, g, t) VALUES (2000001, 5, 'in-block')",
        &[],
    )
    .await
    .expect("insert in the block");
    let seen: i64 = tx.query_one(sql, &[&"in-block"]).await.expect(sql).get(0);
    assert_eq!(seen, 1, "{sql} in the block");
    tx.rollback().await.expect("rollback");
    let seen: i64 = block
        .query_one(sql, &[&"in-block"])
        .await
        .expect(sql)
        .get(0);
    assert_eq!(seen, 0, "{sql} after ROLLBACK");
    let sql = "SELECT count(*), upper(t) FROM agg";
    let want = plain.simple_query(sql).await.expect_err(sql);
    let got = through.simple_query(sql).await.expect_err(sql);
    assert_eq!(got.code(), want.code(), "{sql}: {got:?}");
    // What stays impossible is refused, naming the construct: a join's aggregate the merge
    // cannot reproduce (only one table's rows are read first).
    for (sql, want) in [
        (
            "SELECT string_agg(a.t, ',') FROM agg a JOIN agg_empty e ON e.id = a.id",
            "string_agg",
        ),
        // A column of a type pgshard cannot write back, read by the statement.
        (
            "SELECT DISTINCT ON (g) g, pt FROM agg ORDER BY g, id",
            "type OID 600",
        ),
        (
            "SELECT count(*) FROM agg WHERE arr IN (SELECT arr FROM agg WHERE i > 40)",
            "arrays themselves",
        ),
    ] {
        let e = through.simple_query(sql).await.expect_err(sql);
        assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{sql}: {e:?}");
        assert!(format!("{e:?}").contains(want), "{sql}: {e:?}");
    }
    // INSERT … SELECT of rows with array columns (read first, carried as text and cast back)
    // into a sharded table: the same rows and arrays as on one Postgres, each on its key's shard.
    let copy = "INSERT INTO agg_empty (id, g, arr, tags) SELECT id, g, arr, tags || ARRAY[t] FROM agg WHERE i > $1";
    let mut copied = Vec::new();
    for c in [&plain, &through] {
        copied.push(c.execute(copy, &[&-20_i32]).await.expect(copy));
    }
    assert!(copied[0] > 0, "rows copied");
    assert_eq!(copied[0], copied[1], "{copy}");
    let check = "SELECT count(*), sum(cardinality(arr)), \
                 string_agg(id || ':' || array_to_string(tags, '/', '-'), ',' ORDER BY id) FROM agg_empty";
    let answers = [
        simple(&plain, check).await.expect(check),
        simple(&through, check).await.expect(check),
    ];
    assert_eq!(answers[0], answers[1], "{check}");
    for id in cluster.info.shard_ids() {
        let misplaced: Vec<i64> = proxy::shard(&cluster.info, id)
            .await
            .query("SELECT id FROM agg_empty", &[])
            .await
            .expect("rows on a shard")
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .filter(|k| map.shard_for(*k) != id)
            .collect();
        assert!(misplaced.is_empty(), "shard {id} holds {misplaced:?}");
    }
}

/// [`GROUP_BY_NAMES`] with `$1` bound in text (as psycopg sends it), and in transaction blocks:
/// after a write that holds shards in the block, and after the block itself adds a column of
/// the output column's name (`grp`), which then is what Postgres groups by, until ROLLBACK;
/// and another session's statements while a block adds that column and after it commits.
async fn group_by_names_in_text_and_blocks(
    plain: &mut Client,
    proxy: &pgshard::server::RunningProxy,
    info: &pgshard::cluster::ClusterInfo,
) {
    let p = TextParam("-20".into());
    let mut through = connect(proxy).await;
    for sql in GROUP_BY_NAMES {
        let plain = &*plain;
        let want = extended_answer(plain, sql, &[&p]).await.expect(sql);
        assert!(!want.1.is_empty(), "{sql}");
        let got = extended_answer(&through, sql, &[&p]).await.expect(sql);
        assert_eq!(got, want, "{sql} with a text parameter");
        let tx = through.transaction().await.expect("begin");
        tx.execute("UPDATE agg SET g = g WHERE id = 1", &[])
            .await
            .expect("a write in the block");
        let got = extended_answer(&tx, sql, &[&p]).await.expect(sql);
        assert_eq!(got, want, "{sql} in a block");
        let literal = sql.replace("$1", "(-20)");
        let got = simple(tx.client(), &literal).await.expect(sql);
        let want = simple(plain, &literal).await.expect(sql);
        assert_eq!(got, want, "{literal} in a block");
        tx.rollback().await.expect("rollback");
    }
    // A column the block adds is what GROUP BY names from then on, in that block only: an
    // aggregate's alias cannot be grouped by (42803), the column `grp` can.
    let sql = "SELECT max(g) AS grp, count(*) FROM agg WHERE i > $1 GROUP BY grp ORDER BY 2, 1";
    let code = |r: Result<Answer, tokio_postgres::Error>| r.err().and_then(|e| e.code().cloned());
    let want = code(extended_answer(&*plain, sql, &[&p]).await);
    assert!(want.is_some(), "{sql} is an error in Postgres");
    assert_eq!(
        code(extended_answer(&through, sql, &[&p]).await),
        want,
        "{sql}"
    );
    let ddl = "ALTER TABLE agg ADD COLUMN grp int; UPDATE agg SET grp = id % 3 WHERE i > 0";
    let (on_plain, on_proxy) = (
        plain.transaction().await.expect("begin"),
        through.transaction().await.expect("begin"),
    );
    on_plain.batch_execute(ddl).await.expect(ddl);
    on_proxy.batch_execute(ddl).await.expect(ddl);
    let want = extended_answer(&on_plain, sql, &[&p]).await.expect(sql);
    assert_eq!(want.1.len(), 4, "groups 0, 1, 2 and NULL: {want:?}");
    let got = extended_answer(&on_proxy, sql, &[&p]).await.expect(sql);
    assert_eq!(got, want, "{sql} after {ddl} in the block");
    on_plain.rollback().await.expect("rollback");
    on_proxy.rollback().await.expect("rollback");
    let want = code(extended_answer(&*plain, sql, &[&p]).await);
    assert!(want.is_some(), "{sql} is an error in Postgres again");
    assert_eq!(
        code(extended_answer(&through, sql, &[&p]).await),
        want,
        "{sql} after ROLLBACK"
    );
    // Another session reads the columns while a block adds `grp` (not yet there for it) and
    // then waits for the block's lock on the table (simple protocol: a Parse would wait
    // before the columns are read): its statement, planned before the COMMIT,
    // groups by the output column on the shards too (Postgres's error for that, not a mix);
    // after the COMMIT its next statement reads the columns again and groups by `grp`.
    let direct = proxy::shard(info, info.shard_ids()[0]).await;
    let other = connect(proxy).await;
    let tx = through.transaction().await.expect("begin");
    tx.batch_execute("ALTER TABLE agg ADD COLUMN grp int")
        .await
        .expect("add grp");
    let literal = sql.replace("$1", "(-20)");
    let waiting = tokio::spawn(async move {
        let first = other.simple_query(&literal).await;
        (other, first.err().and_then(|e| e.code().cloned()))
    });
    common::wait_until_active(&direct, "SELECT max(g) AS grp").await;
    tx.batch_execute("UPDATE agg SET grp = id % 3 WHERE i > 0")
        .await
        .expect("fill grp");
    tx.commit().await.expect("commit");
    let (other, first) = waiting.await.expect("the waiting statement");
    assert_eq!(first, want, "{sql} planned before the COMMIT");
    plain
        .batch_execute(
            "ALTER TABLE agg ADD COLUMN grp int; UPDATE agg SET grp = id % 3 WHERE i > 0",
        )
        .await
        .expect("add grp on plain");
    let want = extended_answer(&*plain, sql, &[&p]).await.expect(sql);
    assert_eq!(want.1.len(), 4, "{want:?}");
    let got = extended_answer(&other, sql, &[&p]).await.expect(sql);
    assert_eq!(got, want, "{sql} after the COMMIT");
    for c in [&*plain, &through] {
        c.batch_execute("ALTER TABLE agg DROP COLUMN grp")
            .await
            .expect("drop grp");
    }
}
