//! The client session as plain data: its settings, its transaction block, its prepared
//! statements and portals, its cursors and its read-your-writes position. No socket, no server
//! connection: the frontend owns one `SessionState` per client and applies the transitions here;
//! what they mean for the server connections it holds is the frontend's job.

pub mod causal_token;
pub mod cursors;
pub mod reads;
pub mod route_hints;
pub mod search_path;
pub mod sql_prepare;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::router::{StatementFacts, StatementKind};
use crate::txn::Txn;
use cursors::Cursors;
use reads::ReadState;
use sql_prepare::SqlStatements;

/// A client statement prepared with Parse, kept per client by name.
pub struct Prepared {
    pub sql: String,
    pub param_types: Vec<u32>,
    pub facts: Arc<[StatementFacts]>,
    /// The name it has on server connections ("" for the unnamed statement).
    pub server_name: String,
}

/// Everything the proxy remembers about one client between its messages.
#[derive(Default)]
pub struct SessionState {
    /// The settings the client connected with: what RESET goes back to.
    pub startup_settings: BTreeMap<String, String>,
    /// The session's settings now; every server connection is brought in line before use.
    pub settings: BTreeMap<String, String>,
    /// The settings when the open block began: a ROLLBACK restores them.
    pub settings_at_begin: Option<BTreeMap<String, String>>,
    /// `pgshard.*` settings the proxy answers itself.
    pub proxy_settings: BTreeMap<String, String>,
    /// `SET [LOCAL] pgshard.shard` / `pgshard.key`: the routing hint of the session or block.
    pub route_hints: route_hints::RouteHints,
    /// The open transaction block, explicit or implicit.
    pub txn: Option<Txn>,
    pub statements: crate::fast_hash::FastMap<String, Arc<Prepared>>,
    /// Statements prepared with SQL PREPARE (transaction pooling: kept by the proxy).
    pub sql_statements: SqlStatements,
    /// Portals bound in the current transaction and the shard they live on.
    pub portals: crate::fast_hash::FastMap<String, u32>,
    /// After an error in an extended-protocol batch, messages are dropped until Sync.
    pub skip_until_sync: bool,
    /// A Flush-ended batch ran on this shard: the implicit transaction lasts until Sync.
    pub open_batch_shard: Option<u32>,
    /// Replica routing and read-your-writes state.
    pub reads: ReadState,
    /// Open cursors of the block and where each lives.
    pub cursors: Cursors,
    /// The search_path the prepared statements' facts were resolved under.
    pub prepared_under: Option<Arc<crate::router::names::SearchPath>>,
    /// The search_path last computed (see `search_path`).
    pub path_memo: search_path::PathMemo,
    /// The session ran DDL: which schemas hold the configured tables' names is read again once
    /// it is outside any block.
    pub names_changed: bool,
}

/// What a statement's effect on the settings asks of the server connections.
#[derive(Debug, PartialEq, Eq)]
pub enum SettingEffect<'a> {
    /// Nothing.
    Unchanged,
    /// The settings were put back (ROLLBACK of the block that changed them): what each
    /// connection holds is no longer known.
    Restored,
    /// SET (`Some`) or RESET (`None`) of one setting: the connection that ran it holds exactly
    /// that now.
    Set {
        name: &'a str,
        value: Option<&'a str>,
    },
    /// RESET ALL, or DISCARD ALL (`discard`: prepared statements are gone too).
    ResetAll { discard: bool },
}

impl SessionState {
    /// A new session with the settings it connected with.
    pub fn new(startup_settings: BTreeMap<String, String>) -> SessionState {
        SessionState {
            settings: startup_settings.clone(),
            startup_settings,
            ..SessionState::default()
        }
    }

    /// Opens the client's block `begin_sql` (BEGIN, or the block a COMMIT AND CHAIN starts).
    pub fn open_block(&mut self, begin_sql: &str) {
        self.txn = Some(Txn::explicit(begin_sql));
        self.settings_at_begin = Some(self.settings.clone());
        self.route_hints.begin();
    }

    /// A batch run on one shard got an error. Ended by Flush (`flushed`), the server now skips
    /// everything up to Sync, and so does the proxy. A Parse or Describe that failed outside the
    /// block's shards (`joined`: false, it ran in no transaction) aborts the client's block all
    /// the same, as in Postgres.
    pub fn batch_failed(&mut self, flushed: bool, joined: bool) {
        if flushed {
            self.skip_until_sync = true;
        }
        if !joined {
            if let Some(txn) = self.txn.as_mut().filter(|t| !t.implicit) {
                txn.refused = true;
            }
        }
    }

    /// A shard reported a transaction in progress: the block reaches it (opened here if the
    /// proxy had none, e.g. a BEGIN inside a function).
    pub fn joined_on(&mut self, shard: u32) {
        match &mut self.txn {
            None => {
                self.settings_at_begin = Some(self.settings.clone());
                self.route_hints.begin();
                self.txn = Some(Txn::started_on(shard));
            }
            Some(txn) => {
                if !txn.has(shard) {
                    txn.participants.push(shard);
                }
            }
        }
    }

    /// Closes the block: a commit marks its shards as written (read-your-writes), a rollback
    /// restores the settings it changed. Portals end with it, and cursors but those WITH HOLD
    /// a commit keeps. True when settings
    /// were restored, so what the server connections hold is no longer known.
    pub fn close_block(&mut self, rolled_back: bool) -> bool {
        if !rolled_back {
            // A READ ONLY block wrote nothing (Postgres refuses its writes): no position needed.
            if let Some(txn) = self.txn.as_ref().filter(|t| !t.read_only) {
                for &shard in &txn.participants {
                    self.reads.wrote(shard);
                }
            }
        }
        let before = self.settings_at_begin.take();
        let restored = match before {
            Some(before) if rolled_back && before != self.settings => {
                self.settings = before;
                true
            }
            _ => false,
        };
        self.txn = None;
        self.route_hints.end(rolled_back);
        self.portals.clear();
        self.cursors.end_block(rolled_back);
        restored
    }

    /// Records the effect of one successfully run statement on the settings. `block_start`
    /// carries, across the statements of one request, the settings when a BEGIN of that request
    /// ran, so that a ROLLBACK in the same request undoes them.
    pub fn record_setting<'a>(
        &mut self,
        kind: &'a StatementKind,
        block_start: &mut Option<BTreeMap<String, String>>,
    ) -> SettingEffect<'a> {
        match kind {
            StatementKind::Begin => {
                *block_start = Some(self.settings.clone());
                SettingEffect::Unchanged
            }
            StatementKind::Commit => {
                *block_start = None;
                SettingEffect::Unchanged
            }
            StatementKind::Rollback => match block_start.take() {
                Some(before) if before != self.settings => {
                    self.settings = before;
                    SettingEffect::Restored
                }
                _ => SettingEffect::Unchanged,
            },
            StatementKind::Set { name, value } => {
                match value.as_ref().or_else(|| self.startup_settings.get(name)) {
                    Some(v) => {
                        self.settings.insert(name.clone(), v.clone());
                    }
                    None => {
                        self.settings.remove(name);
                    }
                }
                SettingEffect::Set {
                    name,
                    value: value.as_deref(),
                }
            }
            StatementKind::ResetAll | StatementKind::Discard { all: true } => {
                self.settings = self.startup_settings.clone();
                self.route_hints.reset_all();
                let discard = *kind == StatementKind::Discard { all: true };
                if discard {
                    self.statements.clear();
                    self.sql_statements.clear();
                }
                SettingEffect::ResetAll { discard }
            }
            _ => SettingEffect::Unchanged,
        }
    }

    /// The shards the open block has reached, in the order they joined.
    pub fn block_shards(&self) -> Vec<u32> {
        self.txn
            .as_ref()
            .map(|t| t.participants.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(name: &str, value: Option<&str>) -> StatementKind {
        StatementKind::Set {
            name: name.into(),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn a_failed_batch_skips_to_sync_under_flush_and_aborts_the_block() {
        // (ended by Flush, ran in a transaction, block: None / explicit / implicit,
        //  skip until Sync, block refused)
        let cases = [
            (true, true, None, true, None),
            (false, true, None, false, None),
            (false, true, Some(false), false, Some(false)),
            (false, false, Some(false), false, Some(true)),
            (true, false, Some(false), true, Some(true)),
            // The pipeline's implicit block rolls back at the Sync on its own.
            (false, false, Some(true), false, Some(false)),
        ];
        for (flushed, joined, implicit, skip, refused) in cases {
            let mut state = SessionState {
                txn: implicit.map(|i| {
                    if i {
                        Txn::implicit()
                    } else {
                        Txn::explicit("BEGIN")
                    }
                }),
                ..SessionState::default()
            };
            state.batch_failed(flushed, joined);
            let case = (flushed, joined, implicit);
            assert_eq!(state.skip_until_sync, skip, "{case:?}");
            assert_eq!(state.txn.as_ref().map(|t| t.refused), refused, "{case:?}");
        }
    }

    #[test]
    fn statements_change_the_settings_as_postgres_does() {
        let startup = [("application_name", "app"), ("DateStyle", "ISO")];
        /// Statements of one request, settings afterwards, effect of the last statement.
        type Case<'a> = (
            Vec<StatementKind>,
            Vec<(&'a str, &'a str)>,
            SettingEffect<'a>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![set("search_path", Some("s"))],
                vec![
                    ("application_name", "app"),
                    ("DateStyle", "ISO"),
                    ("search_path", "s"),
                ],
                SettingEffect::Set {
                    name: "search_path",
                    value: Some("s"),
                },
            ),
            (
                vec![
                    set("application_name", Some("x")),
                    set("application_name", None),
                ],
                vec![("application_name", "app"), ("DateStyle", "ISO")],
                SettingEffect::Set {
                    name: "application_name",
                    value: None,
                },
            ),
            (
                vec![set("search_path", Some("s")), set("search_path", None)],
                vec![("application_name", "app"), ("DateStyle", "ISO")],
                SettingEffect::Set {
                    name: "search_path",
                    value: None,
                },
            ),
            (
                vec![
                    StatementKind::Begin,
                    set("search_path", Some("s")),
                    StatementKind::Rollback,
                ],
                vec![("application_name", "app"), ("DateStyle", "ISO")],
                SettingEffect::Restored,
            ),
            (
                vec![
                    StatementKind::Begin,
                    set("search_path", Some("s")),
                    StatementKind::Commit,
                    StatementKind::Rollback,
                ],
                vec![
                    ("application_name", "app"),
                    ("DateStyle", "ISO"),
                    ("search_path", "s"),
                ],
                SettingEffect::Unchanged,
            ),
            (
                vec![StatementKind::Begin, StatementKind::Rollback],
                vec![("application_name", "app"), ("DateStyle", "ISO")],
                SettingEffect::Unchanged,
            ),
            (
                vec![set("DateStyle", Some("German")), StatementKind::ResetAll],
                vec![("application_name", "app"), ("DateStyle", "ISO")],
                SettingEffect::ResetAll { discard: false },
            ),
            (
                vec![
                    set("DateStyle", Some("German")),
                    StatementKind::Discard { all: true },
                ],
                vec![("application_name", "app"), ("DateStyle", "ISO")],
                SettingEffect::ResetAll { discard: true },
            ),
            (
                // DISCARD PLANS, SEQUENCES and TEMP leave the settings (a tenant's search_path).
                vec![
                    set("DateStyle", Some("German")),
                    StatementKind::Discard { all: false },
                ],
                vec![("application_name", "app"), ("DateStyle", "German")],
                SettingEffect::Unchanged,
            ),
        ];
        for (statements, expected, last_effect) in &cases {
            let mut state = SessionState::new(settings(&startup));
            let mut block_start = None;
            let mut effect = SettingEffect::Unchanged;
            for kind in statements {
                effect = state.record_setting(kind, &mut block_start);
            }
            assert_eq!(state.settings, settings(expected), "{statements:?}");
            assert_eq!(&effect, last_effect, "{statements:?}");
        }
    }

    #[test]
    fn discard_forgets_prepared_statements_and_reset_all_keeps_them() {
        for (kind, kept) in [
            (StatementKind::Discard { all: true }, 0),
            (StatementKind::Discard { all: false }, 1),
            (StatementKind::ResetAll, 1),
        ] {
            let mut state = SessionState::default();
            state.statements.insert(
                "s1".into(),
                Arc::new(Prepared {
                    sql: "SELECT 1".into(),
                    param_types: Vec::new(),
                    facts: Arc::from(Vec::new()),
                    server_name: "s1".into(),
                }),
            );
            state.record_setting(&kind, &mut None);
            assert_eq!(state.statements.len(), kept, "{kind:?}");
        }
    }

    #[test]
    fn blocks_keep_or_restore_settings_and_record_their_writes() {
        // (rolled back, settings changed inside, settings restored, shards pending for
        // read-your-writes afterwards)
        let cases = [
            (false, true, false, vec![3, 5]),
            (true, true, true, vec![]),
            (true, false, false, vec![]),
            (false, false, false, vec![3, 5]),
        ];
        for (rolled_back, change, restored, pending) in cases {
            let mut state = SessionState::new(settings(&[("DateStyle", "ISO")]));
            state.open_block("BEGIN ISOLATION LEVEL REPEATABLE READ");
            state.joined_on(3);
            state.joined_on(5);
            state.joined_on(3);
            assert_eq!(state.block_shards(), vec![3, 5]);
            state.portals.insert("p".into(), 3);
            if change {
                state.settings.insert("DateStyle".into(), "German".into());
            }
            let before = state.settings.clone();
            assert_eq!(
                state.close_block(rolled_back),
                restored,
                "{rolled_back} {change}"
            );
            let expected = if restored {
                settings(&[("DateStyle", "ISO")])
            } else {
                before
            };
            assert_eq!(state.settings, expected);
            assert!(state.txn.is_none() && state.settings_at_begin.is_none());
            assert!(state.portals.is_empty());
            assert_eq!(
                state.reads.pending.iter().copied().collect::<Vec<_>>(),
                pending
            );
        }
    }

    #[test]
    fn a_shard_reporting_a_transaction_opens_the_block() {
        let mut state = SessionState::new(settings(&[("DateStyle", "ISO")]));
        state.joined_on(7);
        assert_eq!(state.block_shards(), vec![7]);
        assert_eq!(
            state.settings_at_begin,
            Some(settings(&[("DateStyle", "ISO")]))
        );
        assert!(!state.txn.as_ref().is_some_and(|t| t.implicit));
    }
}
