//! The wire protocol through pgshard with tokio-postgres and raw sockets: simple and extended
//! queries, transactions, generated keys, refusals, authentication, malformed input, disconnects,
//! session settings under transaction pooling, cancel requests.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{self, connect, connect_url, start_proxy, start_proxy_with, url};
use common::raw::{error_fields, message, RawClient};
use common::TestCluster;
use pgshard::router::Strategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Keys that the map sends to two different shards.
fn keys_on_two_shards(map: &pgshard::router::ShardMap) -> (i64, i64) {
    let a = 1;
    let first = map.shard_for(a);
    let b = (2..10_000)
        .find(|k| map.shard_for(*k) != first)
        .expect("a key on another shard");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_route_by_key_in_both_protocols() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let c = connect(&proxy).await;
    for id in 1..=40i64 {
        c.batch_execute(&format!(
            "INSERT INTO users (user_id, name, email) VALUES ({id}, 'user {id}', 'u{id}@example.com')"
        ))
        .await
        .expect("simple insert");
    }
    let insert = c
        .prepare("INSERT INTO users (user_id, name) VALUES ($1, $2)")
        .await
        .expect("prepare insert");
    for id in 41..=80i64 {
        c.execute(&insert, &[&id, &format!("user {id}")])
            .await
            .expect("prepared insert");
    }
    // Every row sits on the shard the map names, and only there.
    let map = proxy.proxy.map.current();
    for id in [1i64, 17, 41, 80] {
        let owner = map.shard_for(id);
        for shard in cluster.info.shard_ids() {
            let direct = proxy::shard(&cluster.info, shard).await;
            let n: i64 = direct
                .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, i64::from(shard == owner), "user {id} on shard {shard}");
        }
    }
    let row = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&41i64])
        .await
        .expect("select by $1");
    assert_eq!(row.get::<_, String>(0), "user 41");
    let rows = c
        .simple_query("SELECT name FROM users WHERE user_id = 7")
        .await
        .expect("select by literal");
    let names: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["user 7".to_string()]);
    // IN lists and keyless reads gather rows from several shards.
    let rows = c
        .query(
            "SELECT user_id FROM users WHERE user_id IN (1, 2, 3, 50)",
            &[],
        )
        .await
        .expect("IN list");
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 50]);
    let all = c
        .query("SELECT user_id FROM users", &[])
        .await
        .expect("keyless read");
    assert_eq!(all.len(), 80);
    let any = c
        .query(
            "SELECT user_id FROM users WHERE user_id = ANY($1)",
            &[&vec![5i64, 60, 61]],
        )
        .await
        .expect("= ANY($1)");
    assert_eq!(any.len(), 3);
    // Keyless reads that need a real merge are merged; what cannot be merged exactly is
    // refused clearly, never answered wrongly.
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("merged count")
        .get(0);
    assert_eq!(n, 80);
    let latest = c
        .simple_query("SELECT * FROM users ORDER BY created_at DESC LIMIT 20")
        .await
        .expect("merged ORDER BY … LIMIT");
    let rows = latest
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 20);
    // An aggregate the merge cannot combine runs over the rows read first.
    let names: String = c
        .query_one("SELECT string_agg(name, ',' ORDER BY name) FROM users", &[])
        .await
        .expect("string_agg over every shard")
        .get(0);
    assert_eq!(names.split(',').count(), 80, "{names}");
    let err = c
        .query_one("UPDATE users SET user_id = user_id + 1", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000", "{err}");
    // A COPY whose rows carry no shard key cannot be split between shards.
    let err = c
        .simple_query("COPY users (name) FROM STDIN")
        .await
        .expect_err("COPY without the shard key is refused");
    assert_eq!(code(&err), "0A000", "{err}");
    // The session survives a refusal and a server error.
    let err = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(code(&err), "42601");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_or_roll_back_on_every_shard_they_reach() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let map = proxy.proxy.map.current();
    let (a, b) = keys_on_two_shards(&map);
    let mut c = connect(&proxy).await;

    let tx = c.transaction().await.expect("begin");
    tx.execute("INSERT INTO users (user_id, name) VALUES ($1, 'a')", &[&a])
        .await
        .expect("insert a");
    tx.execute("UPDATE users SET name = 'a2' WHERE user_id = $1", &[&a])
        .await
        .expect("update a");
    tx.commit().await.expect("commit");
    let name: String = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "a2");

    let tx = c.transaction().await.expect("begin");
    tx.execute(
        "UPDATE users SET name = 'rolled back' WHERE user_id = $1",
        &[&a],
    )
    .await
    .expect("update");
    tx.rollback().await.expect("rollback");
    let name: String = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "a2", "rollback must undo the update");

    // A block that reached two shards and then had a statement refused: the block fails, and
    // COMMIT rolls it back on both shards.
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute(&format!("UPDATE users SET name = 'x' WHERE user_id = {a}"))
        .await
        .expect("first shard");
    c.batch_execute(&format!(
        "INSERT INTO users (user_id, name) VALUES ({b}, 'b')"
    ))
    .await
    .expect("second shard joins the block");
    let err = c
        .batch_execute(&format!("UPDATE users SET user_id = 5 WHERE user_id = {a}"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000", "{err}");
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), "25P02", "{err}");
    let msgs = c
        .simple_query("COMMIT")
        .await
        .expect("commit of a failed block");
    assert!(matches!(
        msgs.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));
    let name: String = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "a2", "the failed block must have rolled back");
    let n: i64 = c
        .query("SELECT user_id FROM users WHERE user_id = $1", &[&b])
        .await
        .unwrap()
        .len() as i64;
    assert_eq!(n, 0);

    // The same through the extended protocol, COMMIT included: the block can only roll back.
    c.batch_execute("BEGIN").await.expect("begin");
    c.execute("UPDATE users SET name = 'ext' WHERE user_id = $1", &[&a])
        .await
        .expect("first shard");
    c.execute("INSERT INTO users (user_id, name) VALUES ($1, 'b')", &[&b])
        .await
        .expect("second shard");
    let err = c
        .execute("UPDATE users SET user_id = 5 WHERE user_id = $1", &[&a])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000", "{err}");
    c.execute("COMMIT", &[])
        .await
        .expect("COMMIT of a failed block answers");
    let name: String = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        name, "a2",
        "the refused block must roll back, COMMIT or not"
    );
    let n = c
        .query("SELECT user_id FROM users WHERE user_id = $1", &[&b])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 0);

    // Outside a block, a multi-row INSERT spanning shards is split and a keyless write reaches
    // every shard (tests/writes.rs checks them in depth); a new shard key value stays refused.
    c.batch_execute(&format!(
        "INSERT INTO users (user_id, name) VALUES ({a}0000, 'p'), ({b}, 'q')"
    ))
    .await
    .expect("split insert");
    let updated = c
        .execute("UPDATE users SET name = 'all'", &[])
        .await
        .expect("keyless update");
    assert_eq!(updated, 3);
    let err = c
        .batch_execute(&format!("UPDATE users SET user_id = 5 WHERE user_id = {a}"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "0A000", "{err}");
    // Duplicate keys are caught by the owning shard.
    let err = c
        .batch_execute(&format!(
            "INSERT INTO users (user_id, name) VALUES ({a}, 'dup')"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "23505", "{err}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_without_a_key_get_generated_ids() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let c = connect(&proxy).await;
    let rows = c
        .simple_query(
            "INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com') RETURNING user_id",
        )
        .await
        .expect("insert without key");
    let id: i64 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("RETURNING shows the key");
    assert!(id > 0);
    let row = c
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&id])
        .await
        .expect("row found by its generated key");
    assert_eq!(row.get::<_, String>(0), "Ada");
    let id2: i64 = c
        .query_one(
            "INSERT INTO users (name) VALUES ($1) RETURNING user_id",
            &[&"Grace"],
        )
        .await
        .expect("prepared insert without key")
        .get(0);
    assert!(id2 > id, "ids grow: {id2} > {id}");
    let map = proxy.proxy.map.current();
    let owner = proxy::shard(&cluster.info, map.shard_for(id2)).await;
    let n: i64 = owner
        .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&id2])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let next: i64 = c
        .query_one("SELECT pgshard.next_id()", &[])
        .await
        .expect("next_id through the extended protocol")
        .get(0);
    assert!(next > id2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_ids_never_collide_across_sessions() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let sessions = 8;
    let per_session = 12_500;
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let url = proxy::app_url(&proxy);
        tasks.push(tokio::spawn(async move {
            let c = connect_url(&url).await.expect("connect");
            let st = c
                .prepare("SELECT pgshard.next_id()")
                .await
                .expect("prepare");
            let mut ids = Vec::with_capacity(per_session);
            for _ in 0..per_session {
                ids.push(
                    c.query_one(&st, &[])
                        .await
                        .expect("next_id")
                        .get::<_, i64>(0),
                );
            }
            ids
        }));
    }
    let mut all = std::collections::HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(id > 0);
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
    assert_eq!(all.len(), sessions * per_session);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_fail_cleanly_and_methods_work() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let err = connect_url(&url(&proxy, "app", "wrong")).await.unwrap_err();
    assert_eq!(code(&err), "28P01", "{err}");
    let err = connect_url(&url(&proxy, "nobody", "x")).await.unwrap_err();
    assert_eq!(
        code(&err),
        "28P01",
        "unknown users look like wrong passwords: {err}"
    );
    let err = connect_url(&format!(
        "postgres://app:app@127.0.0.1:{}/nodb",
        proxy.addr.port()
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), "3D000", "{err}");
    let c = connect_url(&url(&proxy, "md5user", "md5pass"))
        .await
        .expect("md5 login");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let err = connect_url(&url(&proxy, "md5user", "nope"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "28P01");
    let c = connect_url(&url(&proxy, "trusted", ""))
        .await
        .expect("trust login");
    let two: i32 = c.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
    proxy.stop().await;
}

/// Reads what the proxy sends until it closes the connection (bounded by a timeout).
async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the proxy did not close the connection; got {out:?}"),
        }
    }
}

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn sqlstates(bytes: &[u8]) -> Vec<String> {
    let mut codes = Vec::new();
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let tag = bytes[i];
        let len =
            u32::from_be_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]) as usize;
        let end = (i + 1 + len).min(bytes.len());
        if tag == b'E' {
            let body = &bytes[i + 5..end];
            let mut j = 0;
            while j < body.len() && body[j] != 0 {
                let field = body[j];
                let nul = body[j + 1..]
                    .iter()
                    .position(|b| *b == 0)
                    .map(|p| j + 1 + p)
                    .unwrap_or(body.len());
                if field == b'C' {
                    codes.push(String::from_utf8_lossy(&body[j + 1..nul]).into_owned());
                }
                j = nul + 1;
            }
        }
        i = end;
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_a_clean_error_and_the_proxy_keeps_serving() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let addr = proxy.addr;

    // A startup packet with an absurd length.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    let reply = read_until_close(&mut s).await;
    assert_eq!(sqlstates(&reply), vec!["08P01".to_string()]);

    // An unsupported protocol version.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0, 9, 0, 0]).await.unwrap();
    let reply = read_until_close(&mut s).await;
    assert_eq!(sqlstates(&reply), vec!["08P01".to_string()]);

    // SSL is refused with 'N', then a normal startup works on the same socket.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");

    // Random bytes during the password exchange.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", "app"), ("database", "app")]))
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let _ = s.read(&mut first).await.unwrap();
    s.write_all(b"\x01\x02garbage\xff\xff\xff\xff")
        .await
        .unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(
        !sqlstates(&reply).is_empty(),
        "an error before closing: {reply:?}"
    );

    // Random bytes after a complete login (trust user).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", "trusted"), ("database", "app")]))
        .await
        .unwrap();
    let mut greeting = vec![0u8; 0];
    let mut buf = [0u8; 4096];
    while !greeting.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("login answers")
            .unwrap();
        assert!(n > 0, "closed during login");
        greeting.extend_from_slice(&buf[..n]);
    }
    s.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xf0, 1, 2, 3])
        .await
        .unwrap();
    let reply = read_until_close(&mut s).await;
    assert_eq!(sqlstates(&reply), vec!["08P01".to_string()]);

    // A Bind naming a statement that does not exist: ERROR, and the session goes on.
    let c = connect(&proxy).await;
    let one: i32 = c
        .query_one("SELECT 1", &[])
        .await
        .expect("still serving")
        .get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_leaves_nothing_behind() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| c.pool.size = 2).await;
    let key = 424_242i64;
    let shard_id = proxy.proxy.map.current().shard_for(key);
    {
        let c = connect(&proxy).await;
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute(&format!(
            "INSERT INTO users (user_id, name) VALUES ({key}, 'ghost')"
        ))
        .await
        .unwrap();
        // The client vanishes without COMMIT.
    }
    let direct = proxy::shard(&cluster.info, shard_id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a server connection stayed in the client's transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n: i64 = direct
        .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&key])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the abandoned transaction must not commit");
    // Both pooled connections are usable by others.
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    a.batch_execute("BEGIN").await.unwrap();
    a.execute(
        "INSERT INTO users (user_id, name) VALUES ($1, 'a')",
        &[&key],
    )
    .await
    .unwrap();
    let n = b
        .query("SELECT 1 FROM users WHERE user_id = $1", &[&key])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 0, "uncommitted rows stay invisible");
    a.batch_execute("COMMIT").await.unwrap();
    let n = b
        .query("SELECT 1 FROM users WHERE user_id = $1", &[&key])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_kept_between_transactions_goes_to_whoever_waits_for_it() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    // One server connection per shard, and a checkout that fails soon rather than wait long.
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.pool.size = 1;
        c.pool.checkout_timeout_ms = 1_000;
    })
    .await;
    let key = 31i64;
    let shard = proxy.proxy.map.current().shard_for(key);
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    a.execute(
        "INSERT INTO users (user_id, name) VALUES ($1, 'kept')",
        &[&key],
    )
    .await
    .unwrap();
    let sql = "SELECT pg_backend_pid() FROM users WHERE user_id = $1";
    let first: i32 = a.query_one(sql, &[&key]).await.unwrap().get(0);
    // The client that ran last keeps the connection, yet the pool counts it idle.
    let pool = |shard: u32| {
        proxy
            .proxy
            .pools
            .pool_status()
            .into_iter()
            .find(|p| p.server.shard == shard && p.server.index == 0 && !p.control)
            .expect("the shard's pool")
    };
    let status = pool(shard).status;
    assert_eq!((status.size, status.available), (1, 1), "{status:?}");
    // Clients taking turns each get the one connection at once: none waits out the checkout
    // timeout for a connection another client kept.
    for round in 0..10 {
        for c in [&b, &a] {
            let started = Instant::now();
            let got: i32 = c
                .query_one(sql, &[&key])
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"))
                .get(0);
            assert_eq!(got, first, "one server connection");
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "round {round} waited"
            );
        }
    }
    // A transaction block in one client while the other keeps the connection: the block gets it.
    b.query_one(sql, &[&key]).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.query_one(sql, &[&key]).await.unwrap();
    let status = pool(shard).status;
    assert_eq!(
        (status.size, status.available),
        (1, 0),
        "in use: {status:?}"
    );
    let waiting = tokio::spawn({
        let b = b;
        async move { b.query_one(sql, &[&key]).await.map(|_| ()) }
    });
    let refused = waiting
        .await
        .unwrap()
        .expect_err("the only connection is in a block");
    assert_eq!(code(&refused), "53300");
    a.batch_execute("COMMIT").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_prepared_statements_survive_transaction_pooling() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    // One server connection per shard: every client shares it.
    let proxy = start_proxy_with(&cluster.info, |c| c.pool.size = 1).await;
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    let show = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert_eq!(
        show(a.simple_query("SHOW statement_timeout").await.unwrap()),
        "1234ms"
    );
    assert_eq!(
        show(b.simple_query("SHOW statement_timeout").await.unwrap()),
        "0"
    );
    assert_eq!(
        show(a.simple_query("SHOW statement_timeout").await.unwrap()),
        "1234ms"
    );
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(
        show(a.simple_query("SHOW statement_timeout").await.unwrap()),
        "0"
    );
    // A SET rolled back with its transaction is undone.
    a.batch_execute("BEGIN; SET work_mem = '8MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show(a.simple_query("SHOW work_mem").await.unwrap()), "4MB");

    let clients: Vec<_> =
        futures_util::future::join_all((0..5).map(|_| async { connect(&proxy).await })).await;
    let mut statements = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let sql = format!("SELECT $1::int8 + {i}");
        statements.push(c.prepare(&sql).await.expect("prepare"));
    }
    for round in 0..20i64 {
        for (i, c) in clients.iter().enumerate() {
            let v: i64 = c
                .query_one(&statements[i], &[&round])
                .await
                .expect("execute")
                .get(0);
            assert_eq!(v, round + i as i64);
        }
    }

    // A statement name exists only once its Parse succeeded, as on Postgres: a Parse the server
    // rejects, or one skipped after an earlier error in its batch, leaves the name free.
    let mut raw = RawClient::login(proxy.addr, "trusted").await;
    let parse = |name: &str, sql: &str| {
        let mut body = Vec::new();
        for text in [name, sql] {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        message(b'P', &body)
    };
    let sync = message(b'S', &[]);
    let tags = |answer: &[(u8, Vec<u8>)]| answer.iter().map(|m| m.0 as char).collect::<String>();
    let first_error = |answer: &[(u8, Vec<u8>)]| {
        answer
            .iter()
            .find(|m| m.0 == b'E')
            .map(|m| error_fields(&m.1).0)
            .unwrap_or_default()
    };
    raw.send(&[parse("s1", "SELEC 1"), sync.clone()].concat())
        .await;
    let answer = raw.until_ready().await;
    assert_eq!(first_error(&answer), "42601", "{answer:?}");
    raw.send(&[parse("s2", "SELECT * FROM no_such_table"), sync.clone()].concat())
        .await;
    let answer = raw.until_ready().await;
    assert_eq!(first_error(&answer), "42P01", "{answer:?}");
    // The second Parse follows a failed one in the same batch, so the server skips it.
    raw.send(
        &[
            parse("s3", "SELEC 1"),
            parse("s4", "SELECT 4"),
            sync.clone(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "EZ", "{answer:?}");
    for name in ["s1", "s2", "s3", "s4"] {
        raw.send(&[parse(name, "SELECT 1"), sync.clone()].concat())
            .await;
        let answer = raw.until_ready().await;
        assert_eq!(tags(&answer), "1Z", "re-Parse of {name}: {answer:?}");
    }
    // A name that was parsed successfully is still taken.
    raw.send(&[parse("s4", "SELECT 2"), sync.clone()].concat())
        .await;
    let answer = raw.until_ready().await;
    assert_eq!(first_error(&answer), "42P05", "{answer:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_server_running_the_query() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let c = connect(&proxy).await;
    cancel_a_sleep(&cluster, &proxy, c).await;
    proxy.stop().await;
}

/// Cancels `c`'s `pg_sleep(30)` once the first shard runs it: 57014, well before it would end.
async fn cancel_a_sleep(
    cluster: &TestCluster,
    proxy: &pgshard::server::RunningProxy,
    c: tokio_postgres::Client,
) {
    let token = c.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    // Wait until the shard is really running it.
    let direct = proxy::shard(&cluster.info, proxy.proxy.first_shard).await;
    common::wait_until_active(&direct, "SELECT pg_sleep(30)").await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request sent");
    let err = query.await.expect("query task").expect_err("cancelled");
    assert_eq!(code(&err), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Shards configured by their socket directory (`host = "/path"`, as libpq reads a host) are
/// reached over Unix-domain sockets: keyed statements in both protocols, a block over two shards
/// (two-phase commit), and a cancel all work, and the shards see the proxy's sessions as local
/// ones (`client_port = -1`), none over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_on_this_host_are_reached_through_their_socket_directories() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let dirs: Vec<(u32, String)> = cluster
        .info
        .shards()
        .iter()
        .filter_map(|i| Some((i.shard?, i.data_dir.display().to_string())))
        .collect();
    let proxy = start_proxy_with(&cluster.info, |config| {
        for shard in &mut config.shards {
            let (_, dir) = dirs.iter().find(|(id, _)| *id == shard.id).expect("a dir");
            shard.host = dir.clone();
        }
    })
    .await;
    let c = connect(&proxy).await;
    let (a, b) = keys_on_two_shards(&proxy.proxy.map.current());
    let insert = c
        .prepare("INSERT INTO users (user_id, name) VALUES ($1, $2)")
        .await
        .expect("prepare over a socket directory");
    c.batch_execute("BEGIN").await.expect("begin");
    for key in [a, b] {
        c.execute(&insert, &[&key, &format!("local {key}")])
            .await
            .expect("insert");
    }
    c.batch_execute("COMMIT").await.expect("two-phase commit");
    let names = common::answers::simple_rows(
        &c,
        &format!("SELECT name FROM users WHERE user_id IN ({a}, {b}) ORDER BY user_id"),
    )
    .await;
    // `keys_on_two_shards` gives a < b.
    let want = [a, b].map(|k| vec![Some(format!("local {k}"))]);
    assert_eq!(names, want);

    for (id, _) in &dirs {
        let direct = proxy::shard(&cluster.info, *id).await;
        let row = direct
            .query_one(
                "SELECT count(*) FILTER (WHERE client_port = -1), count(*) FILTER (WHERE client_port > 0) \
                 FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend' AND usename <> 'pgshard'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        let (local, tcp): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            local > 0,
            "shard {id}: no session of the proxy over its socket"
        );
        assert_eq!(tcp, 0, "shard {id}: the proxy's sessions came over TCP");
    }

    cancel_a_sleep(&cluster, &proxy, c).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_needs_session_pooling() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let c = connect(&proxy).await;
    // Temporary tables, advisory locks and WITH HOLD cursors pin a connection instead (see
    // tests/session_pins.rs); LISTEN/NOTIFY are served by the proxy (tests/notify.rs).
    // SET of pgshard's own settings never reaches a server.
    c.batch_execute("SET pgshard.note = 'kept by the proxy'")
        .await
        .unwrap();
    let rows = c.simple_query("SHOW pgshard.note").await.unwrap();
    assert!(rows.iter().any(|m| matches!(m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("kept by the proxy"))));
    proxy.stop().await;

    let proxy = start_proxy_with(&cluster.info, |c| {
        c.pool.mode = pgshard::config::PoolMode::Session;
    })
    .await;
    let c = connect(&proxy).await;
    c.batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .expect("temp table in session mode");
    c.batch_execute("INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the temp table lives on the session's own connection");
    let locked: bool = c
        .query_one("SELECT pg_try_advisory_lock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_fails_only_its_own_keys() {
    use pgshard::cluster::{self, StopMode};
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let map = proxy.proxy.map.current();
    let down = proxy.proxy.first_shard;
    let down_name = cluster
        .info
        .shards()
        .iter()
        .find(|i| i.shard == Some(down))
        .map(|i| i.name.clone())
        .expect("first shard's instance");
    cluster::stop_instance(&cluster.info.dir, &down_name, StopMode::Immediate)
        .await
        .expect("stop a shard");
    // New clients still get in, and keys on healthy shards work.
    let c = connect(&proxy).await;
    let healthy_key = (1..1000i64).find(|k| map.shard_for(*k) != down).unwrap();
    let lost_key = (1..1000i64).find(|k| map.shard_for(*k) == down).unwrap();
    c.execute(
        "INSERT INTO users (user_id, name) VALUES ($1, 'ok')",
        &[&healthy_key],
    )
    .await
    .expect("a healthy shard keeps working");
    let started = Instant::now();
    let err = c
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'lost')",
            &[&lost_key],
        )
        .await
        .unwrap_err();
    assert!(code(&err).starts_with("08"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an error, not a hang"
    );
    // The shard comes back: its keys work again without restarting the proxy.
    cluster::start_instance(&cluster.info.dir, &down_name)
        .await
        .unwrap();
    c.execute(
        "INSERT INTO users (user_id, name) VALUES ($1, 'back')",
        &[&lost_key],
    )
    .await
    .expect("the shard is back");
    proxy.stop().await;
}

/// Reads frames until one with `tag` arrives; returns everything read.
async fn read_until_tag(stream: &mut TcpStream, tag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let mut i = 0;
        while i + 5 <= out.len() {
            let len = u32::from_be_bytes([out[i + 1], out[i + 2], out[i + 3], out[i + 4]]) as usize;
            if i + 1 + len > out.len() {
                break;
            }
            if out[i] == tag {
                return out;
            }
            i += 1 + len;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the proxy answers")
            .unwrap();
        assert!(n > 0, "connection closed; got {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_pipeline_over_two_shards_commits_or_rolls_back_at_sync() {
    use pgshard::wire::frame::Frame;
    use pgshard::wire::frontend::{self as fe, Bind, Execute, Parse};
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let map = proxy.proxy.map.current();
    let (a, b) = keys_on_two_shards(&map);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", "trusted"), ("database", "app")]))
        .await
        .unwrap();
    read_until_tag(&mut s, b'Z').await;
    let insert = |key: i64| {
        let mut out = Vec::new();
        out.extend_from_slice(
            &Parse {
                name: String::new(),
                query: "INSERT INTO users (user_id, name) VALUES ($1, 'implicit')".into(),
                param_types: vec![20],
            }
            .encode()
            .to_bytes(),
        );
        out.extend_from_slice(
            &Bind {
                portal: String::new(),
                statement: String::new(),
                param_formats: vec![],
                params: vec![Some(bytes::Bytes::from(key.to_string()))],
                result_formats: vec![],
            }
            .encode()
            .to_bytes(),
        );
        out.extend_from_slice(
            &Execute {
                portal: String::new(),
                max_rows: 0,
            }
            .encode()
            .to_bytes(),
        );
        out
    };
    let on_owner = |key: i64| {
        let info = &cluster.info;
        let shard = map.shard_for(key);
        async move {
            let owner = proxy::shard(info, shard).await;
            owner
                .query("SELECT 1 FROM users WHERE user_id = $1", &[&key])
                .await
                .unwrap()
                .len()
        }
    };
    let flush = Frame::new(fe::FLUSH, bytes::Bytes::new()).to_bytes();
    // First key, then Flush: it runs inside the implicit transaction, nothing is committed yet.
    let mut first = insert(a);
    first.extend_from_slice(&flush);
    s.write_all(&first).await.unwrap();
    read_until_tag(&mut s, b'C').await;
    assert_eq!(on_owner(a).await, 0, "nothing commits before Sync");
    // A key on another shard joins the same implicit transaction; both commit at Sync.
    let mut second = insert(b);
    second.extend_from_slice(&fe::sync().to_bytes());
    s.write_all(&second).await.unwrap();
    let reply = read_until_tag(&mut s, b'Z').await;
    assert_eq!(sqlstates(&reply), Vec::<String>::new());
    assert_eq!(reply.last(), Some(&b'I'), "idle after Sync");
    for key in [a, b] {
        assert_eq!(on_owner(key).await, 1, "key {key} committed on its shard");
    }
    // A new key on the first shard, then a duplicate on the other: nothing of it stays.
    let c = (a + 1..)
        .find(|k| map.shard_for(*k) == map.shard_for(a))
        .unwrap();
    let mut first = insert(c);
    first.extend_from_slice(&flush);
    s.write_all(&first).await.unwrap();
    read_until_tag(&mut s, b'C').await;
    let mut second = insert(b);
    second.extend_from_slice(&fe::sync().to_bytes());
    s.write_all(&second).await.unwrap();
    let reply = read_until_tag(&mut s, b'Z').await;
    assert_eq!(sqlstates(&reply), vec!["23505".to_string()]);
    assert_eq!(reply.last(), Some(&b'I'), "idle after Sync, not failed");
    assert_eq!(on_owner(c).await, 0, "key {c} rolled back");
    // BEGIN sent with the statements it starts (as pgjdbc does), all before one Sync: the
    // statements join the client's block over both shards, which COMMIT ends with 2PC.
    let d = (c + 1..)
        .find(|k| map.shard_for(*k) != map.shard_for(c))
        .unwrap();
    let mut batch = Vec::new();
    for part in [
        &Parse {
            name: String::new(),
            query: "BEGIN".into(),
            param_types: vec![],
        }
        .encode()
        .to_bytes()[..],
        &Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }
        .encode()
        .to_bytes()[..],
        &Execute {
            portal: String::new(),
            max_rows: 0,
        }
        .encode()
        .to_bytes()[..],
        &insert(c)[..],
        &insert(d)[..],
        &fe::sync().to_bytes()[..],
    ] {
        batch.extend_from_slice(part);
    }
    s.write_all(&batch).await.unwrap();
    let reply = read_until_tag(&mut s, b'Z').await;
    assert_eq!(sqlstates(&reply), Vec::<String>::new());
    assert_eq!(reply.last(), Some(&b'T'), "inside the block after Sync");
    assert_eq!(on_owner(c).await, 0, "nothing commits before COMMIT");
    s.write_all(&fe::query("COMMIT").to_bytes()).await.unwrap();
    let reply = read_until_tag(&mut s, b'Z').await;
    assert_eq!(sqlstates(&reply), Vec::<String>::new());
    for key in [c, d] {
        assert_eq!(on_owner(key).await, 1, "key {key} committed on its shard");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_over_several_shards_is_read_in_parts_until_its_transaction_ends() {
    use common::raw::query;
    use pgshard::wire::frontend::{self as fe, Bind, Execute, Parse};
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let client = connect(&proxy).await;
    for k in 1..=6i64 {
        client
            .execute("INSERT INTO users (user_id, name) VALUES ($1, 'r')", &[&k])
            .await
            .expect("insert");
    }
    let mut raw = common::raw::RawClient::login(proxy.addr, "trusted").await;
    let tags = |messages: &[common::raw::Message]| -> Vec<u8> {
        messages.iter().map(|(t, _)| *t).collect()
    };
    let execute = |max_rows: i32| {
        Execute {
            portal: "c".into(),
            max_rows,
        }
        .encode()
        .to_bytes()
        .to_vec()
    };
    for in_block in [false, true] {
        if in_block {
            raw.send(&query("BEGIN")).await;
            raw.until_ready().await;
        }
        let mut batch = Parse {
            name: String::new(),
            query: "SELECT user_id FROM users WHERE user_id > $1 ORDER BY user_id DESC".into(),
            param_types: vec![],
        }
        .encode()
        .to_bytes()
        .to_vec();
        batch.extend_from_slice(
            &Bind {
                portal: "c".into(),
                statement: String::new(),
                param_formats: vec![],
                params: vec![Some(bytes::Bytes::from_static(b"0"))],
                result_formats: vec![],
            }
            .encode()
            .to_bytes(),
        );
        batch.extend_from_slice(&execute(2));
        batch.extend_from_slice(&fe::sync().to_bytes());
        raw.send(&batch).await;
        let answer = raw.until_ready().await;
        // The first two rows of the merged order, then "suspended" as one server says it.
        assert_eq!(tags(&answer), b"12DDsZ".to_vec(), "{answer:?}");
        let rows: Vec<&[u8]> = answer
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| &b[6..])
            .collect();
        assert_eq!(rows, vec![&b"6"[..], &b"5"[..]]);
        let mut more = execute(3);
        more.extend_from_slice(&fe::sync().to_bytes());
        raw.send(&more).await;
        let answer = raw.until_ready().await;
        let errors: Vec<(String, String)> = answer
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| error_fields(b))
            .collect();
        if !in_block {
            // The Sync ended the implicit transaction, and the portal with it, as in Postgres.
            assert_eq!(errors.len(), 1, "{answer:?}");
            assert_eq!(errors[0].0, "34000", "{errors:?}");
            continue;
        }
        // In a block the portal goes on where it stopped: three rows, then the last one with
        // CommandComplete counting the rows of that Execute.
        assert_eq!(tags(&answer), b"DDDsZ".to_vec(), "{answer:?}");
        let rows: Vec<&[u8]> = answer
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| &b[6..])
            .collect();
        assert_eq!(rows, vec![&b"4"[..], &b"3"[..], &b"2"[..]]);
        raw.send(&more).await;
        let answer = raw.until_ready().await;
        assert_eq!(tags(&answer), b"DCZ".to_vec(), "{answer:?}");
        let complete = answer
            .iter()
            .find(|(t, _)| *t == b'C')
            .map(|(_, b)| b.clone());
        assert_eq!(complete.as_deref(), Some(&b"SELECT 1\0"[..]));
        if in_block {
            raw.send(&query("ROLLBACK")).await;
            raw.until_ready().await;
        }
    }
    proxy.stop().await;
}
