//! uuid- and text-keyed tables under the hash strategy, one cluster for the binary: 10,000 keys
//! per table inserted through pgshard (simple protocol, extended protocol with binary and text
//! parameters, pipelines, UNNEST, COPY in text, CSV and binary) land on exactly the shards the
//! shards' own SQL twin (`uuid_hash_extended`/`hashtextextended` in `sql_owned_by`) names; keyed
//! reads by `=`, `IN` and `= ANY($1)` return exactly their rows; `pgshard verify` agrees; and a
//! start-up with a range map, or a config contradicting the catalog, is refused clearly.

mod common;

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use common::params::TextParam;
use common::placement::owned_rows;
use common::proxy::{self, connect};
use common::TestCluster;
use futures_util::{future::try_join_all, pin_mut, SinkExt};
use pgshard::config::{AuthMethod, Config, ShardedTableConfig, UserConfig};
use pgshard::router::{KeyType, ShardKey, ShardMap, Strategy};
use pgshard::sql_text::quote_literal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;

const KEYS: usize = 10_000;

type SqlResult = Result<IsNull, Box<dyn std::error::Error + Sync + Send>>;

/// A key in binary format: 16 uuid bytes, or the UTF-8 bytes of a text key.
#[derive(Debug, Clone)]
struct KeyBin(ShardKey);

impl ToSql for KeyBin {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> SqlResult {
        match &self.0 {
            ShardKey::Uuid(u) => out.put_slice(u),
            ShardKey::Text(t) => out.put_slice(t.as_bytes()),
            ShardKey::Int(i) => out.put_i64(*i),
        }
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::UUID | Type::TEXT | Type::VARCHAR)
    }
    to_sql_checked!();
}

/// splitmix64: reproducible pseudo-random bits for the keys.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One keyed table and its keys.
struct Case {
    table: &'static str,
    key: &'static str,
    key_type: KeyType,
    keys: Vec<ShardKey>,
}

impl Case {
    fn uuid() -> Case {
        let mut s = 42u64;
        let keys = (0..KEYS)
            .map(|_| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&splitmix(&mut s).to_be_bytes());
                b[8..].copy_from_slice(&splitmix(&mut s).to_be_bytes());
                ShardKey::Uuid(b)
            })
            .collect();
        Case {
            table: "kt_uuid",
            key: "id",
            key_type: KeyType::Uuid,
            keys,
        }
    }

    fn text() -> Case {
        let tails = [
            "",
            " Grüße",
            " O'Brien",
            " a,b",
            " \"quoted\"",
            " 日本",
            "  ",
        ];
        let keys = (0..KEYS)
            .map(|i| ShardKey::Text(format!("tenant-{i}{}", tails[i % tails.len()])))
            .collect();
        Case {
            table: "kt_text",
            key: "name",
            key_type: KeyType::Text,
            keys,
        }
    }

    /// The key as text, in one of the spellings Postgres accepts (uuid: case, braces, hyphens).
    fn spelled(&self, i: usize) -> String {
        match &self.keys[i] {
            ShardKey::Uuid(u) => {
                let h = hex(u);
                let hyph = format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                );
                match i % 4 {
                    0 => hyph,
                    1 => hyph.to_uppercase(),
                    2 => format!("{{{hyph}}}"),
                    _ => h,
                }
            }
            ShardKey::Text(t) => t.clone(),
            ShardKey::Int(k) => k.to_string(),
        }
    }

    /// An SQL literal of key `i` (cast or not).
    fn literal(&self, i: usize) -> String {
        let q = quote_literal(&self.spelled(i));
        match (self.key_type, i % 2) {
            (KeyType::Uuid, 0) => format!("{q}::uuid"),
            _ => q,
        }
    }

    fn bin(&self, i: usize) -> KeyBin {
        KeyBin(self.keys[i].clone())
    }

    fn create(&self) -> String {
        let ty = match self.key_type {
            KeyType::Uuid => "uuid",
            _ => "varchar(80)",
        };
        format!(
            "CREATE TABLE {} ({} {ty} PRIMARY KEY, n int NOT NULL, src text NOT NULL)",
            self.table, self.key
        )
    }

    fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO {} ({}, n, src) VALUES ($1, $2, $3)",
            self.table, self.key
        )
    }
}

/// A Postgres array in text format with every element quoted.
fn text_array(elems: &[String]) -> String {
    let quoted: Vec<String> = elems
        .iter()
        .map(|e| format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

async fn copy_in(c: &Client, sql: &str, data: Vec<u8>) -> u64 {
    let sink = c
        .copy_in::<_, Bytes>(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    pin_mut!(sink);
    // Pieces that split rows, so the proxy must join them.
    for piece in data.chunks(1000) {
        sink.send(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    sink.finish()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// Inserts all keys of `case` through the proxy, a range of them per entry point.
async fn insert_everywhere(c: &Client, case: &Case) {
    let (t, k) = (case.table, case.key);
    // Simple protocol: multi-row INSERTs split between shards, 100 rows each.
    for chunk in (0..4000).collect::<Vec<_>>().chunks(100) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| format!("({}, {i}, 'simple')", case.literal(i)))
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO {t} ({k}, n, src) VALUES {}",
            rows.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("{t}: simple insert: {e:?}"));
    }
    // Extended protocol, binary key parameters, pipelined 50 at a time.
    let stmt = c.prepare(&case.insert_sql()).await.unwrap();
    for chunk in (4000..6000).collect::<Vec<_>>().chunks(50) {
        let keys: Vec<KeyBin> = chunk.iter().map(|&i| case.bin(i)).collect();
        let ns: Vec<i32> = chunk.iter().map(|&i| i as i32).collect();
        let params: Vec<[&(dyn ToSql + Sync); 3]> = keys
            .iter()
            .zip(&ns)
            .map(|(key, n)| [key as &(dyn ToSql + Sync), n, &"binary"])
            .collect();
        try_join_all(params.iter().map(|p| c.execute(&stmt, p)))
            .await
            .unwrap_or_else(|e| panic!("{t}: binary parameters: {e:?}"));
    }
    // Extended protocol, text-format parameters.
    for i in 6000..7800 {
        c.execute(
            &stmt,
            &[
                &TextParam(case.spelled(i)),
                &TextParam(i.to_string()),
                &"text",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: text parameters: {e:?}"));
    }
    // UNNEST of binary arrays, split per shard.
    let ty = match case.key_type {
        KeyType::Uuid => "uuid",
        _ => "text",
    };
    let keys: Vec<KeyBin> = (7800..8000).map(|i| case.bin(i)).collect();
    let ns: Vec<i32> = (7800..8000).collect();
    let srcs: Vec<&str> = vec!["unnest"; 200];
    let n = c
        .execute(
            &format!(
                "INSERT INTO {t} ({k}, n, src) SELECT * FROM UNNEST($1::{ty}[], $2::int4[], $3::text[])"
            ),
            &[&keys, &ns, &srcs],
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: UNNEST: {e:?}"));
    assert_eq!(n, 200);
    // COPY in text, CSV and binary.
    let text: Vec<u8> = (8000..8700)
        .flat_map(|i| format!("{}\t{i}\tcopy-text\n", case.spelled(i)).into_bytes())
        .collect();
    let n = copy_in(c, &format!("COPY {t} ({k}, n, src) FROM STDIN"), text).await;
    assert_eq!(n, 700);
    let csv: Vec<u8> = (8700..9400)
        .flat_map(|i| {
            let key = case.spelled(i).replace('"', "\"\"");
            format!("\"{key}\",{i},copy-csv\n").into_bytes()
        })
        .collect();
    let n = copy_in(
        c,
        &format!("COPY {t} ({k}, n, src) FROM STDIN (FORMAT csv)"),
        csv,
    )
    .await;
    assert_eq!(n, 700);
    let sink = c
        .copy_in(&format!(
            "COPY {t} ({k}, n, src) FROM STDIN (FORMAT binary)"
        ))
        .await
        .unwrap();
    let key_ty = match case.key_type {
        KeyType::Uuid => Type::UUID,
        _ => Type::VARCHAR,
    };
    let writer = BinaryCopyInWriter::new(sink, &[key_ty, Type::INT4, Type::TEXT]);
    pin_mut!(writer);
    for i in 9400..KEYS {
        writer
            .as_mut()
            .write(&[&case.bin(i), &(i as i32), &"copy-binary"])
            .await
            .unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 600);
}

/// Every shard holds exactly the rows `sql_owned_by` gives it, and the proxy's hash agrees key by
/// key; returns the rows per shard.
async fn check_placement(cluster: &TestCluster, map: &ShardMap, case: &Case) -> Vec<i64> {
    let mut counts = Vec::new();
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let all = owned_rows(&direct, map, case.table, (case.key, case.key_type), id).await;
        for row in direct
            .query(
                &format!("SELECT {}::text FROM {}", case.key, case.table),
                &[],
            )
            .await
            .unwrap()
        {
            let text: String = row.get(0);
            let key = case.key_type.parse_text(&text).expect("a key");
            assert_eq!(map.shard_of(&key), id, "{}: {text}", case.table);
        }
        counts.push(all);
    }
    counts
}

/// The `n` of the rows a query returns, sorted.
fn ns(rows: &[tokio_postgres::Row]) -> Vec<i32> {
    let mut v: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    v.sort_unstable();
    v
}

fn simple_ns(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<i32> {
    let mut v: Vec<i32> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|s| s.parse().ok()),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v
}

/// Reads by `=`, `IN` and `= ANY($1)` in both protocols return exactly the keyed rows.
async fn keyed_reads(c: &Client, case: &Case) {
    let (t, k) = (case.table, case.key);
    let sample: Vec<usize> = vec![
        0, 1, 2, 3, 17, 999, 4001, 5555, 6002, 7799, 7800, 8001, 8765, 9401, 9999,
    ];
    for &i in &sample {
        let want = vec![i as i32];
        let got = c
            .simple_query(&format!(
                "SELECT n FROM {t} WHERE {k} = {}",
                case.literal(i)
            ))
            .await
            .unwrap();
        assert_eq!(simple_ns(&got), want, "{t}: simple = key {i}");
        let sql = format!("SELECT n FROM {t} WHERE {k} = $1");
        let got = c.query(&sql, &[&case.bin(i)]).await.unwrap();
        assert_eq!(ns(&got), want, "{t}: binary = key {i}");
        let got = c.query(&sql, &[&TextParam(case.spelled(i))]).await.unwrap();
        assert_eq!(ns(&got), want, "{t}: text = key {i}");
    }
    let want: Vec<i32> = sample.iter().map(|&i| i as i32).collect();
    let list: Vec<String> = sample.iter().map(|&i| case.literal(i)).collect();
    let got = c
        .simple_query(&format!(
            "SELECT n FROM {t} WHERE {k} IN ({})",
            list.join(", ")
        ))
        .await
        .unwrap();
    assert_eq!(simple_ns(&got), want, "{t}: simple IN");
    let sql = format!("SELECT n FROM {t} WHERE {k} = ANY($1)");
    let bins: Vec<KeyBin> = sample.iter().map(|&i| case.bin(i)).collect();
    let got = c.query(&sql, &[&bins]).await.unwrap();
    assert_eq!(ns(&got), want, "{t}: = ANY(binary array)");
    let spelled: Vec<String> = sample.iter().map(|&i| case.spelled(i)).collect();
    let got = c
        .query(&sql, &[&TextParam(text_array(&spelled))])
        .await
        .unwrap();
    assert_eq!(ns(&got), want, "{t}: = ANY(text array)");
    // Inside a block too, and a keyed UPDATE reaches its row.
    c.batch_execute("BEGIN").await.unwrap();
    let n = c
        .execute(
            &format!("UPDATE {t} SET src = 'updated' WHERE {k} = $1"),
            &[&case.bin(4242)],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "{t}: keyed update");
    c.batch_execute("COMMIT").await.unwrap();
    let got = c
        .query(&format!("SELECT n FROM {t} WHERE src = 'updated'"), &[])
        .await
        .unwrap();
    assert_eq!(
        ns(&got),
        vec![4242],
        "{t}: the update reached the keyed row only"
    );
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A function that takes the key is routed by a leading `/* pgshard: … */` comment, in both
/// protocols; a hint contradicting the statement's key, or naming no shard, is refused.
async fn routing_hints(cluster: &TestCluster, c: &Client, map: &ShardMap, case: &Case) {
    for id in cluster.info.shard_ids() {
        proxy::shard(&cluster.info, id)
            .await
            .batch_execute(
                "CREATE FUNCTION kt_n(k uuid) RETURNS int LANGUAGE sql STABLE \
                 AS 'SELECT n FROM kt_uuid WHERE id = k'; \
                 GRANT EXECUTE ON FUNCTION kt_n(uuid) TO app",
            )
            .await
            .unwrap();
    }
    for i in [5usize, 6, 7, 4444, 9998] {
        let key = case.spelled(i);
        let owner = map.shard_of(&case.keys[i]);
        let want = Some(i as i32);
        // The tables have keys of different types: the hint names its key's type.
        let hinted = format!(
            "/* pgshard: key='{key}'::uuid */ SELECT kt_n({})",
            case.literal(i)
        );
        let got = c.simple_query(&hinted).await.unwrap();
        assert_eq!(simple_ns(&got).first().copied(), want, "{hinted}");
        let got = c
            .query_one(
                "/* pgshard: key={key}::uuid */ SELECT kt_n($1)"
                    .replace("{key}", &key)
                    .as_str(),
                &[&case.bin(i)],
            )
            .await
            .unwrap();
        assert_eq!(got.get::<_, Option<i32>>(0), want, "extended key hint {i}");
        let sql = format!("/* pgshard: shard={owner} */ SELECT kt_n($1)");
        let got = c.query_one(&sql, &[&case.bin(i)]).await.unwrap();
        assert_eq!(got.get::<_, Option<i32>>(0), want, "{sql}");
        // On any other shard the function finds nothing: the hint really routes.
        for other in cluster.info.shard_ids().into_iter().filter(|&s| s != owner) {
            let sql = format!("/* pgshard: shard={other} */ SELECT kt_n($1)");
            let got = c.query_one(&sql, &[&case.bin(i)]).await.unwrap();
            assert_eq!(got.get::<_, Option<i32>>(0), None, "{sql}");
            // A hint that contradicts the key the statement names is refused (a bad hint).
            let sql = format!("/* pgshard: shard={other} */ SELECT n FROM kt_uuid WHERE id = $1");
            let e = c.query(&sql, &[&case.bin(i)]).await.expect_err(&sql);
            assert_eq!(sqlstate(&e), "22023", "{sql}: {e:?}");
        }
    }
    for sql in [
        "/* pgshard: shard=99 */ SELECT 1",
        "/* pgshard: shard=one */ SELECT 1",
        "/* pgshard: key=not-a-uuid::uuid */ SELECT 1",
        "/* pgshard: key=ambiguous */ SELECT 1",
    ] {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "22023", "{sql}: {e:?}");
        let e = c.query(sql, &[]).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "22023", "{sql}: {e:?}");
    }
}

/// A user with `allow_scatter = false` runs keyed statements and is refused every statement that
/// would reach more than one shard, in both protocols and inside a block.
async fn never_scatter(proxy: &pgshard::server::RunningProxy, map: &ShardMap, case: &Case) {
    let c = proxy::connect_url(&proxy::url(proxy, "keyed", "any"))
        .await
        .expect("connect as keyed");
    let (t, k) = (case.table, case.key);
    // Keyed statements run.
    let got = c
        .simple_query(&format!(
            "SELECT n FROM {t} WHERE {k} = {}",
            case.literal(3)
        ))
        .await
        .unwrap();
    assert_eq!(simple_ns(&got), vec![3]);
    let got = c
        .query(
            &format!("SELECT n FROM {t} WHERE {k} = $1"),
            &[&case.bin(3)],
        )
        .await
        .unwrap();
    assert_eq!(ns(&got), vec![3]);
    // Two keys on different shards.
    let a = 0;
    let b = (1..KEYS)
        .find(|&i| map.shard_of(&case.keys[i]) != map.shard_of(&case.keys[a]))
        .unwrap();
    let refused = |e: tokio_postgres::Error, sql: &str, want: &str| {
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e:?}");
        let m = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            m.contains("allow_scatter = false") && m.contains(want),
            "{sql}: {m}"
        );
    };
    for sql in [
        format!("SELECT count(*) FROM {t}"),
        format!("UPDATE {t} SET src = src WHERE n = 1"),
    ] {
        let e = c.simple_query(&sql).await.expect_err(&sql);
        refused(e, &sql, &format!("{t}.{k}"));
        let e = c.query(&sql, &[]).await.expect_err(&sql);
        refused(e, &sql, &format!("{t}.{k}"));
    }
    let sql = format!("SELECT n FROM {t} WHERE {k} = ANY($1)");
    let e = c
        .query(&sql, &[&vec![case.bin(a), case.bin(b)]])
        .await
        .expect_err(&sql);
    refused(e, &sql, "lie on 2 shards");
    // Refused before it runs: that the keys exist already does not matter.
    let sql = format!(
        "INSERT INTO {t} ({k}, n, src) VALUES ({}, -1, 'x'), ({}, -2, 'x')",
        case.literal(a),
        case.literal(b)
    );
    let e = c.simple_query(&sql).await.expect_err(&sql);
    refused(e, &sql, "rows belong to");
    // Inside a block: the refusal fails the block as any error does, and nothing was written.
    c.batch_execute("BEGIN").await.unwrap();
    let sql = format!("DELETE FROM {t} WHERE src = 'copy-csv'");
    let e = c.query(&sql, &[]).await.expect_err(&sql);
    refused(e, &sql, &format!("{t}.{k}"));
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = proxy::connect(proxy)
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, KEYS as i64, "nothing refused was written");
}

/// A sharded table the proxy did not find at start-up, created through it with a text key: once
/// the CREATE TABLE ran, its key type is read from the shards, so its rows go where Postgres
/// hashes their keys and keyed reads find them (before, the text key was taken as an integer
/// and every INSERT refused).
async fn table_created_after_start_up(cluster: &TestCluster, c: &Client, map: &ShardMap) {
    c.batch_execute("CREATE TABLE kt_late (code text PRIMARY KEY, n int NOT NULL)")
        .await
        .expect("create a sharded table through the proxy");
    let insert = c
        .prepare("INSERT INTO kt_late (code, n) VALUES ($1, $2)")
        .await
        .expect("prepare insert");
    for n in 0..60i32 {
        c.execute(&insert, &[&format!("late-{n}"), &n])
            .await
            .expect("insert with a text key");
    }
    for n in [0i32, 17, 59] {
        let row = c
            .query_one(
                "SELECT n FROM kt_late WHERE code = $1",
                &[&format!("late-{n}")],
            )
            .await
            .expect("keyed read");
        assert_eq!(row.get::<_, i32>(0), n);
    }
    let mut placed = 0;
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        for row in direct.query("SELECT code FROM kt_late", &[]).await.unwrap() {
            let code: String = row.get(0);
            let key = KeyType::Text.parse_text(&code).expect("a text key");
            assert_eq!(map.shard_of(&key), id, "kt_late: {code}");
            placed += 1;
        }
    }
    assert_eq!(placed, 60);
}

fn config_with(cluster: &TestCluster, tables: &[(&str, &str, Option<KeyType>)]) -> Config {
    let mut config = Config::load(&cluster.info.config_path).expect("the cluster's config");
    config.proxy.listen = "127.0.0.1:0".into();
    for &(name, key, key_type) in tables {
        config.sharded_tables.push(ShardedTableConfig {
            name: name.into(),
            key: key.into(),
            key_type,
        });
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_and_text_keys_are_placed_as_postgres_hashes_them() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let cases = [Case::uuid(), Case::text()];
    // The tables exist before the proxy starts: it reads their key types from the shards.
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        for case in &cases {
            direct.batch_execute(&case.create()).await.unwrap();
        }
    }
    let proxy = proxy::start_proxy_with(&cluster.info, |config| {
        let mut keyed = proxy::as_app(UserConfig::new("keyed", None, AuthMethod::Trust));
        keyed.allow_scatter = false;
        config.users.push(keyed);
        for case in &cases {
            config.sharded_tables.push(ShardedTableConfig {
                name: case.table.into(),
                key: case.key.into(),
                key_type: None,
            });
        }
        // Created through the proxy after it starts, with no key_type in the config.
        config.sharded_tables.push(ShardedTableConfig {
            name: "kt_late".into(),
            key: "code".into(),
            key_type: None,
        });
    })
    .await;
    let c = connect(&proxy).await;
    let catalog = proxy::catalog(&cluster.info).await;
    let map = pgshard::catalog::load_map(&catalog)
        .await
        .unwrap()
        .expect("a map");
    for case in &cases {
        insert_everywhere(&c, case).await;
        let counts = check_placement(&cluster, &map, case).await;
        assert_eq!(
            counts.iter().sum::<i64>(),
            KEYS as i64,
            "{}: {counts:?}",
            case.table
        );
        assert!(
            counts.iter().all(|&n| n > 2000),
            "{}: {counts:?}",
            case.table
        );
        keyed_reads(&c, case).await;
        // Every n exactly once, through the proxy.
        let distinct: i64 = c
            .query_one(
                &format!("SELECT count(DISTINCT n) FROM {}", case.table),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(distinct, KEYS as i64);
        // A key of the wrong type is Postgres's error, as without pgshard.
        let err = c
            .query(
                &format!("SELECT n FROM {} WHERE {} = $1", case.table, case.key),
                &[&TextParam("not a uuid".into())],
            )
            .await;
        if case.key_type == KeyType::Uuid {
            let e = err.expect_err("bad uuid input");
            assert_eq!(e.code().map(|c| c.code()), Some("22P02"), "{e:?}");
        }
    }
    routing_hints(&cluster, &c, &map, &cases[0]).await;
    never_scatter(&proxy, &map, &cases[1]).await;
    table_created_after_start_up(&cluster, &c, &map).await;
    // `pgshard verify` reads the key types from the shards and finds every row in place.
    let tables: Vec<(&str, &str, Option<KeyType>)> =
        cases.iter().map(|c| (c.table, c.key, None)).collect();
    let report = pgshard::rebalance::verify::verify(&config_with(&cluster, &tables), &map)
        .await
        .expect("verify runs");
    assert!(report.clean(), "{:?}", report.misplaced);
    let counted: BTreeSet<&str> = report.counted.iter().map(|(_, t, _)| t.as_str()).collect();
    assert!(
        counted.contains("kt_uuid") && counted.contains("kt_text"),
        "{counted:?}"
    );

    // A config whose key type contradicts the shards' catalog is refused at start-up.
    let wrong = config_with(&cluster, &[("kt_uuid", "id", Some(KeyType::Text))]);
    let e = pgshard::server::start(wrong)
        .await
        .err()
        .expect("a contradicting key_type is refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("config says key_type = \"text\" but the shards' column is uuid"),
        "{msg}"
    );
    // A range map cannot place uuid keys: start-up refuses it, naming the table.
    let mut catalog = proxy::catalog(&cluster.info).await;
    let range = ShardMap::uniform(0, Strategy::Range, &cluster.info.shard_ids());
    pgshard::catalog::publish_map(&mut catalog, &range)
        .await
        .unwrap();
    let e = pgshard::server::start(config_with(&cluster, &tables))
        .await
        .err()
        .expect("a range map over uuid keys is refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("sharded table kt_uuid (key column id): uuid keys can be placed only by the hash strategy, but the shard map uses range"),
        "{msg}"
    );
}
