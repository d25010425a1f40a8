//! Which server a read runs on. Reads outside a writing transaction may go to streaming replicas
//! (`[replicas] read_from`), within the lag bounds, and subject to the session's read-your-writes
//! mode: `pin` keeps reads on the primary for a while after a write; `lsn` sends a read to a
//! replica only once it has replayed past the session's causal token (asking the replica when the
//! monitor's sample is older than the token), waiting up to `lsn_wait_timeout_ms` (default 0: not
//! at all) before falling back to the primary. Never to a replica that is behind.

use std::time::{Duration, Instant};

use rand::RngExt;

use super::session::{End, Session};
use crate::backend::conn::COMMIT_LSN_QUERY;
use crate::backend::topology::{Lsn, ServerId, ServerState};
use crate::backend::{ServerConn, ShardPools};
use crate::config::{Balance, ReadFrom, ReadYourWrites};
use crate::exec::exchange::{Outcome, Step};
use crate::router::{StatementFacts, StatementKind};
use crate::session::causal_token::{CausalToken, Position};
pub use crate::session::reads::ReadState;
use crate::wire::backend::{self as be, ErrorFields};

/// The ParameterStatus name of the token.
pub const TOKEN_PARAMETER: &str = "pgshard.causal_token";

/// How far a replica has replayed, asked on the connection a waiting read will use.
const REPLAY_LSN_QUERY: &str = "SELECT pg_last_wal_replay_lsn()";
/// For this long the question is asked again as soon as answered: replay on a healthy replica
/// usually catches up within a round trip or two, well under the timer's millisecond.
const REPLAY_ASK_AGAIN_FOR: Duration = Duration::from_millis(2);
/// Then the pause between two questions, doubled each time up to the last.
const REPLAY_FIRST_PAUSE: Duration = Duration::from_millis(1);
const REPLAY_MAX_PAUSE: Duration = Duration::from_millis(5);

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
            && facts.iter().all(|f| {
                f.kind == StatementKind::Select && !f.is_write && !f.locks_rows && f.local.is_none()
            })
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
                if self.state.reads.unknown.contains(&shard) {
                    // A write whose position was lost: only the primary surely has it.
                    return None;
                }
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
        let mut candidates =
            topology.readable_replicas(shard, cfg.max_lag_bytes, cfg.max_lag_ms, min_lsn);
        if cfg.read_from == ReadFrom::Any {
            if let Some(p) = topology.server(primary).filter(|p| p.healthy) {
                candidates.push(p);
            }
        }
        if !candidates.is_empty() {
            return Some(self.balance(candidates));
        }
        // The monitor's last samples show no replica past the token. Only worth waiting when a
        // fit replica is merely behind it: then ask that replica itself (the one furthest
        // along), on the connection the read will use.
        let behind = min_lsn.and_then(|min| {
            topology
                .readable_replicas(shard, cfg.max_lag_bytes, cfg.max_lag_ms, None)
                .into_iter()
                .max_by_key(|s| s.lsn.unwrap_or(Lsn(0)))
                .map(|s| (s.id, min))
        });
        // Inside a READ ONLY block the question would run in the client's transaction: the
        // primary serves the read instead.
        let Some((replica, min)) = behind.filter(|_| self.state.txn.is_none()) else {
            proxy.replica_metrics.primary_fallback();
            return None;
        };
        let started = Instant::now();
        let deadline = started + Duration::from_millis(cfg.lsn_wait_timeout_ms);
        self.state.reads.servers.insert(shard, replica);
        let caught_up = self.await_replay(shard, replica, min, deadline).await;
        proxy.replica_metrics.lsn_waited(started.elapsed());
        self.state.reads.servers.remove(&shard);
        if caught_up {
            return Some(replica);
        }
        tracing::debug!(shard, waited = ?started.elapsed(), "no replica caught up; reading from the primary");
        proxy.replica_metrics.primary_fallback();
        None
    }

    /// Asks `replica` how far it has replayed, on the connection the read will use, until it
    /// reaches `min` or `deadline` passes (false: the read goes to the primary). Asked again at
    /// once for the first couple of milliseconds, then with growing pauses.
    async fn await_replay(
        &mut self,
        shard: u32,
        replica: ServerId,
        min: Lsn,
        deadline: Instant,
    ) -> bool {
        if self.ensure_conn(shard, false).await.is_err() {
            return false;
        }
        let started = Instant::now();
        let mut pause = REPLAY_FIRST_PAUSE;
        loop {
            let Some(conn) = self
                .held
                .get_mut(&shard)
                .filter(|c| c.server == replica.index)
            else {
                // A connection the session must keep (a pin) is to another server.
                return false;
            };
            match conn.query_text(REPLAY_LSN_QUERY).await {
                Ok(text) => {
                    if let Some(replayed) = text.as_deref().and_then(Lsn::parse) {
                        self.proxy.topology.note_replayed(replica, replayed);
                        if replayed >= min {
                            return true;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(shard, error = %e, "asking a replica for its replay position failed");
                    if let Some(conn) = self.held.remove(&shard) {
                        ShardPools::discard(conn);
                    }
                    return false;
                }
            }
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return false;
            }
            if now.duration_since(started) >= REPLAY_ASK_AGAIN_FOR {
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(REPLAY_MAX_PAUSE);
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

    /// True when the session learns positions after its writes on `shard` (`lsn` mode, the
    /// shard has replicas to read from).
    fn wants_commit_position(&self, shard: u32) -> bool {
        let cfg = &self.proxy.config.replicas;
        cfg.read_your_writes == ReadYourWrites::Lsn
            && cfg.read_from != ReadFrom::Primary
            && self.proxy.topology.servers_of(shard).len() >= 2
    }

    /// Before a request on one shard that ends with a ReadyForQuery: when it may commit a write
    /// (outside any block, or the COMMIT of a block that shard holds alone), the position
    /// question rides behind it (see `ReadState::commit_probe`). Not behind a COPY: the question
    /// would land in the copy stream.
    pub fn ask_commit_position(&mut self, shard: u32, autocommit: bool, facts: &[StatementFacts]) {
        let writes = autocommit
            && facts
                .iter()
                .any(|f| f.is_write || f.kind == StatementKind::Ddl);
        let commits = self.state.txn.as_ref().is_some_and(|t| t.has(shard))
            && facts.iter().any(|f| f.kind == StatementKind::Commit);
        self.state.reads.commit_probe = (writes || commits)
            && !facts
                .iter()
                .any(|f| matches!(f.kind, StatementKind::Copy { .. }))
            && self.wants_commit_position(shard);
    }

    /// Before the proxy commits a block on `participants`: each commit asks for the position in
    /// the same write (`ServerConn::commit_silently`).
    pub fn ask_commit_positions(&mut self, participants: &[u32]) {
        for &shard in participants {
            let primary = self.proxy.topology.primary(shard);
            let want = self.wants_commit_position(shard);
            if let Some(conn) = self.held.get_mut(&shard) {
                // Only a primary knows the position (a READ ONLY block may be on a replica).
                let want = want && primary.is_some_and(|p| p.index == conn.server);
                conn.want_commit_lsn = want;
                conn.commit_lsn = None;
            }
        }
    }

    /// After the proxy committed a block: the positions read behind each participant's commit.
    pub fn take_commit_positions(&mut self, participants: &[u32]) {
        for &shard in participants {
            if let Some(conn) = self.held.get_mut(&shard) {
                conn.want_commit_lsn = false;
                let lsn = conn.commit_lsn.take();
                self.state.reads.probed(shard, lsn);
            }
        }
    }

    /// Brings the causal token (and the pin times) up to date with the writes the last request
    /// committed, and tells the client the new token. A position read behind the commit costs
    /// nothing more; a write without one (a path that does not ask, a lost answer) costs a
    /// question to the shard's primary on another connection, and if that fails too the shard's
    /// reads stay on the primary.
    pub async fn publish_writes(&mut self) {
        if self.state.reads.pending.is_empty() {
            self.state.reads.clear_positions();
            return;
        }
        let shards = std::mem::take(&mut self.state.reads.pending);
        let proxy = self.proxy.clone();
        let cfg = &proxy.config.replicas;
        if cfg.read_from == ReadFrom::Primary {
            self.state.reads.clear_positions();
            return;
        }
        let now = Instant::now();
        for &shard in &shards {
            self.state.reads.last_write.insert(shard, now);
        }
        if cfg.read_your_writes != ReadYourWrites::Lsn {
            self.state.reads.clear_positions();
            return;
        }
        let mut changed = false;
        for shard in shards {
            if proxy.topology.servers_of(shard).len() < 2 {
                continue;
            }
            let Some(primary) = proxy.topology.primary(shard) else {
                continue;
            };
            let timeline = proxy
                .topology
                .server(primary)
                .map(|s| s.timeline)
                .unwrap_or(0);
            let lsn = match self.state.reads.known_position(shard) {
                Some(lsn) => Some(lsn),
                None => self.ask_primary_position(primary).await,
            };
            match lsn {
                Some(lsn) => {
                    self.state.reads.unknown.remove(&shard);
                    self.state
                        .reads
                        .token
                        .advance(shard, Position { timeline, lsn });
                    changed = true;
                }
                // Unknown position: reads of this shard stay on the primary.
                None => {
                    self.state.reads.unknown.insert(shard);
                }
            }
        }
        self.state.reads.clear_positions();
        if changed {
            self.state.reads.token.map_version = proxy.map.current().version;
            let text = self.state.reads.token.to_string();
            self.io.push(&be::parameter_status(TOKEN_PARAMETER, &text));
        }
    }

    /// The primary's position now, on a connection of its own: any connection will do, the
    /// commit was acknowledged, so the primary's current position is at or past it.
    async fn ask_primary_position(&self, primary: ServerId) -> Option<Lsn> {
        let mut conn = self
            .proxy
            .pools
            .get_server_as(&self.server_login, primary)
            .await
            .ok()?;
        match conn.query_text(COMMIT_LSN_QUERY).await {
            Ok(Some(text)) => Lsn::parse(&text),
            Ok(None) => None,
            Err(_) => {
                crate::backend::ShardPools::discard(conn);
                None
            }
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
        if self.proxy.config.replicas.read_from == ReadFrom::Primary {
            // Every read goes to the primary: `publish_writes` would drop what is noted here.
            return;
        }
        let wrote = facts
            .iter()
            .any(|f| f.is_write || f.kind == StatementKind::Ddl);
        if autocommit && self.state.txn.is_none() && wrote && outcome.error.is_none() {
            self.state.reads.wrote(shard);
        } else {
            // An answer behind a request that committed nothing covers nothing later.
            self.state.reads.probed(shard, None);
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
