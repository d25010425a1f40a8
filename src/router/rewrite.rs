//! Statement rewrites: an INSERT into a sharded table that omits the shard key gets generated keys
//! spliced into its column list and VALUES rows. Works on the real Postgres scanner's tokens, so
//! strings, comments and quoted identifiers are never mistaken for syntax.

use crate::config::ShardedTableConfig;
use crate::sql_text::quote_ident;

/// Why an INSERT could not be given generated keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("cannot scan the INSERT statement: {0}")]
    Scan(String),
    #[error("INSERT into a sharded table that omits the shard key needs a column list and a VALUES list to receive generated keys")]
    Shape,
    #[error("INSERT names table {0}, which is not sharded")]
    NotSharded(String),
    #[error("INSERT has {rows} VALUES rows but {ids} generated keys")]
    RowCount { rows: usize, ids: usize },
}

/// Returns `sql` with the table's shard key added to the column list and `ids[i]` to row `i`;
/// with `overriding`, also `OVERRIDING SYSTEM VALUE` before VALUES (a key column that is
/// `GENERATED ALWAYS AS IDENTITY` takes an explicit value only so).
pub fn insert_with_keys(
    sql: &str,
    tables: &[ShardedTableConfig],
    ids: &[i64],
    overriding: bool,
) -> Result<String, RewriteError> {
    let literals: Vec<String> = ids.iter().map(i64::to_string).collect();
    rewrite(
        sql,
        |table| {
            let unqualified = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
            tables
                .iter()
                .find(|t| t.name.eq_ignore_ascii_case(unqualified))
                .map(|t| t.key.clone())
                .ok_or_else(|| RewriteError::NotSharded(table.to_string()))
        },
        &literals,
        overriding,
    )
}

/// [`insert_with_keys`] for keys of any type, each given as an SQL constant
/// ([`crate::router::ShardKey::sql_literal`]).
/// `key` is the key column of the table the router resolved the INSERT's target to (under the
/// session's search_path).
pub fn insert_with_key_literals(
    sql: &str,
    key: &str,
    ids: &[String],
    overriding: bool,
) -> Result<String, RewriteError> {
    rewrite(sql, |_| Ok(key.to_string()), ids, overriding)
}

/// Returns `sql`, an INSERT whose VALUES rows give the key column `key` as `gen_random_uuid()`
/// ([`crate::router::analyze::is_random_uuid_call`]), with row `i`'s call replaced by
/// `literals[i]`; the rest of the text as it was.
pub fn insert_with_key_calls_replaced(
    sql: &str,
    key: &str,
    literals: &[String],
) -> Result<String, RewriteError> {
    use pg_query::NodeEnum;
    let parsed = pg_query::parse(sql, 0).map_err(|e| RewriteError::Scan(e.to_string()))?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Err(RewriteError::Shape);
    };
    let Some(NodeEnum::InsertStmt(insert)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return Err(RewriteError::Shape);
    };
    let pos = insert
        .cols
        .iter()
        .position(|n| matches!(n.node.as_ref(), Some(NodeEnum::ResTarget(rt)) if rt.name.eq_ignore_ascii_case(key)))
        .ok_or(RewriteError::Shape)?;
    let Some(NodeEnum::SelectStmt(values)) =
        insert.select_stmt.as_ref().and_then(|s| s.node.as_ref())
    else {
        return Err(RewriteError::Shape);
    };
    if values.values_lists.is_empty() {
        return Err(RewriteError::Shape);
    }
    if values.values_lists.len() != literals.len() {
        return Err(RewriteError::RowCount {
            rows: values.values_lists.len(),
            ids: literals.len(),
        });
    }
    let mut starts = Vec::with_capacity(literals.len());
    for row in &values.values_lists {
        let call = match row.node.as_ref() {
            Some(NodeEnum::List(l)) => l.items.get(pos),
            _ => None,
        }
        .filter(|c| crate::router::analyze::is_random_uuid_call(c));
        let Some(NodeEnum::FuncCall(f)) = call.and_then(|c| c.node.as_ref()) else {
            return Err(RewriteError::Shape);
        };
        starts.push(usize::try_from(f.location).map_err(|_| RewriteError::Shape)?);
    }
    let tokens = scan_tokens(sql).map_err(RewriteError::Scan)?;
    let mut out = sql.to_string();
    // From the last call back, so earlier byte offsets stay valid.
    for (start, literal) in starts.iter().zip(literals).rev() {
        let open = tokens
            .iter()
            .position(|t| t.0 >= *start && t.2 == "(")
            .ok_or(RewriteError::Shape)?;
        let close = matching(&tokens, open).ok_or(RewriteError::Shape)?;
        out.replace_range(*start..tokens[close].1, literal);
    }
    Ok(out)
}

fn rewrite(
    sql: &str,
    key_of: impl FnOnce(&str) -> Result<String, RewriteError>,
    ids: &[String],
    overriding: bool,
) -> Result<String, RewriteError> {
    let tokens = scan_tokens(sql).map_err(RewriteError::Scan)?;
    let mut depth = 0i32;
    let mut i = 0;
    // Find INTO at depth 0, the table name after it, then the column list's "(".
    let mut into = None;
    while i < tokens.len() {
        match tokens[i].2.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "into" if depth == 0 => {
                into = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let into = into.ok_or(RewriteError::Shape)?;
    let mut name_end = into + 1;
    let mut table = tokens.get(name_end).ok_or(RewriteError::Shape)?.2.clone();
    name_end += 1;
    while tokens.get(name_end).map(|t| t.2.as_str()) == Some(".") {
        let part = tokens.get(name_end + 1).ok_or(RewriteError::Shape)?;
        table.push('.');
        table.push_str(&part.2);
        name_end += 2;
    }
    // An optional alias: `AS a` or a bare name before the column list.
    if tokens.get(name_end).map(|t| t.2.as_str()) == Some("as") {
        name_end += 2;
    }
    if tokens.get(name_end).map(|t| t.2.as_str()) != Some("(") {
        return Err(RewriteError::Shape);
    }
    let key = key_of(table.trim_matches('"'))?;
    let open = (name_end..tokens.len())
        .find(|&j| tokens[j].2 == "(")
        .ok_or(RewriteError::Shape)?;
    let mut inserts: Vec<(usize, String)> =
        vec![(tokens[open].1, format!("{}, ", quote_ident(&key)))];
    let close = matching(&tokens, open).ok_or(RewriteError::Shape)?;
    // An OVERRIDING clause already there (an earlier rewrite's, or the client's) stays as it is.
    let word = |i: usize| tokens.get(i).map(|t| t.2.as_str());
    let has_overriding = word(close + 1) == Some("overriding");
    let values = if has_overriding { close + 4 } else { close + 1 };
    if word(values) != Some("values") {
        return Err(RewriteError::Shape);
    }
    if overriding && !has_overriding {
        inserts.push((tokens[values].0, "OVERRIDING SYSTEM VALUE ".to_string()));
    }
    let mut j = values + 1;
    let mut rows = 0usize;
    loop {
        if tokens.get(j).map(|t| t.2.as_str()) != Some("(") {
            return Err(RewriteError::Shape);
        }
        let id = ids.get(rows).ok_or(RewriteError::RowCount {
            rows: rows + 1,
            ids: ids.len(),
        })?;
        inserts.push((tokens[j].1, format!("{id}, ")));
        rows += 1;
        let end = matching(&tokens, j).ok_or(RewriteError::Shape)?;
        if tokens.get(end + 1).map(|t| t.2.as_str()) == Some(",") {
            j = end + 2;
        } else {
            break;
        }
    }
    if rows != ids.len() {
        return Err(RewriteError::RowCount {
            rows,
            ids: ids.len(),
        });
    }
    let mut out = sql.to_string();
    inserts.sort_by_key(|(at, _)| *at);
    for (at, text) in inserts.into_iter().rev() {
        out.insert_str(at, &text);
    }
    Ok(out)
}

/// One token of the real Postgres scanner: (start byte, end byte, lowercased text).
pub(crate) type Token = (usize, usize, String);

/// The statement's tokens (comments and whitespace dropped).
pub(crate) fn scan_tokens(sql: &str) -> Result<Vec<Token>, String> {
    let scan = pg_query::scan(sql).map_err(|e| e.to_string())?;
    Ok(scan
        .tokens
        .iter()
        .filter(|t| !is_comment(t.token))
        .filter_map(|t| {
            let (start, end) = (t.start as usize, t.end as usize);
            sql.get(start..end)
                .map(|text| (start, end, text.to_ascii_lowercase()))
        })
        .collect())
}

/// Whether a scanner token is a `--` or `/* */` comment, which no rewrite may take for syntax.
fn is_comment(token: i32) -> bool {
    use pg_query::protobuf::Token;
    token == Token::SqlComment as i32 || token == Token::CComment as i32
}

/// Index of the ")" matching the "(" at `open`.
pub(crate) fn matching(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (j, t) in tokens.iter().enumerate().skip(open) {
        match t.2.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<ShardedTableConfig> {
        vec![ShardedTableConfig {
            name: "users".into(),
            key: "user_id".into(),
            key_type: None,
        }]
    }

    #[test]
    fn splices_keys_into_columns_and_rows() {
        let sql = "INSERT INTO users (name, email) VALUES ('Ada (1)', 'a@x'), ($1, now()) RETURNING user_id";
        let out = insert_with_keys(sql, &users(), &[7, 8], false).unwrap();
        assert_eq!(
            out,
            "INSERT INTO users (user_id, name, email) VALUES (7, 'Ada (1)', 'a@x'), (8, $1, now()) RETURNING user_id"
        );
    }

    #[test]
    fn random_uuid_calls_of_the_key_are_replaced_in_place() {
        let sql = "INSERT INTO ev (kind, Id, other) VALUES ('a (1)', gen_random_uuid( ), gen_random_uuid()), \
                   ($1, pg_catalog.gen_random_uuid(), now()) RETURNING id";
        let literals = ["'k1'::uuid".to_string(), "'k2'::uuid".to_string()];
        assert_eq!(
            insert_with_key_calls_replaced(sql, "id", &literals),
            Ok("INSERT INTO ev (kind, Id, other) VALUES ('a (1)', 'k1'::uuid, gen_random_uuid()), \
                   ($1, 'k2'::uuid, now()) RETURNING id"
                .into())
        );
        assert_eq!(
            insert_with_key_calls_replaced(sql, "id", &literals[..1]),
            Err(RewriteError::RowCount { rows: 2, ids: 1 })
        );
        for other in [
            "INSERT INTO ev (id) VALUES ($1)",
            "INSERT INTO ev (kind) VALUES (gen_random_uuid())",
            "INSERT INTO ev (id) SELECT gen_random_uuid()",
        ] {
            assert_eq!(
                insert_with_key_calls_replaced(other, "id", &literals[..1]),
                Err(RewriteError::Shape),
                "{other}"
            );
        }
    }

    #[test]
    fn an_overriding_clause_is_kept_once() {
        let sql = "INSERT INTO t (a) OVERRIDING SYSTEM VALUE VALUES (1), (2)";
        for overriding in [false, true] {
            assert_eq!(
                insert_with_key_literals(sql, "id", &["7".into(), "8".into()], overriding),
                Ok("INSERT INTO t (id, a) OVERRIDING SYSTEM VALUE VALUES (7, 1), (8, 2)".into())
            );
        }
        let plain = "INSERT INTO t (a) VALUES (1)";
        assert_eq!(
            insert_with_key_literals(plain, "id", &["7".into()], true),
            Ok("INSERT INTO t (id, a) OVERRIDING SYSTEM VALUE VALUES (7, 1)".into())
        );
    }

    #[test]
    fn a_key_column_named_by_a_keyword_is_quoted() {
        for (key, spliced) in [
            ("order", "\"order\""),
            ("user", "\"user\""),
            ("UserId", "\"UserId\""),
        ] {
            let tables = vec![ShardedTableConfig {
                name: "t".into(),
                key: key.into(),
                key_type: None,
            }];
            let out =
                insert_with_keys("INSERT INTO t (v) VALUES (1)", &tables, &[9], false).unwrap();
            assert_eq!(out, format!("INSERT INTO t ({spliced}, v) VALUES (9, 1)"));
        }
    }

    #[test]
    fn identity_always_keys_get_overriding_system_value() {
        let sql = "INSERT INTO users (name) VALUES ('a'), ($1)";
        let out = insert_with_keys(sql, &users(), &[1, 2], true).unwrap();
        assert_eq!(
            out,
            "INSERT INTO users (user_id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'a'), (2, $1)"
        );
    }

    #[test]
    fn handles_schema_alias_and_comments() {
        let sql = "insert /* (x) */ into public.users AS u (name) values ('it''s')";
        let out = insert_with_keys(sql, &users(), &[-5], false).unwrap();
        assert_eq!(
            out,
            "insert /* (x) */ into public.users AS u (user_id, name) values (-5, 'it''s')"
        );
    }

    #[test]
    fn comments_between_clauses_are_not_syntax() {
        let sql = "INSERT INTO users (name) /* c */ VALUES -- rows\n ('a') /* (x) */, ($1)";
        let out = insert_with_keys(sql, &users(), &[1, 2], false).unwrap();
        assert_eq!(
            out,
            "INSERT INTO users (user_id, name) /* c */ VALUES -- rows\n (1, 'a') /* (x) */, (2, $1)"
        );
    }

    #[test]
    fn refuses_shapes_it_cannot_rewrite() {
        assert_eq!(
            insert_with_keys("INSERT INTO users SELECT 1", &users(), &[1], false),
            Err(RewriteError::Shape)
        );
        assert_eq!(
            insert_with_keys(
                "INSERT INTO users (name) VALUES ('a')",
                &users(),
                &[1, 2],
                false
            ),
            Err(RewriteError::RowCount { rows: 1, ids: 2 })
        );
        assert!(matches!(
            insert_with_keys("INSERT INTO t (a) VALUES (1)", &users(), &[1], false),
            Err(RewriteError::NotSharded(_))
        ));
    }
}
