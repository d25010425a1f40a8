//! Session pins: under transaction pooling a client gives its server connections back after each
//! transaction, except while a server holds state of the client's session that the client still
//! needs and no other client may inherit — session advisory locks, temporary tables, `WITH HOLD`
//! cursors. Such a connection stays with the client (it is *pinned*) until that state is gone,
//! then goes back to the pool; it never goes back while pinned (the client leaving closes it).
//!
//! What a server holds is asked, not guessed from statement text (locks are re-entrant, a
//! try-lock may fail, an unlock of a lock not held returns false, a temporary table may be
//! `ON COMMIT DROP` or rolled back): after a statement that may change it (`StatementFacts::pin`,
//! or DDL, DISCARD or CLOSE while pinned) the session keeps every connection it holds and, once
//! outside any transaction, runs [`CENSUS_SQL`] on each.
//!
//! Advisory locks of both levels, and temporary tables (like every table not configured sharded),
//! live on one designated shard: the shard of the unsharded tables (`proxy.first_shard`), so the
//! clients of every proxy agree on them.

use std::collections::{BTreeMap, BTreeSet};

use super::session::{End, Session};
use crate::backend::ShardPools;
use crate::config::PoolMode;
use crate::router::cursor::CursorOp;
use crate::router::facts::SessionPin;
use crate::router::{StatementFacts, StatementKind};
use crate::wire::backend::ErrorFields;

/// What the server of a connection holds for its session, as one JSON text: granted advisory
/// locks (outside a transaction only session-level ones remain), relations in the session's
/// temporary schema, and the names of holdable cursors.
pub const CENSUS_SQL: &str = "SELECT pg_catalog.json_build_object(\
'locks', (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() AND granted), \
'temp', (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()), \
'cursors', (SELECT COALESCE(pg_catalog.json_agg(name), '[]') FROM pg_catalog.pg_cursors WHERE is_holdable))::text";

/// A server's answer to [`CENSUS_SQL`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Census {
    locks: u64,
    temp: u64,
    /// Names of the holdable cursors.
    pub cursors: Vec<String>,
}

impl Census {
    /// Reads a census answer; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Census> {
        serde_json::from_str(text).ok()
    }

    /// Why the connection must stay with its client.
    pub fn reasons(&self) -> BTreeSet<SessionPin> {
        [
            (self.locks > 0, SessionPin::AdvisoryLock),
            (self.temp > 0, SessionPin::TempTable),
            (!self.cursors.is_empty(), SessionPin::HoldCursor),
        ]
        .into_iter()
        .filter_map(|(held, reason)| held.then_some(reason))
        .collect()
    }
}

/// One pinned connection: the server process (so a replaced connection is noticed) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pinned {
    server_pid: i32,
    reasons: BTreeSet<SessionPin>,
}

/// The connections a client keeps past its transactions, per shard, and whether a statement may
/// have changed that since the servers were last asked.
#[derive(Debug, Default)]
pub struct Pins {
    /// The client's pid (BackendKeyData), for SHOW CLIENTS.
    client_pid: i32,
    by_shard: BTreeMap<u32, Pinned>,
    unsettled: bool,
}

impl Pins {
    /// No pins yet, for the client of BackendKeyData pid `client_pid`.
    pub fn for_client(client_pid: i32) -> Pins {
        Pins {
            client_pid,
            ..Pins::default()
        }
    }

    /// Notes the statements about to run: one that may create or end session state makes every
    /// held connection stay until the servers are asked.
    pub fn note(&mut self, facts: &[StatementFacts]) {
        let pinned = !self.by_shard.is_empty();
        if facts
            .iter()
            .any(|f| f.pin.is_some() || (pinned && may_end_state(f)))
        {
            self.unsettled = true;
        }
    }

    /// True when the connection to `shard` must stay with the client.
    pub fn keeps(&self, shard: u32) -> bool {
        self.unsettled || self.by_shard.contains_key(&shard)
    }

    /// True when the servers must be asked before connections go back.
    pub fn unsettled(&self) -> bool {
        self.unsettled
    }

    /// Records what the server of `shard` (process `server_pid`) holds; gives the reasons that
    /// newly pin it.
    pub fn settle(&mut self, shard: u32, server_pid: i32, census: &Census) -> Vec<SessionPin> {
        let reasons = census.reasons();
        let before = match self.by_shard.get(&shard) {
            Some(p) if p.server_pid == server_pid => p.reasons.clone(),
            _ => BTreeSet::new(),
        };
        let new = reasons.difference(&before).copied().collect();
        if reasons.is_empty() {
            self.by_shard.remove(&shard);
        } else {
            self.by_shard.insert(
                shard,
                Pinned {
                    server_pid,
                    reasons,
                },
            );
        }
        new
    }

    /// Every held connection was asked.
    pub fn settled(&mut self) {
        self.unsettled = false;
    }

    /// The pinned shards whose connection is no longer the one that holds the state
    /// (`current`: the server pid of the connection held now, per shard).
    pub fn lost(&self, current: impl Fn(u32) -> Option<i32>) -> Vec<u32> {
        self.by_shard
            .iter()
            .filter(|(shard, p)| current(**shard) != Some(p.server_pid))
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// The reasons, as SHOW CLIENTS lists them: `advisory_lock,temp_table`; empty when none.
    pub fn describe(&self) -> String {
        let all: BTreeSet<SessionPin> = self
            .by_shard
            .values()
            .flat_map(|p| p.reasons.iter().copied())
            .collect();
        all.iter().map(|r| r.label()).collect::<Vec<_>>().join(",")
    }
}

/// True for statements that may drop what pins a connection: DDL (DROP TABLE), DISCARD, CLOSE.
fn may_end_state(f: &StatementFacts) -> bool {
    matches!(f.kind, StatementKind::Ddl | StatementKind::Discard { .. })
        || matches!(f.cursor, Some(CursorOp::Close { .. }))
}

impl Session {
    /// Before statements run: notes those that may pin a connection, or refuses those whose
    /// session state pgshard cannot keep under transaction pooling (LISTEN, a SET it cannot
    /// replay).
    pub fn pin_or_refuse(&mut self, facts: &[StatementFacts]) -> Option<ErrorFields> {
        if self.proxy.config.pool.mode == PoolMode::Session {
            return None;
        }
        if let Some(refusal) = crate::planner::rules::session_bound(facts, PoolMode::Transaction) {
            return Some(refusal.into());
        }
        self.pins.note(facts);
        None
    }

    /// After a request, outside any transaction: asks the held connections what session state
    /// they hold when a statement may have changed it, so `release_idle` gives back exactly the
    /// unpinned ones. A pinned connection that was lost (its server closed it, a failover) ends
    /// the session, as the server ended the client's locks and temporary tables with it.
    pub async fn settle_pins(&mut self) -> Result<(), End> {
        if self.proxy.config.pool.mode == PoolMode::Session
            || self.state.txn.is_some()
            || self.state.open_batch_shard.is_some()
        {
            return Ok(());
        }
        if self.pins.unsettled() {
            let shards: Vec<u32> = self.held.keys().copied().collect();
            for shard in shards {
                let Some(conn) = self.held.get_mut(&shard) else {
                    continue;
                };
                let census = match conn.query_text(CENSUS_SQL).await {
                    Ok(Some(text)) => Census::parse(&text),
                    _ => None,
                };
                let server_pid = conn.pid;
                match census {
                    Some(census) => {
                        for reason in self.pins.settle(shard, server_pid, &census) {
                            crate::telemetry::record::session_pinned(reason.label());
                        }
                        self.state.cursors.held_on_shard(shard, &census.cursors);
                    }
                    None => {
                        if let Some(conn) = self.held.remove(&shard) {
                            ShardPools::discard(conn);
                        }
                    }
                }
            }
            self.pins.settled();
            self.proxy
                .admin
                .clients
                .set_pinned(self.pins.client_pid, self.pins.describe());
        }
        let lost = self.pins.lost(|s| self.held.get(&s).map(|c| c.pid));
        if let Some(shard) = lost.first() {
            let mut fields = ErrorFields::error(
                "08006",
                format!(
                    "the server connection to shard {shard} that held this session's advisory locks, temporary tables or WITH HOLD cursors was lost"
                ),
            );
            fields.severity = "FATAL".into();
            self.io.push_error(&fields);
            let _ = self.io.flush().await;
            return Err(End::ClientGone);
        }
        Ok(())
    }

    /// Whether the held connection to `shard` may give way to another server of the shard. An
    /// unpinned one may. A pinned one stays while it is on the shard's primary (a replica read
    /// reads there instead); one on a server that is no longer the primary (a failover) is
    /// closed here: its session state is lost, which `settle_pins` then tells the client.
    pub fn pinned_conn_may_go(&mut self, shard: u32) -> bool {
        if !self.pins.keeps(shard) {
            return true;
        }
        let primary = self.proxy.topology.primary(shard).map(|p| p.index);
        let on = self.held.get(&shard).map(|c| c.server);
        if primary.is_some() && primary != on {
            if let Some(conn) = self.held.remove(&shard) {
                ShardPools::discard(conn);
            }
        }
        false
    }

    /// The client leaves: a connection holding its session state is closed, never handed to
    /// another client.
    pub fn unpin_on_close(&mut self) {
        let pinned: Vec<u32> = self
            .held
            .keys()
            .copied()
            .filter(|s| self.pins.keeps(*s))
            .collect();
        for shard in pinned {
            if let Some(conn) = self.held.remove(&shard) {
                ShardPools::discard(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::facts::analyze;

    fn census(locks: u64, temp: u64, cursors: &[&str]) -> Census {
        Census {
            locks,
            temp,
            cursors: cursors.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn reads_the_census_answer() {
        assert_eq!(
            Census::parse(r#"{"locks" : 2, "temp" : 0, "cursors" : ["c 1"]}"#),
            Some(census(2, 0, &["c 1"]))
        );
        assert_eq!(Census::parse("garbage"), None);
        assert_eq!(Census::parse(r#"{"locks": 1}"#), None);
    }

    #[test]
    fn reasons_follow_what_the_server_holds() {
        use SessionPin::*;
        for (c, want) in [
            (census(0, 0, &[]), vec![]),
            (census(1, 0, &[]), vec![AdvisoryLock]),
            (census(0, 3, &[]), vec![TempTable]),
            (census(0, 0, &["c"]), vec![HoldCursor]),
            (
                census(2, 1, &["c", "d"]),
                vec![AdvisoryLock, TempTable, HoldCursor],
            ),
        ] {
            assert_eq!(c.reasons().into_iter().collect::<Vec<_>>(), want, "{c:?}");
        }
    }

    #[test]
    fn statements_that_may_change_session_state_unsettle() {
        let tables = crate::router::facts::ShardedTables::default();
        let facts = |sql: &str| analyze(sql, &tables);
        // (statement, already pinned, unsettles)
        for (sql, pinned, unsettles) in [
            ("select 1", false, false),
            ("select 1", true, false),
            ("select pg_advisory_lock(7)", false, true),
            ("select pg_advisory_unlock(7)", false, true),
            ("select pg_advisory_xact_lock(7)", false, false),
            ("create temp table t (a int)", false, true),
            ("declare c cursor with hold for select 1", false, true),
            ("drop table t", false, false),
            ("drop table t", true, true),
            ("discard temp", true, true),
            ("close c", true, true),
            ("close all", true, true),
            ("fetch 1 from c", true, false),
        ] {
            let mut pins = Pins::for_client(1);
            if pinned {
                pins.settle(1, 100, &census(0, 1, &[]));
            }
            pins.note(&facts(sql));
            assert_eq!(pins.unsettled(), unsettles, "{sql}");
        }
    }

    #[test]
    fn a_connection_stays_while_its_server_holds_state() {
        let mut pins = Pins::for_client(9);
        assert!(!pins.keeps(1));
        pins.note(&analyze("select pg_advisory_lock(1)", &Default::default()));
        // Until asked, every held connection stays.
        assert!(pins.keeps(1) && pins.keeps(2));
        assert_eq!(
            pins.settle(1, 100, &census(1, 0, &[])),
            vec![SessionPin::AdvisoryLock]
        );
        assert_eq!(pins.settle(2, 200, &census(0, 0, &[])), vec![]);
        pins.settled();
        assert!(pins.keeps(1) && !pins.keeps(2));
        assert_eq!(pins.describe(), "advisory_lock");
        // A second reason on the same connection counts once, the first not again.
        assert_eq!(
            pins.settle(1, 100, &census(1, 1, &[])),
            vec![SessionPin::TempTable]
        );
        assert_eq!(pins.describe(), "advisory_lock,temp_table");
        // The connection held for shard 1 is another server process: the state is lost.
        assert_eq!(pins.lost(|_| Some(101)), vec![1]);
        assert_eq!(pins.lost(|_| None), vec![1]);
        assert!(pins.lost(|_| Some(100)).is_empty());
        // Everything released: the connection may go back.
        assert_eq!(pins.settle(1, 100, &census(0, 0, &[])), vec![]);
        assert!(!pins.keeps(1));
        assert_eq!(pins.describe(), "");
    }
}
