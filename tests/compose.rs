//! docker-compose.yml end to end, on a Docker engine that cannot pull images: scripts/build-images.sh
//! builds stand-ins for the official images from Debian's packages (and pgshard's image from the
//! repo's Dockerfile with the binary cargo just built), then the very same compose file runs with the
//! image names overridden. Ten shards, each with a streaming replica, a catalog, pgshard and
//! Prometheus come up; psql and a short pgbench go through the proxy (as the role `app`, which
//! Postgres itself keeps off the shards' hosts: 42501); one shard's container stops
//! (only its keys fail), comes back (its keys work again, its rows intact). Then the cluster grows
//! online from ten shards to eleven and then twelve, under one pgbench through one proxy and a
//! second client on the other, both running through both steps: `shard10`, then `shard11` (profile
//! `scale-out`) starts, is registered with `pgshard shard add`, `REBALANCE add-shard N` moves keys
//! onto it, and after each step no row is lost or doubled, `pgshard verify` passes, no client
//! failed or reconnected and both proxies route with the new map. Everything is torn down.
//! One compose project per test binary (bringing it up is most of the time), so both stories are
//! phases of one test.
//!
//! Docker is required: without a usable engine this test fails, saying so. It uses
//! `docker compose` when that works, else Debian's `docker-compose`; PGSHARD_COMPOSE overrides
//! (e.g. `PGSHARD_COMPOSE=docker-compose`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgshard::router::{ShardMap, Strategy};

const SHARDS: u32 = 10;
/// The shard whose container the test stops.
const VICTIM: u32 = 3;
const PROJECT_PREFIX: &str = "pgshard-test-";
/// pgbench clients, and transactions each.
const BENCH_CLIENTS: u32 = 4;
const BENCH_TRANSACTIONS: u32 = 250;
/// The shards the scale-out phase adds, one after the other (services of the profile `scale-out`).
const NEW_SHARDS: [u32; 2] = [10, 11];
const SCALE_PROFILE: &str = "scale-out";
/// Rows the scale-out phase loads before growing: keys SEED_BASE + 1 ..= SEED_BASE + SEED_ROWS.
const SEED_BASE: i64 = 200_000_000;
const SEED_ROWS: i64 = 20_000;
/// The pgbench running through the scale-out: bounded in time (`-T`, an upper bound: the test stops
/// it once the story is checked, as pgbench has no graceful early end) and in transactions (`-R`,
/// at most rate × seconds); `-P 1` reports every second, failed transactions included.
const GROW_BENCH_SECONDS: u32 = 900;
const GROW_BENCH_RATE: u32 = 40;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command to completion, capturing its output.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Fails the test with a clear message unless a Docker engine answers.
fn require_docker() {
    let out = Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "tests/compose.rs needs a running Docker engine, and `docker info` failed:\n{}",
            text(&o.stderr)
        ),
        Err(e) => panic!(
            "tests/compose.rs needs Docker, and the `docker` command cannot run ({e}); \
             scripts/install-deps.sh installs the compose tooling"
        ),
    }
}

/// The compose command: PGSHARD_COMPOSE, else `docker compose` (v2), else `docker-compose` (v1).
fn compose_program() -> Vec<String> {
    if let Ok(custom) = std::env::var("PGSHARD_COMPOSE") {
        return custom.split_whitespace().map(String::from).collect();
    }
    let works = |program: &[&str]| {
        Command::new(program[0])
            .args(&program[1..])
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for candidate in [&["docker", "compose"][..], &["docker-compose"][..]] {
        if works(candidate) {
            return candidate.iter().map(|s| s.to_string()).collect();
        }
    }
    panic!(
        "tests/compose.rs needs `docker compose` or `docker-compose`; neither works \
         (scripts/install-deps.sh installs docker-compose)"
    );
}

/// A free loopback port to publish a service on.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// One compose project of docker-compose.yml with the image names and ports overridden.
struct Project {
    program: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .args(["-p", &self.name, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(repo())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args))
    }

    /// The id of a service's running container.
    fn container(&self, service: &str) -> String {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let service_label = format!("label=com.docker.compose.service={service}");
        let id = run_ok(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &label,
            "--filter",
            &service_label,
        ]));
        let id = id.trim().to_string();
        assert!(!id.is_empty(), "no running container for {service}");
        id
    }

    /// Runs a command inside a service's container. Through `docker exec` on the container's id:
    /// much quicker than `compose exec` (v1 is Python).
    fn exec(&self, service: &str, args: &[&str]) -> Output {
        let id = self.container(service);
        run(Command::new("docker").arg("exec").arg(&id).args(args))
    }

    /// Runs SQL inside a service's container with its own psql, over the unix socket.
    fn exec_sql(&self, service: &str, db: &str, sql: &str) -> Output {
        self.exec(
            service,
            &[
                "psql",
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "pgshard",
                "-d",
                db,
                "-c",
                sql,
            ],
        )
    }

    fn exec_sql_ok(&self, service: &str, db: &str, sql: &str) -> String {
        let out = self.exec_sql(service, db, sql);
        assert!(
            out.status.success(),
            "{sql} on {service} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }

    /// Each container of the project by service name: (state, exit code, health).
    fn containers(&self) -> BTreeMap<String, (String, i64, String)> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let ids = run_ok(Command::new("docker").args(["ps", "-aq", "--filter", &label]));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return BTreeMap::new();
        }
        let format = "{{index .Config.Labels \"com.docker.compose.service\"}}|{{.State.Status}}|{{.State.ExitCode}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}";
        let out = run_ok(
            Command::new("docker")
                .args(["inspect", "--format", format])
                .args(&ids),
        );
        out.lines()
            .filter_map(|line| {
                let mut parts = line.split('|');
                let service = parts.next()?.to_string();
                let state = parts.next()?.to_string();
                let code = parts.next()?.parse().ok()?;
                let health = parts.next().unwrap_or("").to_string();
                Some((service, (state, code, health)))
            })
            .collect()
    }

    /// Waits until every service in `services` is up (healthy where it has a health check) and
    /// `catalog-init` exited 0; fails at once if a container exits or turns unhealthy.
    fn wait_ready(&self, services: &BTreeSet<String>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let containers = self.containers();
            let mut waiting = Vec::new();
            for service in services {
                match containers.get(service) {
                    None => waiting.push(format!("{service}: no container")),
                    Some((state, code, _)) if service == "catalog-init" => {
                        if state == "exited" {
                            assert_eq!(*code, 0, "catalog-init failed:\n{}", self.logs(service));
                        } else {
                            waiting.push(format!("{service}: {state}"));
                        }
                    }
                    Some((state, _, health)) => {
                        assert!(
                            state != "exited" && state != "dead" && health != "unhealthy",
                            "{service} is {state} {health}:\n{}",
                            self.logs(service)
                        );
                        if state != "running" || !(health.is_empty() || health == "healthy") {
                            waiting.push(format!("{service}: {state} {health}"));
                        }
                    }
                }
            }
            if waiting.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {timeout:?}: {}",
                waiting.join(", ")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self, service: &str) -> String {
        let out = run(&mut self.command(&["logs", "--no-color", "--tail", "40", service]));
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    /// Down with the profile `scale-out` active, so that its services go too.
    fn down(&self) -> Output {
        run(&mut self.command(&[
            "--profile",
            SCALE_PROFILE,
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "5",
        ]))
    }
}

/// Tears the project down when the test ends, however it ends; after a failure it prints the
/// services' last log lines first.
struct TearDown<'a>(&'a Project);

impl Drop for TearDown<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = run(&mut self.0.command(&["logs", "--no-color", "--tail", "15"]));
            eprintln!("--- compose logs ---\n{}", text(&out.stdout));
        }
        let out = self.0.down();
        if !out.status.success() {
            eprintln!("compose down failed: {}", text(&out.stderr));
        }
    }
}

/// Removes what runs of this test killed before their teardown (a timeout, SIGKILL) left behind:
/// projects named after a process id that no longer exists.
fn remove_abandoned_projects(program: &[String], env: &[(String, String)]) {
    let names = run_ok(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ]));
    let abandoned: BTreeSet<&str> = names
        .lines()
        .filter(|name| {
            name.strip_prefix(PROJECT_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    for name in abandoned {
        eprintln!("removing the abandoned compose project {name}");
        let project = Project {
            program: program.to_vec(),
            name: name.to_string(),
            env: env.to_vec(),
        };
        let _ = project.down();
    }
}

/// psql through the proxy; returns (success, stdout, stderr).
fn psql(port: u16, sql: &str) -> (bool, String, String) {
    let out = run(Command::new("psql")
        .args([
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            // Errors with their SQLSTATE.
            "-v",
            "VERBOSITY=verbose",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
        ])
        .args(["-p", &port.to_string(), "-d", "app", "-c", sql])
        .env("PGPASSWORD", "app")
        .env("PGCONNECT_TIMEOUT", "10"));
    (
        out.status.success(),
        text(&out.stdout).trim().to_string(),
        text(&out.stderr),
    )
}

fn psql_ok(port: u16, sql: &str) -> String {
    let (ok, stdout, stderr) = psql(port, sql);
    assert!(ok, "{sql} through the proxy failed: {stderr}");
    stdout
}

/// An HTTP GET on loopback, enough for Prometheus's JSON API.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    (status.starts_with("HTTP/1.") && status.contains(" 200 ")).then(|| body.to_string())
}

/// Scrape targets by job: (health, scraped at least once).
fn prometheus_targets(port: u16) -> BTreeMap<String, (String, bool)> {
    let Some(body) = http_get(port, "/api/v1/targets") else {
        return BTreeMap::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
        return BTreeMap::new();
    };
    json["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let job = t["labels"]["job"].as_str()?.to_string();
            let health = t["health"].as_str()?.to_string();
            let scraped = t["lastScrape"]
                .as_str()
                .is_some_and(|s| !s.starts_with("0001-"));
            Some((job, (health, scraped)))
        })
        .collect()
}

/// `n` keys that the first shard map (hash over the ten shards) places on `shard`.
fn keys_on(map: &ShardMap, shard: u32, n: usize) -> Vec<i64> {
    (1_000_000_i64..)
        .filter(|&k| map.shard_for(k) == shard)
        .take(n)
        .collect()
}

fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn compose_file_runs_ten_shards_with_replicas_survives_a_stopped_shard_and_grows_online() {
    let started = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |what: &str, timings: &mut Vec<(String, Duration)>| {
        timings.push((what.to_string(), lap.elapsed()));
        lap = Instant::now();
    };

    require_docker();
    let program = compose_program();

    // Images, built locally: the stand-ins and pgshard with the binary cargo built for this test.
    let images = run_ok(
        Command::new(repo().join("scripts/build-images.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_pgshard")])
            .stderr(Stdio::inherit()),
    );
    let mut env: Vec<(String, String)> = images
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("PGSHARD_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env.len(), 3, "build-images.sh printed {images}");
    mark("build images", &mut timings);

    let proxy_port = free_port();
    let proxy2_port = free_port();
    let prometheus_port = free_port();
    env.push(("PGSHARD_PORT".into(), proxy_port.to_string()));
    env.push(("PGSHARD2_PORT".into(), proxy2_port.to_string()));
    env.push((
        "PGSHARD_PROMETHEUS_PORT".into(),
        prometheus_port.to_string(),
    ));
    remove_abandoned_projects(&program, &env);
    let project = Project {
        program,
        name: format!("{PROJECT_PREFIX}{}", std::process::id()),
        env,
    };
    let _teardown = TearDown(&project);

    // Up, then every service healthy.
    project.ok(&["up", "-d", "--no-build"]);
    let mut services: BTreeSet<String> = [
        "catalog",
        "catalog-init",
        "pgshard",
        "pgshard2",
        "prometheus",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..SHARDS {
        services.insert(format!("shard{i}"));
        services.insert(format!("shard{i}-replica"));
    }
    project.wait_ready(&services, Duration::from_secs(240));
    mark("compose up until healthy", &mut timings);
    // The profile `scale-out` is not started by default.
    let containers = project.containers();
    for spare in ["shard10", "shard10-replica", "shard11", "shard11-replica"] {
        assert!(
            !containers.contains_key(spare),
            "{spare} started without its profile"
        );
    }

    // Each proxy's port is published on loopback only.
    for (service, port) in [("pgshard", proxy_port), ("pgshard2", proxy2_port)] {
        let port_line = project.ok(&["port", service, "6432"]);
        assert_eq!(
            port_line.trim(),
            format!("127.0.0.1:{port}"),
            "published address of {service}"
        );
    }

    // The catalog holds the map `pgshard catalog init` published; the test routes with its twin.
    let ranges = project.exec_sql_ok(
        "catalog",
        "catalog",
        "SELECT v.version || ' ' || v.strategy || ' ' || count(*) FROM shard_map_versions v \
         JOIN shard_map m USING (version) GROUP BY v.version, v.strategy",
    );
    assert_eq!(ranges, "1 hash 10", "shard map in the catalog");
    let shard_ids: Vec<u32> = (0..SHARDS).collect();
    let map = ShardMap::uniform(1, Strategy::Hash, &shard_ids);

    // Every shard has its identity, the settings the later issues need, and a streaming replica.
    for i in 0..SHARDS {
        let row = project.exec_sql_ok(
            &format!("shard{i}"),
            "app",
            "SELECT (SELECT shard_id FROM pgshard_meta.identity) || ' ' || \
             current_setting('wal_level') || ' ' || current_setting('max_prepared_transactions')",
        );
        assert_eq!(row, format!("{i} logical 100"), "shard{i}");
        poll(
            Duration::from_secs(30),
            &format!("shard{i} replica streaming"),
            || {
                let n = project.exec_sql_ok(
                    &format!("shard{i}"),
                    "app",
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                );
                (n == "1").then_some(())
            },
        );
    }

    // psql through the proxy: one row per shard in one multi-shard INSERT (two-phase commit over
    // all ten), each read back by key, found on its shard and on that shard's replica.
    let per_shard: Vec<(u32, Vec<i64>)> = (0..SHARDS)
        .map(|s| (s, keys_on(&map, s, if s == VICTIM { 4 } else { 2 })))
        .collect();
    let values: Vec<String> = per_shard
        .iter()
        .flat_map(|(s, keys)| keys.iter().map(move |k| format!("({k}, 'shard {s}')")))
        .collect();
    psql_ok(
        proxy_port,
        &format!(
            "INSERT INTO users (user_id, name) VALUES {}",
            values.join(", ")
        ),
    );
    for (shard, keys) in &per_shard {
        for k in keys {
            let name = psql_ok(
                proxy_port,
                &format!("SELECT name FROM users WHERE user_id = {k}"),
            );
            assert_eq!(name, format!("shard {shard}"), "key {k}");
        }
        let k = keys[0];
        let here = project.exec_sql_ok(
            &format!("shard{shard}"),
            "app",
            &format!("SELECT count(*) FROM users WHERE user_id = {k}"),
        );
        assert_eq!(here, "1", "key {k} on shard{shard}");
        poll(
            Duration::from_secs(20),
            &format!("key {k} on shard{shard}-replica"),
            || {
                let n = project.exec_sql_ok(
                    &format!("shard{shard}-replica"),
                    "app",
                    &format!("SELECT count(*) FROM users WHERE user_id = {k}"),
                );
                (n == "1").then_some(())
            },
        );
    }
    mark("checks through psql", &mut timings);

    // Least privilege: clients run on the shards as `app`, no superuser, so Postgres itself
    // refuses what would reach the shard's host or pgshard's own data (42501), and nothing
    // happens anywhere.
    assert_eq!(
        psql_ok(
            proxy_port,
            "SELECT current_user || ' ' || (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        ),
        "app false"
    );
    for sql in [
        "COPY (SELECT 1) TO PROGRAM 'id > /tmp/pgshard-escaped'",
        "UPDATE pgshard_meta.identity SET shard_id = shard_id + 100",
        "ALTER SYSTEM SET work_mem = '64MB'",
    ] {
        let (ok, _, stderr) = psql(proxy_port, sql);
        assert!(!ok && stderr.contains("42501"), "{sql}: {stderr}");
    }
    for i in 0..SHARDS {
        let untouched = project.exec_sql_ok(
            &format!("shard{i}"),
            "app",
            "SELECT pg_stat_file('/tmp/pgshard-escaped', true) IS NULL \
             AND (SELECT shard_id FROM pgshard_meta.identity) < 100",
        );
        assert_eq!(untouched, "t", "shard{i} was changed by a client");
    }
    mark("least privilege", &mut timings);

    // A short pgbench through the proxy: keyed upserts and reads, prepared statements.
    let script_dir = tempfile::tempdir().expect("temp dir");
    let script = script_dir.path().join("keyed.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 100000000)\n\
         INSERT INTO users (user_id, name) VALUES (:id, 'bench') \
         ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name;\n\
         SELECT name FROM users WHERE user_id = :id;\n",
    )
    .expect("write the pgbench script");
    let bench = run(Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &BENCH_CLIENTS.to_string(),
            "-j",
            "2",
            "-t",
            &BENCH_TRANSACTIONS.to_string(),
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &proxy_port.to_string(), "-U", "app", "-f"])
        .arg(&script)
        .arg("app")
        .env("PGPASSWORD", "app"));
    let report = format!("{}{}", text(&bench.stdout), text(&bench.stderr));
    assert!(bench.status.success(), "pgbench failed:\n{report}");
    assert!(
        report.contains(&format!(
            "number of transactions actually processed: {n}/{n}",
            n = BENCH_CLIENTS * BENCH_TRANSACTIONS
        )),
        "{report}"
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );
    mark("pgbench", &mut timings);

    // Prometheus loaded config/prometheus.yml and scrapes: itself successfully, and pgshard's
    // target (its metrics endpoint is another issue's, so that target's health is not judged).
    poll(Duration::from_secs(60), "prometheus scraping", || {
        let targets = prometheus_targets(prometheus_port);
        let own = targets.get("prometheus")?;
        let proxy = targets.get("pgshard")?;
        (own.0 == "up" && proxy.1).then_some(())
    });
    mark("prometheus", &mut timings);

    // Stop one shard's primary: its keys fail with an error naming it, every other key works.
    project.ok(&["stop", &format!("shard{VICTIM}")]);
    for (shard, keys) in &per_shard {
        for k in keys {
            let (ok, stdout, stderr) = psql(
                proxy_port,
                &format!("SELECT name FROM users WHERE user_id = {k}"),
            );
            if *shard == VICTIM {
                assert!(!ok, "key {k} of stopped shard {VICTIM} answered {stdout}");
                assert!(
                    stderr.contains(&format!("shard {VICTIM}")),
                    "error for key {k} should name shard {VICTIM}: {stderr}"
                );
            } else {
                assert!(ok, "key {k} on shard {shard} failed: {stderr}");
                assert_eq!(stdout, format!("shard {shard}"), "key {k}");
                psql_ok(
                    proxy_port,
                    &format!("UPDATE users SET email = 'up@shard{shard}' WHERE user_id = {k}"),
                );
            }
        }
    }
    mark("stopped shard checks", &mut timings);

    // Bring it back: once healthy, its keys answer again (after the proxy drops connections the
    // stop broke) with the rows written before the stop, and take writes.
    project.ok(&["start", &format!("shard{VICTIM}")]);
    let victim: BTreeSet<String> = [format!("shard{VICTIM}")].into_iter().collect();
    project.wait_ready(&victim, Duration::from_secs(60));
    let victim_keys = &per_shard[VICTIM as usize].1;
    poll(
        Duration::from_secs(30),
        "the restarted shard answers",
        || {
            psql(
                proxy_port,
                &format!("SELECT name FROM users WHERE user_id = {}", victim_keys[0]),
            )
            .0
            .then_some(())
        },
    );
    for k in victim_keys {
        let name = psql_ok(
            proxy_port,
            &format!("SELECT name FROM users WHERE user_id = {k}"),
        );
        assert_eq!(name, format!("shard {VICTIM}"), "key {k} after the restart");
        psql_ok(
            proxy_port,
            &format!("UPDATE users SET email = 'back' WHERE user_id = {k}"),
        );
    }
    mark("restarted shard checks", &mut timings);

    grow_online(&project, [proxy_port, proxy2_port], &mut mark, &mut timings);

    // Tear down explicitly (the guard would too) and check nothing of the project is left.
    let down = project.down();
    assert!(down.status.success(), "down: {}", text(&down.stderr));
    assert!(
        project.containers().is_empty(),
        "containers left after down"
    );
    let label = format!("label=com.docker.compose.project={}", project.name);
    let volumes = run_ok(Command::new("docker").args(["volume", "ls", "-q", "--filter", &label]));
    assert!(
        volumes.trim().is_empty(),
        "volumes left after down: {volumes}"
    );
    mark("compose down", &mut timings);

    let summary: Vec<String> = timings
        .iter()
        .map(|(what, d)| format!("{what} {:.1}s", d.as_secs_f64()))
        .collect();
    println!(
        "compose test took {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        summary.join(", ")
    );
}

/// psql on a proxy's admin console (the config's `admin` user); returns (success, stdout, stderr).
fn admin(port: u16, command: &str) -> (bool, String, String) {
    let out = run(Command::new("psql")
        .args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "admin",
            "-d",
            "pgshard",
            "-c",
        ])
        .arg(command)
        .env("PGPASSWORD", "admin")
        .env("PGCONNECT_TIMEOUT", "10"));
    (
        out.status.success(),
        text(&out.stdout).trim().to_string(),
        text(&out.stderr),
    )
}

/// The rows of an admin command, each split into its cells.
fn admin_rows(port: u16, command: &str) -> Vec<Vec<String>> {
    let (ok, stdout, stderr) = admin(port, command);
    assert!(ok, "{command} on the proxy at {port} failed: {stderr}");
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// One cell of SHOW STATS by column name.
fn stat(port: u16, column: &str) -> String {
    const COLUMNS: [&str; 16] = [
        "database",
        "uptime_seconds",
        "total_clients",
        "connected_clients",
        "total_requests",
        "requests_in_flight",
        "paused",
        "requests_waiting",
        "replica_reads",
        "lsn_waits",
        "primary_fallbacks",
        "failovers",
        "fenced_servers",
        "map_version",
        "failover_holds_resumed",
        "failover_holds_expired",
    ];
    let at = COLUMNS
        .iter()
        .position(|c| *c == column)
        .unwrap_or_else(|| panic!("SHOW STATS has no column {column}"));
    let rows = admin_rows(port, "SHOW STATS");
    assert_eq!(rows.len(), 1, "SHOW STATS: {rows:?}");
    assert_eq!(rows[0].len(), COLUMNS.len(), "SHOW STATS columns: {rows:?}");
    rows[0][at].clone()
}

/// The clients of the data path (user `app`) a proxy has: (pid, connected at).
fn app_clients(port: u16) -> BTreeSet<(String, String)> {
    admin_rows(port, "SHOW CLIENTS")
        .into_iter()
        .filter(|r| r.get(1).is_some_and(|u| u == "app"))
        .map(|r| (r[0].clone(), r[4].clone()))
        .collect()
}

/// Rows of `users` through a proxy (a keyless count: every shard, the map's owner only).
fn users_through(port: u16) -> i64 {
    let n = psql_ok(port, "SELECT count(*) FROM users");
    n.parse()
        .unwrap_or_else(|_| panic!("count through {port}: {n}"))
}

/// What the second client saw while the cluster grew (so far, while it runs).
#[derive(Default)]
struct LoadReport {
    statements: u64,
    errors: Vec<String>,
    /// Every keyless count of `users` it read.
    counts: BTreeSet<i64>,
}

/// A client of the other proxy for the whole scale-out, on one connection (tokio-postgres with its
/// defaults: extended protocol, prepared statements): keyed updates of the seeded rows and, every
/// tenth statement, a keyless count of `users`, until `stop`. `report` says what it saw so far.
fn second_client(port: u16, stop: Arc<AtomicBool>, report: Arc<std::sync::Mutex<LoadReport>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let url = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the second client connects to pgshard2");
        let connection = tokio::spawn(connection);
        let update = client
            .prepare("UPDATE users SET email = $1 WHERE user_id = $2")
            .await
            .expect("prepare the second client's update");
        let mut i: i64 = 0;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let key = SEED_BASE + 1 + (i * 7919) % SEED_ROWS;
            let result = if i % 10 == 0 {
                client
                    .query_one("SELECT count(*) FROM users", &[])
                    .await
                    .map(|row| {
                        let count = row.get::<_, i64>(0);
                        report.lock().expect("load report").counts.insert(count);
                    })
                    .map_err(|e| format!("count: {e}"))
            } else {
                match client
                    .execute(&update, &[&format!("second client {i}"), &key])
                    .await
                {
                    Ok(1) => Ok(()),
                    Ok(n) => Err(format!("update of key {key} changed {n} rows")),
                    Err(e) => Err(format!("update of key {key}: {e}")),
                }
            };
            {
                let mut report = report.lock().expect("load report");
                report.statements += 1;
                if let Err(e) = result {
                    report.errors.push(e);
                }
            }
            // A steady client, not a flood: the machine is shared.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(update);
        drop(client);
        let _ = connection.await;
    })
}

/// A pgbench running in the background, its stderr (progress reports, errors) collected line by line.
struct Bench {
    child: Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Bench {
    /// pgbench through `port` at GROW_BENCH_RATE per second for at most GROW_BENCH_SECONDS:
    /// keyed updates and reads of the seeded rows (so the row count stays what it was), prepared
    /// statements, a progress report every second.
    fn start(port: u16, script_dir: &Path) -> Bench {
        let script = script_dir.join("grow.sql");
        std::fs::write(
            &script,
            format!(
                "\\set id random({}, {})\n\
                 UPDATE users SET name = 'bench' WHERE user_id = :id;\n\
                 SELECT name FROM users WHERE user_id = :id;\n",
                SEED_BASE + 1,
                SEED_BASE + SEED_ROWS
            ),
        )
        .expect("write the pgbench script");
        let mut child = Command::new("pgbench")
            .args(["-n", "-M", "prepared", "-c", &BENCH_CLIENTS.to_string()])
            .args(["-j", "2", "-T", &GROW_BENCH_SECONDS.to_string(), "-P", "1"])
            .args(["-R", &GROW_BENCH_RATE.to_string(), "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", "app", "-f"])
            .arg(&script)
            .arg("app")
            .env("PGPASSWORD", "app")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pgbench");
        let stderr = child.stderr.take().expect("pgbench's stderr");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().expect("pgbench lines").push(line);
                }
            })
        };
        Bench {
            child,
            lines,
            reader,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("pgbench lines").clone()
    }

    /// Stops pgbench (still running: checked) and returns everything it reported.
    fn stop(mut self) -> Vec<String> {
        assert!(
            self.child.try_wait().expect("pgbench status").is_none(),
            "pgbench ended before the story did:\n{}",
            self.lines().join("\n")
        );
        self.child.kill().expect("stop pgbench");
        let _ = self.child.wait();
        let Bench { lines, reader, .. } = self;
        let _ = reader.join();
        let lines = lines.lock().expect("pgbench lines").clone();
        lines
    }
}

/// The transactions per second and failed transactions of a pgbench progress line
/// ("progress: 3.0 s, 40.1 tps, lat 5.2 ms stddev 1.0, 0 failed, lag 0.3 ms").
fn bench_progress(line: &str) -> Option<(f64, u64)> {
    let rest = line.strip_prefix("progress: ")?;
    let tps = rest
        .split(", ")
        .nth(1)?
        .strip_suffix(" tps")?
        .parse()
        .ok()?;
    let failed = rest
        .split(", ")
        .find_map(|part| part.strip_suffix(" failed"))?
        .parse()
        .ok()?;
    Some((tps, failed))
}

/// The job id in REBALANCE's notice ("rebalancing job 7 created: add-shard 10").
fn job_id(notice: &str) -> Option<i64> {
    let rest = &notice[notice.find("rebalancing job ")? + "rebalancing job ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The load of the scale-out phase, running through every growth step: pgbench through pgshard
/// and a second client through pgshard2, both connected before anything changes.
struct Load {
    bench: Bench,
    stop: Arc<AtomicBool>,
    second: std::thread::JoinHandle<()>,
    report: Arc<std::sync::Mutex<LoadReport>>,
    /// The clients each proxy had once the load ran: the same ones must be there at every check.
    bench_clients: BTreeSet<(String, String)>,
    second_clients: BTreeSet<(String, String)>,
    /// Rows of `users` before the load (it only updates and reads: the count never changes).
    rows: i64,
}

impl Load {
    fn start([proxy, proxy2]: [u16; 2], script_dir: &Path, rows: i64) -> Load {
        let bench = Bench::start(proxy, script_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(std::sync::Mutex::new(LoadReport::default()));
        let second = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || second_client(proxy2, stop, report))
        };
        let bench_clients = poll(Duration::from_secs(30), "pgbench connected", || {
            let clients = app_clients(proxy);
            (clients.len() == BENCH_CLIENTS as usize).then_some(clients)
        });
        let second_clients = poll(Duration::from_secs(30), "the second client runs", || {
            (report.lock().expect("load report").statements > 0).then(|| app_clients(proxy2))
        });
        assert_eq!(second_clients.len(), 1, "clients of pgshard2");
        Load {
            bench,
            stop,
            second,
            report,
            bench_clients,
            second_clients,
            rows,
        }
    }

    /// Statements of the second client so far.
    fn statements(&self) -> u64 {
        self.report.lock().expect("load report").statements
    }

    /// The load is still running and all is well so far: pgbench runs and reported nothing but
    /// progress with 0 failed transactions, and (when `during` is given: those of its reports) some
    /// transactions; the second client had no error and always counted `rows`; and each proxy has
    /// the same client connections as when the load started (nobody reconnected).
    fn check(&self, [proxy, proxy2]: [u16; 2], during: Option<std::ops::Range<usize>>) {
        let reports = self.bench.lines();
        let all = reports.join("\n");
        assert!(
            reports
                .iter()
                .all(|l| l.starts_with("progress: ") || l.trim().is_empty()),
            "pgbench reported more than progress:\n{all}"
        );
        assert!(
            reports
                .iter()
                .filter_map(|l| bench_progress(l))
                .all(|(_, failed)| failed == 0),
            "pgbench failed transactions:\n{all}"
        );
        if let Some(during) = during {
            assert!(
                reports[during]
                    .iter()
                    .filter_map(|l| bench_progress(l))
                    .any(|(tps, _)| tps > 0.0),
                "no pgbench transaction while the job ran:\n{all}"
            );
        }
        {
            let load = self.report.lock().expect("load report");
            assert!(
                load.errors.is_empty(),
                "the second client had {} error(s) in {} statements: {:?}",
                load.errors.len(),
                load.statements,
                &load.errors[..load.errors.len().min(5)]
            );
            assert!(
                load.counts.iter().all(|&n| n == self.rows),
                "keyless counts through pgshard2: {:?}, not {}",
                load.counts,
                self.rows
            );
        }
        assert_eq!(
            app_clients(proxy),
            self.bench_clients,
            "pgbench's connections"
        );
        assert_eq!(
            app_clients(proxy2),
            self.second_clients,
            "the second connection"
        );
    }

    /// Stops both clients (pgbench must still be running) and returns pgbench's reports and what
    /// the second client saw.
    fn stop(self) -> (Vec<String>, LoadReport) {
        let reports = self.bench.stop();
        self.stop.store(true, Ordering::SeqCst);
        self.second.join().expect("the second client panicked");
        let report = std::mem::take(&mut *self.report.lock().expect("load report"));
        (reports, report)
    }
}

/// The scale-out phase: rows to move, then the load on both proxies, then shard10 and shard11
/// join one after the other under that same load; afterwards the whole run is checked.
fn grow_online(
    project: &Project,
    proxies: [u16; 2],
    mark: &mut impl FnMut(&str, &mut Vec<(String, Duration)>),
    timings: &mut Vec<(String, Duration)>,
) {
    let [proxy, proxy2] = proxies;
    // Rows to move, loaded with COPY through the proxy.
    let dir = tempfile::tempdir().expect("temp dir");
    let rows = dir.path().join("seed.csv");
    let csv: String = (SEED_BASE + 1..=SEED_BASE + SEED_ROWS)
        .map(|k| format!("{k},seed {k}\n"))
        .collect();
    std::fs::write(&rows, csv).expect("write the seed rows");
    psql_ok(
        proxy,
        &format!(
            "\\copy users (user_id, name) FROM '{}' WITH (FORMAT csv)",
            rows.display()
        ),
    );
    let before = users_through(proxy);
    assert_eq!(users_through(proxy2), before, "the proxies disagree");
    assert_eq!(stat(proxy2, "map_version"), stat(proxy, "map_version"));
    mark("scale-out: seed rows", timings);

    let load = Load::start(proxies, dir.path(), before);
    // Every new shard's containers, from the profile (images built already), started at once:
    // they come up side by side, and each waits unregistered, outside the cluster, for its step.
    let mut up = vec!["--profile", SCALE_PROFILE, "up", "-d", "--no-build"];
    let services: Vec<String> = NEW_SHARDS
        .iter()
        .flat_map(|s| [format!("shard{s}"), format!("shard{s}-replica")])
        .collect();
    up.extend(services.iter().map(String::as_str));
    project.ok(&up);
    mark("scale-out: new containers started", timings);
    let mut summaries = Vec::new();
    for shard in NEW_SHARDS {
        summaries.push(grow_by_one_shard(
            project, proxies, &load, shard, mark, timings,
        ));
    }
    load.check(proxies, None);
    let (reports, second) = load.stop();

    // Over the whole phase: pgbench transactions went through, and so did the second client's.
    let processed = reports
        .iter()
        .filter_map(|l| bench_progress(l))
        .map(|(tps, _)| tps)
        .sum::<f64>()
        .round() as u64;
    assert!(processed > 0, "{}", reports.join("\n"));
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(
        second.counts,
        BTreeSet::from([before]),
        "keyless counts through pgshard2 during the moves"
    );
    println!(
        "scale-out: {before} rows, pgbench ~{processed} transactions, second client {} \
         statements; {}",
        second.statements,
        summaries.join("; ")
    );
    mark("scale-out: load ends", timings);
}

/// One growth step under the running `load`: once `shard` and its replica (profile `scale-out`,
/// started by the caller) are up, they are registered with the CLI inside the proxy's container,
/// `REBALANCE add-shard` moves keys onto it, and then: no client failed or reconnected, the same rows through both
/// proxies and summed over the shards, rows on the new shard, `pgshard verify` passes, and both
/// proxies route with the new map. Returns a line about the step.
fn grow_by_one_shard(
    project: &Project,
    proxies: [u16; 2],
    load: &Load,
    shard: u32,
    mark: &mut impl FnMut(&str, &mut Vec<(String, Duration)>),
    timings: &mut Vec<(String, Duration)>,
) -> String {
    let [proxy, proxy2] = proxies;
    let version_before: i64 = stat(proxy, "map_version").parse().expect("map version");
    let service = format!("shard{shard}");
    let replica_service = format!("shard{shard}-replica");

    let new_services = BTreeSet::from([service.clone(), replica_service.clone()]);
    project.wait_ready(&new_services, Duration::from_secs(180));
    mark(&format!("scale-out: {service} up"), timings);

    // Registered with the CLI inside the proxy's container (its config, the compose network's
    // names), then its replica; both proxies open pools to it without a restart.
    let config = "/etc/pgshard/compose.toml";
    let id = shard.to_string();
    for port in proxies {
        let listed = admin_rows(port, "SHOW SHARDS");
        assert!(
            listed.iter().all(|r| r[0] != id),
            "the proxy at {port} has shard {shard} before it is registered: {listed:?}"
        );
    }
    for args in [
        vec![
            "pgshard", "shard", "add", "--config", config, "--id", &id, "--host", &service,
            "--port", "5432",
        ],
        vec![
            "pgshard",
            "replica",
            "add",
            "--config",
            config,
            "--shard",
            &id,
            "--host",
            &replica_service,
            "--port",
            "5432",
        ],
    ] {
        let out = project.exec("pgshard", &args);
        assert!(
            out.status.success(),
            "{args:?} failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    for port in proxies {
        poll(
            Duration::from_secs(10),
            &format!("the proxy at {port} knows shard {shard}"),
            || {
                admin_rows(port, "SHOW SHARDS")
                    .iter()
                    .any(|r| r[0] == id)
                    .then_some(())
            },
        );
    }
    mark(&format!("scale-out: {service} registered"), timings);

    // Keys move onto it.
    let reports_before_job = load.bench.lines().len();
    let statements_before_job = load.statements();
    let (ok, _, notice) = admin(proxy, &format!("REBALANCE add-shard {shard}"));
    assert!(ok, "REBALANCE add-shard {shard}: {notice}");
    let job = job_id(&notice).unwrap_or_else(|| panic!("no job id in {notice:?}"));
    let steps = poll(
        Duration::from_secs(300),
        &format!("rebalancing job {job} done"),
        || {
            let steps: Vec<Vec<String>> = admin_rows(proxy2, "SHOW JOBS")
                .into_iter()
                .filter(|r| r[0] == job.to_string())
                .collect();
            assert!(!steps.is_empty(), "job {job} missing from SHOW JOBS");
            let state = steps[0][1].clone();
            assert!(
                !matches!(state.as_str(), "failed" | "cancelled" | "cancelling"),
                "job {job} is {state}: {steps:?}"
            );
            (state == "done").then_some(steps)
        },
    );
    mark(&format!("scale-out: rebalance {service}"), timings);
    // The step ran under the load, and the load noticed nothing.
    load.check(proxies, Some(reports_before_job..load.bench.lines().len()));
    assert!(
        load.statements() > statements_before_job,
        "the second client made no progress while job {job} ran"
    );

    // Every row once: through both proxies, and on the shards themselves.
    assert_eq!(users_through(proxy), load.rows, "rows through pgshard");
    assert_eq!(users_through(proxy2), load.rows, "rows through pgshard2");
    let on_shards: Vec<i64> = (0..=shard)
        .map(|i| {
            project
                .exec_sql_ok(&format!("shard{i}"), "app", "SELECT count(*) FROM users")
                .parse()
                .expect("a count")
        })
        .collect();
    assert_eq!(
        on_shards.iter().sum::<i64>(),
        load.rows,
        "rows on the shards: {on_shards:?}"
    );
    assert!(
        on_shards[shard as usize] > 0,
        "nothing moved to shard {shard}"
    );
    let verify = project.exec("pgshard", &["pgshard", "verify", "--config", config]);
    let verified = format!("{}{}", text(&verify.stdout), text(&verify.stderr));
    assert!(
        verify.status.success() && verified.contains("ok: every row"),
        "pgshard verify:\n{verified}"
    );

    // Both proxies are live in the catalog (a cut-over needs every live proxy's acknowledgement,
    // so both held and let go), and both route with the new map, which gives the shard ranges.
    let live = project.exec_sql_ok(
        "catalog",
        "catalog",
        "SELECT count(*) FROM proxies WHERE last_seen > now() - interval '3 seconds'",
    );
    assert_eq!(live, "2", "live proxies in the catalog");
    let version: i64 = project
        .exec_sql_ok(
            "catalog",
            "catalog",
            "SELECT max(version) FROM shard_map_versions",
        )
        .parse()
        .expect("a version");
    assert!(version > version_before, "no new map version");
    for port in proxies {
        assert_eq!(
            stat(port, "map_version"),
            version.to_string(),
            "proxy at {port}"
        );
        let map = admin_rows(port, "SHOW SHARD_MAP");
        assert!(
            map.iter().any(|r| r[5] == id),
            "the map of the proxy at {port} gives shard {shard} nothing: {map:?}"
        );
    }
    let proxy_holds: Vec<String> = proxies
        .iter()
        .map(|&port| {
            admin_rows(port, "SHOW JOBS")
                .into_iter()
                .find(|r| r[0] == job.to_string())
                .map_or_else(String::new, |r| r[13].clone())
        })
        .collect();
    mark(&format!("scale-out: checks {service}"), timings);
    format!(
        "shard {shard}: job {job} ({} steps), {} rows on it, cut-over hold {} ms (longest hold \
         per proxy so far: {} ms, {} ms)",
        steps.len(),
        on_shards[shard as usize],
        steps[0][12],
        proxy_holds[0],
        proxy_holds[1]
    )
}
