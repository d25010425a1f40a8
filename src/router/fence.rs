//! Fencing a statement to the rows a shard owns. While a rebalancing job runs, moving rows exist on
//! two shards (copied to the destination before the cut-over, still on the source until clean-up).
//! A statement that reaches a shard without naming its keys gets, for every sharded table it reads
//! or writes, a condition keeping only the rows the routing map gives that shard — so no keyless
//! read counts a row twice and no keyless write applies twice. Works on the Postgres parse tree;
//! a shape it cannot fence exactly is an error the caller turns into a refusal.

use pg_query::protobuf::{
    self, node::Node as N, Alias, BoolExpr, BoolExprType, JoinType, RangeSubselect, RangeVar,
    SelectStmt, SetOperation,
};

use super::ShardMap;
use crate::sql_text::quote_ident;

/// The sharded tables and the map whose ownership a fence enforces on one shard.
pub struct Fence<'a> {
    /// Resolved with the session's search_path, as the statement's own names are.
    pub tables: &'a super::names::ShardedTables,
    pub map: &'a ShardMap,
    pub shard: u32,
}

impl Fence<'_> {
    /// `sql` with every sharded table restricted to the rows `shard` owns, or why it cannot be.
    pub fn apply(&self, sql: &str) -> Result<String, String> {
        let mut parsed = pg_query::parse(sql, 0).map_err(|e| e.to_string())?;
        let total = self.sharded_refs(&parsed.protobuf);
        if total == 0 {
            return Ok(sql.to_string());
        }
        let mut done = 0usize;
        for raw in parsed.protobuf.stmts.iter_mut() {
            let Some(node) = raw.stmt.as_mut().and_then(|n| n.node.as_mut()) else {
                continue;
            };
            match node {
                N::SelectStmt(sel) => self.select(sel, &mut done)?,
                N::UpdateStmt(up) => {
                    let mut preds = Vec::new();
                    if let Some(rel) = &up.relation {
                        self.target(rel, &mut preds, &mut done)?;
                    }
                    for item in up.from_clause.iter_mut() {
                        self.restrict_item(item, false, &mut preds, &mut done)?;
                    }
                    and_into(&mut up.where_clause, preds);
                    if let Some(w) = up.with_clause.as_mut() {
                        self.ctes(&mut w.ctes, &mut done)?;
                    }
                }
                N::DeleteStmt(del) => {
                    let mut preds = Vec::new();
                    if let Some(rel) = &del.relation {
                        self.target(rel, &mut preds, &mut done)?;
                    }
                    for item in del.using_clause.iter_mut() {
                        self.restrict_item(item, false, &mut preds, &mut done)?;
                    }
                    and_into(&mut del.where_clause, preds);
                    if let Some(w) = del.with_clause.as_mut() {
                        self.ctes(&mut w.ctes, &mut done)?;
                    }
                }
                _ => {}
            }
        }
        if done != total {
            return Err(format!(
                "{} of its {total} references to sharded tables sit where pgshard cannot restrict them (a subquery in an expression, a MERGE, …)",
                total - done
            ));
        }
        crate::sql_text::deparse(parsed.protobuf)
            .ok_or_else(|| "the statement could not be rewritten".to_string())
    }

    /// How many RangeVars in the tree name a sharded table.
    fn sharded_refs(&self, tree: &protobuf::ParseResult) -> usize {
        tree.nodes()
            .iter()
            .filter(
                |(n, ..)| matches!(n, pg_query::NodeRef::RangeVar(rv) if self.key_of(rv).is_some()),
            )
            .count()
    }

    fn key_of(&self, rv: &RangeVar) -> Option<(&str, crate::router::KeyType)> {
        let (schema, name) = (rv.schemaname.to_lowercase(), rv.relname.to_lowercase());
        let key = self.tables.key_of(&schema, &name)?;
        Some((key, self.tables.key_type_of(&schema, &name)))
    }

    /// The ownership condition for a table referred to as `qualifier`.
    fn owned(
        &self,
        qualifier: &str,
        (key, key_type): (&str, crate::router::KeyType),
    ) -> Result<protobuf::Node, String> {
        let expr = format!("{}.{}", quote_ident(qualifier), quote_ident(key));
        let text = format!(
            "SELECT 1 WHERE ({}) IS NOT FALSE",
            self.map
                .sql_owned_by_expr_typed(&expr, key_type, self.shard)
        );
        let parsed = pg_query::parse(&text, 0).map_err(|e| e.to_string())?;
        parsed
            .protobuf
            .stmts
            .into_iter()
            .next()
            .and_then(|s| s.stmt)
            .and_then(|n| match n.node {
                Some(N::SelectStmt(sel)) => sel.where_clause.map(|w| *w),
                _ => None,
            })
            .ok_or_else(|| "cannot build the ownership condition".to_string())
    }

    /// The target table of an UPDATE or DELETE.
    fn target(
        &self,
        rv: &RangeVar,
        preds: &mut Vec<protobuf::Node>,
        done: &mut usize,
    ) -> Result<(), String> {
        if let Some(key) = self.key_of(rv) {
            preds.push(self.owned(&qualifier(rv), key)?);
            *done += 1;
        }
        Ok(())
    }

    fn select(&self, sel: &mut SelectStmt, done: &mut usize) -> Result<(), String> {
        if let Some(w) = sel.with_clause.as_mut() {
            self.ctes(&mut w.ctes, done)?;
        }
        if sel.op != SetOperation::SetopNone as i32 {
            if let Some(l) = sel.larg.as_mut() {
                self.select(l, done)?;
            }
            if let Some(r) = sel.rarg.as_mut() {
                self.select(r, done)?;
            }
            return Ok(());
        }
        let mut preds = Vec::new();
        for item in sel.from_clause.iter_mut() {
            self.restrict_item(item, false, &mut preds, done)?;
        }
        and_into(&mut sel.where_clause, preds);
        Ok(())
    }

    fn ctes(&self, ctes: &mut [protobuf::Node], done: &mut usize) -> Result<(), String> {
        for cte in ctes.iter_mut() {
            if let Some(N::CommonTableExpr(c)) = cte.node.as_mut() {
                if let Some(N::SelectStmt(sel)) = c.ctequery.as_mut().and_then(|q| q.node.as_mut())
                {
                    self.select(sel, done)?;
                }
            }
        }
        Ok(())
    }

    /// One FROM item. A sharded table on the nullable side of an outer join becomes a filtered
    /// subquery under the same name, so the join still pads its missing rows with NULLs.
    fn restrict_item(
        &self,
        item: &mut protobuf::Node,
        nullable: bool,
        preds: &mut Vec<protobuf::Node>,
        done: &mut usize,
    ) -> Result<(), String> {
        match item.node.as_mut() {
            Some(N::RangeVar(rv)) => {
                let Some(key) = self.key_of(rv) else {
                    return Ok(());
                };
                let name = qualifier(rv);
                let owned = self.owned(&name, key)?;
                *done += 1;
                if !nullable {
                    preds.push(owned);
                    return Ok(());
                }
                let mut inner = rv.clone();
                inner.alias = Some(Alias {
                    aliasname: name.clone(),
                    colnames: Vec::new(),
                });
                let sub = SelectStmt {
                    target_list: star(),
                    from_clause: vec![node(N::RangeVar(inner))],
                    where_clause: Some(Box::new(owned)),
                    op: SetOperation::SetopNone as i32,
                    limit_option: protobuf::LimitOption::Default as i32,
                    ..Default::default()
                };
                let alias = rv.alias.clone().unwrap_or(Alias {
                    aliasname: name,
                    colnames: Vec::new(),
                });
                item.node = Some(N::RangeSubselect(Box::new(RangeSubselect {
                    lateral: false,
                    subquery: Some(Box::new(node(N::SelectStmt(Box::new(sub))))),
                    alias: Some(alias),
                })));
                Ok(())
            }
            Some(N::JoinExpr(j)) => {
                let t = j.jointype;
                let left_nullable =
                    nullable || t == JoinType::JoinRight as i32 || t == JoinType::JoinFull as i32;
                let right_nullable =
                    nullable || t == JoinType::JoinLeft as i32 || t == JoinType::JoinFull as i32;
                if let Some(l) = j.larg.as_mut() {
                    self.restrict_item(l, left_nullable, preds, done)?;
                }
                if let Some(r) = j.rarg.as_mut() {
                    self.restrict_item(r, right_nullable, preds, done)?;
                }
                Ok(())
            }
            Some(N::RangeSubselect(s)) => {
                if let Some(N::SelectStmt(sel)) = s.subquery.as_mut().and_then(|q| q.node.as_mut())
                {
                    self.select(sel, done)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The name a FROM item's columns are qualified with: its alias, else the table name.
fn qualifier(rv: &RangeVar) -> String {
    rv.alias
        .as_ref()
        .map(|a| a.aliasname.clone())
        .unwrap_or_else(|| rv.relname.clone())
}

fn node(n: N) -> protobuf::Node {
    protobuf::Node { node: Some(n) }
}

/// `*` as a target list.
fn star() -> Vec<protobuf::Node> {
    vec![node(N::ResTarget(Box::new(protobuf::ResTarget {
        val: Some(Box::new(node(N::ColumnRef(protobuf::ColumnRef {
            fields: vec![node(N::AStar(protobuf::AStar {}))],
            location: -1,
        })))),
        location: -1,
        ..Default::default()
    })))]
}

/// ANDs `preds` into a WHERE clause.
fn and_into(clause: &mut Option<Box<protobuf::Node>>, mut preds: Vec<protobuf::Node>) {
    if preds.is_empty() {
        return;
    }
    if let Some(w) = clause.take() {
        preds.push(*w);
    }
    let combined = if preds.len() == 1 {
        preds.pop().unwrap_or_default()
    } else {
        node(N::BoolExpr(Box::new(BoolExpr {
            xpr: None,
            boolop: BoolExprType::AndExpr as i32,
            args: preds,
            location: -1,
        })))
    };
    *clause = Some(Box::new(combined));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardedTableConfig;
    use crate::router::{KeyRange, Strategy};

    fn tables() -> Vec<ShardedTableConfig> {
        vec![
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
        ]
    }

    fn map() -> ShardMap {
        ShardMap::new(
            2,
            Strategy::Range,
            vec![
                KeyRange {
                    lower: None,
                    upper: Some(100),
                    shard: 1,
                },
                KeyRange {
                    lower: Some(100),
                    upper: None,
                    shard: 2,
                },
            ],
        )
        .unwrap()
    }

    fn fence(sql: &str) -> Result<String, String> {
        let (t, m) = (super::super::names::ShardedTables::new(&tables()), map());
        Fence {
            tables: &t,
            map: &m,
            shard: 1,
        }
        .apply(sql)
    }

    /// The text Postgres's deparser gives `sql` (so expectations are written readably).
    fn norm(sql: &str) -> String {
        pg_query::parse(sql, 0)
            .unwrap()
            .deparse(Default::default())
            .unwrap()
    }

    #[test]
    fn restricts_reads_and_writes() {
        assert_eq!(
            fence("SELECT count(*) FROM users").unwrap(),
            norm("SELECT count(*) FROM users WHERE (users.user_id < 100) IS NOT FALSE")
        );
        assert_eq!(
            fence("UPDATE users u SET name = 'x' WHERE name = 'y'").unwrap(),
            norm(
                "UPDATE users u SET name = 'x' WHERE (u.user_id < 100) IS NOT FALSE AND name = 'y'"
            )
        );
        assert_eq!(
            fence("DELETE FROM users WHERE email LIKE '%a' OR name IS NULL").unwrap(),
            norm("DELETE FROM users WHERE (users.user_id < 100) IS NOT FALSE AND (email LIKE '%a' OR name IS NULL)")
        );
        // Unsharded statements are left alone, byte for byte.
        assert_eq!(fence("select  1").unwrap(), "select  1");
    }

    #[test]
    fn joins_unions_ctes_and_subqueries() {
        assert_eq!(
            fence("SELECT * FROM users u JOIN orders o ON o.user_id = u.user_id WHERE u.name = 'a'")
                .unwrap(),
            norm("SELECT * FROM users u JOIN orders o ON o.user_id = u.user_id \
                  WHERE (u.user_id < 100) IS NOT FALSE AND (o.user_id < 100) IS NOT FALSE AND u.name = 'a'")
        );
        assert_eq!(
            fence("SELECT * FROM countries c LEFT JOIN users u ON u.user_id = c.id").unwrap(),
            norm("SELECT * FROM countries c LEFT JOIN \
                  (SELECT * FROM users u WHERE (u.user_id < 100) IS NOT FALSE) u ON u.user_id = c.id")
        );
        let out = fence("SELECT name FROM users UNION ALL SELECT name FROM users").unwrap();
        assert_eq!(out.matches("IS NOT FALSE").count(), 2, "{out}");
        let out = fence("WITH x AS (SELECT * FROM users) SELECT count(*) FROM x").unwrap();
        assert_eq!(out.matches("IS NOT FALSE").count(), 1, "{out}");
        let out = fence("SELECT * FROM (SELECT name FROM users) s").unwrap();
        assert_eq!(out.matches("IS NOT FALSE").count(), 1, "{out}");
    }

    #[test]
    fn refuses_what_it_cannot_reach() {
        let err = fence("SELECT 1 WHERE EXISTS (SELECT 1 FROM users)").unwrap_err();
        assert!(err.contains("1 of its 1"), "{err}");
    }

    #[test]
    fn hash_maps_use_the_hash_point() {
        let t = super::super::names::ShardedTables::new(&tables());
        let m = ShardMap::uniform(1, Strategy::Hash, &[1, 2]);
        let out = Fence {
            tables: &t,
            map: &m,
            shard: 2,
        }
        .apply("SELECT count(*) FROM users")
        .unwrap();
        assert_eq!(
            out,
            norm("SELECT count(*) FROM users WHERE (hashint8extended(users.user_id, 0) >= 0) IS NOT FALSE")
        );
    }
}
