//! The state of one transaction block a client has open: which shards it reached, and what a shard
//! that joins late must replay (the BEGIN with its options, SET LOCAL, open savepoints) so it runs
//! in the same transaction the client sees.

use std::collections::BTreeMap;

use super::statement::SavepointOp;
use crate::sql_text::quote_ident;

/// One statement a late-joining shard replays after BEGIN, in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replay {
    /// `SET LOCAL`, `SET TRANSACTION …`: transaction-scoped settings.
    Setting(String),
    /// An open savepoint, by name.
    Savepoint(String),
}

/// An explicit transaction block the client opened, or an implicit one the proxy opened so that a
/// statement touching several shards commits atomically.
#[derive(Debug)]
pub struct Txn {
    /// The client's BEGIN text (with its isolation level / READ ONLY options).
    begin_sql: String,
    /// How a shard joining the block begins it (`statement::joining_begin`).
    join_begin: String,
    replay: Vec<Replay>,
    /// Shards the block has reached, in the order they joined.
    pub participants: Vec<u32>,
    /// The proxy refused a statement inside the block: like Postgres, everything but the end of
    /// the block (or ROLLBACK TO SAVEPOINT) is refused until then.
    pub refused: bool,
    /// Opened by the proxy around one statement; the client never saw a BEGIN.
    pub implicit: bool,
    /// Declared READ ONLY: its shards may be replicas.
    pub read_only: bool,
    /// The session's settings when each open savepoint was made (name, settings), oldest first:
    /// a ROLLBACK TO undoes the session-level SETs made after it (a tenant's search_path), as
    /// Postgres does.
    settings_at_savepoints: Vec<(String, BTreeMap<String, String>)>,
}

impl Txn {
    /// A block opened by the client's `begin_sql`.
    pub fn explicit(begin_sql: &str) -> Txn {
        let begin_sql = begin_sql.trim().trim_end_matches(';');
        Txn {
            join_begin: super::statement::joining_begin(begin_sql),
            begin_sql: begin_sql.to_string(),
            replay: Vec::new(),
            participants: Vec::new(),
            refused: false,
            implicit: false,
            read_only: super::statement::begins_read_only(begin_sql),
            settings_at_savepoints: Vec::new(),
        }
    }

    /// A block the proxy opens around a statement that spans shards.
    pub fn implicit() -> Txn {
        Txn {
            implicit: true,
            ..Txn::explicit("BEGIN")
        }
    }

    /// A block a shard started on its own (a request carrying its own BEGIN), already on `shard`.
    pub fn started_on(shard: u32) -> Txn {
        Txn {
            participants: vec![shard],
            ..Txn::explicit("BEGIN")
        }
    }

    /// The BEGIN the client opened the block with (for `COMMIT AND CHAIN`).
    pub fn begin_sql(&self) -> &str {
        &self.begin_sql
    }

    /// The first shard the block reached: where statements that any shard can answer go.
    pub fn first(&self) -> Option<u32> {
        self.participants.first().copied()
    }

    /// True once the block runs on more than one shard (its commit needs two phases).
    pub fn distributed(&self) -> bool {
        self.participants.len() > 1
    }

    pub fn has(&self, shard: u32) -> bool {
        self.participants.contains(&shard)
    }

    /// What a shard joining now must run, as one simple-protocol string: a plain BEGIN and the
    /// client's BEGIN options as SET TRANSACTION, then the transaction-scoped settings and
    /// savepoints in the order the client made them.
    pub fn join_sql(&self) -> String {
        let mut sql = self.join_begin.clone();
        for item in &self.replay {
            sql.push(';');
            match item {
                Replay::Setting(s) => sql.push_str(s.trim().trim_end_matches(';')),
                Replay::Savepoint(name) => {
                    sql.push_str("SAVEPOINT ");
                    sql.push_str(&quote_ident(name));
                }
            }
        }
        sql
    }

    /// Remembers a transaction-scoped setting for shards that join later.
    pub fn record_setting(&mut self, sql: &str) {
        self.replay.push(Replay::Setting(sql.to_string()));
    }

    /// The transaction-scoped settings in force (`SET LOCAL …` texts, in the order they ran and
    /// with those undone by ROLLBACK TO left out), so the session can tell what they change.
    pub fn local_settings(&self) -> impl Iterator<Item = &str> {
        self.replay.iter().filter_map(|r| match r {
            Replay::Setting(sql) => Some(sql.as_str()),
            Replay::Savepoint(_) => None,
        })
    }

    /// Follows a savepoint statement that succeeded, so late joiners see the same savepoints.
    pub fn record_savepoint(&mut self, op: &SavepointOp) {
        match op {
            SavepointOp::Define(name) => self.replay.push(Replay::Savepoint(name.clone())),
            SavepointOp::Release(name) => {
                // Releasing a savepoint also releases every one defined after it; the settings
                // made since stay in force.
                if let Some(at) = self.position_of(name) {
                    let mut i = 0;
                    self.replay.retain(|item| {
                        let keep = i < at || matches!(item, Replay::Setting(_));
                        i += 1;
                        keep
                    });
                }
            }
            SavepointOp::RollbackTo(name) => {
                // The savepoint stays; everything after it is undone.
                if let Some(at) = self.position_of(name) {
                    self.replay.truncate(at + 1);
                }
            }
        }
    }

    /// Follows a savepoint statement that succeeded for the session's settings (`settings`, in
    /// force as it ran): the settings to go back to when it was a ROLLBACK TO of a savepoint made
    /// while they were different.
    pub fn savepoint_settings(
        &mut self,
        op: &SavepointOp,
        settings: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, String>> {
        let at = |name: &str, saved: &[(String, BTreeMap<String, String>)]| {
            saved.iter().rposition(|(n, _)| n == name)
        };
        match op {
            SavepointOp::Define(name) => {
                self.settings_at_savepoints
                    .push((name.clone(), settings.clone()));
                None
            }
            SavepointOp::Release(name) => {
                if let Some(i) = at(name, &self.settings_at_savepoints) {
                    self.settings_at_savepoints.truncate(i);
                }
                None
            }
            SavepointOp::RollbackTo(name) => {
                let i = at(name, &self.settings_at_savepoints)?;
                self.settings_at_savepoints.truncate(i + 1);
                let (_, before) = &self.settings_at_savepoints[i];
                (before != settings).then(|| before.clone())
            }
        }
    }

    fn position_of(&self, name: &str) -> Option<usize> {
        self.replay
            .iter()
            .rposition(|item| matches!(item, Replay::Savepoint(n) if n == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_joiner_replays_begin_options_settings_and_open_savepoints() {
        let mut t = Txn::explicit("BEGIN ISOLATION LEVEL REPEATABLE READ;");
        t.record_savepoint(&SavepointOp::Define("a".into()));
        t.record_setting("SET LOCAL statement_timeout = 1000");
        t.record_savepoint(&SavepointOp::Define("B".into()));
        assert_eq!(
            t.join_sql(),
            "BEGIN;SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;SAVEPOINT a;SET LOCAL statement_timeout = 1000;SAVEPOINT \"B\""
        );
    }

    #[test]
    fn release_drops_the_savepoint_and_later_ones_but_keeps_settings() {
        let mut t = Txn::explicit("BEGIN");
        t.record_savepoint(&SavepointOp::Define("a".into()));
        t.record_savepoint(&SavepointOp::Define("b".into()));
        t.record_setting("SET LOCAL x.y = 1");
        t.record_savepoint(&SavepointOp::Release("a".into()));
        assert_eq!(t.join_sql(), "BEGIN;SET LOCAL x.y = 1");
    }

    #[test]
    fn rollback_to_keeps_the_savepoint_and_undoes_what_followed() {
        let mut t = Txn::explicit("BEGIN");
        t.record_savepoint(&SavepointOp::Define("a".into()));
        t.record_setting("SET LOCAL x.y = 1");
        t.record_savepoint(&SavepointOp::Define("b".into()));
        t.record_savepoint(&SavepointOp::RollbackTo("a".into()));
        assert_eq!(t.join_sql(), "BEGIN;SAVEPOINT a");
        // An unknown name changes nothing (the server reported the error).
        t.record_savepoint(&SavepointOp::Release("zz".into()));
        assert_eq!(t.join_sql(), "BEGIN;SAVEPOINT a");
    }

    #[test]
    fn a_reused_savepoint_name_refers_to_the_newest() {
        let mut t = Txn::explicit("BEGIN");
        t.record_savepoint(&SavepointOp::Define("a".into()));
        t.record_savepoint(&SavepointOp::Define("a".into()));
        t.record_savepoint(&SavepointOp::Release("a".into()));
        assert_eq!(t.join_sql(), "BEGIN;SAVEPOINT a");
    }

    #[test]
    fn rollback_to_gives_back_the_session_settings_of_its_savepoint() {
        let mut t = Txn::explicit("BEGIN");
        let settings = |path: &str| -> BTreeMap<String, String> {
            [("search_path".to_string(), path.to_string())].into()
        };
        let a = settings("tenant_a");
        let b = settings("tenant_b");
        let c = settings("tenant_c");
        assert_eq!(
            t.savepoint_settings(&SavepointOp::Define("s".into()), &a),
            None
        );
        assert_eq!(
            t.savepoint_settings(&SavepointOp::Define("t".into()), &b),
            None
        );
        // Back to t: tenant_b; then back to s: tenant_a (t is gone with it).
        let to = |t: &mut Txn, name: &str, now: &BTreeMap<String, String>| {
            t.savepoint_settings(&SavepointOp::RollbackTo(name.into()), now)
        };
        assert_eq!(to(&mut t, "t", &c), Some(b.clone()));
        assert_eq!(to(&mut t, "t", &b), None);
        assert_eq!(to(&mut t, "s", &c), Some(a.clone()));
        assert_eq!(to(&mut t, "t", &c), None);
        // RELEASE keeps what was set since; the savepoint is gone.
        t.savepoint_settings(&SavepointOp::Release("s".into()), &c);
        assert_eq!(to(&mut t, "s", &c), None);
    }

    #[test]
    fn participants_in_join_order() {
        let mut t = Txn::implicit();
        assert!(t.implicit && t.first().is_none() && !t.distributed());
        t.participants.push(3);
        t.participants.push(1);
        assert_eq!(t.first(), Some(3));
        assert!(t.distributed() && t.has(1) && !t.has(2));
        assert!(Txn::started_on(4).has(4));
    }
}
