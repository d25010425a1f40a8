//! Non-recursive, read-only CTEs over sharded tables that run first. In `WITH x AS (SELECT …
//! FROM orders …) SELECT … FROM x …` the CTE means the same whatever the rest of the statement
//! does, so pgshard runs its query on its own (keyed, or scattered and merged exactly) and writes
//! its rows into the statement: the CTE's body becomes `SELECT * FROM unnest(typed arrays) AS
//! cte(columns)`. The statement then routes as usual. A recursive WITH or a data-modifying CTE
//! over sharded tables is refused, named, unless every part of the statement (each CTE body,
//! each branch of a set operation) is keyed to one shard: then it runs there whole. Pure: parse
//! tree and byte offsets in, text out.

use pg_query::protobuf::{self as pb, Token};
use pg_query::NodeEnum;

use crate::router::pg_array::encode_text;
use crate::router::set_op_branches::{branches, Branches};
use crate::router::subquery_first::{cast_name, type_name, SpliceError};
use crate::router::{Route, StatementFacts};
use crate::sql_text::{quote_escaped_literal, quote_ident};

/// One CTE to run first, and where its rows go in the statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CteFirst {
    /// The CTE's name.
    pub name: String,
    /// What runs on its own: the CTE's query, under the CTEs defined before it in the same
    /// WITH (it may read them; those over sharded tables already hold constant rows).
    pub inner: String,
    /// Byte range of the CTE's body, inside its parentheses.
    start: usize,
    end: usize,
}

impl CteFirst {
    /// Rows named `name` that replace the bytes `start..end` of the statement (a query that is
    /// not a CTE, such as the SELECT of an `INSERT … SELECT`), from running `inner` first.
    pub fn replacing(name: &str, inner: String, start: usize, end: usize) -> CteFirst {
        CteFirst {
            name: name.to_string(),
            inner,
            start,
            end,
        }
    }
}

/// What a statement's WITH asks of pgshard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Run this CTE first.
    Run(CteFirst),
    /// A CTE over sharded tables pgshard cannot run first: the refusal's message.
    Refuse(String),
    /// Nothing to do here.
    Nothing,
}

/// One CTE of a WITH list located in the text.
struct Located<'a> {
    cte: &'a pb::CommonTableExpr,
    /// Start of its name; end of its closing parenthesis.
    def: (usize, usize),
    /// Its body, inside the parentheses.
    body: (usize, usize),
}

/// The top-level WITH of `sql`, when `sql` is one SELECT, UPDATE or DELETE with one, handed
/// to `f` with each of its CTEs located in the text.
fn with_list<R>(sql: &str, f: impl FnOnce(&pb::WithClause, &[Located]) -> R) -> Option<R> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let with = match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
        Some(NodeEnum::SelectStmt(s)) => s.with_clause.as_ref(),
        Some(NodeEnum::UpdateStmt(s)) => s.with_clause.as_ref(),
        Some(NodeEnum::DeleteStmt(s)) => s.with_clause.as_ref(),
        _ => None,
    }?;
    let scan = pg_query::scan(sql).ok()?;
    let mut located = Vec::with_capacity(with.ctes.len());
    for node in &with.ctes {
        let Some(NodeEnum::CommonTableExpr(cte)) = node.node.as_ref() else {
            return None;
        };
        located.push(locate(&scan.tokens, cte)?);
    }
    Some(f(with, &located))
}

/// The first CTE of the top-level WITH of `sql` that reads a sharded table (`reads_sharded`
/// says so of a text), when `sql` is one SELECT, UPDATE or DELETE.
pub fn find(sql: &str, reads_sharded: impl Fn(&str) -> bool) -> Found {
    with_list(sql, |with, located| {
        first_to_run(sql, with, located, reads_sharded)
    })
    .unwrap_or(Found::Nothing)
}

fn first_to_run(
    sql: &str,
    with: &pb::WithClause,
    located: &[Located],
    reads_sharded: impl Fn(&str) -> bool,
) -> Found {
    for (i, l) in located.iter().enumerate() {
        let body = sql[l.body.0..l.body.1].trim();
        if !reads_sharded(body) {
            continue;
        }
        let name = &l.cte.ctename;
        if with.recursive {
            return Found::Refuse(format!(
                "WITH RECURSIVE over sharded tables (CTE {name}) is not supported: its iterations would need rows of every shard at each step; run the recursion on one shard by adding a condition on the shard key, or in the application"
            ));
        }
        let writes = matches!(
            l.cte.ctequery.as_deref().and_then(|q| q.node.as_ref()),
            Some(
                NodeEnum::InsertStmt(_)
                    | NodeEnum::UpdateStmt(_)
                    | NodeEnum::DeleteStmt(_)
                    | NodeEnum::MergeStmt(_)
            )
        );
        if writes {
            return Found::Refuse(format!(
                "data-modifying CTE {name} over sharded tables is not supported; run the write as a statement of its own (with RETURNING) and pass its rows on as an array parameter"
            ));
        }
        let inner = match (
            located.first(),
            i.checked_sub(1).and_then(|j| located.get(j)),
        ) {
            (Some(first), Some(last)) => format!("WITH {} {body}", &sql[first.def.0..last.def.1]),
            _ => body.to_string(),
        };
        return Found::Run(CteFirst {
            name: name.clone(),
            inner,
            start: l.body.0,
            end: l.body.1,
        });
    }
    Found::Nothing
}

/// The texts whose routes together decide where `sql` may run whole, when it is one SELECT,
/// UPDATE or DELETE with a top-level WITH: each CTE's body on its own, then the statement
/// itself; every CTE body is blanked to `SELECT` in all of them (under the WITH's names, so a
/// reference to a CTE reads no table). Every table the statement names is in exactly one of
/// these texts, as are its conditions. `None` without a top-level WITH.
pub fn parts(sql: &str) -> Option<Vec<String>> {
    with_list(sql, |with, located| {
        let (Some(first), Some(last)) = (located.first(), located.last()) else {
            return Vec::new();
        };
        // The WITH keyword (and RECURSIVE) up to the first CTE's name.
        let head = usize::try_from(with.location)
            .ok()
            .filter(|&at| at <= first.def.0)
            .unwrap_or(first.def.0);
        // The WITH list from its keyword to the last CTE's closing parenthesis, bodies blanked.
        let mut prefix = String::new();
        let mut at = head;
        for l in located {
            prefix.push_str(&sql[at..l.body.0]);
            prefix.push_str("SELECT");
            at = l.body.1;
        }
        prefix.push_str(&sql[at..last.def.1]);
        let blanked = format!("{}{prefix}{}", &sql[..head], &sql[last.def.1..]);
        let mut out: Vec<String> = located
            .iter()
            .map(|l| format!("{prefix} {}", sql[l.body.0..l.body.1].trim()))
            .collect();
        out.push(blanked);
        out
    })
    .filter(|p| !p.is_empty())
}

/// The one shard `sql` may run on whole, in one snapshot, instead of running its CTEs first or
/// refusing its UNION, INTERSECT or EXCEPT: every part of it (see [`parts`]; a set operation's
/// branches each a part, see [`branches`]) routes (`route` says how) to that same single
/// shard, or to any shard (no table, reference tables). `None` when one part scatters, is
/// refused or goes to another shard, none goes to a single shard, or `sql` has neither a WITH
/// nor a set operation.
pub fn one_shard(sql: &str, mut route: impl FnMut(&str) -> Route) -> Option<u32> {
    let with_parts = parts(sql);
    let mut split = with_parts.is_some();
    let mut texts = Vec::new();
    for part in with_parts.unwrap_or_else(|| vec![sql.to_string()]) {
        match branches(&part) {
            Branches::NotSetOp => texts.push(part),
            Branches::Split(b) => {
                split = true;
                texts.extend(b);
            }
            Branches::Unsplittable => return None,
        }
    }
    if !split {
        return None;
    }
    let mut shard = None;
    for part in texts {
        match route(&part) {
            Route::Any => {}
            Route::Single(s) if shard.is_none_or(|t| t == s) => shard = Some(s),
            _ => return None,
        }
    }
    shard
}

/// The facts of a statement refused as a whole that runs whole on `shard` after all, because
/// [`one_shard`] found every part of it there: the refusal lifted, the shard pinned (as for a
/// tenant schema's statement). `None` for a statement that is not refused, or carries a
/// routing hint or a schema's shard of its own.
pub fn run_whole(facts: &StatementFacts, shard: u32) -> Option<StatementFacts> {
    if facts.refuse.is_none() || facts.hint.is_some() || facts.schema_shard.is_some() {
        return None;
    }
    let mut whole = facts.clone();
    whole.refuse = None;
    whole.schema_shard = Some(shard);
    Some(whole)
}

/// Where `cte` and its body are in the text: `name [(columns)] AS [[NOT] MATERIALIZED] (body)`.
fn locate<'a>(tokens: &[pb::ScanToken], cte: &'a pb::CommonTableExpr) -> Option<Located<'a>> {
    let at = usize::try_from(cte.location).ok()?;
    let first = tokens
        .iter()
        .position(|t| usize::try_from(t.start).is_ok_and(|s| s >= at))?;
    let mut i = first + 1;
    if !cte.aliascolnames.is_empty() {
        i = closing(tokens, i)? + 1;
    }
    if tokens.get(i)?.token != Token::As as i32 {
        return None;
    }
    let open = i + tokens[i..]
        .iter()
        .position(|t| t.token == Token::Ascii40 as i32)?;
    let close = closing(tokens, open)?;
    let body = (
        usize::try_from(tokens[open].end).ok()?,
        usize::try_from(tokens[close].start).ok()?,
    );
    let def = (
        usize::try_from(tokens[first].start).ok()?,
        usize::try_from(tokens[close].end).ok()?,
    );
    Some(Located { cte, def, body })
}

/// The index of the parenthesis closing the one at `open`.
pub(crate) fn closing(tokens: &[pb::ScanToken], open: usize) -> Option<usize> {
    if tokens.get(open)?.token != Token::Ascii40 as i32 {
        return None;
    }
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        if t.token == Token::Ascii40 as i32 {
            depth += 1;
        } else if t.token == Token::Ascii41 as i32 {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// The columns (name, type OID) of a RowDescription body.
pub(crate) fn columns(body: &[u8]) -> Option<Vec<(String, u32)>> {
    let count = usize::try_from(i16::from_be_bytes(body.get(0..2)?.try_into().ok()?)).ok()?;
    let mut out = Vec::with_capacity(count.min(1600));
    let mut pos = 2;
    for _ in 0..count {
        let len = body.get(pos..)?.iter().position(|b| *b == 0)?;
        let name = std::str::from_utf8(&body[pos..pos + len]).ok()?.to_string();
        let field = body.get(pos + len + 1..pos + len + 19)?;
        out.push((name, u32::from_be_bytes(field[6..10].try_into().ok()?)));
        pos += len + 19;
    }
    (pos == body.len()).then_some(out)
}

/// The values of a DataRow body (text format; `None` for NULL).
pub(crate) fn values(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let count = usize::try_from(i16::from_be_bytes(body.get(0..2)?.try_into().ok()?)).ok()?;
    let mut out = Vec::with_capacity(count.min(1600));
    let mut pos = 2;
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        out.push(Some(body.get(pos..pos + len)?));
        pos += len;
    }
    (pos == body.len()).then_some(out)
}

/// Rows (a RowDescription body and DataRow bodies in text format) as a FROM item named `name`:
/// `unnest(E'{…}'::type[], …) AS name(columns)`, each column a typed array, so the rows read
/// back exactly, with their names and types.
pub(crate) fn rows_as_unnest<B: AsRef<[u8]>>(
    name: &str,
    description: &[u8],
    rows: &[B],
) -> Result<String, SpliceError> {
    rows_as_unnest_of(name, description, rows, &|_| true)
}

/// [`rows_as_unnest`] with only the columns `keep` names (at least one, so the rows are still
/// counted). Columns of array types are carried as the text of each array and cast back:
/// `(SELECT c1 AS a, c2::int8[] AS b FROM unnest(…) AS name(c1, c2)) AS name` (an array of
/// arrays would be one array of more dimensions); the inner names are positional, so columns
/// that share a name (`?column?`, `SELECT n, n`) are still told apart.
pub(crate) fn rows_as_unnest_of<B: AsRef<[u8]>>(
    name: &str,
    description: &[u8],
    rows: &[B],
    keep: &dyn Fn(&str) -> bool,
) -> Result<String, SpliceError> {
    let cols = columns(description).ok_or(SpliceError::Malformed)?;
    if cols.is_empty() {
        return Err(SpliceError::NoColumns);
    }
    let rows: Vec<Vec<Option<&[u8]>>> = rows
        .iter()
        .map(|r| values(r.as_ref()).filter(|v| v.len() == cols.len()))
        .collect::<Option<_>>()
        .ok_or(SpliceError::Malformed)?;
    let mut kept: Vec<usize> = (0..cols.len()).filter(|&j| keep(&cols[j].0)).collect();
    if kept.is_empty() {
        // No column is read: one of a type pgshard writes back keeps the row count.
        let any = (0..cols.len()).find(|&j| cast_name(cols[j].1).is_some());
        kept.push(any.unwrap_or(0));
    }
    let mut arrays = Vec::with_capacity(kept.len());
    let mut names = Vec::with_capacity(kept.len());
    let mut casts = Vec::with_capacity(kept.len());
    let mut any_cast = false;
    for (position, &j) in kept.iter().enumerate() {
        let (column_name, oid) = &cols[j];
        let column_name = quote_ident(column_name);
        let inner = format!("c{}", position + 1);
        let column: Vec<Option<&[u8]>> = rows.iter().map(|r| r[j]).collect();
        let literal = quote_escaped_literal(&encode_text(&column));
        match type_name(*oid) {
            Some(ty) => {
                arrays.push(format!("{literal}::{ty}[]"));
                casts.push(format!("{inner} AS {column_name}"));
            }
            None => {
                let ty = cast_name(*oid).ok_or(SpliceError::Type(*oid))?;
                arrays.push(format!("{literal}::text[]"));
                casts.push(format!("{inner}::{ty} AS {column_name}"));
                any_cast = true;
            }
        }
        names.push((column_name, inner));
    }
    let alias = |pick: fn(&(String, String)) -> &String| {
        names
            .iter()
            .map(pick)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unnest = |columns: String| {
        format!(
            "unnest({}) AS {}({columns})",
            arrays.join(", "),
            quote_ident(name)
        )
    };
    if !any_cast {
        return Ok(unnest(alias(|(outer, _)| outer)));
    }
    Ok(format!(
        "(SELECT {} FROM {}) AS {}",
        casts.join(", "),
        unnest(alias(|(_, inner)| inner)),
        quote_ident(name)
    ))
}

impl CteFirst {
    /// `outer` with this CTE's body replaced by its rows: `description` is the RowDescription
    /// body of the CTE's merged answer, `rows` its DataRow bodies (text format).
    pub fn splice<B: AsRef<[u8]>>(
        &self,
        outer: &str,
        description: &[u8],
        rows: &[B],
    ) -> Result<String, SpliceError> {
        let body = format!(
            "SELECT * FROM {}",
            rows_as_unnest(&self.name, description, rows)?
        );
        let before = outer.get(..self.start).ok_or(SpliceError::Malformed)?;
        let after = outer.get(self.end..).ok_or(SpliceError::Malformed)?;
        Ok(format!("{before}{body}{after}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharded(text: &str) -> bool {
        text.contains("orders") || text.contains("users")
    }

    fn desc(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, oid) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&8i16.to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
        }
        b
    }

    fn row(vals: &[Option<&str>]) -> Vec<u8> {
        let mut b = (vals.len() as i16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
            }
        }
        b
    }

    fn run(sql: &str) -> CteFirst {
        match find(sql, sharded) {
            Found::Run(c) => c,
            other => panic!("{sql}: {other:?}"),
        }
    }

    /// (statement, what runs first, its columns, its rows, the statement after the splice)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, u32)],
        &'a [&'a [Option<&'a str>]],
        &'a str,
    );

    #[test]
    fn rewrites() {
        let two = [("user_id", 20), ("name", 25)];
        let cases: &[Case] = &[
            (
                "WITH x AS (SELECT user_id, name FROM users WHERE v > 1) SELECT * FROM x",
                "SELECT user_id, name FROM users WHERE v > 1",
                &two,
                &[&[Some("1"), Some("a'b")], &[Some("7"), None]],
                r#"WITH x AS (SELECT * FROM unnest(E'{1,7}'::int8[], E'{a''b,NULL}'::text[]) AS x(user_id, name)) SELECT * FROM x"#,
            ),
            (
                "with c (k) as materialized ( select max(user_id) from orders ) select * from c",
                "select max(user_id) from orders",
                &[("max", 20)],
                &[],
                "with c (k) as materialized (SELECT * FROM unnest(E'{}'::int8[]) AS c(max)) select * from c",
            ),
            // Earlier CTEs come along; an unsharded one stays in place.
            (
                "WITH a AS (SELECT 1 AS one), \"B\" AS (SELECT user_id FROM users, a) UPDATE t SET v = 1 WHERE k IN (SELECT user_id FROM \"B\")",
                "WITH a AS (SELECT 1 AS one) SELECT user_id FROM users, a",
                &[("user_id", 20)],
                &[&[Some("3")]],
                "WITH a AS (SELECT 1 AS one), \"B\" AS (SELECT * FROM unnest(E'{3}'::int8[]) AS \"B\"(user_id)) UPDATE t SET v = 1 WHERE k IN (SELECT user_id FROM \"B\")",
            ),
            // Two columns named alike beside an array column: the cast reads them by position
            // (by name, `?column?` would be ambiguous).
            (
                "WITH x AS (SELECT user_id + 1, user_id * 2, tags FROM users) SELECT * FROM x",
                "SELECT user_id + 1, user_id * 2, tags FROM users",
                &[("?column?", 20), ("?column?", 20), ("tags", 1009)],
                &[&[Some("2"), Some("2"), Some("{a,b}")]],
                r#"WITH x AS (SELECT * FROM (SELECT c1 AS "?column?", c2 AS "?column?", c3::text[] AS tags FROM unnest(E'{2}'::int8[], E'{2}'::int8[], E'{"{a,b}"}'::text[]) AS x(c1, c2, c3)) AS x) SELECT * FROM x"#,
            ),
        ];
        for (sql, inner, cols, rows, want) in cases {
            let c = run(sql);
            assert_eq!(c.inner, *inner, "{sql}");
            let rows: Vec<Vec<u8>> = rows.iter().map(|r| row(r)).collect();
            assert_eq!(c.splice(sql, &desc(cols), &rows).as_deref(), Ok(*want));
        }
    }

    #[test]
    fn refused_or_left_alone() {
        let refused = |sql: &str, what: &str| match find(sql, sharded) {
            Found::Refuse(m) => assert!(m.contains(what), "{sql}: {m}"),
            other => panic!("{sql}: {other:?}"),
        };
        refused(
            "WITH RECURSIVE r AS (SELECT user_id FROM users UNION SELECT 1) SELECT * FROM r",
            "WITH RECURSIVE",
        );
        refused(
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
            "data-modifying CTE d",
        );
        for sql in [
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
            "SELECT * FROM users",
            "INSERT INTO t WITH x AS (SELECT * FROM users) SELECT * FROM x",
        ] {
            assert_eq!(find(sql, sharded), Found::Nothing, "{sql}");
        }
    }

    #[test]
    fn results_pgshard_cannot_write() {
        let c = run("WITH x AS (SELECT a FROM users) SELECT * FROM x");
        let rows = [row(&[Some("1")])];
        assert_eq!(
            c.splice("", &desc(&[("a", 600)]), &rows),
            Err(SpliceError::Type(600))
        );
        assert_eq!(
            c.splice("", &desc(&[]), &rows[..0]),
            Err(SpliceError::NoColumns)
        );
        assert_eq!(
            c.splice("", &desc(&[("a", 20), ("b", 20)]), &rows),
            Err(SpliceError::Malformed)
        );
    }

    /// Each CTE body under the WITH's blanked names, then the statement with every body blanked.
    #[test]
    fn parts_split_the_statement() {
        let cases: &[(&str, &[&str])] = &[
            (
                "WITH x AS (SELECT * FROM users WHERE user_id = 1) SELECT * FROM x",
                &[
                    "WITH x AS (SELECT) SELECT * FROM users WHERE user_id = 1",
                    "WITH x AS (SELECT) SELECT * FROM x",
                ],
            ),
            (
                "/* c */ with recursive a(n) as not materialized ( select 1 ), b as (select n from a join orders using (n)) delete from orders where order_id in (select n from b)",
                &[
                    "with recursive a(n) as not materialized (SELECT), b as (SELECT) select 1",
                    "with recursive a(n) as not materialized (SELECT), b as (SELECT) select n from a join orders using (n)",
                    "/* c */ with recursive a(n) as not materialized (SELECT), b as (SELECT) delete from orders where order_id in (select n from b)",
                ],
            ),
        ];
        for (sql, want) in cases {
            let got = parts(sql);
            let got: Option<Vec<&str>> =
                got.as_ref().map(|p| p.iter().map(String::as_str).collect());
            assert_eq!(got.as_deref(), Some(*want), "{sql}");
        }
        for sql in [
            "SELECT * FROM users",
            "SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s",
            "INSERT INTO t WITH x AS (SELECT * FROM users) SELECT * FROM x",
        ] {
            assert_eq!(parts(sql), None, "{sql}");
        }
    }

    /// A statement whose every sharded reference is keyed to one shard runs there whole; the
    /// expected shard is the router's own for the key.
    #[test]
    fn one_shard_when_every_part_agrees() {
        use crate::config::ShardedTableConfig;
        use crate::router::literals::LiteralParams;
        use crate::router::{Router, ShardMap, Strategy};
        let tables = [
            ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            },
            ShardedTableConfig {
                name: "orders".into(),
                key: "user_id".into(),
                key_type: None,
            },
        ];
        let ids: Vec<u32> = (0..10).collect();
        let router = Router::new(&tables, 100).with_shards(ids.clone());
        let map = ShardMap::uniform(1, Strategy::Hash, &ids);
        let route = |text: &str| {
            let (facts, literals) = router.analyze_simple(text);
            match &facts[..] {
                [f] => router.route(f, &LiteralParams(&literals), &map, 0),
                _ => Route::Refuse("not one statement".into()),
            }
        };
        let shard_of = |key: i64| match route(&format!("SELECT * FROM users WHERE user_id = {key}"))
        {
            Route::Single(s) => s,
            other => panic!("{other:?}"),
        };
        // Two keys on different shards.
        let (a, b) = (1..100)
            .map(|k| (1, k))
            .find(|&(a, k)| shard_of(a) != shard_of(k))
            .expect("two shards");
        let cases: Vec<(String, Option<u32>)> = vec![
            (
                format!("WITH x AS (SELECT name FROM users WHERE user_id = {a}) SELECT * FROM x"),
                Some(shard_of(a)),
            ),
            (
                format!("WITH x AS (SELECT sum(total) AS t FROM orders WHERE user_id = {a}), y AS (SELECT 2 AS two) SELECT u.name, x.t, y.two FROM users u, x, y WHERE u.user_id = {a}"),
                Some(shard_of(a)),
            ),
            (
                format!("WITH x AS (SELECT total FROM orders WHERE user_id = {a}) UPDATE users SET name = 'n' WHERE user_id = {a} AND name IN (SELECT total::text FROM x)"),
                Some(shard_of(a)),
            ),
            (
                format!("WITH d AS (DELETE FROM orders WHERE user_id = {a} RETURNING total) SELECT sum(total) FROM d"),
                Some(shard_of(a)),
            ),
            // A recursive CTE whose every branch is keyed to one shard (or reads no table)
            // runs there whole; a top-level set operation likewise.
            (
                format!("WITH RECURSIVE r (n) AS (SELECT total FROM orders WHERE user_id = {a} UNION SELECT n + 1 FROM r WHERE n < 9) SELECT count(*) FROM r"),
                Some(shard_of(a)),
            ),
            (
                format!("SELECT name FROM users WHERE user_id = {a} UNION ALL SELECT total::text FROM orders WHERE user_id = {a} EXCEPT SELECT 'x' ORDER BY 1 LIMIT 3"),
                Some(shard_of(a)),
            ),
            (
                format!("SELECT name FROM users WHERE user_id = {a} INTERSECT SELECT name FROM users WHERE user_id = {b}"),
                None,
            ),
            (
                format!("SELECT name FROM users WHERE user_id = {a} UNION SELECT name FROM users"),
                None,
            ),
            ("SELECT 1 UNION SELECT 2".into(), None),
            ("SELECT name FROM users WHERE user_id = 1".into(), None),
            // Keyed to two shards, keyless, or an unsharded table besides.
            (
                format!("WITH x AS (SELECT name FROM users WHERE user_id = {a}) SELECT * FROM orders o, x WHERE o.user_id = {b}"),
                None,
            ),
            ("WITH x AS (SELECT name FROM users) SELECT * FROM x".into(), None),
            (
                format!("WITH x AS (SELECT name FROM users WHERE user_id = {a}) SELECT * FROM x, users"),
                None,
            ),
            (
                format!("WITH x AS (SELECT name FROM users WHERE user_id = {b}), n AS (SELECT * FROM notes) SELECT * FROM x, n"),
                (shard_of(b) == 0).then_some(0),
            ),
            ("WITH x AS (SELECT 1 AS one) SELECT * FROM x".into(), None),
        ];
        for (sql, want) in cases {
            assert_eq!(one_shard(&sql, route), want, "{sql}");
        }
    }
}
