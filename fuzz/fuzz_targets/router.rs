//! The router on arbitrary SQL and Bind parameters: analysis, the route decision and what the
//! session derives from it (merge plans bound to their LIMIT/OFFSET/HAVING values, split INSERTs,
//! generated keys) must answer or refuse, never panic.
//!
//! Input layout (written by fuzz/capture/seeds.py from real traffic):
//! `flags` (bit 0: extended protocol, bits 1-2: shard-map strategy), the SQL text up to a NUL,
//! then parameters, each `kind` (bit 0 binary, bit 1 NULL, bits 2.. the Parse type) followed by
//! a big-endian u16 length and that many bytes.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgshard::config::ShardedTableConfig;
use pgshard::exec::merged::BoundMerge;
use pgshard::router::literals::LiteralParams;
use pgshard::router::params::BindParams;
use pgshard::router::{
    rewrite, split_insert, ParamSource, Route, Router, ShardMap, StatementFacts, Strategy,
};

/// Parameter types a Parse may declare: unspecified, int8, int2, int4, text, varchar, int8[].
const TYPES: [u32; 7] = [0, 20, 21, 23, 25, 1043, 1016];
const SHARDS: [u32; 3] = [1, 2, 3];

struct Params {
    values: Vec<Option<Bytes>>,
    formats: Vec<i16>,
    types: Vec<u32>,
}

fn parse_params(mut rest: &[u8]) -> Params {
    let mut p = Params {
        values: Vec::new(),
        formats: Vec::new(),
        types: Vec::new(),
    };
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (value, after) = tail.split_at(len);
        p.formats.push(i16::from(kind & 1));
        p.types.push(TYPES[usize::from(kind >> 2) % TYPES.len()]);
        p.values
            .push((kind & 2 == 0).then(|| Bytes::copy_from_slice(value)));
        rest = after;
    }
    p
}

fn tables() -> Vec<ShardedTableConfig> {
    let table = |name: &str| ShardedTableConfig {
        name: name.into(),
        key: "user_id".into(),
        key_type: None,
    };
    vec![table("users"), table("orders")]
}

/// What the session does with one routed statement besides sending it.
fn follow_route(
    sql: &str,
    facts: &StatementFacts,
    route: &Route,
    params: &dyn ParamSource,
    literals: Option<&[pgshard::router::literals::Literal]>,
    map: &ShardMap,
) {
    if let Route::SplitInsert(plan) = route {
        if let Ok(parts) = split_insert::split(sql, plan) {
            assert_eq!(parts.len(), plan.len());
        }
    }
    if let Some(rows) = facts.missing_key_rows {
        let ids: Vec<i64> = (0..rows.min(10_000) as i64).collect();
        // Both shapes: plain, and with OVERRIDING SYSTEM VALUE for an identity key.
        for overriding in [false, true] {
            if let Ok(text) = rewrite::insert_with_keys(sql, &tables(), &ids, overriding) {
                let _ = map.shard_for(ids.first().copied().unwrap_or(0));
                let _ = text;
            }
        }
    }
    if let Some(Ok(plan)) = &facts.merge {
        match literals {
            Some(lits) => {
                let _ = plan.shard_sql.with_literals(lits);
            }
            None => {
                let _ = plan.shard_sql.with_placeholders();
            }
        }
        let _ = BoundMerge::new(Arc::clone(plan), params, true);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let sql = String::from_utf8_lossy(&rest[..nul]);
    let params = parse_params(rest.get(nul + 1..).unwrap_or(&[]));
    let strategy = match (flags >> 1) & 3 {
        1 => Strategy::Hash,
        2 => Strategy::Modulo { modulus: 0 },
        _ => Strategy::Range,
    };
    let map = ShardMap::uniform(1, strategy, &SHARDS);
    let router = Router::new(&tables(), 16)
        .with_reference_tables(&["regions".to_string()])
        .with_shards(SHARDS.to_vec());
    if flags & 1 == 0 {
        // Twice: the second answer comes from the facts cache.
        for _ in 0..2 {
            let (facts, literals) = router.analyze_simple(&sql);
            let lp = LiteralParams(&literals);
            for f in facts.iter() {
                let route = router.route(f, &lp, &map, SHARDS[0]);
                follow_route(&sql, f, &route, &lp, Some(&literals), &map);
            }
        }
    } else {
        let facts = router.analyze_prepared(&sql);
        let bp = BindParams {
            values: &params.values,
            formats: &params.formats,
            types: &params.types,
        };
        for f in facts.iter() {
            let route = router.route(f, &bp, &map, SHARDS[0]);
            follow_route(&sql, f, &route, &bp, None, &map);
        }
    }
});
