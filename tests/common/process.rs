//! `pgshard serve` as a child process (signals, exit status, its log), and polling helpers.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgshard::cluster::ClusterInfo;
use pgshard::config::Config;

use super::proxy;

/// How long a condition may take to come true.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it holds; fails the test after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(WAIT, what, check).await
}

/// Polls `check` every 50 ms until it holds, failing the test after `limit`.
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The binary under test: cargo's, or `PGSHARD_BIN` (a copy that builds of other checkouts
/// sharing the target directory cannot overwrite, or a release build).
fn pgshard_binary() -> std::path::PathBuf {
    std::env::var_os("PGSHARD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pgshard").into())
}

/// `pgshard serve` as a child process, its stderr collected line by line.
pub struct ProxyProcess {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Starts the proxy and waits until `ready_url` can log in.
    pub async fn start(config_path: &std::path::Path, ready_url: &str) -> ProxyProcess {
        ProxyProcess::start_with_env(config_path, ready_url, &[]).await
    }

    /// Like `start`, with extra environment variables for the child.
    pub async fn start_with_env(
        config_path: &std::path::Path,
        ready_url: &str,
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let mut child = Command::new(pgshard_binary())
            .args(["serve", "--config"])
            .arg(config_path)
            .env_remove("RUST_LOG")
            .env_remove("PGSHARD_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pgshard");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("pgshard: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let running = ProxyProcess { child, log };
        eventually("pgshard accepts clients", || async {
            proxy::connect_url(ready_url).await.is_ok()
        })
        .await;
        running
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Lines of the log containing `text`.
    pub fn logged(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Everything logged so far.
    pub fn whole_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `text` was logged `count` times.
    pub async fn wait_logged(&self, text: &str, count: usize) {
        eventually(&format!("the log says `{text}` {count} time(s)"), || {
            let n = self.logged(text).len();
            async move { n >= count }
        })
        .await;
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster's config changed by `change`, written next to the cluster as `name`.
pub fn write_config(
    info: &ClusterInfo,
    name: &str,
    change: impl FnOnce(&mut Config),
) -> std::path::PathBuf {
    let mut config = Config::load(&info.config_path).unwrap();
    change(&mut config);
    let path = info.dir.join(name);
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// Runs a command to its end without input: (success, stdout, stderr).
pub async fn run_output(cmd: &mut tokio::process::Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
