//! Which server a read runs on. Reads outside a writing transaction may go to streaming replicas
//! (`[replicas] read_from`), within the lag bounds, and subject to the session's read-your-writes
//! mode: `pin` keeps reads on the primary for a while after a write; `lsn` sends a read to a
//! replica only once it has replayed past the session's causal token, waiting up to
//! `lsn_wait_timeout_ms` before falling back to the primary. Never to a replica that is behind.

use std::time::{Duration, Instant};

use rand::RngExt;

use super::session::{End, Session};
use crate::backend::topology::{Lsn, ServerId, ServerState};
use crate::backend::ServerConn;
use crate::config::{Balance, ReadFrom, ReadYourWrites};
use crate::exec::exchange::{Outcome, Step};
use crate::router::{StatementFacts, StatementKind};
use crate::session::causal_token::{CausalToken, Position};
pub use crate::session::reads::ReadState;
use crate::wire::backend::{self as be, ErrorFields};

/// The ParameterStatus name of the token.
pub const TOKEN_PARAMETER: &str = "pgshard.causal_token";

impl Session {
    /// Picks the server of each shard a read request runs on; writes and transactions keep the
    /// primary. Call before running the request.
    pub async fn route_reads(&mut self, shards: &[u32], facts: &[StatementFacts]) {
        self.state.reads.servers.clear();
        if !self.may_use_replicas(facts) {
            return;
        }
        for &shard in shards {
            match self.pick_read_server(shard).await {
                Some(id) => {
                    self.proxy.replica_metrics.read_served(id);
                    self.state.reads.servers.insert(shard, id);
                }
                None => {
                    if let Some(primary) = self.proxy.topology.primary(shard) {
                        self.proxy.replica_metrics.read_served(primary);
                    }
                }
            }
        }
    }

    fn may_use_replicas(&self, facts: &[StatementFacts]) -> bool {
        let block_allows = match &self.state.txn {
            None => true,
            Some(t) => t.read_only && !t.implicit,
        };
        self.proxy.config.replicas.read_from != ReadFrom::Primary
            && block_allows
            && self.state.open_batch_shard.is_none()
            && !facts.is_empty()
            && facts
                .iter()
                .all(|f| f.kind == StatementKind::Select && !f.is_write && f.local.is_none())
    }

    /// The replica (or, with `read_from = "any"`, possibly the primary) for one shard's read;
    /// `None` means the primary.
    async fn pick_read_server(&mut self, shard: u32) -> Option<ServerId> {
        let proxy = self.proxy.clone();
        let cfg = &proxy.config.replicas;
        let topology = &proxy.topology;
        let primary = topology.primary(shard)?;
        let primary_state = topology.server(primary)?;
        let min_lsn = match cfg.read_your_writes {
            ReadYourWrites::Off => None,
            ReadYourWrites::Pin => {
                let window = Duration::from_millis(cfg.pin_window_ms);
                if self
                    .state
                    .reads
                    .last_write
                    .get(&shard)
                    .is_some_and(|t| t.elapsed() < window)
                {
                    return None;
                }
                None
            }
            ReadYourWrites::Lsn => {
                let version = proxy.map.current().version;
                match self
                    .state
                    .reads
                    .token
                    .requirement(shard, version, primary_state.timeline)
                {
                    Ok(min) => min,
                    // Written before a failover or a map change: only the primary is safe.
                    Err(_) => return None,
                }
            }
        };
        let deadline = Instant::now() + Duration::from_millis(cfg.lsn_wait_timeout_ms);
        let mut changes = topology.watch(shard)?;
        let started = Instant::now();
        // Taken at the first wait: the shard's monitor samples every few ms while it is held.
        let mut fresh = None;
        loop {
            let mut candidates =
                topology.readable_replicas(shard, cfg.max_lag_bytes, cfg.max_lag_ms, min_lsn);
            if cfg.read_from == ReadFrom::Any {
                if let Some(p) = topology.server(primary).filter(|p| p.healthy) {
                    candidates.push(p);
                }
            }
            if !candidates.is_empty() {
                if fresh.is_some() {
                    proxy.replica_metrics.lsn_waited(started.elapsed());
                }
                return Some(self.balance(candidates));
            }
            // Only worth waiting when a fit replica is merely behind the token.
            let behind = min_lsn.is_some()
                && !topology
                    .readable_replicas(shard, cfg.max_lag_bytes, cfg.max_lag_ms, None)
                    .is_empty();
            let left = deadline.saturating_duration_since(Instant::now());
            if !behind || left.is_zero() {
                if fresh.is_some() {
                    proxy.replica_metrics.lsn_waited(started.elapsed());
                }
                if behind {
                    tracing::debug!(shard, waited = ?started.elapsed(), "no replica caught up; reading from the primary");
                }
                proxy.replica_metrics.primary_fallback();
                return None;
            }
            if fresh.is_none() {
                fresh = topology.want_fresh_samples(shard);
            }
            match tokio::time::timeout(left, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    proxy.replica_metrics.lsn_waited(started.elapsed());
                    proxy.replica_metrics.primary_fallback();
                    return None;
                }
            }
        }
    }

    fn balance(&mut self, mut candidates: Vec<ServerState>) -> ServerId {
        match self.proxy.config.replicas.balance {
            Balance::RoundRobin => {
                self.state.reads.next = self.state.reads.next.wrapping_add(1);
                candidates[self.state.reads.next % candidates.len()].id
            }
            Balance::LeastLag => {
                candidates.sort_by_key(|s| std::cmp::Reverse(s.lsn.unwrap_or(Lsn(0))));
                candidates[0].id
            }
            Balance::Random => {
                let i = rand::rng().random_range(0..candidates.len());
                candidates[i].id
            }
        }
    }

    /// Brings the causal token (and the pin times) up to date with the writes the last request
    /// committed, and tells the client the new token.
    pub async fn publish_writes(&mut self) {
        if self.state.reads.pending.is_empty() {
            return;
        }
        let shards = std::mem::take(&mut self.state.reads.pending);
        let proxy = self.proxy.clone();
        let cfg = &proxy.config.replicas;
        if cfg.read_from == ReadFrom::Primary {
            return;
        }
        let now = Instant::now();
        for &shard in &shards {
            self.state.reads.last_write.insert(shard, now);
        }
        if cfg.read_your_writes != ReadYourWrites::Lsn {
            return;
        }
        let mut changed = false;
        for shard in shards {
            if proxy.topology.servers_of(shard).len() < 2 {
                continue;
            }
            // Any connection to the primary will do: the commit was acknowledged, so the
            // primary's current position is at or past it.
            let Some(primary) = proxy.topology.primary(shard) else {
                continue;
            };
            let timeline = proxy
                .topology
                .server(primary)
                .map(|s| s.timeline)
                .unwrap_or(0);
            let Ok(mut conn) = proxy.pools.get_server_as(&self.server_login, primary).await else {
                // Unknown position: reads of this shard stay on the primary for a while.
                self.state.reads.token.shards.remove(&shard);
                continue;
            };
            match conn.query_text("SELECT pg_current_wal_lsn()").await {
                Ok(Some(text)) => {
                    if let Some(lsn) = Lsn::parse(&text) {
                        self.state
                            .reads
                            .token
                            .advance(shard, Position { timeline, lsn });
                        changed = true;
                    }
                }
                _ => crate::backend::ShardPools::discard(conn),
            }
        }
        if changed {
            self.state.reads.token.map_version = proxy.map.current().version;
            let text = self.state.reads.token.to_string();
            self.io.push(&be::parameter_status(TOKEN_PARAMETER, &text));
        }
    }

    /// A write that ran outside any block committed on `shard` when its request ended: the
    /// token must cover it.
    pub fn note_autocommit_write(
        &mut self,
        shard: u32,
        autocommit: bool,
        facts: &[StatementFacts],
        outcome: &crate::exec::exchange::Outcome,
    ) {
        let wrote = facts
            .iter()
            .any(|f| f.is_write || f.kind == StatementKind::Ddl);
        if autocommit && self.state.txn.is_none() && wrote && outcome.error.is_none() {
            self.state.reads.pending.insert(shard);
        }
    }

    /// Runs a request on one shard like `run_single`; a read outside a transaction that a replica
    /// could not serve (it went away, cancelled the read for a recovery conflict, or shut down)
    /// before any of its answer reached the client is run once more on the primary.
    pub async fn run_single_read(
        &mut self,
        shard: u32,
        join_txn: bool,
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Result<Option<Outcome>, End> {
        let on_replica = self.state.txn.is_none() && self.state.reads.servers.contains_key(&shard);
        let mark = self.io.mark();
        let outcome = self.run_single(shard, join_txn, &steps).await?;
        let retry = on_replica
            && match &outcome {
                None => true,
                Some(o) => o.error.as_ref().is_some_and(|e| replica_gave_up(&e.code)),
            };
        if retry && self.state.txn.is_none() && self.io.rewind(mark) {
            let server = self.state.reads.servers.remove(&shard);
            tracing::debug!(
                shard,
                ?server,
                "read failed on a replica; retrying on the primary"
            );
            return self.run_single(shard, join_txn, &steps).await;
        }
        Ok(outcome)
    }

    /// `SET pgshard.causal_token = '…'`: adopts another connection's writes.
    pub fn adopt_token(&mut self, text: &str) -> Result<(), ErrorFields> {
        let token = CausalToken::parse(text).map_err(|e| {
            ErrorFields::error("22023", e.to_string())
                .with_hint("pass the value another connection reported as pgshard.causal_token")
        })?;
        self.state.reads.token.merge(&token);
        Ok(())
    }
}

/// Errors after which a replica read is worth one more try elsewhere: recovery conflicts,
/// shutdowns, lost connections, and a replica refusing something only a primary can do.
fn replica_gave_up(code: &str) -> bool {
    matches!(
        code,
        "40001" | "57P01" | "57P02" | "57P03" | "57P04" | "25006"
    ) || code.starts_with("08")
}

#[cfg(test)]
mod tests {
    use super::replica_gave_up;

    #[test]
    fn retryable_replica_errors() {
        for code in ["40001", "57P01", "08006", "08001", "25006"] {
            assert!(replica_gave_up(code), "{code}");
        }
        for code in ["42P01", "23505", "22012", "57014"] {
            assert!(!replica_gave_up(code), "{code}");
        }
    }
}
