//! COPY through pgshard against ten shards: COPY FROM STDIN split by key in text, CSV and binary
//! (both protocols, psql and psycopg too), all-or-nothing on errors and CopyFail, and COPY TO
//! STDOUT merged from every shard (a query with an aggregate or ORDER BY run first, merged).

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use common::proxy::{self, connect, start_proxy};
use common::TestCluster;
use futures_util::{pin_mut, SinkExt, StreamExt};
use pgshard::cluster::ClusterInfo;
use pgshard::router::{ShardMap, Strategy};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Sends `data` through a `COPY … FROM STDIN` in pieces of `chunk` bytes; returns the row count.
async fn copy_in(
    c: &Client,
    sql: &str,
    data: &[u8],
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    for piece in data.chunks(chunk) {
        sink.send(Bytes::copy_from_slice(piece)).await?;
    }
    sink.finish().await
}

/// Every shard holds only rows the map gives it; returns the total row count.
async fn check_placement(info: &ClusterInfo, map: &ShardMap) -> i64 {
    let mut total = 0;
    for id in info.shard_ids() {
        let direct = proxy::shard(info, id).await;
        let all: i64 = direct
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        let misplaced: i64 = direct
            .query_one(
                &format!(
                    "SELECT count(*) FROM users WHERE NOT ({})",
                    map.sql_owned_by("user_id", id)
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(misplaced, 0, "shard {id} holds rows it does not own");
        total += all;
    }
    total
}

async fn count_directly(info: &ClusterInfo) -> i64 {
    proxy::count_users_directly(info).await
}

fn text_rows(ids: std::ops::Range<i64>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        out.extend_from_slice(format!("{id}\tuser {id}\tu{id}@example.com\n").as_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_splits_rows_by_key() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let map = proxy.proxy.map.current();
    let c = connect(&proxy).await;

    // 100,000 rows in text format, extended protocol (tokio-postgres), 64 KiB pieces.
    let data = text_rows(1..100_001);
    let started = Instant::now();
    let n = copy_in(
        &c,
        "COPY users (user_id, name, email) FROM STDIN",
        &data,
        64 * 1024,
    )
    .await
    .expect("text COPY through pgshard");
    let through = started.elapsed();
    assert_eq!(n, 100_000);
    assert_eq!(check_placement(&cluster.info, &map).await, 100_000);
    let shards_used = {
        let mut s = BTreeSet::new();
        for id in cluster.info.shard_ids() {
            let direct = proxy::shard(&cluster.info, id).await;
            let k: i64 = direct
                .query_one("SELECT count(*) FROM users", &[])
                .await
                .unwrap()
                .get(0);
            if k > 0 {
                s.insert(id);
            }
        }
        s
    };
    assert_eq!(shards_used.len(), 10, "every shard got rows");
    // The same rows straight into one Postgres, for comparison.
    let direct = proxy::shard(&cluster.info, cluster.info.shard_ids()[0]).await;
    direct
        .batch_execute("CREATE TABLE bench_direct (LIKE users INCLUDING ALL)")
        .await
        .unwrap();
    let started = Instant::now();
    copy_in(
        &direct,
        "COPY bench_direct (user_id, name, email) FROM STDIN",
        &data,
        64 * 1024,
    )
    .await
    .unwrap();
    let straight = started.elapsed();
    direct
        .batch_execute("DROP TABLE bench_direct")
        .await
        .unwrap();
    println!(
        "COPY 100000 text rows: through pgshard {:.0} rows/s ({through:?}), straight into one Postgres {:.0} rows/s ({straight:?})",
        100_000.0 / through.as_secs_f64(),
        100_000.0 / straight.as_secs_f64()
    );

    // CSV with a HEADER, the key in the second column, quoted newlines, quotes and delimiters,
    // sent one byte at a time for the first rows (rows span CopyData messages).
    let mut csv = b"name,user_id,email\n".to_vec();
    for id in 200_001..201_001i64 {
        csv.extend_from_slice(
            format!("\"line one\nline \"\"two\"\", {id}\",{id},\"\"\n").as_bytes(),
        );
    }
    let head = 300;
    let sink = c
        .copy_in::<_, Bytes>(
            "COPY users (name, user_id, email) FROM STDIN WITH (FORMAT csv, HEADER true)",
        )
        .await
        .unwrap();
    pin_mut!(sink);
    for b in &csv[..head] {
        sink.send(Bytes::copy_from_slice(&[*b])).await.unwrap();
    }
    sink.send(Bytes::copy_from_slice(&csv[head..]))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let row = c
        .query_one("SELECT name, email FROM users WHERE user_id = 200777", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "line one\nline \"two\", 200777");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some(""));

    // Binary, key as int8, through tokio-postgres's binary writer.
    let sink = c
        .copy_in("COPY users (user_id, name) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT]);
    pin_mut!(writer);
    for id in 300_001..301_001i64 {
        let name = format!("bin {id}");
        writer.as_mut().write(&[&id, &name]).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 1000);

    // No column list: the key's position comes from the table's column order.
    let mut rows = Vec::new();
    for id in 400_001..400_101i64 {
        rows.extend_from_slice(format!("{id}|n{id}|\\N|2024-01-02 03:04:05+00\n").as_bytes());
    }
    let n = copy_in(
        &c,
        "COPY users FROM STDIN WITH (DELIMITER '|')",
        &rows,
        1000,
    )
    .await
    .expect("COPY without a column list");
    assert_eq!(n, 100);

    // The simple protocol, with psql's \copy from a file and a `\.` end marker.
    let file = cluster.info.dir.join("rows.txt");
    let mut text = text_rows(500_001..500_501);
    text.extend_from_slice(b"\\.\n");
    std::fs::write(&file, &text).unwrap();
    let out = tokio::process::Command::new("psql")
        .arg(proxy::app_url(&proxy))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "\\copy users (user_id, name, email) from '{}'",
            file.display()
        ))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql \\copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 500");

    assert_eq!(
        check_placement(&cluster.info, &map).await,
        100_000 + 1000 + 1000 + 100 + 500
    );
    let (name, stamp): (String, String) = {
        let r = c
            .query_one(
                "SELECT name, created_at::text FROM users WHERE user_id = 400050",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(name, "n400050");
    assert!(stamp.starts_with("2024-01-02"), "{stamp}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_commits_nothing_anywhere() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let c = connect(&proxy).await;

    // A bad key after rows for every shard: the whole COPY fails, no shard keeps a row.
    let mut data = text_rows(1..5_001);
    data.extend_from_slice(b"abc\tbad\tbad\n");
    data.extend_from_slice(&text_rows(5_001..6_000));
    let err = copy_in(
        &c,
        "COPY users (user_id, name, email) FROM STDIN",
        &data,
        8 * 1024,
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), "22P02", "{err}");
    assert_eq!(count_directly(&cluster.info).await, 0);

    // A NULL key, in the simple protocol (psql).
    let mut data = text_rows(1..3_001);
    data.extend_from_slice(b"\\N\tnull key\tx\n");
    let file = cluster.info.dir.join("null.txt");
    std::fs::write(&file, &data).unwrap();
    let out = tokio::process::Command::new("psql")
        .arg(proxy::app_url(&proxy))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "\\copy users (user_id, name, email) from '{}'",
            file.display()
        ))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("null value in column \"user_id\""),
        "{stderr}"
    );
    assert_eq!(count_directly(&cluster.info).await, 0);

    // A shard's own error (duplicate key on one shard) fails the COPY on every shard.
    let mut data = text_rows(1..2_001);
    data.extend_from_slice(&text_rows(77..78));
    let err = copy_in(
        &c,
        "COPY users (user_id, name, email) FROM STDIN",
        &data,
        8 * 1024,
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), "23505", "{err}");
    assert_eq!(count_directly(&cluster.info).await, 0);

    // The client gives up mid-COPY (dropping tokio-postgres's sink sends CopyFail).
    {
        let sink = c
            .copy_in::<_, Bytes>("COPY users (user_id, name, email) FROM STDIN")
            .await
            .unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from(text_rows(1..3_000))).await.unwrap();
        sink.flush().await.unwrap();
    }
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(count_directly(&cluster.info).await, 0);

    // The key column missing from the column list, and a key on an unknown column.
    let err = c
        .simple_query("COPY users (name, email) FROM STDIN")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000", "{err}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(message.is_some_and(|m| m.contains("user_id")), "{err:?}");
    let err = copy_in(&c, "COPY users (user_id, nope) FROM STDIN", b"1\tx\n", 100)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42703", "{err}");
    // tokio-postgres answers an error before COPY mode with CopyFail and a second Sync, whose
    // extra ReadyForQuery (Postgres sends it too) confuses its next request: start afresh.
    let c = connect(&proxy).await;

    // Binary with a key of an odd width.
    let sink = c
        .copy_in("COPY users (user_id, name) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT]);
    pin_mut!(writer);
    writer.as_mut().write(&[&"abc", &"x"]).await.unwrap();
    let err = writer.finish().await.unwrap_err();
    assert_eq!(code(&err), "22P02", "{err}");

    // Inside the client's own transaction: ROLLBACK undoes the COPY on every shard; COMMIT keeps it.
    c.batch_execute("BEGIN").await.unwrap();
    copy_in(
        &c,
        "COPY users (user_id, name, email) FROM STDIN",
        &text_rows(1..1_001),
        4096,
    )
    .await
    .expect("COPY inside BEGIN");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count_directly(&cluster.info).await, 0);
    c.batch_execute("BEGIN").await.unwrap();
    copy_in(
        &c,
        "COPY users (user_id, name, email) FROM STDIN",
        &text_rows(1..1_001),
        4096,
    )
    .await
    .expect("COPY inside BEGIN");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count_directly(&cluster.info).await, 1000);
    let map = proxy.proxy.map.current();
    assert_eq!(check_placement(&cluster.info, &map).await, 1000);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_returns_every_row_once() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let c = connect(&proxy).await;
    let data = text_rows(1..20_001);
    copy_in(
        &c,
        "COPY users (user_id, name, email) FROM STDIN",
        &data,
        64 * 1024,
    )
    .await
    .unwrap();
    let expected: BTreeSet<String> = String::from_utf8(data)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();

    // Text, extended protocol.
    let stream = c
        .copy_out("COPY users (user_id, name, email) TO STDOUT")
        .await
        .unwrap();
    pin_mut!(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let lines: Vec<String> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 20_000);
    assert_eq!(lines.iter().cloned().collect::<BTreeSet<_>>(), expected);

    // Binary: one header, one trailer, every row.
    let stream = c
        .copy_out("COPY users (user_id, name) TO STDOUT (FORMAT binary)")
        .await
        .unwrap();
    let rows = BinaryCopyOutStream::new(stream, &[Type::INT8, Type::TEXT]);
    pin_mut!(rows);
    let mut ids = BTreeSet::new();
    while let Some(row) = rows.next().await {
        let row = row.expect("binary row");
        let id: i64 = row.get(0);
        assert_eq!(row.get::<&str>(1), format!("user {id}"));
        assert!(ids.insert(id), "row {id} twice");
    }
    assert_eq!(ids, (1..20_001).collect());

    // CSV with a HEADER, simple protocol through psql: one header line.
    let out = tokio::process::Command::new("psql")
        .arg(proxy::app_url(&proxy))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("COPY (SELECT user_id, name FROM users WHERE user_id <= 5000) TO STDOUT WITH (FORMAT csv, HEADER)")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == "user_id,name").count(), 1);
    assert_eq!(lines[0], "user_id,name");
    assert_eq!(lines.len(), 5001);

    // The simple protocol's row count, and merges COPY cannot do are refused.
    let out = tokio::process::Command::new("psql")
        .arg(proxy::app_url(&proxy))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("\\copy users to '/dev/null'")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 20000");
    // A query the shards' COPY streams cannot just be concatenated for (an aggregate, ORDER BY,
    // LIMIT) runs first, merged, and the COPY runs over its rows in their order, with its own
    // options: both protocols (psql's simple query, tokio-postgres's extended one).
    for (sql, want) in [
        ("COPY (SELECT count(*) FROM users) TO STDOUT", "20000\n".to_string()),
        (
            "COPY (SELECT user_id, name FROM users ORDER BY user_id DESC LIMIT 3) TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE (name))",
            "user_id,name\n20000,\"user 20000\"\n19999,\"user 19999\"\n19998,\"user 19998\"\n".to_string(),
        ),
        (
            "COPY (SELECT user_id FROM users WHERE user_id % 1000 = 7 ORDER BY user_id) TO STDOUT",
            (0..20).map(|k| format!("{}\n", k * 1000 + 7)).collect(),
        ),
    ] {
        let out = tokio::process::Command::new("psql")
            .arg(proxy::app_url(&proxy))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "psql {sql}");
        let stream = c.copy_out(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        pin_mut!(stream);
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(String::from_utf8_lossy(&bytes), want, "extended {sql}");
    }
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_copy_both_ways() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    with conn.cursor() as cur:
        with cur.copy("COPY users (user_id, name) FROM STDIN") as copy:
            for i in range(1, 3001):
                copy.write_row((i, f"py {i}"))
        with cur.copy("COPY users (user_id, name) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text"])
            for i in range(3001, 4001):
                copy.write_row((i, f"pyb {i}"))
        seen = set()
        with cur.copy("COPY users (user_id, name) TO STDOUT") as copy:
            for row in copy.rows():
                seen.add(int(row[0]))
        assert seen == set(range(1, 4001)), len(seen)
        try:
            with cur.copy("COPY users (user_id, name) FROM STDIN") as copy:
                copy.write_row((5000, "x"))
                raise RuntimeError("stop")
        except RuntimeError:
            pass
        n = conn.execute("SELECT user_id FROM users WHERE user_id = 5000").fetchall()
        assert n == [], n
print("ok")
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(proxy::app_url(&proxy))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psycopg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let map = proxy.proxy.map.current();
    assert_eq!(check_placement(&cluster.info, &map).await, 4000);
    proxy.stop().await;
}
