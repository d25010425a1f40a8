//! docker-compose.yml end to end, on a Docker engine that cannot pull images: scripts/build-images.sh
//! builds stand-ins for the official images from Debian's packages (and pgshard's image from the
//! repo's Dockerfile with the binary cargo just built), then the very same compose file runs with the
//! image names overridden. Ten shards, each with a streaming replica, a catalog, pgshard and
//! Prometheus come up; psql and a short pgbench go through the proxy (as the role `app`, which
//! Postgres itself keeps off the shards' hosts: 42501); one shard's container stops
//! (only its keys fail), comes back (its keys work again, its rows intact); everything is torn down.
//!
//! Docker is required: without a usable engine this test fails, saying so. It uses
//! `docker compose` when that works, else Debian's `docker-compose`; PGSHARD_COMPOSE overrides
//! (e.g. `PGSHARD_COMPOSE=docker-compose`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgshard::router::{ShardMap, Strategy};

const SHARDS: u32 = 10;
/// The shard whose container the test stops.
const VICTIM: u32 = 3;
const PROJECT_PREFIX: &str = "pgshard-test-";
/// pgbench clients, and transactions each.
const BENCH_CLIENTS: u32 = 4;
const BENCH_TRANSACTIONS: u32 = 250;

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

    /// Runs SQL inside a service's container with its own psql, over the unix socket. Through
    /// `docker exec` on the container's id: much quicker than `compose exec` (v1 is Python).
    fn exec_sql(&self, service: &str, db: &str, sql: &str) -> Output {
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
        let id = id.trim();
        assert!(!id.is_empty(), "no running container for {service}");
        run(Command::new("docker").args([
            "exec",
            id,
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
        ]))
    }

    fn exec_sql_ok(&self, service: &str, db: &str, sql: &str) -> String {
        let out = self.exec_sql(service, db, sql);
        assert!(
            out.status.success(),
            "{sql} on {service} failed: {}",
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

    fn down(&self) -> Output {
        run(&mut self.command(&["down", "-v", "--remove-orphans", "-t", "5"]))
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
fn compose_file_runs_ten_shards_with_replicas_and_survives_a_stopped_shard() {
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |what: &'static str, timings: &mut Vec<(&str, Duration)>| {
        timings.push((what, lap.elapsed()));
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
    let prometheus_port = free_port();
    env.push(("PGSHARD_PORT".into(), proxy_port.to_string()));
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
    let mut services: BTreeSet<String> = ["catalog", "catalog-init", "pgshard", "prometheus"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for i in 0..SHARDS {
        services.insert(format!("shard{i}"));
        services.insert(format!("shard{i}-replica"));
    }
    project.wait_ready(&services, Duration::from_secs(240));
    mark("compose up until healthy", &mut timings);

    // The proxy's port is published on loopback only.
    let port_line = project.ok(&["port", "pgshard", "6432"]);
    assert_eq!(
        port_line.trim(),
        format!("127.0.0.1:{proxy_port}"),
        "published address of the proxy"
    );

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
