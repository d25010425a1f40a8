//! The part of the configuration a running proxy can change on SIGHUP (logins, client limits and
//! timeouts), the client count behind `max_clients`, and the shutdown phase sessions watch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{is_md5_hash, AuthMethod, Config, UserConfig};
use crate::frontend::auth::Verifiers;

/// Settings sessions read afresh for each client or request, so a reload reaches them.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub users: Vec<UserConfig>,
    pub max_clients: usize,
    pub max_message_size: usize,
    pub log_level: String,
    pub shutdown_timeout: Duration,
    /// `None`: no limit.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// `None`: no limit.
    pub query_timeout: Option<Duration>,
    /// From connecting to being logged in.
    pub login_timeout: Duration,
    /// How long the rest of a started client message may take; `None`: no limit.
    pub message_timeout: Option<Duration>,
    /// How long a failed login waits before its error is sent.
    pub failed_login_delay: Duration,
    /// Failed logins per client address and minute before its logins are refused (0: no limit).
    pub max_failed_logins_per_minute: u32,
}

/// Keys a reload applies; every other key needs a restart.
const LIVE_KEYS: &[&str] = &[
    "users",
    "server_auth.allow_superuser_clients",
    "proxy.max_clients",
    "proxy.max_message_size",
    "proxy.log_level",
    "proxy.shutdown_timeout_ms",
    "proxy.idle_in_transaction_timeout_ms",
    "proxy.query_timeout_ms",
    "proxy.login_timeout_ms",
    "proxy.message_timeout_ms",
    "auth.failed_login_delay_ms",
    "auth.max_failed_logins_per_minute",
    "pool.size",
];

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl LiveSettings {
    /// The live part of a config. Plain-text passwords of SCRAM users are replaced by their
    /// SCRAM verifiers here, so sessions never handle the plain text.
    pub fn from_config(config: &Config) -> LiveSettings {
        let p = &config.proxy;
        LiveSettings {
            users: config.users.iter().map(with_verifier).collect(),
            max_clients: p.max_clients,
            max_message_size: p.max_message_size,
            log_level: p.log_level.clone(),
            shutdown_timeout: Duration::from_millis(p.shutdown_timeout_ms),
            idle_in_transaction_timeout: millis(p.idle_in_transaction_timeout_ms),
            query_timeout: millis(p.query_timeout_ms),
            login_timeout: Duration::from_millis(p.login_timeout_ms),
            message_timeout: millis(p.message_timeout_ms),
            failed_login_delay: Duration::from_millis(config.auth.failed_login_delay_ms),
            max_failed_logins_per_minute: config.auth.max_failed_logins_per_minute,
        }
    }

    /// The user entry for a login name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// A SCRAM user with a plain-text password gets the password's verifier instead (derived once
/// per password and process, so a reload does not change the salt clients see).
fn with_verifier(user: &UserConfig) -> UserConfig {
    let mut user = user.clone();
    if user.auth == AuthMethod::ScramSha256 {
        if let Some(p) = user.password.as_mut() {
            if !p.starts_with("SCRAM-SHA-256$") && !is_md5_hash(p) {
                *p = Verifiers::global().for_password(&user.name, p).to_text();
            }
        }
    }
    user
}

/// The keys (`shards`, `proxy.listen`, …) that differ between two configs but cannot change
/// while the proxy runs. `old` is the running config, whose key types were read from the shards
/// at start-up: a table of `new` that names no key type means those, not a change.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut new = new.clone();
    for table in &mut new.sharded_tables {
        if table.key_type.is_none() {
            table.key_type = old
                .sharded_tables
                .iter()
                .find(|t| t.name == table.name && t.key == table.key)
                .and_then(|t| t.key_type);
        }
    }
    let (Ok(old), Ok(new)) = (toml::Value::try_from(old), toml::Value::try_from(&new)) else {
        return vec!["(config could not be compared)".into()];
    };
    let mut changed = Vec::new();
    diff_keys("", &old, &new, &mut changed);
    changed.retain(|k| !LIVE_KEYS.contains(&k.as_str()));
    changed
}

/// Collects the differing keys: the top-level tables are compared key by key, anything else whole.
fn diff_keys(prefix: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) if prefix.matches('.').count() < 1 => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_keys(&name, x, y, out),
                    _ => out.push(name),
                }
            }
        }
        _ if old != new => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Holds the live settings; a reload swaps them whole.
pub struct Live {
    current: RwLock<Arc<LiveSettings>>,
    clients: AtomicUsize,
}

impl Live {
    pub fn new(settings: LiveSettings) -> Live {
        Live {
            current: RwLock::new(Arc::new(settings)),
            clients: AtomicUsize::new(0),
        }
    }

    /// The settings in force now.
    pub fn get(&self) -> Arc<LiveSettings> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the settings (sessions see them from their next client or request on).
    pub fn set(&self, settings: LiveSettings) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Takes a client slot, or `None` when `max_clients` are connected.
    pub fn admit(self: &Arc<Self>) -> Option<ClientSlot> {
        let max = self.get().max_clients;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ClientSlot { live: self.clone() })
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }
}

/// One admitted client; dropping it frees the slot.
pub struct ClientSlot {
    live: Arc<Live>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.live.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a proxy is on its way down; sessions watch it between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// No new clients; sessions end once outside a transaction block.
    Draining,
    /// The shutdown timeout passed: every session ends now, open blocks are rolled back.
    Closing,
}

/// The shutdown phase, shared by the proxy and its sessions.
pub type PhaseSender = watch::Sender<Phase>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:6432"

[[users]]
name = "app"
password = "app"

[catalog]
url = "postgres://pgshard:pgshard@127.0.0.1:5500/catalog"

[server_auth]
user = "pgshard"

[[shards]]
id = 0
port = 5501
database = "app"
"#;

    fn parse(text: &str) -> Config {
        Config::from_toml(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn live_keys_are_not_reported() {
        let old = parse(BASE);
        let text = BASE
            .replace("password = \"app\"", "password = \"new\"")
            .replace("[proxy]", "[proxy]\nquery_timeout_ms = 5\nmax_clients = 3");
        assert!(fixed_changes(&old, &parse(&text)).is_empty());
    }

    #[test]
    fn fixed_keys_are_named() {
        let old = parse(BASE);
        let text = BASE
            .replace("127.0.0.1:6432", "127.0.0.1:7000")
            .replace("port = 5501", "port = 5502")
            .replace("[proxy]", "[pool]\nsize = 3\n[proxy]");
        assert_eq!(
            fixed_changes(&old, &parse(&text)),
            ["proxy.listen", "shards"],
            "pool.size is live"
        );
    }

    #[test]
    fn key_types_read_at_start_up_are_not_a_change() {
        let text = format!("{BASE}\n[[sharded_tables]]\nname = \"users\"\nkey = \"user_id\"\n");
        let mut running = parse(&text);
        running.sharded_tables[0].key_type = Some(crate::router::KeyType::Uuid);
        assert!(fixed_changes(&running, &parse(&text)).is_empty());
        let other = text.replace(
            "key = \"user_id\"",
            "key = \"user_id\"\nkey_type = \"text\"",
        );
        assert_eq!(fixed_changes(&running, &parse(&other)), ["sharded_tables"]);
    }

    #[test]
    fn server_tls_needs_a_restart() {
        let old = parse(BASE);
        let text = format!("{BASE}\n[server_tls]\nmode = \"require\"\n");
        let new = parse(&text);
        assert_eq!(fixed_changes(&old, &new), ["server_tls"]);
        let text = text.replace("\"require\"", "\"verify-full\"\nca_file = \"ca.pem\"");
        assert_eq!(
            fixed_changes(&new, &parse(&text)),
            ["server_tls.ca_file", "server_tls.mode"]
        );
    }

    #[test]
    fn slots_are_limited_and_freed() {
        let mut settings = LiveSettings::from_config(&parse(BASE));
        settings.max_clients = 1;
        let live = Arc::new(Live::new(settings));
        let first = live.admit().unwrap();
        assert!(live.admit().is_none());
        drop(first);
        assert!(live.admit().is_some());
    }
}
