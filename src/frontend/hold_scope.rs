//! Which requests a rebalancing cut-over holds. While a job runs, a request needs a hold pass
//! (and waits while a cut-over holds the gate) only when it may touch keys the job moves: a
//! statement on a sharded table whose keys change owner between the map in use and the job's
//! target map, or one whose keys are not known before it runs (keyless statements, INSERTs that
//! get generated ids, COPY). Everything else — other keys, reference tables, pgshard's own
//! commands — goes on during the hold.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::Session;
use crate::router::params::{BindParams, ParamSource};
use crate::router::{Router, ShardMap, StatementFacts, StatementKind};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Parse};

/// True when a statement may touch keys that `from` and `to` place on different shards.
fn may_touch_moving_keys(
    facts: &StatementFacts,
    params: &dyn ParamSource,
    from: &ShardMap,
    to: &ShardMap,
) -> bool {
    if facts.local.is_some() {
        return false;
    }
    if !facts.tenants.is_empty() {
        // A tenant schema's statement waits only while that tenant moves.
        return facts
            .tenants
            .iter()
            .any(|t| from.tenant_shard(t) != to.tenant_shard(t));
    }
    if !facts.sharded {
        return false;
    }
    if facts.missing_key_rows.is_some() || matches!(facts.kind, StatementKind::Copy { .. }) {
        // Keys are generated or read from the COPY data only once the statement runs.
        return true;
    }
    match Router::key_values(facts, params) {
        Some(keys) => keys.iter().any(|k| from.shard_of(k) != to.shard_of(k)),
        None => true,
    }
}

impl Session {
    /// Whether the request `frame` starts (a Query, or the Sync/Flush ending the buffered batch)
    /// must take a hold pass. Without a job in progress every request takes one (the gate is
    /// open, so that costs nothing), so a job that starts finds open transactions holding theirs.
    pub fn needs_hold_pass(&self, frame: &Frame) -> bool {
        let Some(fence) = self.proxy.rebalance.fence() else {
            return true;
        };
        let from = self.proxy.map.current();
        let to = fence.target.as_ref();
        if from.same_placement(to) {
            // The job switched the map already: nothing it moves needs holding any more.
            return false;
        }
        match frame.tag {
            fe::QUERY => {
                let Ok(sql) = fe::decode_query(&frame.body) else {
                    return false;
                };
                let (facts, literals) = self
                    .proxy
                    .router
                    .analyze_simple_in(sql, &self.search_path());
                let params = crate::router::literals::LiteralParams(&literals);
                facts.iter().any(|f| {
                    self.claims_lookup_values(f) || may_touch_moving_keys(f, &params, &from, to)
                })
            }
            fe::SYNC | fe::FLUSH => self.batch_may_touch_moving_keys(&from, to),
            _ => false,
        }
    }

    /// A write that may claim values in a lookup table (see `frontend::run::lookup`): the
    /// lookup rows it writes are keyed by the values, not by the row's key, so whether they
    /// move is not known from the statement's keys; such writes take the hold like keyless ones.
    fn claims_lookup_values(&self, f: &StatementFacts) -> bool {
        !self.proxy.config.lookups.is_empty() && f.sharded && f.is_write
    }

    /// The buffered batch's Binds, resolved against the statements parsed before it or in it.
    fn batch_may_touch_moving_keys(&self, from: &ShardMap, to: &ShardMap) -> bool {
        let mut parsed: HashMap<String, (Arc<[StatementFacts]>, Vec<u32>)> = HashMap::new();
        for frame in &self.batch {
            match frame.tag {
                fe::PARSE => {
                    let Ok(parse) = Parse::decode(&frame.body) else {
                        continue;
                    };
                    let facts = self.analyze_parsed(&parse.query);
                    parsed.insert(parse.name, (facts, parse.param_types));
                }
                fe::BIND => {
                    let Ok(bind) = Bind::decode(&frame.body) else {
                        continue;
                    };
                    let (facts, types) = match parsed.get(&bind.statement) {
                        Some((facts, types)) => (facts.clone(), types.clone()),
                        None => match self.state.statements.get(&bind.statement) {
                            Some(st) => (st.facts.clone(), st.param_types.clone()),
                            // The batch will fail on the unknown statement; nothing runs.
                            None => continue,
                        },
                    };
                    let params = BindParams {
                        values: &bind.params,
                        formats: &bind.param_formats,
                        types: &types,
                    };
                    if facts.iter().any(|f| {
                        self.claims_lookup_values(f) || may_touch_moving_keys(f, &params, from, to)
                    }) {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::literals::LiteralParams;
    use crate::router::Strategy;

    fn facts(sql: &str) -> (Arc<[StatementFacts]>, Vec<crate::router::literals::Literal>) {
        let tables = [crate::config::ShardedTableConfig {
            name: "users".into(),
            key: "user_id".into(),
            key_type: None,
        }];
        Router::new(&tables, 16).analyze_simple(sql)
    }

    #[test]
    fn only_moving_or_unknown_keys_are_held() {
        let from = ShardMap::uniform(1, Strategy::Hash, &(0..10).collect::<Vec<_>>());
        let plan =
            crate::rebalance::plan(&from, &crate::rebalance::Target::AddShard(10)).expect("a plan");
        let to = plan.to;
        let moving = (1..)
            .find(|&k| from.shard_for(k) != to.shard_for(k))
            .unwrap();
        let staying = (1..)
            .find(|&k| from.shard_for(k) == to.shard_for(k))
            .unwrap();
        let held = |sql: &str| {
            let (facts, literals) = facts(sql);
            let params = LiteralParams(&literals);
            facts
                .iter()
                .any(|f| may_touch_moving_keys(f, &params, &from, &to))
        };
        assert!(held(&format!(
            "UPDATE users SET name = 'x' WHERE user_id = {moving}"
        )));
        assert!(!held(&format!(
            "UPDATE users SET name = 'x' WHERE user_id = {staying}"
        )));
        assert!(held(&format!(
            "SELECT * FROM users WHERE user_id IN ({staying}, {moving})"
        )));
        assert!(held("SELECT count(*) FROM users"));
        assert!(held("INSERT INTO users (name) VALUES ('generated id')"));
        assert!(!held("SELECT 1"));
        assert!(!held("SELECT * FROM countries"));
    }

    /// A tenant's move holds that tenant's statements only: other tenants, keys and the rest go
    /// on.
    #[test]
    fn a_moving_tenant_holds_only_its_own_statements() {
        let tenants = [("tenant_a", 1), ("tenant_b", 1)].map(|(n, s)| {
            crate::config::schemas::ShardedSchemaConfig {
                name: n.into(),
                shard: s,
            }
        });
        let router = Router::new(
            &[crate::config::ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            }],
            16,
        )
        .with_schemas(&tenants);
        let from = ShardMap::uniform(1, Strategy::Hash, &[1, 2]).with_tenants(
            [("tenant_a".into(), 1), ("tenant_b".into(), 1)]
                .into_iter()
                .collect(),
        );
        let target = crate::rebalance::Target::MoveSchema {
            schema: "tenant_a".into(),
            to: 2,
        };
        let to = crate::rebalance::plan(&from, &target).expect("a plan").to;
        let held = |sql: &str| {
            let (facts, literals) = router.analyze_simple(sql);
            let params = LiteralParams(&literals);
            facts
                .iter()
                .any(|f| may_touch_moving_keys(f, &params, &from, &to))
        };
        assert!(held("INSERT INTO tenant_a.orders VALUES (1)"));
        assert!(held(
            "SELECT * FROM tenant_a.orders o JOIN tenant_a.items i USING (id)"
        ));
        assert!(!held("SELECT * FROM tenant_b.orders"));
        assert!(!held("UPDATE users SET name = 'x' WHERE user_id = 7"));
        assert!(!held("SELECT 1"));
        assert!(!from.same_placement(&to));
    }
}
