//! The compatibility report: a proxy with `[compat] shards = 10` in front of one database runs
//! every statement there unchanged (its answers are the database's own, even for a join it
//! would refuse over shards) and `SHOW COMPAT` lists what each normalized statement would do
//! over ten shards. `pgshard compat report`'s fetch reads the same rows.

mod common;

use common::answers::simple_rows as rows;
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::config::{AuthMethod, CompatConfig, UserConfig};
use pgshard::router::Strategy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_database_answers_and_the_report_judges_ten_shards() {
    let cluster = TestCluster::start(1, Strategy::Hash).await;
    let p = start_proxy_with(&cluster.info, |c| {
        c.compat = Some(CompatConfig {
            shards: 10,
            max_statements: 1000,
        });
        c.users.push(UserConfig {
            admin: true,
            ..UserConfig::new("admin", None, AuthMethod::Trust)
        });
    })
    .await;
    let via = proxy::connect(&p).await;
    let direct = proxy::shard(&cluster.info, cluster.info.shard_ids()[0]).await;
    via.batch_execute(
        "INSERT INTO users (user_id, name, email) VALUES (1, 'a', 'a@x'), (2, 'b', 'b@x'), (3, 'c', 'a@x')",
    )
    .await
    .expect("insert");
    // (statement, a piece of its normalized text, the route it would take over ten shards)
    let cases = [
        ("SELECT name FROM users WHERE user_id = 2", "SELECT name FROM users WHERE user_id = $1", "single"),
        ("SELECT count(*) FROM users", "SELECT count(*) FROM users", "scatter"),
        ("UPDATE users SET name = 'z' WHERE email = 'b@x'", "UPDATE users SET name = $1 WHERE email = $2", "scatter"),
        ("CREATE INDEX users_email_compat ON users (email)", "CREATE INDEX users_email_compat", "broadcast"),
        (
            "SELECT u.user_id, v.user_id FROM users u, users v WHERE u.email = v.email AND u.user_id < v.user_id ORDER BY 1, 2",
            "users u, users v",
            "refused",
        ),
    ];
    for (sql, _, _) in &cases {
        let through = rows(&via, sql).await;
        if sql.starts_with("SELECT") {
            assert_eq!(through, rows(&direct, sql).await, "{sql}");
        }
    }
    // A second call with another literal folds into the same statement.
    rows(&via, "SELECT name FROM users WHERE user_id = 3").await;
    // The extended protocol is judged by its Bind values.
    let got = via
        .query("SELECT name FROM users WHERE user_id = $1", &[&1i64])
        .await
        .expect("extended");
    assert_eq!(got.len(), 1);
    assert_eq!(
        rows(&via, "SELECT name FROM users ORDER BY user_id").await,
        rows(&direct, "SELECT name FROM users ORDER BY user_id").await
    );

    let admin_url = proxy::url(&p, "admin", "").replace("/app?", "/pgshard?");
    let admin = proxy::connect_url(&admin_url).await.expect("admin console");
    let report = rows(&admin, "SHOW COMPAT").await;
    let find = |needle: &str| {
        report
            .iter()
            .find(|r| r[1].as_deref().is_some_and(|s| s.contains(needle)))
            .unwrap_or_else(|| panic!("{needle} not in {report:#?}"))
            .clone()
    };
    for (sql, needle, route) in &cases {
        let row = find(needle);
        assert_eq!(row[2].as_deref(), Some(*route), "{sql}: {row:?}");
    }
    // Literals and Bind parameters fold into one fingerprint: two simple calls, one extended.
    let keyed = find("SELECT name FROM users WHERE user_id = $1");
    assert_eq!(keyed[3].as_deref(), Some("3"), "{keyed:?}");
    let refused = find("users u, users v");
    assert!(
        refused[7].as_deref().is_some_and(|m| m.contains("join")),
        "{refused:?}"
    );
    assert!(refused[8].is_some(), "a suggestion: {refused:?}");
    assert!(report.iter().all(|r| r[9].is_some()), "last_seen");

    let mut config = pgshard::config::Config::load(&cluster.info.config_path).expect("config");
    config.proxy.listen = p.addr.to_string();
    let text = pgshard::compat::report::fetch(&config, Some("admin"), None)
        .await
        .expect("compat report");
    assert!(text.starts_with("fingerprint"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("CREATE INDEX users_email_compat") && l.contains("| broadcast ")),
        "{text}"
    );
    p.stop().await;
}
