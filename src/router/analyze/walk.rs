//! A typed walk over a pg_query tree: every node under a root, in pre-order, by way of the
//! generated child lists in `walk_children.rs` (regenerate with `scripts/gen_walk_children.py`
//! when pg_query changes), so no node type is missed and no tree is serialised to look at it.

use pg_query::protobuf as pb;
use pg_query::NodeRef;

use super::walk_children::children;
pub(super) use super::walk_children::concurrent;

/// Pushes each node of a list (skipping empty ones).
pub(super) fn push_list<'a>(list: &'a [pb::Node], out: &mut Vec<NodeRef<'a>>) {
    out.extend(
        list.iter()
            .filter_map(|n| n.node.as_ref().map(|e| e.to_ref())),
    );
}

/// Pushes an optional node.
pub(super) fn push_opt<'a>(n: Option<&'a pb::Node>, out: &mut Vec<NodeRef<'a>>) {
    if let Some(e) = n.and_then(|n| n.node.as_ref()) {
        out.push(e.to_ref());
    }
}

/// Every node under the roots, the roots included, in pre-order.
pub struct Walk<'a> {
    stack: Vec<NodeRef<'a>>,
    scratch: Vec<NodeRef<'a>>,
    /// Stay at the roots' query level: a subquery's own statement is not entered.
    this_level: bool,
}

impl<'a> Walk<'a> {
    /// A walk from the given roots.
    pub fn new(roots: impl IntoIterator<Item = NodeRef<'a>>) -> Self {
        let mut stack: Vec<NodeRef<'a>> = roots.into_iter().collect();
        stack.reverse();
        Walk {
            stack,
            scratch: Vec::new(),
            this_level: false,
        }
    }

    /// The same walk, not entering subqueries (`(SELECT …)`, `EXISTS (…)`, `IN (SELECT …)`):
    /// what belongs to the roots' query level only, such as its aggregates.
    pub fn this_level(mut self) -> Self {
        self.this_level = true;
        self
    }

    /// A walk from one node.
    pub fn of(n: &'a pb::Node) -> Self {
        Walk::new(n.node.as_ref().map(|e| e.to_ref()))
    }

    /// A walk from every node of a list.
    pub fn of_list(list: &'a [pb::Node]) -> Self {
        let mut roots = Vec::new();
        push_list(list, &mut roots);
        Walk::new(roots)
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = NodeRef<'a>;

    fn next(&mut self) -> Option<NodeRef<'a>> {
        let n = self.stack.pop()?;
        self.scratch.clear();
        match n {
            NodeRef::SubLink(link) if self.this_level => {
                push_opt(link.testexpr.as_deref(), &mut self.scratch)
            }
            _ => children(n, &mut self.scratch),
        }
        self.stack.extend(self.scratch.drain(..).rev());
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<String> {
        let parsed = pg_query::parse(sql, 0).expect("parse");
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().expect("stmt");
        Walk::of(stmt)
            .map(|n| format!("{n:?}").split('(').next().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn reaches_typed_fields_lists_and_nested_statements() {
        let k = kinds(
            "WITH w AS (DELETE FROM d RETURNING id) \
             INSERT INTO t (a) SELECT x FROM u WHERE EXISTS (SELECT 1 FROM v) ON CONFLICT DO NOTHING",
        );
        for want in [
            "InsertStmt",
            "RangeVar",
            "CommonTableExpr",
            "DeleteStmt",
            "SubLink",
            "OnConflictClause",
            "ColumnRef",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
        assert_eq!(k.iter().filter(|x| *x == "RangeVar").count(), 4, "{k:?}");
    }

    #[test]
    fn this_level_leaves_subqueries_out() {
        let parsed = pg_query::parse(
            "SELECT count(x), y IN (SELECT max(z) FROM t), (SELECT sum(w) FROM u) FROM v",
            0,
        )
        .expect("parse");
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().expect("stmt");
        let Some(pg_query::NodeEnum::SelectStmt(s)) = stmt.node.as_ref() else {
            panic!("not a SELECT");
        };
        let funcs = |walk: Walk| -> Vec<String> {
            walk.filter_map(|n| match n {
                NodeRef::FuncCall(f) => f.funcname.last().and_then(|p| match p.node.as_ref() {
                    Some(pg_query::NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .collect()
        };
        assert_eq!(
            funcs(Walk::of_list(&s.target_list)),
            ["count", "max", "sum"]
        );
        assert_eq!(funcs(Walk::of_list(&s.target_list).this_level()), ["count"]);
        // The left side of IN is still this level's.
        let cols = Walk::of_list(&s.target_list)
            .this_level()
            .filter(|n| matches!(n, NodeRef::ColumnRef(_)))
            .count();
        assert_eq!(cols, 2, "x and y");
    }

    #[test]
    fn sees_concurrent_flags() {
        let parsed = pg_query::parse("CREATE INDEX CONCURRENTLY i ON t (a)", 0).expect("parse");
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().expect("stmt");
        assert!(Walk::of(stmt).any(concurrent));
    }
}
