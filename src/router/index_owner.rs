//! Utility statements that name an index but not its table (`DROP INDEX`, `ALTER INDEX`,
//! `COMMENT ON INDEX`, `REINDEX INDEX`): they must run where the index's table lives, which only
//! the shards' catalogs know. This module finds the index names in a parsed statement, writes the
//! catalog query that finds each index's table, and turns the tables found into a route. Pure.
//!
//! The tables are looked up in the shards' catalogs rather than remembered from CREATE INDEX:
//! indexes made by constraints (PRIMARY KEY, UNIQUE), before pgshard ran, by another proxy or
//! before a restart, and renames, are all in the catalog and in no proxy's memory.

use std::collections::BTreeSet;

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::{Route, Router, ShardMap};
use crate::sql_text::{quote_ident, quote_literal};

/// One index a statement names, exactly as the parser spelled it (unquoted names folded).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexName {
    /// Empty when not qualified: the session's search_path decides.
    pub schema: String,
    pub name: String,
}

/// A table that owns one of the indexes, as a shard's catalog names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnerTable {
    pub schema: String,
    pub table: String,
}

fn index_from_range_var(rv: &pb::RangeVar) -> IndexName {
    IndexName {
        schema: rv.schemaname.clone(),
        name: rv.relname.clone(),
    }
}

fn index_from_list(n: &pb::Node) -> Option<IndexName> {
    let Some(NodeEnum::List(l)) = n.node.as_ref() else {
        return None;
    };
    let parts: Vec<&str> = l
        .items
        .iter()
        .filter_map(|i| match i.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [name] => Some(IndexName {
            schema: String::new(),
            name: (*name).to_string(),
        }),
        [.., schema, name] => Some(IndexName {
            schema: (*schema).to_string(),
            name: (*name).to_string(),
        }),
        [] => None,
    }
}

/// The indexes a statement names without naming their table; empty for any other statement.
pub fn named_indexes(stmt: &NodeEnum) -> Vec<IndexName> {
    let index = pb::ObjectType::ObjectIndex as i32;
    match stmt {
        NodeEnum::DropStmt(d) if d.remove_type == index => {
            d.objects.iter().filter_map(index_from_list).collect()
        }
        NodeEnum::CommentStmt(c) if c.objtype == index => c
            .object
            .as_deref()
            .and_then(index_from_list)
            .into_iter()
            .collect(),
        NodeEnum::AlterTableStmt(a) if a.objtype == index => {
            a.relation.iter().map(index_from_range_var).collect()
        }
        NodeEnum::RenameStmt(r) if r.rename_type == index => {
            r.relation.iter().map(index_from_range_var).collect()
        }
        NodeEnum::AlterObjectDependsStmt(a) if a.object_type == index => {
            a.relation.iter().map(index_from_range_var).collect()
        }
        NodeEnum::ReindexStmt(r) if r.kind == pb::ReindexObjectType::ReindexObjectIndex as i32 => {
            r.relation.iter().map(index_from_range_var).collect()
        }
        _ => Vec::new(),
    }
}

/// The catalog query that names the table of each index that exists on a shard: one row
/// (index schema, index name, table schema, table name) per index found, resolved with the
/// session's search_path as the statement itself will be.
pub fn owner_query(indexes: &[IndexName]) -> String {
    let values: Vec<String> = indexes
        .iter()
        .map(|i| {
            let qualified = if i.schema.is_empty() {
                quote_ident(&i.name)
            } else {
                format!("{}.{}", quote_ident(&i.schema), quote_ident(&i.name))
            };
            format!("({})", quote_literal(&qualified))
        })
        .collect();
    format!(
        "SELECT tn.nspname, t.relname FROM (VALUES {}) AS i(name) \
         JOIN pg_catalog.pg_index x ON x.indexrelid = pg_catalog.to_regclass(i.name) \
         JOIN pg_catalog.pg_class t ON t.oid = x.indrelid \
         JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace",
        values.join(", ")
    )
}

impl Router {
    /// The shards whose catalogs are asked: every shard, since an index of a sharded table may
    /// exist on some shards only (a CREATE INDEX CONCURRENTLY that failed half-way).
    pub fn index_lookup_shards(&self, map: &ShardMap) -> Vec<u32> {
        self.every_shard(map)
    }

    /// Where a statement naming indexes runs, given the tables that own them on any shard:
    /// every shard for indexes of sharded and reference tables, the first shard for the others
    /// (and for indexes that exist nowhere, so the first shard gives Postgres's own answer:
    /// an error, or a NOTICE for `IF EXISTS`).
    pub fn index_route(&self, owners: &[OwnerTable], map: &ShardMap, first_shard: u32) -> Route {
        let owners: BTreeSet<&OwnerTable> = owners.iter().collect();
        let tables = self.tables();
        let (everywhere, local): (Vec<&OwnerTable>, Vec<&OwnerTable>) =
            owners.into_iter().partition(|o| {
                tables.key_of(&o.schema, &o.table).is_some()
                    || tables.is_reference(&o.schema, &o.table)
            });
        match (everywhere.first(), local.first()) {
            (Some(e), Some(l)) => Route::Refuse(format!(
                "the statement names an index of {}.{}, which lives on every shard, and one of {}.{}, which lives only on the first shard; send one statement for each",
                e.schema, e.table, l.schema, l.table
            )),
            (Some(_), None) => {
                let all = self.every_shard(map);
                if all.is_empty() {
                    Route::Single(first_shard)
                } else {
                    Route::Broadcast(all)
                }
            }
            (None, _) => Route::Single(first_shard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardedTableConfig;
    use crate::router::Strategy;

    fn indexes(sql: &str) -> Vec<IndexName> {
        let parsed = pg_query::parse(sql, 0).expect(sql);
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .expect(sql)
            .clone();
        named_indexes(&stmt)
    }

    fn ix(schema: &str, name: &str) -> IndexName {
        IndexName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    #[test]
    fn finds_the_indexes_each_statement_names() {
        for (sql, want) in [
            ("drop index ix", vec![ix("", "ix")]),
            (
                "DROP INDEX IF EXISTS a, s.\"B x\" CASCADE",
                vec![ix("", "a"), ix("s", "B x")],
            ),
            ("drop index concurrently Ix", vec![ix("", "ix")]),
            ("alter index ix rename to iy", vec![ix("", "ix")]),
            (
                "alter index if exists s.ix set (fillfactor = 70)",
                vec![ix("s", "ix")],
            ),
            (
                "alter index ix set tablespace pg_default",
                vec![ix("", "ix")],
            ),
            (
                "alter index ix alter column 1 set statistics 100",
                vec![ix("", "ix")],
            ),
            ("comment on index s.ix is 'x'", vec![ix("s", "ix")]),
            ("reindex index ix", vec![ix("", "ix")]),
            (
                "reindex (verbose) index concurrently ix",
                vec![ix("", "ix")],
            ),
            ("drop table ix", vec![]),
            ("alter table users rename to u", vec![]),
            ("reindex table users", vec![]),
            ("comment on table users is 'x'", vec![]),
            ("create index ix on users (name)", vec![]),
            ("select 1", vec![]),
        ] {
            assert_eq!(indexes(sql), want, "{sql}");
        }
    }

    #[test]
    fn owner_query_quotes_names_for_to_regclass() {
        let q = owner_query(&[ix("", "ix"), ix("My Schema", "it's")]);
        assert!(
            q.contains("VALUES ('ix'), ('\"My Schema\".\"it''s\"')"),
            "{q}"
        );
        assert!(q.contains("pg_catalog.to_regclass(i.name)"), "{q}");
    }

    #[test]
    fn routes_by_the_owning_table() {
        let r = Router::new(
            &[ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            }],
            10,
        )
        .with_reference_tables(&["countries".into()])
        .with_shards(vec![1, 2, 3]);
        let map = ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3]);
        let owner = |s: &str, t: &str| OwnerTable {
            schema: s.into(),
            table: t.into(),
        };
        let all = Route::Broadcast(vec![1, 2, 3]);
        assert_eq!(r.index_route(&[owner("public", "users")], &map, 1), all);
        assert_eq!(
            r.index_route(
                &[owner("public", "countries"), owner("public", "users")],
                &map,
                1
            ),
            all
        );
        assert_eq!(
            r.index_route(&[owner("public", "logs")], &map, 1),
            Route::Single(1)
        );
        // A table of the same name in another schema is not the sharded one.
        assert_eq!(
            r.index_route(&[owner("other", "users")], &map, 1),
            Route::Single(1)
        );
        // Exists nowhere: the first shard answers as Postgres does.
        assert_eq!(r.index_route(&[], &map, 1), Route::Single(1));
        let Route::Refuse(m) = r.index_route(
            &[owner("public", "users"), owner("public", "logs")],
            &map,
            1,
        ) else {
            panic!("mixed owners must be refused")
        };
        assert!(
            m.contains("public.users") && m.contains("public.logs"),
            "{m}"
        );
    }
}
