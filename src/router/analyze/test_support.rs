//! What the families' table tests share: a configuration and one-statement analysis.

pub(super) use super::*;
pub(super) use crate::config::ShardedTableConfig;
pub(super) use KeyValue::{Const, Param, Text};

pub(super) fn tables() -> ShardedTables {
    let cfg = |name: &str, key: &str| ShardedTableConfig {
        name: name.into(),
        key: key.into(),
        key_type: None,
    };
    ShardedTables::new(&[
        cfg("users", "user_id"),
        cfg("orders", "user_id"),
        cfg("public.pgbench_accounts", "aid"),
        cfg("pgbench_history", "aid"),
    ])
}

pub(super) fn one(sql: &str) -> StatementFacts {
    let mut v = analyze(sql, &tables());
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

pub(super) fn vals(v: &[KeyValue]) -> KeyFacts {
    KeyFacts::Values(v.to_vec())
}

pub(super) fn refused(sql: &str, needle: &str) {
    let f = one(sql);
    let msg = f
        .refuse
        .map(|r| r.to_string())
        .unwrap_or_else(|| panic!("not refused: {sql}"));
    assert!(msg.contains(needle), "{sql}: {msg}");
    assert!(
        msg.chars().next().is_some_and(|c| !c.is_ascii_uppercase()
            || msg.starts_with("INSERT")
            || msg.starts_with("UPDATE")
            || msg.starts_with("ON CONFLICT")
            || msg.starts_with("MERGE")
            || msg.starts_with("UNION")),
        "{msg}"
    );
}
