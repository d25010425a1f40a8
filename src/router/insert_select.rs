//! `INSERT INTO t (…) SELECT …` whose rows pgshard cannot know by reading the text: into a
//! sharded table (each row's key is computed by the SELECT), or from sharded tables (the rows
//! sit on several shards). pgshard runs the SELECT first, on its own (keyed, or scattered and
//! merged), and writes its rows into the INSERT as typed arrays,
//! `INSERT INTO t (…) SELECT * FROM unnest('{…}'::int8[], …) AS pgshard_rows(…)`, which is
//! split per shard like any array insert. The SELECT is evaluated once, as Postgres evaluates
//! it; ON CONFLICT and RETURNING stay as written. Pure: text in, the part to run first out.

use pg_query::protobuf::{self as pb, Token};
use pg_query::NodeEnum;

use super::cte::{closing, CteFirst};

/// The name of the rows written in place of the SELECT.
const ROWS_ALIAS: &str = "pgshard_rows";

/// The SELECT of `sql` to run first, when `sql` is one `INSERT … SELECT` (not `VALUES`, not
/// already `SELECT * FROM unnest(…)` of arrays, without a WITH of its own).
pub fn find(sql: &str) -> Option<CteFirst> {
    super::insert_rewrite::read_insert(sql, |insert| {
        if insert.with_clause.is_some() || super::unnest_insert::unnest_args(insert).is_some() {
            return None;
        }
        match insert.select_stmt.as_deref()?.node.as_ref()? {
            NodeEnum::SelectStmt(s) if s.values_lists.is_empty() => {}
            _ => return None,
        }
        let (start, end) = source_span(sql, insert)?;
        let inner = sql.get(start..end)?.trim().to_string();
        Some(CteFirst::replacing(ROWS_ALIAS, inner, start, end))
    })
}

/// An INSERT whose rows pgshard wrote in as array literals (`unnest(E'{…}'::int8[], …)`), for
/// the extended protocol: each literal becomes a parameter `$first`, `$first + 1`, … (its cast
/// kept), so the statement is an UNNEST of array parameters; returns the text and the arrays'
/// texts in parameter order. `None` when `sql` is not such an INSERT.
pub fn literal_arrays_as_params(sql: &str, first: usize) -> Option<(String, Vec<String>)> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(NodeEnum::InsertStmt(insert)) = raw.stmt.as_ref()?.node.as_ref() else {
        return None;
    };
    let call = super::unnest_insert::unnest_call(insert)?;
    let mut literals = Vec::with_capacity(call.args.len());
    for arg in &call.args {
        let Some(NodeEnum::TypeCast(cast)) = arg.node.as_ref() else {
            return None;
        };
        let Some(NodeEnum::AConst(c)) = cast.arg.as_deref()?.node.as_ref() else {
            return None;
        };
        let Some(pb::a_const::Val::Sval(text)) = c.val.as_ref() else {
            return None;
        };
        literals.push((usize::try_from(c.location).ok()?, text.sval.clone()));
    }
    let scan = pg_query::scan(sql).ok()?;
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut values = Vec::with_capacity(literals.len());
    for (k, (at, text)) in literals.into_iter().enumerate() {
        let token = scan
            .tokens
            .iter()
            .find(|t| usize::try_from(t.start).ok() == Some(at))?;
        let end = usize::try_from(token.end).ok()?;
        out.push_str(sql.get(copied..at)?);
        out.push_str(&format!("${}", first + k));
        copied = end;
        values.push(text);
    }
    out.push_str(sql.get(copied..)?);
    Some((out, values))
}

/// Byte range of the INSERT's source query: after the target (`INTO t [AS a] [(cols)]
/// [OVERRIDING … VALUE]`), up to `ON CONFLICT`, `RETURNING`, `;` or the end.
fn source_span(sql: &str, insert: &pb::InsertStmt) -> Option<(usize, usize)> {
    let scan = pg_query::scan(sql).ok()?;
    let tokens = &scan.tokens;
    let is = |i: usize, t: Token| tokens.get(i).is_some_and(|x| x.token == t as i32);
    let rel = insert.relation.as_ref()?;
    let at = usize::try_from(rel.location).ok()?;
    // The first token after the target's name (a qualified name is several tokens).
    let mut i = tokens
        .iter()
        .position(|t| usize::try_from(t.start).is_ok_and(|s| s >= at))?;
    while is(i + 1, Token::Ascii46) {
        i += 2;
    }
    i += 1;
    if is(i, Token::As) {
        i += 2;
    } else if rel.alias.is_some() {
        i += 1;
    }
    if !insert.cols.is_empty() {
        i = closing(tokens, i)? + 1;
    }
    if is(i, Token::Overriding) {
        i += 3;
    }
    let start = usize::try_from(tokens.get(i)?.start).ok()?;
    let mut depth = 0usize;
    let mut end = sql.len();
    for t in &tokens[i..] {
        if t.token == Token::Ascii40 as i32 {
            depth += 1;
        } else if t.token == Token::Ascii41 as i32 {
            depth = depth.checked_sub(1)?;
        } else if depth == 0
            && (t.token == Token::On as i32
                || t.token == Token::Returning as i32
                || t.token == Token::Ascii59 as i32)
        {
            end = usize::try_from(t.start).ok()?;
            break;
        }
    }
    let end = start + sql.get(start..end)?.trim_end().len();
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_of_an_insert_is_found_between_target_and_clauses() {
        for (sql, inner) in [
            (
                "INSERT INTO orders (user_id, note) SELECT user_id, 'x' FROM users WHERE user_id < 5",
                Some("SELECT user_id, 'x' FROM users WHERE user_id < 5"),
            ),
            (
                "insert into public.orders as o (user_id) overriding user value select g from generate_series(1, $1) g on conflict (user_id) do nothing returning o.user_id;",
                Some("select g from generate_series(1, $1) g"),
            ),
            (
                "INSERT INTO orders (user_id) (SELECT user_id FROM users) RETURNING (user_id)",
                Some("(SELECT user_id FROM users)"),
            ),
            (
                "INSERT INTO orders (user_id) SELECT user_id FROM users UNION SELECT 1",
                Some("SELECT user_id FROM users UNION SELECT 1"),
            ),
            ("INSERT INTO orders (user_id) VALUES (1)", None),
            (
                "INSERT INTO orders (user_id, note) SELECT * FROM unnest($1::int8[], $2::text[])",
                None,
            ),
            (
                "WITH s AS (SELECT 1) INSERT INTO orders (user_id) SELECT * FROM s",
                None,
            ),
            ("SELECT 1", None),
        ] {
            assert_eq!(find(sql).map(|f| f.inner), inner.map(str::to_string), "{sql}");
        }
    }

    #[test]
    fn written_arrays_become_parameters_for_the_extended_protocol() {
        let sql = r#"INSERT INTO orders (user_id, note) SELECT * FROM unnest(E'{1,7}'::int8[], E'{"a\\\"b",NULL}'::text[]) AS pgshard_rows(user_id, note) RETURNING $1"#;
        let (text, values) = literal_arrays_as_params(sql, 3).unwrap();
        assert_eq!(
            text,
            "INSERT INTO orders (user_id, note) SELECT * FROM unnest($3::int8[], $4::text[]) AS pgshard_rows(user_id, note) RETURNING $1"
        );
        assert_eq!(
            values,
            vec!["{1,7}".to_string(), r#"{"a\"b",NULL}"#.to_string()]
        );
        assert_eq!(
            literal_arrays_as_params("INSERT INTO t (a) SELECT * FROM unnest($1::int8[])", 2),
            None
        );
        assert_eq!(
            literal_arrays_as_params("INSERT INTO t (a) VALUES (1)", 2),
            None
        );
    }

    #[test]
    fn the_rows_replace_the_select() {
        let sql = "INSERT INTO orders (user_id, note) SELECT user_id, note FROM users ON CONFLICT DO NOTHING";
        let f = find(sql).unwrap();
        let desc = {
            let mut b = 2i16.to_be_bytes().to_vec();
            for (name, oid) in [("user_id", 20u32), ("note", 25)] {
                b.extend_from_slice(name.as_bytes());
                b.push(0);
                b.extend_from_slice(&[0; 6]);
                b.extend_from_slice(&oid.to_be_bytes());
                b.extend_from_slice(&[0, 8, 255, 255, 255, 255, 0, 0]);
            }
            b
        };
        let row = |k: &str, v: Option<&str>| {
            let mut b = 2i16.to_be_bytes().to_vec();
            b.extend_from_slice(&(k.len() as i32).to_be_bytes());
            b.extend_from_slice(k.as_bytes());
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            b
        };
        let out = f
            .splice(sql, &desc, &[row("1", Some("a b")), row("7", None)])
            .unwrap();
        assert_eq!(
            out,
            "INSERT INTO orders (user_id, note) SELECT * FROM unnest(E'{1,7}'::int8[], E'{\"a b\",NULL}'::text[]) AS pgshard_rows(user_id, note) ON CONFLICT DO NOTHING"
        );
    }
}
