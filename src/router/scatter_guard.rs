//! `[[users]] allow_scatter = false`: a statement that would reach more than one shard is
//! refused, naming its table and the key it lacks, so an application can prove it is fully keyed.
//! Pure: routes and facts in, a refusal message out.

use super::{Route, StatementFacts};

/// The refusal of the first route (of one request) that reaches more than one shard with data
/// (a scatter read or write, an INSERT split between shards); `None` when every route stays on
/// one shard. Statements that must change every shard alike (DDL, reference-table writes) are
/// not scatters of data and pass.
pub fn refuse_scatter(routes: &[Route], facts: &[StatementFacts]) -> Option<String> {
    routes.iter().zip(facts).find_map(|(route, f)| {
        let (table, key) = f
            .shard_key
            .clone()
            .unwrap_or_else(|| ("a sharded table".into(), "its shard key".into()));
        let lead = "this user may not run statements that reach more than one shard (allow_scatter = false)";
        match route {
            Route::Scatter(shards) if f.key_values_named() => Some(format!(
                "{lead}: the {key} values this statement names lie on {} shards; name {table}.{key} values of one shard per statement",
                shards.len()
            )),
            Route::Scatter(shards) => Some(format!(
                "{lead}: this statement on {table} has no condition on its shard key {table}.{key} and would reach {} shards; add {key} = …",
                shards.len()
            )),
            Route::SplitInsert(plan) => Some(format!(
                "{lead}: this INSERT's rows belong to {} shards by {table}.{key}; insert each shard's rows in a statement of their own",
                plan.len()
            )),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardedTableConfig;
    use crate::router::literals::LiteralParams;
    use crate::router::{Router, ShardMap, Strategy};

    fn routes(sql: &str) -> (Vec<Route>, Vec<StatementFacts>) {
        let r = Router::new(
            &[ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            }],
            10,
        )
        .with_shards(vec![1, 2, 3])
        .with_reference_tables(&["countries".into()]);
        let map = ShardMap::uniform(1, Strategy::Modulo { modulus: 3 }, &[1, 2, 3]);
        let (facts, lits) = r.analyze_simple(sql);
        let routes = facts
            .iter()
            .map(|f| r.route(f, &LiteralParams(&lits), &map, 1))
            .collect();
        (routes, facts.to_vec())
    }

    #[test]
    fn only_statements_reaching_several_shards_are_refused() {
        for sql in [
            "select * from users where user_id = 4",
            "update users set n = 1 where user_id in (1, 4)",
            "insert into users (user_id) values (1), (4)",
            "select 1",
            "select * from countries",
            "create index on users (name)",
            "insert into countries values ('x')",
        ] {
            let (r, f) = routes(sql);
            assert_eq!(refuse_scatter(&r, &f), None, "{sql}: {r:?}");
        }
        for (sql, want) in [
            (
                "select count(*) from users",
                "no condition on its shard key users.user_id and would reach 3 shards",
            ),
            (
                "delete from users where name = 'x'",
                "no condition on its shard key users.user_id",
            ),
            (
                "select * from users where user_id in (1, 2)",
                "the user_id values this statement names lie on 2 shards",
            ),
            (
                "insert into users (user_id) values (1), (2), (3)",
                "rows belong to 3 shards by users.user_id",
            ),
            ("select 1; select * from users", "would reach 3 shards"),
        ] {
            let (r, f) = routes(sql);
            let m = refuse_scatter(&r, &f).unwrap_or_else(|| panic!("{sql}: {r:?}"));
            assert!(m.contains("allow_scatter = false"), "{m}");
            assert!(m.contains(want), "{sql}: {m}");
        }
    }
}
