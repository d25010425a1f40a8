//! Text merges in a non-C collation: shards and one plain Postgres all created with the
//! en_US.UTF-8 locale, the same rows in both, ORDER BY / min / max / GROUP BY / HAVING on text
//! answered identically (both protocols). Columns declared with a collation of their own are
//! refused, in an en_US database and in a C one, also after DDL run on the shards directly.

mod common;

use common::answers::Raw;

use std::collections::HashMap;

use common::proxy::{self, connect, start_proxy_with};
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::Strategy;
use pgshard::sql_text::quote_literal;
use tokio_postgres::{Client, SimpleQueryMessage};

const LOCALE: &str = "en_US.UTF-8";

/// Strings whose en_US order differs from their byte order: case, accents, punctuation,
/// spaces, digits, ligatures, and code points glibc does not know (equal to strcoll, so
/// ordered by their bytes).
const NAMES: &[&str] = &[
    "apple",
    "Apple",
    "\u{c4}pfel",
    "a b",
    "ab",
    "a-b",
    "a_b",
    "Ab",
    "b",
    "B",
    "co-op",
    "coop",
    "Co-op",
    "co op",
    "r\u{e9}sum\u{e9}",
    "resume",
    "Resume",
    "stra\u{df}e",
    "strasse",
    "\u{e9}t\u{e9}",
    "ete",
    "\u{c9}t\u{e9}",
    "zebra",
    "Zebra",
    "10",
    "9",
    "!bang",
    " lead",
    "",
    "x\u{560}",
    "x\u{588}",
    "\u{153}uvre",
    "oeuvre",
    "\u{fb01}le",
    "file",
];

async fn simple(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
            }
            _ => None,
        })
        .collect())
}

async fn extended(c: &Client, sql: &str) -> Result<Vec<Vec<Raw>>, tokio_postgres::Error> {
    Ok(c.query(sql, &[])
        .await?
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
        .collect())
}

/// Runs `sql` through the proxy and on the plain Postgres in both protocols; the answers must
/// be identical row for row.
async fn same_answer(through: &Client, plain: &Client, sql: &str) {
    let want = simple(plain, sql).await.expect("plain answers");
    let got = simple(through, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: proxy failed: {e:?}"));
    assert_eq!(got, want, "simple protocol: {sql}");
    assert!(!want.is_empty(), "{sql} returns rows");
    let want = extended(plain, sql).await.expect("plain answers");
    let got = extended(through, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: proxy failed: {e:?}"));
    assert_eq!(got, want, "extended protocol: {sql}");
}

/// `sql` is refused with 0A000 in both protocols, the message containing `want`.
async fn refused(through: &Client, sql: &str, want: &str) {
    for extended in [false, true] {
        let e = if extended {
            through.query(sql, &[]).await.err()
        } else {
            through.simple_query(sql).await.err()
        };
        let e = e.unwrap_or_else(|| panic!("{sql} was not refused"));
        assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{sql}: {e:?}");
        let msg = e.as_db_error().map(|d| d.message().to_string());
        assert!(
            msg.as_deref().is_some_and(|m| m.contains(want)),
            "{sql}: {msg:?} does not name {want}"
        );
    }
}

fn sharded(name: &str) -> ShardedTableConfig {
    ShardedTableConfig {
        name: name.into(),
        key: "id".into(),
        key_type: None,
    }
}

/// `INSERT` value lists for `NAMES` repeated, some NULLs, keyed 1..; per shard and all.
fn rows(map: &pgshard::router::ShardMap) -> (HashMap<u32, Vec<String>>, Vec<String>) {
    let mut per_shard: HashMap<u32, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    for id in 1..=(NAMES.len() as i64 * 3) {
        let name = NAMES[(id as usize * 7) % NAMES.len()];
        let lit = if id % 11 == 0 {
            "NULL".to_string()
        } else {
            quote_literal(name)
        };
        let row = format!("({id}, {lit}, {lit}, {lit}, {lit}, {})", id % 4);
        per_shard
            .entry(map.shard_for(id))
            .or_default()
            .push(row.clone());
        all.push(row);
    }
    (per_shard, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_merges_in_en_us_equal_one_postgres() {
    let (cluster, single) = tokio::join!(
        TestCluster::start_with_locale(4, Strategy::Hash, LOCALE),
        TestCluster::start_with_locale(1, Strategy::Hash, LOCALE)
    );
    let proxy = start_proxy_with(&cluster.info, |c| c.sharded_tables.push(sharded("ctest"))).await;
    let create = "CREATE TABLE ctest (id bigint PRIMARY KEY, name text, v varchar(40), c char(12), code text COLLATE \"C\", g int)";
    let plain = proxy::shard(&single.info, single.info.shard_ids()[0]).await;
    plain.batch_execute(create).await.unwrap();
    let (per_shard, all) = rows(&proxy.proxy.map.current());
    for id in cluster.info.shard_ids() {
        let c = proxy::shard(&cluster.info, id).await;
        let collate: String = c
            .query_one(
                "SELECT datcollate::text FROM pg_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(collate, LOCALE);
        c.batch_execute(create).await.unwrap();
        if let Some(r) = per_shard.get(&id) {
            c.batch_execute(&format!("INSERT INTO ctest VALUES {}", r.join(", ")))
                .await
                .unwrap();
        }
    }
    assert!(per_shard.len() >= 3, "rows on most shards");
    plain
        .batch_execute(&format!("INSERT INTO ctest VALUES {}", all.join(", ")))
        .await
        .unwrap();
    // The test means something only if the C order differs.
    let en = simple(&plain, "SELECT name FROM ctest ORDER BY name, id")
        .await
        .unwrap();
    let c = simple(
        &plain,
        "SELECT name FROM ctest ORDER BY name COLLATE \"C\", id",
    )
    .await
    .unwrap();
    assert_ne!(en, c);

    let through = connect(&proxy).await;
    for sql in [
        "SELECT name, id FROM ctest ORDER BY name, id",
        "SELECT name, id FROM ctest ORDER BY name DESC, id DESC",
        "SELECT name, id FROM ctest ORDER BY name NULLS FIRST, id LIMIT 9 OFFSET 4",
        "SELECT id, v FROM ctest ORDER BY v DESC NULLS LAST, id",
        "SELECT c, id FROM ctest ORDER BY c, id",
        "SELECT lower(name) AS l, id FROM ctest ORDER BY l, id",
        "SELECT name || '!' AS e, id FROM ctest ORDER BY 1, 2 LIMIT 20",
        "SELECT min(name), max(name), min(v), max(v), min(c), max(c), count(*) FROM ctest",
        "SELECT g, min(name), max(name) FROM ctest GROUP BY g ORDER BY g",
        "SELECT name, count(*) FROM ctest GROUP BY name ORDER BY name",
        "SELECT DISTINCT name FROM ctest ORDER BY 1 DESC",
        "SELECT g, max(name) AS m FROM ctest GROUP BY g HAVING max(name) > 'resume' ORDER BY m, g",
        "SELECT g FROM ctest GROUP BY g HAVING min(name) < 'b' ORDER BY g",
        // jsonb strings and keys, and text array elements, in the database collation.
        "SELECT to_jsonb(name) AS j, id FROM ctest ORDER BY j, id",
        "SELECT jsonb_build_object(coalesce(name, '-'), g) AS j, id FROM ctest ORDER BY j DESC, id",
        "SELECT ARRAY[name, v] AS a, id FROM ctest ORDER BY a NULLS FIRST, id",
        "SELECT max(ARRAY[name]), min(ARRAY[v]) FROM ctest",
        // The C-collated column is fine where nothing compares it.
        "SELECT code, id FROM ctest ORDER BY id",
    ] {
        same_answer(&through, &plain, sql).await;
    }
    // Its text sorts in "C" on the shards: never merged in the database's order.
    for sql in [
        "SELECT code FROM ctest ORDER BY code",
        "SELECT min(code) FROM ctest",
        "SELECT code AS k, id FROM ctest ORDER BY k, id",
        "SELECT g, max(code) FROM ctest GROUP BY g",
        "SELECT g, count(*) FROM ctest GROUP BY g HAVING min(code) > 'a'",
        "SELECT upper(code) AS u FROM ctest ORDER BY u",
        "SELECT name::name AS n FROM ctest ORDER BY n",
        "SELECT ARRAY[code] AS a FROM ctest ORDER BY a",
    ] {
        let want = if sql.contains("::name") {
            "type name"
        } else {
            "public.ctest.code (COLLATE \"C\")"
        };
        refused(&through, sql, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_with_their_own_collation_are_refused_in_a_c_database() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| c.sharded_tables.push(sharded("ccoll"))).await;
    for id in cluster.info.shard_ids() {
        let c = proxy::shard(&cluster.info, id).await;
        c.batch_execute(
            "CREATE COLLATION IF NOT EXISTS ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE DOMAIN en_text AS text COLLATE \"en_US\";
             CREATE TABLE ccoll (id bigint PRIMARY KEY, name text, nick text COLLATE \"en_US\", email text COLLATE ci);
             INSERT INTO ccoll SELECT i, 'n' || i, CASE WHEN i % 2 = 0 THEN 'B' ELSE 'a' END, 'E' || (i % 3)
               FROM generate_series(1, 20) i;
             -- The proxy's clients run as `app`, which changes the table below.
             ALTER TABLE ccoll OWNER TO app",
        )
        .await
        .unwrap();
    }
    let through = connect(&proxy).await;
    let names = simple(&through, "SELECT name FROM ccoll ORDER BY name LIMIT 3")
        .await
        .unwrap();
    assert_eq!(names.len(), 3);
    let mins = simple(&through, "SELECT min(name), max(name) FROM ccoll")
        .await
        .unwrap();
    assert_eq!(mins, vec![vec![Some("n1".into()), Some("n9".into())]]);
    // A deterministic collation groups by byte equality: fine.
    let groups = simple(&through, "SELECT nick, count(*) FROM ccoll GROUP BY nick")
        .await
        .unwrap();
    assert_eq!(groups.len(), 2);
    refused(
        &through,
        "SELECT nick FROM ccoll ORDER BY nick",
        "public.ccoll.nick (COLLATE \"en_US\")",
    )
    .await;
    refused(&through, "SELECT max(nick) FROM ccoll", "ccoll.nick").await;
    refused(
        &through,
        "SELECT email, count(*) FROM ccoll GROUP BY email",
        "ccoll.email (COLLATE \"ci\" (ICU))",
    )
    .await;
    refused(
        &through,
        "SELECT DISTINCT email FROM ccoll",
        "nondeterministic",
    )
    .await;
    refused(
        &through,
        "SELECT name::en_text AS n FROM ccoll ORDER BY n",
        "domain public.en_text (COLLATE \"en_US\")",
    )
    .await;

    // count(DISTINCT …) is finished over the shards' distinct values in the default collation:
    // for text in the nondeterministic ci ('e0' = 'E0') that would count too many.
    through
        .batch_execute("INSERT INTO ccoll (id, name, nick, email) VALUES (101, 'n101', 'a', 'e0')")
        .await
        .unwrap();
    let same = simple(
        &through,
        "SELECT count(*) FROM ccoll WHERE id = 101 AND email = 'E0'",
    )
    .await
    .unwrap();
    assert_eq!(same, vec![vec![Some("1".into())]], "'e0' = 'E0' in ci");
    for (sql, want) in [
        (
            "SELECT count(DISTINCT email) FROM ccoll",
            "public.ccoll.email",
        ),
        (
            "SELECT count(DISTINCT lower(email)) FROM ccoll",
            "public.ccoll.email",
        ),
        (
            "SELECT nick, count(DISTINCT email) FROM ccoll GROUP BY nick",
            "public.ccoll.email",
        ),
        (
            "SELECT count(DISTINCT name COLLATE ci) FROM ccoll",
            "COLLATE \"ci\"",
        ),
        (
            "SELECT count(DISTINCT upper(name) COLLATE ci) + 1 FROM ccoll",
            "COLLATE \"ci\"",
        ),
    ] {
        refused(
            &through,
            sql,
            "count(DISTINCT …) over several shards with the nondeterministic collation ci",
        )
        .await;
        refused(&through, sql, want).await;
    }
    // Other types, deterministic collations and an explicit deterministic COLLATE are exact.
    for (sql, want) in [
        ("SELECT count(DISTINCT name) FROM ccoll", "21"),
        ("SELECT count(DISTINCT lower(nick)) FROM ccoll", "2"),
        ("SELECT count(DISTINCT id % 7) FROM ccoll", "7"),
        ("SELECT count(DISTINCT length(email)) FROM ccoll", "1"),
        ("SELECT count(DISTINCT email COLLATE \"C\") FROM ccoll", "4"),
        (
            "SELECT count(DISTINCT upper(email) COLLATE \"C\") FROM ccoll",
            "3",
        ),
        ("SELECT sum(DISTINCT id % 5) FROM ccoll", "10"),
    ] {
        let got = simple(&through, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(got, vec![vec![Some(want.to_string())]], "{sql}");
    }

    // DDL through the proxy takes effect at once: nick sorts in "C" now, as the merge does.
    through
        .batch_execute("ALTER TABLE ccoll ALTER COLUMN nick TYPE text COLLATE \"C\"")
        .await
        .unwrap();
    let max = simple(&through, "SELECT max(nick) FROM ccoll")
        .await
        .unwrap();
    assert_eq!(max, vec![vec![Some("a".into())]]);

    // DDL run on the shards directly: once the proxy reads the catalog again, it refuses.
    for id in cluster.info.shard_ids() {
        let c = proxy::shard(&cluster.info, id).await;
        c.batch_execute("ALTER TABLE ccoll ALTER COLUMN name TYPE text COLLATE \"en_US\"")
            .await
            .unwrap();
    }
    pgshard::exec::collation::forget();
    refused(&through, "SELECT min(name) FROM ccoll", "ccoll.name").await;
}
