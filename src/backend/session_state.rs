//! Session settings under transaction pooling: a client's startup parameters and `SET`s are replayed
//! on whichever server connection serves it, and undone before that connection serves someone else.

use std::collections::BTreeMap;

use crate::sql_text::quote_ident;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// The settings a client asked for at startup, as `name → SQL value`. `options` (`-c name=value`,
/// `--name=value`) is expanded; the protocol-level keys are left out.
pub fn startup_settings(params: &[(String, String)]) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::new();
    for (key, value) in params {
        if key == "options" {
            for (k, v) in parse_options(value) {
                let k = k.to_ascii_lowercase();
                let sql = crate::router::names::string_setting_sql(&k, &v);
                settings.insert(k, sql);
            }
        } else if !NOT_SETTINGS.contains(&key.as_str()) && !key.starts_with("_pq_.") {
            let k = key.to_ascii_lowercase();
            let sql = crate::router::names::string_setting_sql(&k, value);
            settings.insert(k, sql);
        }
    }
    settings
}

/// Splits a libpq `options` string into `name=value` settings.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next()
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            word.strip_prefix("--").map(str::to_string)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// A setting name as SQL: each dotted part double-quoted.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// Settings that `RESET ALL` leaves alone: who the session is. A client's `SET ROLE` or `SET
/// SESSION AUTHORIZATION` must still be undone before its connection serves anyone else.
const IDENTITY: [&str; 2] = ["session_authorization", "role"];

/// The SQL that turns a connection's `applied` settings into `desired` (`None` when they match).
/// With `unknown`, the connection's settings cannot be trusted and everything is reset first,
/// the session's identity (role, session authorization) included. Identity settings go first:
/// `SET SESSION AUTHORIZATION` also resets the role.
pub fn sync_sql(
    applied: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    unknown: bool,
) -> Option<String> {
    // The common case on every checkout: the connection already has the session's settings.
    if !unknown && applied == desired {
        return None;
    }
    let mut sql = String::new();
    if unknown {
        sql.push_str("SET SESSION AUTHORIZATION DEFAULT;RESET ROLE;RESET ALL;");
    }
    let identity_first = |(name, _): &(&String, &String)| !IDENTITY.contains(&name.as_str());
    let mut wanted: Vec<(&String, &String)> = desired.iter().collect();
    wanted.sort_by_key(|entry| {
        (
            identity_first(entry),
            IDENTITY.iter().position(|n| n == entry.0),
        )
    });
    let mut resets = Vec::new();
    if !unknown {
        for name in applied.keys() {
            if !desired.contains_key(name) {
                resets.push(name);
            }
        }
    }
    // Identity resets before any SET (a SET ROLE after a reset of the session authorization).
    for name in resets.iter().filter(|n| IDENTITY.contains(&n.as_str())) {
        sql.push_str(&format!("RESET {};", quote_name(name)));
    }
    for (name, value) in wanted {
        if unknown || applied.get(name) != Some(value) {
            sql.push_str(&format!("SET {} TO {};", quote_name(name), value));
        }
    }
    for name in resets.iter().filter(|n| !IDENTITY.contains(&n.as_str())) {
        sql.push_str(&format!("RESET {};", quote_name(name)));
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_parameters_become_settings() {
        let params = vec![
            ("user".to_string(), "app".to_string()),
            ("database".to_string(), "app".to_string()),
            ("application_name".to_string(), "it's".to_string()),
            (
                "options".to_string(),
                "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB".to_string(),
            ),
        ];
        let s = startup_settings(&params);
        assert_eq!(
            s,
            map(&[
                ("application_name", "'it''s'"),
                ("search_path", "'a', 'b'"),
                ("statement_timeout", "'5s'"),
                ("work_mem", "'4MB'"),
            ])
        );
    }

    #[test]
    fn sync_sets_changes_and_resets_extras() {
        let applied = map(&[("a", "'1'"), ("b", "'2'")]);
        let desired = map(&[("a", "'1'"), ("c", "'3'")]);
        assert_eq!(
            sync_sql(&applied, &desired, false).as_deref(),
            Some("SET c TO '3';RESET b;")
        );
        assert_eq!(sync_sql(&desired, &desired, false), None);
        assert_eq!(
            sync_sql(&applied, &map(&[("x.y", "'1'")]), true).as_deref(),
            Some("SET SESSION AUTHORIZATION DEFAULT;RESET ROLE;RESET ALL;SET x.y TO '1';")
        );
    }

    #[test]
    fn identity_is_undone_first_and_set_first() {
        let applied = map(&[("role", "'reporting'"), ("a", "'1'")]);
        assert_eq!(
            sync_sql(&applied, &BTreeMap::new(), false).as_deref(),
            Some("RESET role;RESET a;")
        );
        let desired = map(&[
            ("a", "'1'"),
            ("role", "'r'"),
            ("session_authorization", "'s'"),
        ]);
        assert_eq!(
            sync_sql(&BTreeMap::new(), &desired, false).as_deref(),
            Some("SET session_authorization TO 's';SET role TO 'r';SET a TO '1';")
        );
    }
}
