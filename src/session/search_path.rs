//! The search_path a session's statements run under, as the router must see it to resolve
//! unqualified table names: the session's setting (SET, RESET, `set_config(…, false)`, the
//! startup option — all kept in `SessionState::settings`), overridden inside a block by its
//! `SET LOCAL search_path`, which the block keeps for shards that join late.

use std::sync::{Arc, Mutex};

use pg_query::protobuf::a_const::Val;
use pg_query::protobuf::VariableSetKind;
use pg_query::NodeEnum;

use super::SessionState;
use crate::router::names::SearchPath;
use crate::sql_text::quote_literal;

/// The setting's name.
pub const SEARCH_PATH: &str = "search_path";

/// The last path a session computed and what it was computed from: most statements run under
/// the path the previous one did, and building it (a `Vec<String>` and its cache key) for each
/// was per-statement work. Keyed by its inputs, so whatever changes the setting (SET, RESET,
/// `set_config`, a block's SET LOCAL, ROLLBACK) is followed without anyone invalidating it.
#[derive(Default)]
pub struct PathMemo(Mutex<Option<Memo>>);

struct Memo {
    value: Option<String>,
    role: String,
    path: Arc<SearchPath>,
}

impl SessionState {
    /// The search_path the session's next statement runs under; `role` is what `$user` means
    /// (the role its server connections log in as).
    pub fn search_path(&self, role: &str) -> Arc<SearchPath> {
        let local = self
            .txn
            .as_ref()
            .and_then(|txn| txn.local_settings().filter_map(local_search_path).last());
        let value = local
            .as_deref()
            .or_else(|| self.settings.get(SEARCH_PATH).map(String::as_str));
        let mut memo = self.path_memo.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = memo.as_ref() {
            if m.value.as_deref() == value && m.role == role {
                return m.path.clone();
            }
        }
        let path = Arc::new(match value {
            Some(v) => {
                SearchPath::from_setting(v, role).unwrap_or_else(|| SearchPath::default_for(role))
            }
            None => SearchPath::default_for(role),
        });
        *memo = Some(Memo {
            value: value.map(str::to_string),
            role: role.to_string(),
            path: path.clone(),
        });
        path
    }
}

/// The SQL value a `SET LOCAL search_path …` gives the block (`DEFAULT` for TO DEFAULT), or
/// `None` when `sql` sets something else.
pub fn local_search_path(sql: &str) -> Option<String> {
    if !sql.to_ascii_lowercase().contains(SEARCH_PATH) {
        return None;
    }
    let parsed = pg_query::parse(sql, 0).ok()?;
    let raw = parsed.protobuf.stmts.first()?;
    let Some(NodeEnum::VariableSetStmt(v)) = raw.stmt.as_ref()?.node.as_ref() else {
        return None;
    };
    if !v.name.eq_ignore_ascii_case(SEARCH_PATH) {
        return None;
    }
    if v.kind == VariableSetKind::VarSetDefault as i32 || v.kind == VariableSetKind::VarReset as i32
    {
        return Some("DEFAULT".into());
    }
    let mut items = Vec::new();
    for a in &v.args {
        let Some(NodeEnum::AConst(c)) = a.node.as_ref() else {
            return None;
        };
        match c.val.as_ref()? {
            Val::Sval(s) => items.push(quote_literal(&s.sval)),
            _ => return None,
        }
    }
    Some(items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::Txn;

    fn path(s: &[&str]) -> Arc<SearchPath> {
        Arc::new(SearchPath::new(s.iter().map(|x| x.to_string()).collect()))
    }

    #[test]
    fn the_block_local_path_wins_over_the_session_setting() {
        let mut state = SessionState::default();
        assert_eq!(state.search_path("app"), path(&["app", "public"]));
        state
            .settings
            .insert(SEARCH_PATH.into(), "'billing', 'public'".into());
        assert_eq!(state.search_path("app"), path(&["billing", "public"]));
        let mut txn = Txn::explicit("BEGIN");
        txn.record_setting("SET LOCAL work_mem = '4MB'");
        txn.record_setting("SET LOCAL search_path = tenant_a, \"Other\"");
        state.txn = Some(txn);
        assert_eq!(state.search_path("app"), path(&["tenant_a", "Other"]));
        if let Some(t) = state.txn.as_mut() {
            t.record_setting("SET LOCAL search_path TO DEFAULT");
        }
        assert_eq!(state.search_path("app"), path(&["app", "public"]));
        state.txn = None;
        assert_eq!(state.search_path("app"), path(&["billing", "public"]));
    }

    #[test]
    fn local_settings_read_only_search_path() {
        let cases: &[(&str, Option<&str>)] = &[
            ("SET LOCAL search_path = billing", Some("'billing'")),
            ("set local SEARCH_PATH to 'a,b', c", Some("'a,b', 'c'")),
            ("SET LOCAL search_path TO DEFAULT", Some("DEFAULT")),
            ("SET LOCAL work_mem = '4MB'", None),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
        ];
        for (sql, want) in cases {
            assert_eq!(local_search_path(sql).as_deref(), *want, "{sql}");
        }
    }
}
