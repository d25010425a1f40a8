//! The branches of a UNION, INTERSECT or EXCEPT as statements of their own, so that a set
//! operation whose every branch is keyed to one shard runs whole there (see `router::cte`'s
//! `one_shard`). Each branch keeps the statement's WITH, so a name of one of its CTEs (their
//! bodies blanked by `cte::parts`) reads no table. Pure: text in, texts out.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

/// What splitting a statement into the branches of its set operation gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Branches {
    /// Not one SELECT whose top is a set operation: the statement stands for itself.
    NotSetOp,
    /// Every branch, deparsed under the statement's WITH.
    Split(Vec<String>),
    /// A set operation whose branches cannot stand alone (a WITH of a branch's own beside the
    /// statement's, an ORDER BY or LIMIT of the whole that is more than names and constants,
    /// text that does not parse or deparse).
    Unsplittable,
}

/// The branches of `sql` when it is one UNION, INTERSECT or EXCEPT (nested ones flattened).
pub fn branches(sql: &str) -> Branches {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Branches::Unsplittable;
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Branches::NotSetOp;
    };
    let Some(NodeEnum::SelectStmt(top)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return Branches::NotSetOp;
    };
    if top.op == pb::SetOperation::SetopNone as i32 {
        return Branches::NotSetOp;
    }
    if !whole_reads_nothing(top) {
        return Branches::Unsplittable;
    }
    let mut leaves = Vec::new();
    collect_leaves(top, &mut leaves);
    let mut out = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        let mut leaf = leaf.clone();
        match (&leaf.with_clause, &top.with_clause) {
            (Some(_), Some(_)) => return Branches::Unsplittable,
            (None, Some(with)) => leaf.with_clause = Some(with.clone()),
            _ => {}
        }
        match deparse(parsed.protobuf.version, leaf) {
            Some(text) => out.push(text),
            None => return Branches::Unsplittable,
        }
    }
    Branches::Split(out)
}

/// True when the ORDER BY, LIMIT and OFFSET of the whole set operation are output-column
/// names, positions, constants or parameters (so they read no table), and it locks nothing.
pub(crate) fn whole_reads_nothing(top: &pb::SelectStmt) -> bool {
    let plain = |n: &pb::Node| {
        matches!(
            n.node.as_ref(),
            Some(NodeEnum::AConst(_) | NodeEnum::ParamRef(_) | NodeEnum::ColumnRef(_))
        )
    };
    let sorts_plain = top.sort_clause.iter().all(|s| match s.node.as_ref() {
        Some(NodeEnum::SortBy(by)) => by.node.as_deref().is_some_and(plain),
        _ => false,
    });
    sorts_plain
        && top.limit_count.as_deref().is_none_or(plain)
        && top.limit_offset.as_deref().is_none_or(plain)
        && top.locking_clause.is_empty()
}

/// The plain SELECTs under a set operation, left to right.
fn collect_leaves<'a>(s: &'a pb::SelectStmt, out: &mut Vec<&'a pb::SelectStmt>) {
    if s.op == pb::SetOperation::SetopNone as i32 {
        out.push(s);
        return;
    }
    for arm in [&s.larg, &s.rarg].into_iter().flatten() {
        collect_leaves(arm, out);
    }
}

/// `select` as SQL text (None when it does not deparse).
pub(crate) fn deparse(version: i32, select: pb::SelectStmt) -> Option<String> {
    crate::sql_text::deparse(pb::ParseResult {
        version,
        stmts: vec![pb::RawStmt {
            stmt: Some(Box::new(pb::Node {
                node: Some(NodeEnum::SelectStmt(Box::new(select))),
            })),
            stmt_location: 0,
            stmt_len: 0,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(sql: &str) -> Vec<String> {
        match branches(sql) {
            Branches::Split(b) => b,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn flattens_nested_set_operations() {
        assert_eq!(
            split("SELECT a FROM t WHERE k = 1 UNION ALL (SELECT b FROM u WHERE k = $1 INTERSECT SELECT 3) ORDER BY 1 LIMIT 2"),
            [
                "SELECT a FROM t WHERE k = 1",
                "SELECT b FROM u WHERE k = $1",
                "SELECT 3"
            ]
        );
    }

    #[test]
    fn branches_keep_the_with() {
        assert_eq!(
            split("WITH RECURSIVE r AS (SELECT) SELECT x FROM users WHERE user_id = 5 UNION ALL SELECT u.x FROM users u JOIN r ON u.user_id = r.user_id WHERE u.user_id = 5"),
            [
                "WITH RECURSIVE r AS (SELECT) SELECT x FROM users WHERE user_id = 5",
                "WITH RECURSIVE r AS (SELECT) SELECT u.x FROM users u JOIN r ON u.user_id = r.user_id WHERE u.user_id = 5"
            ]
        );
    }

    #[test]
    fn what_is_not_split() {
        assert_eq!(branches("SELECT 1"), Branches::NotSetOp);
        assert_eq!(branches("DELETE FROM t"), Branches::NotSetOp);
        assert_eq!(branches("SELECT 1; SELECT 2"), Branches::NotSetOp);
        for sql in [
            "SELECT 1 UNION SELECT 2 LIMIT (SELECT count(*) FROM users)",
            "WITH a AS (SELECT) (WITH b AS (SELECT 1) SELECT * FROM b) UNION SELECT 2",
            "SELECT 1 UNION",
        ] {
            assert_eq!(branches(sql), Branches::Unsplittable, "{sql}");
        }
    }
}
