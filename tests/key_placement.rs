//! Keys and placement (issue 15), one cluster for the binary: an INSERT into a uuid-keyed table
//! that omits the key gets a time-ordered UUIDv7 from pgshard and lands where the shards' own
//! `uuid_hash_extended` says (a text key is refused); `SET pgshard.shard` / `SET pgshard.key`
//! route a session or, with `SET LOCAL`, a block, and survive transaction pooling; a key pinned
//! to a shard is routed there on every path. Simple and extended protocol, text and binary
//! parameters, in and out of a block.

mod common;

use bytes::{BufMut, BytesMut};
use common::params::TextParam;
use common::placement::owned_rows;
use common::proxy::{self, connect};
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::{KeyType, ShardKey, ShardMap, Strategy};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

type SqlResult = Result<IsNull, Box<dyn std::error::Error + Sync + Send>>;

/// A uuid in binary format (16 bytes).
#[derive(Debug)]
struct UuidBin([u8; 16]);

impl ToSql for UuidBin {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> SqlResult {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
    to_sql_checked!();
}

/// The text values of the first column of a simple query's rows.
async fn simple_column(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

fn parse_uuid(text: &str) -> [u8; 16] {
    match KeyType::Uuid.parse_text(text) {
        Some(ShardKey::Uuid(u)) => u,
        _ => panic!("{text} is not a uuid"),
    }
}

/// Rows of `table` per shard, each checked against the map's SQL twin and the proxy's own hash.
async fn placed(cluster: &TestCluster, map: &ShardMap, table: &str, key_type: KeyType) -> i64 {
    let mut total = 0;
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let all = owned_rows(&direct, map, table, ("id", key_type), id).await;
        for row in direct
            .query(&format!("SELECT id::text FROM {table}"), &[])
            .await
            .unwrap()
        {
            let text: String = row.get(0);
            let key = key_type.parse_text(&text).expect("a key");
            assert_eq!(map.shard_of(&key), id, "{table}: {text}");
        }
        total += all;
    }
    total
}

/// Inserts that omit a uuid key get UUIDv7s, in both protocols and in a block; text keys are
/// refused.
async fn generated_uuid_keys(cluster: &TestCluster, c: &Client, map: &ShardMap) {
    let mut returned: Vec<String> = Vec::new();
    // Simple protocol: one row, then several rows in one statement (split over shards).
    returned.extend(simple_column(c, "INSERT INTO g_uuid (v) VALUES ('s1') RETURNING id").await);
    // A split INSERT returns its rows shard by shard: sort them into generation order.
    let mut several = simple_column(
        c,
        "INSERT INTO g_uuid (v) VALUES ('s2'), ('s3'), ('s4'), ('s5'), ('s6'), ('s7') RETURNING id::text",
    )
    .await;
    assert_eq!(several.len(), 6);
    several.sort();
    returned.extend(several);
    // Extended protocol, the parameter in binary and in text format, RETURNING the key.
    for i in 0..10 {
        let v = format!("e{i}");
        let row = if i % 2 == 0 {
            c.query_one(
                "INSERT INTO g_uuid (v) VALUES ($1) RETURNING id::text",
                &[&v],
            )
            .await
        } else {
            c.query_one(
                "INSERT INTO g_uuid (v) VALUES ($1) RETURNING id::text",
                &[&TextParam(v)],
            )
            .await
        }
        .unwrap_or_else(|e| panic!("prepared insert: {e:?}"));
        returned.push(row.get(0));
    }
    // Several rows in one extended statement.
    let rows = c
        .query(
            "INSERT INTO g_uuid (v) VALUES ($1), ($2), ($3) RETURNING id::text",
            &[&"x1", &"x2", &TextParam("x3".into())],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let mut three: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    three.sort();
    returned.extend(three);
    // Inside a block, in both protocols; and a rolled-back block leaves nothing.
    c.batch_execute("BEGIN").await.unwrap();
    for i in 0..4 {
        let row = c
            .query_one(
                "INSERT INTO g_uuid (v) VALUES ($1) RETURNING id::text",
                &[&format!("t{i}")],
            )
            .await
            .unwrap_or_else(|e| panic!("insert in a block: {e:?}"));
        returned.push(row.get(0));
    }
    returned.extend(simple_column(c, "INSERT INTO g_uuid (v) VALUES ('t4') RETURNING id").await);
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO g_uuid (v) VALUES ($1)", &[&"gone"])
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    // UNNEST inserts that omit the key (Django's bulk_create): the keys come back in the
    // arrays' order, in the simple protocol and with a binary array parameter.
    returned.extend(
        simple_column(
            c,
            "INSERT INTO g_uuid (v) SELECT * FROM UNNEST('{u1,u2,u3}'::text[]) RETURNING id::text",
        )
        .await,
    );
    let values: Vec<String> = ["u4", "u5", "u6"].map(String::from).to_vec();
    let rows = c
        .query(
            "INSERT INTO g_uuid (v) SELECT * FROM UNNEST($1::text[]) RETURNING id::text, v",
            &[&values],
        )
        .await
        .unwrap_or_else(|e| panic!("extended UNNEST insert: {e:?}"));
    let order: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(order, values, "RETURNING follows the arrays' order");
    returned.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    assert_eq!(returned.len(), 31);
    // Every key is a version-7 uuid of this millisecond's era, distinct, and the keys of
    // statements sent one after another increase (time-ordered).
    let uuids: Vec<[u8; 16]> = returned.iter().map(|t| parse_uuid(t)).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (u, text) in uuids.iter().zip(&returned) {
        assert_eq!(u[6] >> 4, 7, "{text} is not version 7");
        assert_eq!(u[8] >> 6, 0b10, "{text} is not of the RFC variant");
        let ms = u64::from_be_bytes([0, 0, u[0], u[1], u[2], u[3], u[4], u[5]]);
        assert!(
            ms <= now_ms && ms + 600_000 > now_ms,
            "{text}: {ms} is not a recent Unix time ({now_ms})"
        );
    }
    assert!(
        uuids.windows(2).all(|w| w[0] < w[1]),
        "keys are not time-ordered: {returned:?}"
    );
    // Every row sits on the shard `uuid_hash_extended` names, and the keys read back through
    // the proxy are the ones returned.
    assert_eq!(placed(cluster, map, "g_uuid", KeyType::Uuid).await, 31);
    for (u, text) in uuids.iter().zip(&returned).step_by(5) {
        let v: String = c
            .query_one("SELECT v FROM g_uuid WHERE id = $1", &[&UuidBin(*u)])
            .await
            .unwrap_or_else(|e| panic!("read back {text}: {e:?}"))
            .get(0);
        assert!(!v.is_empty());
    }
    // A text key pgshard cannot make up: 0A000 naming the column, in both protocols, and the
    // session goes on.
    for extended in [false, true] {
        let err = if extended {
            c.execute("INSERT INTO g_text (v) VALUES ($1)", &[&"no key"])
                .await
                .map(|_| ())
        } else {
            c.batch_execute("INSERT INTO g_text (v) VALUES ('no key')")
                .await
        }
        .expect_err("a text key cannot be generated");
        let db = err.as_db_error().expect("an ErrorResponse");
        assert_eq!(db.code().code(), "0A000", "{}", db.message());
        assert!(
            db.message().contains("column id of g_text is text"),
            "{}",
            db.message()
        );
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM g_text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// The shard whose server ran a statement, read from its `port` setting.
async fn ran_on(cluster: &TestCluster, c: &Client, extended: bool) -> u32 {
    let sql = "SELECT current_setting('port')";
    let port: String = if extended {
        c.query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .get(0)
    } else {
        simple_column(c, sql).await.remove(0)
    };
    let port: u16 = port.parse().unwrap();
    cluster
        .info
        .shards()
        .iter()
        .find(|i| i.port == port)
        .and_then(|i| i.shard)
        .unwrap_or_else(|| panic!("port {port} is no shard's"))
}

/// The SQLSTATE of a failed statement.
fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e:?}"))
}

/// What `SHOW pgshard.<name>` answers, in both protocols (they must agree).
async fn show(c: &Client, name: &str) -> String {
    let sql = format!("SHOW pgshard.{name}");
    let simple = simple_column(c, &sql).await.remove(0);
    let extended: String = c.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(simple, extended, "{sql}");
    simple
}

/// A uuid key that `map` places on `shard` (and one that it does not), from the generated rows.
async fn uuid_keys(c: &Client, map: &ShardMap, shard: u32) -> ([u8; 16], [u8; 16]) {
    let keys: Vec<[u8; 16]> = simple_column(c, "SELECT id FROM g_uuid")
        .await
        .iter()
        .map(|t| parse_uuid(t))
        .collect();
    let on = *keys
        .iter()
        .find(|k| map.shard_of(&ShardKey::Uuid(**k)) == shard)
        .expect("a key on the shard");
    let off = *keys
        .iter()
        .find(|k| map.shard_of(&ShardKey::Uuid(**k)) != shard)
        .expect("a key elsewhere");
    (on, off)
}

/// `SET [LOCAL] pgshard.shard` / `pgshard.key`, RESET and SHOW, in both protocols, with
/// transaction pooling (the proxy's default).
async fn session_hints(
    cluster: &TestCluster,
    proxy: &pgshard::server::RunningProxy,
    map: &ShardMap,
) {
    let c = connect(proxy).await;
    let other = connect(proxy).await;
    let shards = cluster.info.shard_ids();
    let (s, s2) = (shards[1], shards[2]);
    let (on, off) = uuid_keys(&c, map, s).await;
    let (on2, _) = uuid_keys(&c, map, s2).await;
    let text = |u: &[u8; 16]| pgshard::router::key_type::format_uuid(u);
    assert_eq!(show(&c, "shard").await, "");
    c.batch_execute(&format!("SET pgshard.shard = {s}"))
        .await
        .unwrap();
    assert_eq!(show(&c, "shard").await, s.to_string());
    assert_eq!(show(&c, "key").await, "");
    for _ in 0..3 {
        for extended in [false, true] {
            assert_eq!(ran_on(cluster, &c, extended).await, s);
        }
    }
    // Proxy-side only: no server ever sees the setting, for this client or another one that
    // gets the same pooled connections.
    for client in [&c, &other] {
        let seen: Option<String> = client
            .query_one("SELECT current_setting('pgshard.shard', true)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(seen.as_deref().unwrap_or("").is_empty(), "{seen:?}");
    }
    // Pipelined: several statements sent before the first answer, all on the hinted shard.
    let port_sql = "SELECT current_setting('port')::int";
    let (a, b, d) = tokio::join!(
        c.query_one(port_sql, &[]),
        c.query_one(port_sql, &[]),
        c.query_one(port_sql, &[])
    );
    let ports: Vec<i32> = [a, b, d].into_iter().map(|r| r.unwrap().get(0)).collect();
    let port_of_s = cluster
        .info
        .shards()
        .iter()
        .find(|i| i.shard == Some(s))
        .map(|i| i32::from(i.port))
        .unwrap();
    assert_eq!(ports, [port_of_s; 3]);
    // In a block too.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(ran_on(cluster, &c, true).await, s);
    assert_eq!(ran_on(cluster, &c, false).await, s);
    c.batch_execute("COMMIT").await.unwrap();
    // A statement whose own key agrees runs; one whose key lives elsewhere is refused with
    // 22023, literal or parameter, binary or text, in a block or not.
    let read = "SELECT v FROM g_uuid WHERE id = $1";
    assert_eq!(c.query(read, &[&UuidBin(on)]).await.unwrap().len(), 1);
    assert_eq!(
        simple_column(
            &c,
            &format!("SELECT v FROM g_uuid WHERE id = '{}'", text(&on))
        )
        .await
        .len(),
        1
    );
    for in_block in [false, true] {
        if in_block {
            c.batch_execute("BEGIN").await.unwrap();
        }
        let e = c
            .query(read, &[&UuidBin(off)])
            .await
            .expect_err("contradicts");
        assert_eq!(code(&e), "22023", "{e:?}");
        if in_block {
            c.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    let e = c
        .query(read, &[&TextParam(text(&off))])
        .await
        .expect_err("contradicts");
    assert_eq!(code(&e), "22023", "{e:?}");
    let e = c
        .batch_execute(&format!("SELECT v FROM g_uuid WHERE id = '{}'", text(&off)))
        .await
        .expect_err("contradicts");
    assert_eq!(code(&e), "22023", "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("statement's own key is on shard"),
        "{message}"
    );
    // Rows whose key pgshard generates cannot follow a hint: refused, not misplaced.
    let e = c
        .execute("INSERT INTO g_uuid (v) VALUES ($1)", &[&"hinted"])
        .await
        .expect_err("generated key under a hint");
    assert_eq!(code(&e), "0A000", "{e:?}");
    let e = c
        .batch_execute("INSERT INTO g_uuid (v) VALUES ('hinted')")
        .await
        .expect_err("generated key under a hint");
    assert_eq!(code(&e), "0A000", "{e:?}");
    // SET LOCAL lasts for its block; outside a block it does nothing (Postgres warns).
    c.batch_execute("BEGIN").await.unwrap();
    // (extended protocol this time)
    c.execute(&format!("SET LOCAL pgshard.shard = {s2}"), &[])
        .await
        .unwrap();
    assert_eq!(show(&c, "shard").await, s2.to_string());
    assert_eq!(ran_on(cluster, &c, true).await, s2);
    assert_eq!(ran_on(cluster, &c, false).await, s2);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(ran_on(cluster, &c, true).await, s);
    c.batch_execute(&format!("SET LOCAL pgshard.shard = {s2}"))
        .await
        .unwrap();
    assert_eq!(show(&c, "shard").await, s.to_string());
    // A SET inside a block that rolls back is undone, as Postgres undoes SET.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("SET pgshard.shard = {s2}"))
        .await
        .unwrap();
    assert_eq!(ran_on(cluster, &c, false).await, s2);
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(show(&c, "shard").await, s.to_string());
    // Bad values: 22023, and the hint stays what it was.
    for bad in ["99", "'two'"] {
        let e = c
            .batch_execute(&format!("SET pgshard.shard = {bad}"))
            .await
            .expect_err("bad shard");
        assert_eq!(code(&e), "22023", "{bad}: {e:?}");
    }
    assert_eq!(show(&c, "shard").await, s.to_string());
    // By key: the shard of that key (a key of a named type for statements naming no table).
    c.batch_execute(&format!("SET pgshard.key = '{}::uuid'", text(&on2)))
        .await
        .unwrap();
    assert_eq!(show(&c, "shard").await, "");
    assert_eq!(show(&c, "key").await, format!("{}::uuid", text(&on2)));
    for extended in [false, true] {
        assert_eq!(ran_on(cluster, &c, extended).await, s2);
    }
    assert_eq!(c.query(read, &[&UuidBin(on2)]).await.unwrap().len(), 1);
    let e = c
        .query(read, &[&UuidBin(on)])
        .await
        .expect_err("contradicts");
    assert_eq!(code(&e), "22023", "{e:?}");
    // RESET: statements route by their own keys again.
    c.execute("RESET pgshard.key", &[]).await.unwrap();
    assert_eq!(show(&c, "key").await, "");
    assert_eq!(c.query(read, &[&UuidBin(on)]).await.unwrap().len(), 1);
    c.batch_execute(&format!("SET pgshard.shard = {s}"))
        .await
        .unwrap();
    c.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&c, "shard").await, "");
    assert_eq!(c.query(read, &[&UuidBin(off)]).await.unwrap().len(), 1);
}

/// Rows of tenant `t` on each shard, read directly.
async fn tenant_rows(cluster: &TestCluster, t: &str) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for id in cluster.info.shard_ids() {
        let n: i64 = proxy::shard(&cluster.info, id)
            .await
            .query_one("SELECT count(*) FROM t_orders WHERE tenant = $1", &[&t])
            .await
            .unwrap()
            .get(0);
        out.push((id, n));
    }
    out
}

/// Every `t_orders` row sits where `map` (and its SQL twin) says.
async fn orders_placed(cluster: &TestCluster, map: &ShardMap) -> i64 {
    let mut total = 0;
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let owned = map.sql_owned_by_typed("tenant", KeyType::Text, id);
        let row = direct
            .query_one(
                &format!("SELECT count(*), count(*) FILTER (WHERE NOT coalesce({owned}, false)) FROM t_orders"),
                &[],
            )
            .await
            .unwrap();
        let (all, misplaced): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            misplaced, 0,
            "shard {id} holds t_orders rows it does not own"
        );
        for row in direct
            .query("SELECT DISTINCT tenant FROM t_orders", &[])
            .await
            .unwrap()
        {
            let t: String = row.get(0);
            assert_eq!(map.shard_of(&ShardKey::Text(t.clone())), id, "tenant {t}");
        }
        total += all;
    }
    total
}

/// `REBALANCE move-key`: a tenant with rows moves online to a shard chosen by hand, the map
/// shows the pin, and every path (keyed statements in both protocols, IN lists, `= ANY`, split
/// INSERTs, COPY, the SQL twin that verify and rebalancing use) routes the tenant there.
async fn pinned_tenant(
    cluster: &TestCluster,
    proxy: &pgshard::server::RunningProxy,
    map: &ShardMap,
) {
    use futures_util::SinkExt;
    let c = connect(proxy).await;
    let tenant = "Acme-Corp";
    let key = ShardKey::Text(tenant.into());
    let owner = map.shard_of(&key);
    let to = *cluster
        .info
        .shard_ids()
        .iter()
        .find(|s| **s != owner)
        .unwrap();
    for n in 0..40i32 {
        c.execute(
            "INSERT INTO t_orders (tenant, n, v) VALUES ($1, $2, 'before')",
            &[&tenant, &n],
        )
        .await
        .unwrap();
    }
    for i in 0..60 {
        c.batch_execute(&format!(
            "INSERT INTO t_orders (tenant, n, v) VALUES ('tenant-{i}', 0, 'before')"
        ))
        .await
        .unwrap();
    }
    assert!(tenant_rows(cluster, tenant).await.contains(&(owner, 40)));
    let admin = proxy::connect_url(&format!(
        "postgres://admin:secret@127.0.0.1:{}/pgshard?sslmode=disable",
        proxy.addr.port()
    ))
    .await
    .unwrap();
    // Refused before any job: the shard it already lives on, a modulo-only form, a bad key.
    let e = admin
        .simple_query(&format!("REBALANCE move-key {tenant}::text {owner}"))
        .await
        .expect_err("already there");
    assert!(format!("{e:?}").contains("already lives on shard"), "{e:?}");
    let e = admin
        .simple_query(&format!("REBALANCE move-key nope::uuid {to}"))
        .await
        .expect_err("bad key");
    assert!(format!("{e:?}").contains("not a valid key"), "{e:?}");
    // The move, with the key's case as typed.
    admin
        .simple_query(&format!("REBALANCE move-key '{tenant}'::text {to}"))
        .await
        .unwrap_or_else(|e| panic!("move-key: {e:?}"));
    let job_id = common::jobs::newest_job(&cluster.info).await;
    let job = common::jobs::wait_job_done(&cluster.info, job_id).await;
    let pinned = job.plan.to.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while proxy.proxy.map.current().version < pinned.version {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never loaded the new map"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(pinned.shard_of(&key), to);
    // SHOW SHARD_MAP shows the pin: one single-point entry, on `to`, at the tenant's hash.
    let point = key.hash_point().to_string();
    let pins: Vec<Vec<String>> = admin
        .simple_query("SHOW SHARD_MAP")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..7).map(|i| r.get(i).unwrap_or("").to_string()).collect())
            }
            _ => None,
        })
        .filter(|r: &Vec<String>| r[6] == "t")
        .collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(
        (pins[0][3].as_str(), pins[0][5].as_str()),
        (point.as_str(), to.to_string().as_str())
    );
    // The tenant's rows moved, nothing else did, nothing was lost.
    let rows = tenant_rows(cluster, tenant).await;
    assert!(
        rows.iter()
            .all(|(s, n)| *n == if *s == to { 40 } else { 0 }),
        "{rows:?}"
    );
    assert_eq!(orders_placed(cluster, &pinned).await, 100);
    // Writes of every path: simple and extended (binary and text parameters), a split multi-row
    // INSERT, COPY, in a block.
    c.batch_execute(&format!(
        "INSERT INTO t_orders (tenant, n, v) VALUES ('{tenant}', 100, 'simple')"
    ))
    .await
    .unwrap();
    c.execute(
        "INSERT INTO t_orders (tenant, n, v) VALUES ($1, 101, 'bin')",
        &[&tenant],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO t_orders (tenant, n, v) VALUES ($1, 102, 'text')",
        &[&TextParam(tenant.into())],
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO t_orders (tenant, n, v) VALUES ('{tenant}', 103, 'split'), ('tenant-1', 1, 'split'), ('tenant-2', 1, 'split'), ('{tenant}', 104, 'split')"
    ))
    .await
    .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(
        "INSERT INTO t_orders (tenant, n, v) VALUES ($1, 105, 'block'), ($2, 2, 'block')",
        &[&tenant, &"tenant-3"],
    )
    .await
    .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let sink = c
        .copy_in::<_, bytes::Bytes>("COPY t_orders (tenant, n, v) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(format!(
        "{tenant}\t106\tcopy\ntenant-4\t1\tcopy\n{tenant}\t107\tcopy\n"
    )))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let rows = tenant_rows(cluster, tenant).await;
    assert!(
        rows.iter()
            .all(|(s, n)| *n == if *s == to { 48 } else { 0 }),
        "{rows:?}"
    );
    assert_eq!(orders_placed(cluster, &pinned).await, 100 + 12);
    // Reads: =, IN with another tenant, = ANY($1), in both protocols.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM t_orders WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 48);
    let counted = simple_column(
        &c,
        &format!("SELECT count(*) FROM t_orders WHERE tenant IN ('{tenant}', 'tenant-1')"),
    )
    .await;
    assert_eq!(counted, ["50"]);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM t_orders WHERE tenant = ANY($1)",
            &[&vec![tenant, "tenant-2"]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_placement() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    // The tables exist before the proxy starts: it reads their key types from the shards.
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        direct
            .batch_execute(
                "CREATE TABLE g_uuid (id uuid PRIMARY KEY, v text NOT NULL);
                 CREATE TABLE g_text (id text PRIMARY KEY, v text NOT NULL);
                 CREATE TABLE t_orders (tenant text, n int, v text NOT NULL, PRIMARY KEY (tenant, n));",
            )
            .await
            .unwrap();
    }
    let proxy = proxy::start_proxy_with(&cluster.info, |config| {
        for (name, key) in [("g_uuid", "id"), ("g_text", "id"), ("t_orders", "tenant")] {
            config.sharded_tables.push(ShardedTableConfig {
                name: name.into(),
                key: key.into(),
                key_type: None,
            });
        }
        config.users.push(pgshard::config::UserConfig {
            admin: true,
            ..pgshard::config::UserConfig::new(
                "admin",
                Some("secret"),
                pgshard::config::AuthMethod::ScramSha256,
            )
        });
    })
    .await;
    let c = connect(&proxy).await;
    let catalog = proxy::catalog(&cluster.info).await;
    let map = pgshard::catalog::load_map(&catalog)
        .await
        .unwrap()
        .expect("a map");
    generated_uuid_keys(&cluster, &c, &map).await;
    session_hints(&cluster, &proxy, &map).await;
    pinned_tenant(&cluster, &proxy, &map).await;
    proxy.stop().await;
}
