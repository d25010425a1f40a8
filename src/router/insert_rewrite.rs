//! Rewrites of one INSERT through its parse tree: a driver's shape of a batch insert is turned
//! into the shape pgshard splits by key, and written back as text by the deparser; and reads of
//! one INSERT's tree. Pure.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

/// `sql`, when it is one INSERT whose text contains `word` (lower case; a cheap look before
/// parsing), after `edit` changed its tree; `None` when it is not, or when `edit` declines.
pub fn rewrite_insert(
    sql: &str,
    word: &str,
    edit: impl FnOnce(&mut pb::InsertStmt) -> Option<()>,
) -> Option<String> {
    let insert = sql.trim_start().get(..6)?.eq_ignore_ascii_case("insert");
    if !insert || !sql.to_ascii_lowercase().contains(word) {
        return None;
    }
    let mut parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_mut_slice() else {
        return None;
    };
    let Some(NodeEnum::InsertStmt(insert)) = raw.stmt.as_mut()?.node.as_mut() else {
        return None;
    };
    edit(insert)?;
    crate::sql_text::deparse(parsed.protobuf)
}

/// `rows` (each a list of values) as an INSERT's source: `VALUES (…), (…)`.
pub fn values_source(rows: Vec<pb::Node>) -> Box<pb::Node> {
    let values = pb::SelectStmt {
        values_lists: rows,
        op: pb::SetOperation::SetopNone as i32,
        limit_option: pb::LimitOption::Default as i32,
        ..Default::default()
    };
    Box::new(pb::Node {
        node: Some(NodeEnum::SelectStmt(Box::new(values))),
    })
}

/// What `read` finds in `sql` when it is one INSERT; `None` when it is not, or `read` finds
/// nothing.
pub fn read_insert<T>(sql: &str, read: impl FnOnce(&pb::InsertStmt) -> Option<T>) -> Option<T> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(NodeEnum::InsertStmt(insert)) = raw.stmt.as_ref()?.node.as_ref() else {
        return None;
    };
    read(insert)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key columns named by reserved words come back quoted, so the rewritten text names the
    /// same columns.
    #[test]
    fn reserved_word_columns_stay_quoted() {
        let sql = r#"INSERT INTO t ("order", "user", "Mixed", v) VALUES (1, 2, 3, 4)"#;
        let out = rewrite_insert(sql, "insert", |insert| {
            insert.cols.reverse();
            Some(())
        })
        .expect("rewritten");
        assert!(
            out.contains(r#""order""#) && out.contains(r#""user""#),
            "{out}"
        );
        let back = pg_query::parse(&out, 0).expect("the rewrite parses");
        let Some(NodeEnum::InsertStmt(i)) = back.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
        else {
            panic!("not an INSERT: {out}");
        };
        let names: Vec<&str> = i
            .cols
            .iter()
            .filter_map(|c| match c.node.as_ref() {
                Some(NodeEnum::ResTarget(rt)) => Some(rt.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["v", "Mixed", "user", "order"]);
    }
}
