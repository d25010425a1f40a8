//! What the proxy knows about every server of every shard — role, health, WAL position, timeline,
//! lag — as the monitors last sampled it. Read routing asks it which servers may serve a read;
//! writes ask it which server is the primary now. Sessions waiting for a replica to replay their
//! writes subscribe to its updates instead of polling.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use crate::config::Config;

/// A WAL position, as Postgres's `pg_lsn` (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Reads `X/Y` (hex halves), as `pg_current_wal_lsn()::text` prints it.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// One server of one shard. Index 0 is the server the config lists as the shard's primary,
/// 1.. its replicas in config order; which one *is* the primary is the topology's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId {
    pub shard: u32,
    pub index: u16,
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            write!(f, "shard {} server 0", self.shard)
        } else {
            write!(f, "shard {} server {}", self.shard, self.index)
        }
    }
}

/// What a server is, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not sampled yet, or unreachable since start-up.
    Unknown,
    Primary,
    Replica,
    /// Claims to be a primary but is not the one the shard agreed on (an older timeline, or a
    /// second primary): no traffic goes to it.
    Fenced {
        reason: String,
    },
}

/// A monitor's latest sample of one server.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub id: ServerId,
    /// `host:port`.
    pub address: String,
    pub role: Role,
    /// Answered its last health check.
    pub healthy: bool,
    pub timeline: u32,
    /// Primary: `pg_current_wal_lsn()`. Replica: `pg_last_wal_replay_lsn()`.
    pub lsn: Option<Lsn>,
    /// Replica only: how far replay is behind the primary's position sampled at the same moment.
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    pub sampled_at: Option<Instant>,
}

impl ServerState {
    fn new(id: ServerId, address: String) -> ServerState {
        ServerState {
            id,
            address,
            role: Role::Unknown,
            healthy: false,
            timeline: 0,
            lsn: None,
            lag_bytes: None,
            lag_ms: None,
            sampled_at: None,
        }
    }
}

/// Every shard's servers.
pub struct Topology {
    servers: RwLock<BTreeMap<ServerId, ServerState>>,
    /// The primary each shard agreed on, if known. Before the first sample it is server 0.
    primaries: RwLock<BTreeMap<u32, ServerId>>,
    /// Bumped on every update of a shard's servers (readers waiting for replay watch it).
    changes: RwLock<BTreeMap<u32, watch::Sender<u64>>>,
    /// Sessions waiting for fresh samples of a shard, and how its monitor learns of the first.
    interest: RwLock<BTreeMap<u32, Arc<SampleInterest>>>,
}

/// How many sessions want a shard sampled faster (they are waiting for a replica to replay).
#[derive(Default)]
pub struct SampleInterest {
    waiters: AtomicUsize,
    /// Wakes the shard's monitor when a waiter arrives.
    pub(crate) arrived: Notify,
}

impl SampleInterest {
    /// True while some session waits.
    pub fn wanted(&self) -> bool {
        self.waiters.load(Ordering::Acquire) > 0
    }
}

/// Held by a session while it waits for a replica's position: the shard's monitor samples every
/// few milliseconds instead of every `monitor_interval_ms` until the last guard is dropped.
pub struct FreshSamples(Arc<SampleInterest>);

impl Drop for FreshSamples {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Topology {
    /// Every server the config names; roles are unknown until the monitors report.
    pub fn new(config: &Config) -> Arc<Topology> {
        let mut servers = BTreeMap::new();
        let mut primaries = BTreeMap::new();
        let mut changes = BTreeMap::new();
        let mut interest = BTreeMap::new();
        for shard in &config.shards {
            let primary = ServerId {
                shard: shard.id,
                index: 0,
            };
            servers.insert(primary, ServerState::new(primary, shard.address()));
            for (i, replica) in shard.replicas.iter().enumerate() {
                let id = ServerId {
                    shard: shard.id,
                    index: i as u16 + 1,
                };
                servers.insert(id, ServerState::new(id, replica.address()));
            }
            primaries.insert(shard.id, primary);
            changes.insert(shard.id, watch::channel(0).0);
            interest.insert(shard.id, Arc::new(SampleInterest::default()));
        }
        Arc::new(Topology {
            servers: RwLock::new(servers),
            primaries: RwLock::new(primaries),
            changes: RwLock::new(changes),
            interest: RwLock::new(interest),
        })
    }

    /// Sets `shard`'s servers (primary first) as the catalog's topology lists them: a server
    /// whose address is unchanged keeps its state, others start unknown; a new shard's writes go
    /// to its server 0 until the monitors say otherwise.
    pub fn set_shard_servers(&self, shard: u32, addresses: &[String]) {
        if let Ok(mut s) = self.servers.write() {
            s.retain(|id, st| {
                id.shard != shard
                    || addresses
                        .get(usize::from(id.index))
                        .is_some_and(|a| *a == st.address)
            });
            for (index, address) in addresses.iter().enumerate() {
                let id = ServerId {
                    shard,
                    index: index as u16,
                };
                s.entry(id)
                    .or_insert_with(|| ServerState::new(id, address.clone()));
            }
        }
        let new = self
            .changes
            .write()
            .map(|mut c| {
                let new = !c.contains_key(&shard);
                c.entry(shard).or_insert_with(|| watch::channel(0).0);
                new
            })
            .unwrap_or(false);
        if let Ok(mut i) = self.interest.write() {
            i.entry(shard).or_default();
        }
        if new {
            if let Ok(mut p) = self.primaries.write() {
                p.insert(shard, ServerId { shard, index: 0 });
            }
        } else if let Ok(mut p) = self.primaries.write() {
            // A primary whose server left the list is no longer trusted with writes.
            if p.get(&shard)
                .is_some_and(|id| usize::from(id.index) >= addresses.len())
            {
                p.remove(&shard);
            }
        }
        self.bump(shard);
    }

    /// Forgets `shard` (dropped from the catalog's topology).
    pub fn remove_shard(&self, shard: u32) {
        if let Ok(mut s) = self.servers.write() {
            s.retain(|id, _| id.shard != shard);
        }
        if let Ok(mut p) = self.primaries.write() {
            p.remove(&shard);
        }
        self.bump(shard);
        if let Ok(mut c) = self.changes.write() {
            c.remove(&shard);
        }
        if let Ok(mut i) = self.interest.write() {
            i.remove(&shard);
        }
    }

    /// The server writes for `shard` go to now; `None` for an unknown shard, or while no server
    /// of it can be trusted with writes (its recorded primary is not in this proxy's config).
    pub fn primary(&self, shard: u32) -> Option<ServerId> {
        self.primaries
            .read()
            .ok()
            .and_then(|p| p.get(&shard).copied())
    }

    /// Records which server is `shard`'s primary (failover discovery).
    pub fn set_primary(&self, id: ServerId) {
        if let Ok(mut p) = self.primaries.write() {
            p.insert(id.shard, id);
        }
        self.bump(id.shard);
    }

    /// Leaves `shard` without a primary (no server can be trusted with its writes).
    pub fn clear_primary(&self, shard: u32) {
        if let Ok(mut p) = self.primaries.write() {
            p.remove(&shard);
        }
        self.bump(shard);
    }

    /// A copy of one server's state.
    pub fn server(&self, id: ServerId) -> Option<ServerState> {
        self.servers.read().ok().and_then(|s| s.get(&id).cloned())
    }

    /// Copies of every server's state of `shard`, server 0 first.
    pub fn servers_of(&self, shard: u32) -> Vec<ServerState> {
        self.servers
            .read()
            .map(|s| {
                s.values()
                    .filter(|st| st.id.shard == shard)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Copies of every server's state.
    pub fn all(&self) -> Vec<ServerState> {
        self.servers
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores a monitor's sample and wakes readers waiting on that shard.
    pub fn update(&self, state: ServerState) {
        let shard = state.id.shard;
        if let Ok(mut s) = self.servers.write() {
            s.insert(state.id, state);
        }
        self.bump(shard);
    }

    /// Stores one sampling round of a shard at once and wakes its waiting readers once. A
    /// replica's position never moves back on the same timeline: a session may have seen it
    /// further along (`note_replayed`) after the round's sample was taken.
    pub fn update_shard(&self, shard: u32, states: Vec<ServerState>) {
        if let Ok(mut s) = self.servers.write() {
            for mut state in states {
                if let Some(known) = s.get(&state.id) {
                    state.lsn = kept_replay_position(known, &state);
                }
                s.insert(state.id, state);
            }
        }
        self.bump(shard);
    }

    /// A session asked replica `id` how far it has replayed and got `lsn`: later reads of every
    /// session may count on it without asking again or waiting for the monitor's next round.
    pub fn note_replayed(&self, id: ServerId, lsn: Lsn) {
        let Ok(mut s) = self.servers.write() else {
            return;
        };
        if let Some(state) = s.get_mut(&id) {
            if state.role == Role::Replica && state.lsn.is_none_or(|known| known < lsn) {
                state.lsn = Some(lsn);
            }
        }
    }

    /// Asks `shard`'s monitor for fast sampling while the returned guard lives (take it before
    /// waiting on `watch`). `None` for an unknown shard.
    pub fn want_fresh_samples(&self, shard: u32) -> Option<FreshSamples> {
        let interest = self.sample_interest(shard)?;
        interest.waiters.fetch_add(1, Ordering::AcqRel);
        interest.arrived.notify_one();
        Some(FreshSamples(interest))
    }

    /// The shard's waiter count, for its monitor.
    pub fn sample_interest(&self, shard: u32) -> Option<Arc<SampleInterest>> {
        self.interest.read().ok()?.get(&shard).cloned()
    }

    /// A receiver that changes whenever `shard`'s servers are sampled.
    pub fn watch(&self, shard: u32) -> Option<watch::Receiver<u64>> {
        self.changes
            .read()
            .ok()?
            .get(&shard)
            .map(|tx| tx.subscribe())
    }

    fn bump(&self, shard: u32) {
        let Ok(changes) = self.changes.read() else {
            return;
        };
        if let Some(tx) = changes.get(&shard) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Replicas of `shard` that may serve reads: healthy, a replica, within the lag bounds
    /// (0 = no bound), and — when `min_lsn` is given — replayed at least that far.
    pub fn readable_replicas(
        &self,
        shard: u32,
        max_lag_bytes: u64,
        max_lag_ms: u64,
        min_lsn: Option<Lsn>,
    ) -> Vec<ServerState> {
        self.servers_of(shard)
            .into_iter()
            .filter(|s| s.healthy && s.role == Role::Replica)
            .filter(|s| max_lag_bytes == 0 || s.lag_bytes.is_some_and(|l| l <= max_lag_bytes))
            .filter(|s| max_lag_ms == 0 || s.lag_ms.is_some_and(|l| l <= max_lag_ms))
            .filter(|s| match min_lsn {
                Some(min) => s.lsn.is_some_and(|l| l >= min),
                None => true,
            })
            .collect()
    }
}

/// The position to keep for a replica when a new sample arrives: the furthest seen, as long as
/// it is the same replica on the same timeline (replay only moves forward there).
fn kept_replay_position(known: &ServerState, sample: &ServerState) -> Option<Lsn> {
    let same_history = known.role == Role::Replica
        && sample.role == Role::Replica
        && known.timeline == sample.timeline
        && known.address == sample.address;
    match (known.lsn, sample.lsn) {
        (Some(seen), Some(sampled)) if same_history && seen > sampled => Some(seen),
        _ => sample.lsn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use futures_util::FutureExt;

    fn config() -> Config {
        let text = r#"
[proxy]
[[users]]
name = "app"
auth = "trust"
[catalog]
url = "postgres://u:p@127.0.0.1:7000/catalog"
[server_auth]
user = "u"
[[shards]]
id = 0
port = 7001
database = "app"
replicas = [{ port = 7101 }, { host = "127.0.0.1", port = 7102 }]
[[shards]]
id = 1
port = 7002
database = "app"
"#;
        Config::from_toml(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn lsn_text_round_trips() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert!(Lsn::parse("0/1") < Lsn::parse("1/0"));
        assert_eq!(Lsn::parse("zz"), None);
        assert_eq!(Lsn::parse("1/2/3"), None);
    }

    #[test]
    fn servers_start_unknown_with_server_zero_as_primary() {
        let t = Topology::new(&config());
        let first = t.servers_of(0);
        assert_eq!(first.len(), 3);
        assert_eq!(first[2].address, "127.0.0.1:7102");
        assert!(first.iter().all(|s| s.role == Role::Unknown));
        assert_eq!(t.primary(0), Some(ServerId { shard: 0, index: 0 }));
        assert_eq!(t.servers_of(1).len(), 1);
    }

    #[test]
    fn readable_replicas_respect_health_lag_and_position() {
        let t = Topology::new(&config());
        let mut rx = t.watch(0).unwrap();
        for (index, lag, lsn) in [(1u16, 100u64, 500u64), (2, 10_000, 900)] {
            let mut s = t.server(ServerId { shard: 0, index }).unwrap();
            s.role = Role::Replica;
            s.healthy = true;
            s.lag_bytes = Some(lag);
            s.lag_ms = Some(5);
            s.lsn = Some(Lsn(lsn));
            t.update(s);
        }
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let ids = |v: Vec<ServerState>| v.into_iter().map(|s| s.id.index).collect::<Vec<_>>();
        assert_eq!(ids(t.readable_replicas(0, 0, 0, None)), vec![1, 2]);
        assert_eq!(ids(t.readable_replicas(0, 1000, 0, None)), vec![1]);
        assert_eq!(ids(t.readable_replicas(0, 0, 1, None)), Vec::<u16>::new());
        assert_eq!(ids(t.readable_replicas(0, 0, 0, Some(Lsn(600)))), vec![2]);
        let mut s = t.server(ServerId { shard: 0, index: 2 }).unwrap();
        s.healthy = false;
        t.update(s);
        assert_eq!(
            ids(t.readable_replicas(0, 0, 0, Some(Lsn(600)))),
            Vec::<u16>::new()
        );
        t.set_primary(ServerId { shard: 0, index: 1 });
        assert_eq!(t.primary(0), Some(ServerId { shard: 0, index: 1 }));
    }

    #[test]
    fn fresh_sample_interest_lasts_while_a_guard_lives() {
        let t = Topology::new(&config());
        let interest = t.sample_interest(0).unwrap();
        assert!(!interest.wanted());
        let a = t.want_fresh_samples(0).unwrap();
        let b = t.want_fresh_samples(0).unwrap();
        assert!(interest.wanted());
        assert!(!t.sample_interest(1).unwrap().wanted());
        drop(a);
        assert!(interest.wanted());
        drop(b);
        assert!(!interest.wanted());
        assert!(t.want_fresh_samples(7).is_none());
    }

    #[test]
    fn shards_are_added_changed_and_removed_at_run_time() {
        let t = Topology::new(&config());
        let a = |p: u16| format!("127.0.0.1:{p}");
        t.set_shard_servers(10, &[a(7010), a(7110)]);
        assert_eq!(
            t.primary(10),
            Some(ServerId {
                shard: 10,
                index: 0
            })
        );
        assert_eq!(t.servers_of(10).len(), 2);
        assert!(t.watch(10).is_some() && t.want_fresh_samples(10).is_some());
        // Shard 0 loses its first replica: server 1 is now 7102, server 2 is gone.
        let mut s = t.server(ServerId { shard: 0, index: 0 }).unwrap();
        s.healthy = true;
        t.update(s);
        t.set_shard_servers(0, &[a(7001), a(7102)]);
        let zero = t.servers_of(0);
        assert_eq!(zero.len(), 2);
        assert!(zero[0].healthy, "an unchanged server keeps its state");
        assert_eq!(zero[1].address, a(7102));
        assert!(!zero[1].healthy);
        t.set_primary(ServerId { shard: 0, index: 1 });
        t.set_shard_servers(0, &[a(7001)]);
        assert_eq!(
            t.primary(0),
            None,
            "a primary that left the list is not trusted"
        );
        let mut rx = t.watch(10).unwrap();
        t.remove_shard(10);
        assert!(rx.changed().now_or_never().is_some());
        assert!(t.servers_of(10).is_empty());
        assert_eq!(t.primary(10), None);
        assert!(t.watch(10).is_none());
    }

    #[test]
    fn a_shard_can_be_left_without_a_primary() {
        let t = Topology::new(&config());
        t.clear_primary(1);
        assert_eq!(t.primary(1), None);
        t.set_primary(ServerId { shard: 1, index: 0 });
        assert_eq!(t.primary(1), Some(ServerId { shard: 1, index: 0 }));
    }

    #[test]
    fn replay_positions_seen_by_sessions_are_kept_until_the_monitor_passes_them() {
        let t = Topology::new(&config());
        let id = ServerId { shard: 0, index: 1 };
        let sample = |lsn: u64, timeline: u32| {
            let mut s = t.server(id).unwrap();
            s.role = Role::Replica;
            s.healthy = true;
            s.timeline = timeline;
            s.lsn = Some(Lsn(lsn));
            s
        };
        t.update_shard(0, vec![sample(100, 1)]);
        t.note_replayed(id, Lsn(150));
        assert_eq!(t.server(id).unwrap().lsn, Some(Lsn(150)));
        t.note_replayed(id, Lsn(120));
        assert_eq!(
            t.server(id).unwrap().lsn,
            Some(Lsn(150)),
            "never moves back"
        );
        t.update_shard(0, vec![sample(130, 1)]);
        assert_eq!(
            t.server(id).unwrap().lsn,
            Some(Lsn(150)),
            "an older sample does not undo what a session saw"
        );
        t.update_shard(0, vec![sample(200, 1)]);
        assert_eq!(t.server(id).unwrap().lsn, Some(Lsn(200)));
        t.update_shard(0, vec![sample(50, 2)]);
        assert_eq!(
            t.server(id).unwrap().lsn,
            Some(Lsn(50)),
            "a new timeline starts over"
        );
        let primary = ServerId { shard: 0, index: 0 };
        t.note_replayed(primary, Lsn(999));
        assert_ne!(
            t.server(primary).unwrap().lsn,
            Some(Lsn(999)),
            "only replicas take a replay position"
        );
    }
}
