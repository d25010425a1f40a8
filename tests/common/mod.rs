//! Test harness: a throw-away local cluster in a temp dir, stopped when dropped.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;

use pgshard::cluster::{self, ClusterInfo, ClusterSpec};
use pgshard::router::Strategy;

/// A running cluster that lives as long as this value: dropping it stops every instance at once
/// (immediate shutdown) and then deletes its directory.
pub struct TestCluster {
    pub info: ClusterInfo,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Brings up `shards` shards plus a catalog on free loopback ports, in a new dir under /tmp
    /// (short enough for unix socket paths, reachable by the `postgres` OS user when run as root).
    pub async fn start(shards: u32, strategy: Strategy) -> TestCluster {
        TestCluster::start_with(|spec| {
            spec.shards = shards;
            spec.strategy = strategy;
        })
        .await
    }

    /// Like `start`, with every database created in `locale` (initdb `--locale`).
    pub async fn start_with_locale(shards: u32, strategy: Strategy, locale: &str) -> TestCluster {
        TestCluster::start_with(|spec| {
            spec.shards = shards;
            spec.strategy = strategy;
            spec.locale = locale.into();
        })
        .await
    }

    /// Like [`TestCluster::start`], with the spec shaped by `change` (replicas, apply delay,
    /// quorum commit, …). Before `change` runs the spec asks for two hash shards, no replicas.
    pub async fn start_with(change: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("pgshard-test-")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temp dir");
        let mut spec = ClusterSpec::new(dir.path());
        spec.shards = 2;
        spec.listen = "127.0.0.1:0".into();
        change(&mut spec);
        let info = match cluster::up(&spec).await {
            Ok(info) => info,
            Err(e) => {
                if let Ok(info) = ClusterInfo::load(dir.path()) {
                    cluster::stop_now(&info);
                }
                panic!("cluster up failed: {e}");
            }
        };
        let cluster = TestCluster { info, _dir: dir };
        cluster.share_direct_tables().await;
        cluster
    }

    /// Tests create tables on the shards directly, as the superuser `pgshard`, and use them through
    /// the proxy, where they run as the application role `app`: whatever `pgshard` creates in
    /// `public` from now on is usable (not owned) by `app`.
    async fn share_direct_tables(&self) {
        for id in self.info.shard_ids() {
            let c = self.connect(&format!("shard{id}")).await;
            c.batch_execute(
                "ALTER DEFAULT PRIVILEGES FOR ROLE pgshard IN SCHEMA public \
                     GRANT ALL ON TABLES TO app; \
                 ALTER DEFAULT PRIVILEGES FOR ROLE pgshard IN SCHEMA public \
                     GRANT ALL ON SEQUENCES TO app",
            )
            .await
            .unwrap_or_else(|e| panic!("default privileges on shard {id}: {e}"));
        }
    }

    /// A direct connection (admin user) to any instance of the cluster, replicas included.
    pub async fn connect(&self, name: &str) -> tokio_postgres::Client {
        let url = self
            .info
            .instance_url(name)
            .unwrap_or_else(|| panic!("no instance {name}"));
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {name}: {e}"));
        tokio::spawn(conn);
        client
    }
}

/// Waits (up to 10 s) until the server `direct` is connected to runs a statement starting with
/// `sql`: a cancel sent before that would find nothing to cancel.
pub async fn wait_until_active(direct: &tokio_postgres::Client, sql: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pattern = format!("{sql}%");
    loop {
        let running: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                &[&pattern],
            )
            .await
            .expect("read pg_stat_activity")
            .get(0);
        if running == 1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{sql}` never started on the server"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Every instance the cluster has by now: `cluster add-shard` may have added some since
        // the start, and only the directory's description (cluster.json) knows them.
        let now = ClusterInfo::load(&self.info.dir);
        cluster::stop_now(now.as_ref().unwrap_or(&self.info));
    }
}
pub mod answers;
pub mod jobs;
pub mod params;
pub mod placement;
pub mod plain;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod relay;
pub mod script;
