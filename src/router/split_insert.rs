//! Splitting a multi-row `INSERT … VALUES` whose rows belong to several shards into one INSERT per
//! shard: same target, column list, ON CONFLICT and RETURNING clauses, only that shard's rows.
//! Works on the original text with the real Postgres scanner's tokens, so each row is copied
//! byte for byte (literals, casts, comments inside a row) and nothing is re-printed.

use std::collections::BTreeMap;

use crate::router::rewrite::{matching, scan_tokens, Token};
use crate::router::ShardMap;

/// The rows of a split INSERT that one shard receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRows {
    pub shard: u32,
    /// Positions (0-based) of the rows in the statement's VALUES list, ascending.
    pub rows: Vec<usize>,
}

/// One shard's part of a split INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInsert {
    pub shard: u32,
    /// The INSERT holding only this shard's rows.
    pub sql: String,
    /// Positions of those rows in the original VALUES list, in the order the text lists them.
    pub rows: Vec<usize>,
    /// RETURNING with ON CONFLICT DO NOTHING: one INSERT per row, in that order (`sql` holds
    /// them all, `;`-separated, for a simple query), so each statement's answer says whether
    /// its row was inserted. Empty otherwise.
    pub row_statements: Vec<String>,
}

impl ShardInsert {
    /// Whether the shard runs one INSERT per row.
    pub fn per_row(&self) -> bool {
        !self.row_statements.is_empty()
    }
}

/// Why an INSERT could not be split.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("cannot scan the INSERT statement: {0}")]
    Scan(String),
    #[error("only INSERT … VALUES (…), (…) can be split between shards")]
    Shape,
    #[error("the INSERT has {found} VALUES rows but its routing named {expected}")]
    RowCount { found: usize, expected: usize },
    #[error("a split INSERT with RETURNING must return every row to keep VALUES order, but ON CONFLICT … {0} may skip rows; insert the rows of each shard separately")]
    SkippedRows(&'static str),
}

/// Groups row positions by the shard owning each row's key (`keys[i]` is row `i`'s key).
pub fn rows_by_shard(keys: &[i64], map: &ShardMap) -> Vec<ShardRows> {
    group_rows(keys.iter().map(|&k| map.shard_for(k)))
}

/// [`rows_by_shard`] for keys of any type.
pub fn rows_by_shard_key(keys: &[crate::router::ShardKey], map: &ShardMap) -> Vec<ShardRows> {
    group_rows(keys.iter().map(|k| map.shard_of(k)))
}

/// Row positions grouped by the shard of each row, in shard order.
fn group_rows(shards: impl Iterator<Item = u32>) -> Vec<ShardRows> {
    let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, shard) in shards.enumerate() {
        by_shard.entry(shard).or_default().push(i);
    }
    by_shard
        .into_iter()
        .map(|(shard, rows)| ShardRows { shard, rows })
        .collect()
}

/// Byte spans of the statement's VALUES rows (each from its "(" to its ")"), and whether the text
/// after them has RETURNING and an ON CONFLICT that may skip rows.
struct ValuesList {
    rows: Vec<(usize, usize)>,
    returning: bool,
    skips: Option<&'static str>,
    /// The INSERT starts with a WITH clause (which one INSERT per row would run once per row).
    with: bool,
}

fn values_list(sql: &str) -> Result<ValuesList, SplitError> {
    let tokens = scan_tokens(sql).map_err(SplitError::Scan)?;
    let at = |i: usize| tokens.get(i).map(|t| t.2.as_str());
    // INSERT … INTO at depth 0 (a WITH clause before it is kept as it is).
    let mut depth = 0i32;
    let mut into = None;
    for (i, t) in tokens.iter().enumerate() {
        match t.2.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "into" if depth == 0 && i > 0 && at(i - 1) == Some("insert") => {
                into = Some(i);
                break;
            }
            _ => {}
        }
    }
    let into = into.ok_or(SplitError::Shape)?;
    // The first VALUES at depth 0 after INTO.
    let mut depth = 0i32;
    let mut values = None;
    for (i, t) in tokens.iter().enumerate().skip(into + 1) {
        match t.2.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "values" if depth == 0 => {
                values = Some(i);
                break;
            }
            "select" | "default" | "with" | "table" if depth == 0 => return Err(SplitError::Shape),
            _ => {}
        }
    }
    let values = values.ok_or(SplitError::Shape)?;
    let mut rows = Vec::new();
    let mut j = values + 1;
    let end = loop {
        if at(j) != Some("(") {
            return Err(SplitError::Shape);
        }
        let close = matching(&tokens, j).ok_or(SplitError::Shape)?;
        rows.push((tokens[j].0, tokens[close].1));
        if at(close + 1) == Some(",") {
            j = close + 2;
        } else {
            break close + 1;
        }
    };
    let rest: &[Token] = tokens.get(end..).unwrap_or(&[]);
    match rest.first().map(|t| t.2.as_str()) {
        None | Some("on" | "returning" | ";") => {}
        // ORDER BY, LIMIT, UNION …: the VALUES list is part of a larger query.
        Some(_) => return Err(SplitError::Shape),
    }
    let mut depth = 0i32;
    let mut returning = false;
    let mut on_conflict = false;
    let mut after_do = None;
    let mut skips = None;
    for (i, t) in rest.iter().enumerate() {
        match t.2.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "conflict" if depth == 0 => on_conflict = true,
            "do" if depth == 0 && on_conflict && after_do.is_none() => {
                after_do = Some(i);
                if rest.get(i + 1).map(|t| t.2.as_str()) == Some("nothing") {
                    skips = Some("DO NOTHING");
                }
            }
            "where" if depth == 0 && after_do.is_some() && !returning => {
                skips = skips.or(Some("DO UPDATE … WHERE"));
            }
            "returning" if depth == 0 => returning = true,
            _ => {}
        }
    }
    Ok(ValuesList {
        rows,
        returning,
        skips,
        with: at(0) == Some("with"),
    })
}

/// One INSERT per shard of `plan`, each holding the rows the plan gives that shard, in the
/// original order. The plan must cover every row exactly once. An INSERT with RETURNING and ON
/// CONFLICT DO NOTHING (Rails' `insert_all`) becomes one INSERT per row on each shard, in the
/// rows' order, so the rows each shard skips are known and the rows it returns go back in
/// VALUES order. One Postgres skips a row that conflicts with an earlier row of the same
/// statement as it skips one conflicting with an earlier statement's, so the answer is the
/// same (only a statement-level trigger fires once per row's INSERT). `ON CONFLICT … DO UPDATE
/// … WHERE` with RETURNING runs one INSERT per row too: the router splits it only when its
/// conflict target holds the shard key and the rows' keys differ, so no two rows of the
/// statement can meet in the target (where one Postgres fails with 21000).
pub fn split(sql: &str, plan: &[ShardRows]) -> Result<Vec<ShardInsert>, SplitError> {
    let list = values_list(sql)?;
    let expected: usize = plan.iter().map(|p| p.rows.len()).sum();
    if list.rows.len() != expected
        || plan
            .iter()
            .flat_map(|p| p.rows.iter())
            .any(|&r| r >= list.rows.len())
    {
        return Err(SplitError::RowCount {
            found: list.rows.len(),
            expected,
        });
    }
    let per_row = match (list.returning, list.skips) {
        (true, Some(_)) if !list.with => true,
        (true, Some(why)) => return Err(SplitError::SkippedRows(why)),
        _ => false,
    };
    let (Some(first), Some(last)) = (list.rows.first(), list.rows.last()) else {
        return Err(SplitError::Shape);
    };
    let (prefix, suffix) = (&sql[..first.0], &sql[last.1..]);
    let row_text = |r: usize| &sql[list.rows[r].0..list.rows[r].1];
    Ok(plan
        .iter()
        .map(|p| {
            if per_row {
                // Each statement ends where the next one's `;` starts, on a new line (the
                // suffix may end in a `--` comment).
                let row_suffix = suffix.trim_end().trim_end_matches(';').trim_end();
                let row_statements: Vec<String> = p
                    .rows
                    .iter()
                    .map(|&r| format!("{prefix}{}{row_suffix}", row_text(r)))
                    .collect();
                return ShardInsert {
                    shard: p.shard,
                    sql: row_statements.join("\n;\n"),
                    rows: p.rows.clone(),
                    row_statements,
                };
            }
            let mut text = String::with_capacity(sql.len());
            text.push_str(prefix);
            for (n, &r) in p.rows.iter().enumerate() {
                if n > 0 {
                    text.push_str(", ");
                }
                text.push_str(row_text(r));
            }
            text.push_str(suffix);
            ShardInsert {
                shard: p.shard,
                sql: text,
                rows: p.rows.clone(),
                row_statements: Vec::new(),
            }
        })
        .collect())
}

/// A plan from (shard, rows) pairs, for tests.
#[cfg(test)]
pub(crate) fn plan(parts: &[(u32, &[usize])]) -> Vec<ShardRows> {
    parts
        .iter()
        .map(|(shard, rows)| ShardRows {
            shard: *shard,
            rows: rows.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Strategy;

    #[test]
    fn groups_rows_by_owning_shard() {
        let map = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[1, 2, 3]);
        let got = rows_by_shard(&[1, 2, 3, 4, 6], &map);
        let want: Vec<ShardRows> = [1u32, 2, 3]
            .iter()
            .map(|&s| ShardRows {
                shard: s,
                rows: [1i64, 2, 3, 4, 6]
                    .iter()
                    .enumerate()
                    .filter(|(_, &k)| map.shard_for(k) == s)
                    .map(|(i, _)| i)
                    .collect(),
            })
            .filter(|p| !p.rows.is_empty())
            .collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().map(|p| p.rows.len()).sum::<usize>(), 5);
    }

    #[test]
    fn splits_rows_keeping_clauses_and_text() {
        let sql = "INSERT INTO users (user_id, name) VALUES (1, 'a (b), c'), (2, E'x\\'y'), (3, 'it''s' /* ) */) ON CONFLICT (user_id) DO UPDATE SET name = excluded.name RETURNING user_id, name;";
        let got = split(sql, &plan(&[(4, &[0, 2]), (7, &[1])])).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].shard, 4);
        assert_eq!(got[0].rows, vec![0, 2]);
        assert_eq!(
            got[0].sql,
            "INSERT INTO users (user_id, name) VALUES (1, 'a (b), c'), (3, 'it''s' /* ) */) ON CONFLICT (user_id) DO UPDATE SET name = excluded.name RETURNING user_id, name;"
        );
        assert_eq!(
            got[1].sql,
            "INSERT INTO users (user_id, name) VALUES (2, E'x\\'y') ON CONFLICT (user_id) DO UPDATE SET name = excluded.name RETURNING user_id, name;"
        );
    }

    /// RETURNING with ON CONFLICT DO NOTHING: one INSERT per row.
    #[test]
    fn do_nothing_with_returning_is_one_insert_per_row() {
        let sql = "INSERT INTO docs (slug, title) VALUES ('a', 'x'), ('b', 'y'), ('c', 'z') ON CONFLICT DO NOTHING RETURNING slug -- rails\n;";
        let got = split(sql, &plan(&[(4, &[0, 2]), (7, &[1])])).unwrap();
        assert!(got.iter().all(ShardInsert::per_row));
        assert_eq!(got[0].row_statements.len(), 2);
        assert_eq!(
            got[0].sql,
            "INSERT INTO docs (slug, title) VALUES ('a', 'x') ON CONFLICT DO NOTHING RETURNING slug -- rails\n;\nINSERT INTO docs (slug, title) VALUES ('c', 'z') ON CONFLICT DO NOTHING RETURNING slug -- rails"
        );
        assert_eq!(
            got[1].sql,
            "INSERT INTO docs (slug, title) VALUES ('b', 'y') ON CONFLICT DO NOTHING RETURNING slug -- rails"
        );
        // Without RETURNING, or with DO UPDATE, one INSERT per shard as ever.
        for sql in [
            "INSERT INTO docs (slug) VALUES ('a'), ('b') ON CONFLICT DO NOTHING",
            "INSERT INTO docs (slug) VALUES ('a'), ('b') ON CONFLICT (slug) DO UPDATE SET title = 'u' RETURNING slug",
        ] {
            let got = split(sql, &plan(&[(4, &[0]), (7, &[1])])).unwrap();
            assert!(!got.iter().any(ShardInsert::per_row), "{sql}");
        }
    }

    #[test]
    fn keeps_with_clause_schema_and_nested_parentheses() {
        let sql = "with c as (select 1) insert into public.users as u (user_id, tags) values (10, array[(1), (2)]),(11, '{}')";
        let got = split(sql, &plan(&[(1, &[1]), (2, &[0])])).unwrap();
        assert_eq!(
            got[0].sql,
            "with c as (select 1) insert into public.users as u (user_id, tags) values (11, '{}')"
        );
        assert_eq!(
            got[1].sql,
            "with c as (select 1) insert into public.users as u (user_id, tags) values (10, array[(1), (2)])"
        );
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        let p = plan(&[(1, &[0]), (2, &[1])]);
        assert_eq!(
            split("insert into users (user_id) select 1", &p),
            Err(SplitError::Shape)
        );
        assert_eq!(
            split("insert into users (user_id) values (1), (2) order by 1", &p),
            Err(SplitError::Shape)
        );
        assert_eq!(
            split("insert into users (user_id) values (1)", &p),
            Err(SplitError::RowCount {
                found: 1,
                expected: 2
            })
        );
        assert_eq!(
            split("insert into users (user_id) values (1), (2), (3)", &p),
            Err(SplitError::RowCount {
                found: 3,
                expected: 2
            })
        );
        // One INSERT per row, unless a WITH would run once per row.
        assert_eq!(
            split(
                "with w as (delete from t returning 1) insert into users (user_id) values (1), (2) on conflict do nothing returning *",
                &p
            ),
            Err(SplitError::SkippedRows("DO NOTHING"))
        );
        let parts = split(
            "insert into users (user_id, n) values (1, 1), (2, 2) on conflict (user_id) where n > 0 do update set n = 0 where users.n < 5 returning *",
            &p,
        )
        .expect("DO UPDATE … WHERE with RETURNING, one INSERT per row");
        assert_eq!(
            parts[0].row_statements,
            ["insert into users (user_id, n) values (1, 1) on conflict (user_id) where n > 0 do update set n = 0 where users.n < 5 returning *"]
        );
        assert_eq!(
            split(
                "with w as (delete from t returning 1) insert into users (user_id, n) values (1, 1), (2, 2) on conflict (user_id) do update set n = 0 where users.n < 5 returning *",
                &p
            ),
            Err(SplitError::SkippedRows("DO UPDATE … WHERE"))
        );
        // Without RETURNING, skipped rows change nothing the client sees but the count.
        assert!(split(
            "insert into users (user_id) values (1), (2) on conflict do nothing",
            &p
        )
        .is_ok());
        // An index predicate before DO is not a skip.
        assert!(split(
            "insert into users (user_id, n) values (1, 1), (2, 2) on conflict (user_id) where n > 0 do update set n = 0 returning *",
            &p
        )
        .is_ok());
        assert!(matches!(
            split("insert into users (user_id) values (1), ('", &p),
            Err(SplitError::Scan(_)) | Err(SplitError::Shape)
        ));
        assert_eq!(split("select 1", &p), Err(SplitError::Shape));
    }
}
