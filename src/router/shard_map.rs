//! The shard map: an ordered list of `[lower, upper) → shard` ranges over a key space. The three
//! strategies differ only in how a key becomes a point in that space, so routing, rebalancing and
//! verification share one code path, and each strategy has an SQL twin that shards evaluate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::key_type::{KeyType, ShardKey};
use crate::sql_text::quote_ident;

/// How a key becomes a point of the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "strategy")]
pub enum Strategy {
    /// The point is the key itself.
    Range,
    /// The point is `hashint8extended(key, 0)`, Postgres's own 64-bit hash.
    Hash,
    /// The point is `key mod modulus` in `[0, modulus)` (Euclidean remainder).
    Modulo { modulus: i64 },
}

impl Strategy {
    /// The strategy's name as the catalog stores it (`shard_map_versions.strategy`).
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::Hash => "hash",
            Strategy::Modulo { .. } => "modulo",
        }
    }
}

/// One slice of the key space: points `p` with `lower <= p < upper`; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub lower: Option<i64>,
    pub upper: Option<i64>,
    pub shard: u32,
}

/// Why a list of ranges is not a valid map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardMapError {
    #[error("shard map has no ranges")]
    Empty,
    #[error("shard map ranges must be sorted, contiguous and cover the whole key space: {0}")]
    Coverage(String),
    #[error("modulo strategy needs a modulus of at least 1, got {0}")]
    BadModulus(i64),
}

/// A versioned map from keys to shards, and from tenant schemas to the shard holding each whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub version: i64,
    pub strategy: Strategy,
    pub ranges: Vec<KeyRange>,
    /// Tenant schemas (schema-based sharding), lowercase, and the shard of each: part of the
    /// version, so a job or a new tenant that publishes a map moves routing on every proxy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, u32>,
}

/// Postgres's `hash_bytes_uint32_extended(k, 0)`: Bob Jenkins' lookup3 final mix of one 32-bit word.
fn hash_uint32_extended_seed0(k: u32) -> u64 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let mut a = init.wrapping_add(k);
    let mut b = init;
    let mut c = init;
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    ((b as u64) << 32) | c as u64
}

/// Postgres's `hashint8extended(key, 0)`, as the signed `bigint` SQL returns.
pub fn hashint8extended(key: i64) -> i64 {
    let mut lohalf = key as u32;
    let hihalf = (key >> 32) as u32;
    lohalf ^= if key >= 0 { hihalf } else { !hihalf };
    hash_uint32_extended_seed0(lohalf) as i64
}

impl ShardMap {
    /// Sort `ranges` by lower bound and check that they are contiguous and cover the key space.
    pub fn new(
        version: i64,
        strategy: Strategy,
        mut ranges: Vec<KeyRange>,
    ) -> Result<ShardMap, ShardMapError> {
        if let Strategy::Modulo { modulus } = strategy {
            if modulus < 1 {
                return Err(ShardMapError::BadModulus(modulus));
            }
        }
        if ranges.is_empty() {
            return Err(ShardMapError::Empty);
        }
        // None (unbounded below) sorts first.
        ranges.sort_by_key(|r| r.lower);
        let cov = |m: String| Err(ShardMapError::Coverage(m));
        for (i, r) in ranges.iter().enumerate() {
            if let (Some(l), Some(u)) = (r.lower, r.upper) {
                if l >= u {
                    return cov(format!("range {i} [{l}, {u}) is empty"));
                }
            }
            if i > 0 && r.lower.is_none() {
                return cov("more than one range is unbounded below".into());
            }
            if i + 1 < ranges.len() {
                let next = &ranges[i + 1];
                match (r.upper, next.lower) {
                    (Some(u), Some(l)) if u == l => {}
                    (u, l) => {
                        return cov(format!(
                            "range {i} ends at {} but the next starts at {}",
                            bound(u),
                            bound(l)
                        ))
                    }
                }
            }
        }
        let first = ranges[0].lower;
        let last = ranges[ranges.len() - 1].upper;
        match strategy {
            Strategy::Range | Strategy::Hash => {
                if first.is_some() {
                    return cov(format!(
                        "the first range must be unbounded below, it starts at {}",
                        bound(first)
                    ));
                }
                if last.is_some() {
                    return cov(format!(
                        "the last range must be unbounded above, it ends at {}",
                        bound(last)
                    ));
                }
            }
            Strategy::Modulo { modulus } => {
                if !matches!(first, None | Some(0)) {
                    return cov(format!(
                        "the first modulo range must start at 0, it starts at {}",
                        bound(first)
                    ));
                }
                if !(last.is_none() || last == Some(modulus)) {
                    return cov(format!(
                        "the last modulo range must end at the modulus {modulus}, it ends at {}",
                        bound(last)
                    ));
                }
            }
        }
        Ok(ShardMap {
            version,
            strategy,
            ranges,
            tenants: BTreeMap::new(),
        })
    }

    /// An even split of the key space over `shards` (in that order).
    pub fn uniform(version: i64, strategy: Strategy, shards: &[u32]) -> ShardMap {
        assert!(
            !shards.is_empty(),
            "a uniform shard map needs at least one shard"
        );
        let n = shards.len();
        let bounds: Vec<i64> = match strategy {
            Strategy::Range => {
                let step = i64::MAX / n as i64;
                (1..n).map(|k| k as i64 * step).collect()
            }
            Strategy::Hash => {
                let step = (1i128 << 64) / n as i128;
                (1..n)
                    .map(|k| (i64::MIN as i128 + k as i128 * step) as i64)
                    .collect()
            }
            Strategy::Modulo { .. } => {
                let ranges = shards
                    .iter()
                    .enumerate()
                    .map(|(i, &shard)| KeyRange {
                        lower: Some(i as i64),
                        upper: Some(i as i64 + 1),
                        shard,
                    })
                    .collect();
                return ShardMap {
                    version,
                    strategy: Strategy::Modulo { modulus: n as i64 },
                    ranges,
                    tenants: BTreeMap::new(),
                };
            }
        };
        let ranges = shards
            .iter()
            .enumerate()
            .map(|(i, &shard)| KeyRange {
                lower: if i == 0 { None } else { Some(bounds[i - 1]) },
                upper: if i + 1 == n { None } else { Some(bounds[i]) },
                shard,
            })
            .collect();
        ShardMap {
            version,
            strategy,
            ranges,
            tenants: BTreeMap::new(),
        }
    }

    /// The same map with these tenant placements (schema → shard; names are lowercased).
    pub fn with_tenants(mut self, tenants: BTreeMap<String, u32>) -> ShardMap {
        self.tenants = tenants
            .into_iter()
            .map(|(s, shard)| (s.to_lowercase(), shard))
            .collect();
        self
    }

    /// The shard holding tenant schema `schema` whole, if it is a tenant.
    pub fn tenant_shard(&self, schema: &str) -> Option<u32> {
        self.tenants.get(&schema.to_lowercase()).copied()
    }

    /// True when `other` places every key and every tenant as this map does (versions aside).
    pub fn same_placement(&self, other: &ShardMap) -> bool {
        self.strategy == other.strategy
            && self.ranges == other.ranges
            && self.tenants == other.tenants
    }

    /// The point of the key space that `key` maps to.
    pub fn point(&self, key: i64) -> i64 {
        match self.strategy {
            Strategy::Range => key,
            Strategy::Hash => hashint8extended(key),
            Strategy::Modulo { modulus } => key.rem_euclid(modulus.max(1)),
        }
    }

    /// The index of the range holding `point`.
    fn range_index(&self, point: i64) -> usize {
        let after = self
            .ranges
            .partition_point(|r| r.lower.is_none_or(|l| l <= point));
        after.saturating_sub(1)
    }

    /// The shard that holds `key`.
    pub fn shard_for(&self, key: i64) -> u32 {
        self.ranges[self.range_index(self.point(key))].shard
    }

    /// The shard that holds a key of any type. A uuid or text key has a point only on the hash
    /// ring (start-up refuses other strategies for such tables; check [`ShardMap::places`]).
    pub fn shard_of(&self, key: &ShardKey) -> u32 {
        match key {
            ShardKey::Int(k) => self.shard_for(*k),
            _ => self.ranges[self.range_index(key.hash_point())].shard,
        }
    }

    /// True when this map's strategy can place `key` (integer keys: every strategy; uuid and
    /// text keys: hash only).
    pub fn places(&self, key: &ShardKey) -> bool {
        matches!(key, ShardKey::Int(_)) || self.strategy == Strategy::Hash
    }

    /// Every shard named in the map, distinct and sorted.
    pub fn shards(&self) -> Vec<u32> {
        let mut s: Vec<u32> = self.ranges.iter().map(|r| r.shard).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// True when `shard` holds `key`.
    pub fn owns(&self, shard: u32, key: i64) -> bool {
        self.shard_for(key) == shard
    }

    /// The SQL expression computing a column's point (the twin of [`ShardMap::point`]).
    pub fn sql_point_expr(&self, column: &str) -> String {
        self.sql_point_of(&quote_ident(column), KeyType::Int)
    }

    /// [`ShardMap::sql_point_expr`] for a key column of any type.
    pub fn sql_point_expr_typed(&self, column: &str, key_type: KeyType) -> String {
        self.sql_point_of(&quote_ident(column), key_type)
    }

    /// The point of an SQL expression that is already valid SQL (a qualified column) of a key
    /// type: the twin of [`ShardMap::shard_of`].
    fn sql_point_of(&self, col: &str, key_type: KeyType) -> String {
        match self.strategy {
            Strategy::Range => col.to_string(),
            Strategy::Hash => key_type.sql_hash(col),
            Strategy::Modulo { modulus } => {
                format!("mod(mod({col}, {modulus}) + {modulus}, {modulus})")
            }
        }
    }

    /// An SQL predicate true exactly for rows whose (integer) point lies in `r`.
    pub fn sql_range_predicate(&self, column: &str, r: &KeyRange) -> String {
        self.sql_range_predicate_typed(column, KeyType::Int, r)
    }

    /// [`ShardMap::sql_range_predicate`] for a key column of any type.
    pub fn sql_range_predicate_typed(
        &self,
        column: &str,
        key_type: KeyType,
        r: &KeyRange,
    ) -> String {
        self.sql_range_predicate_of(&quote_ident(column), key_type, r)
    }

    fn sql_range_predicate_of(&self, col: &str, key_type: KeyType, r: &KeyRange) -> String {
        let p = self.sql_point_of(col, key_type);
        match (r.lower, r.upper) {
            (None, None) => "true".to_string(),
            (Some(l), None) => format!("({p} >= {l})"),
            (None, Some(u)) => format!("({p} < {u})"),
            (Some(l), Some(u)) => format!("({p} >= {l} AND {p} < {u})"),
        }
    }

    /// An SQL predicate true exactly for rows that `shard` owns (integer key column).
    pub fn sql_owned_by(&self, column: &str, shard: u32) -> String {
        self.sql_owned_by_typed(column, KeyType::Int, shard)
    }

    /// [`ShardMap::sql_owned_by`] for a key column of any type.
    pub fn sql_owned_by_typed(&self, column: &str, key_type: KeyType, shard: u32) -> String {
        self.sql_owned_by_expr_typed(&quote_ident(column), key_type, shard)
    }

    /// Like [`ShardMap::sql_owned_by`] over an SQL expression (`u.user_id`), which is used as is.
    pub fn sql_owned_by_expr(&self, expr: &str, shard: u32) -> String {
        self.sql_owned_by_expr_typed(expr, KeyType::Int, shard)
    }

    /// [`ShardMap::sql_owned_by_expr`] for a key expression of any type.
    pub fn sql_owned_by_expr_typed(&self, expr: &str, key_type: KeyType, shard: u32) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .filter(|r| r.shard == shard)
            .map(|r| self.sql_range_predicate_of(expr, key_type, r))
            .collect();
        match parts.len() {
            0 => "false".to_string(),
            1 => parts.into_iter().next().unwrap_or_default(),
            _ => format!("({})", parts.join(" OR ")),
        }
    }
}

fn bound(b: Option<i64>) -> String {
    b.map_or_else(|| "unbounded".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `select k, hashint8extended(k, 0)` on PostgreSQL 15.
    const PG_HASHES: &[(i64, i64)] = &[
        (0, 4154612158245552303),
        (1, -3670598878359251130),
        (-1, -1888257769727981238),
        (42, 8010225493015854792),
        (4242, -2684390505006726765),
        (2147483647, -9109110466470504941),
        (2147483648, 1977219185673256887),
        (-2147483649, -9109110466470504941),
        (9223372036854775807, 1977219185673256887),
        (-9223372036854775808, -9109110466470504941),
        (123456789012345, 6283493225420036195),
        (5, -9138765687874534020),
        (-5, -9082176226831438310),
        (1000000, 8952854757942890677),
    ];

    fn r(lower: Option<i64>, upper: Option<i64>, shard: u32) -> KeyRange {
        KeyRange {
            lower,
            upper,
            shard,
        }
    }

    #[test]
    fn hash_matches_postgres() {
        for &(k, h) in PG_HASHES {
            assert_eq!(hashint8extended(k), h, "key {k}");
        }
    }

    #[test]
    fn validation_errors() {
        assert_eq!(
            ShardMap::new(1, Strategy::Range, vec![]),
            Err(ShardMapError::Empty)
        );
        assert_eq!(
            ShardMap::new(1, Strategy::Modulo { modulus: 0 }, vec![r(None, None, 1)]),
            Err(ShardMapError::BadModulus(0))
        );
        // gap
        assert!(matches!(
            ShardMap::new(
                1,
                Strategy::Range,
                vec![r(None, Some(10), 1), r(Some(11), None, 2)]
            ),
            Err(ShardMapError::Coverage(_))
        ));
        // overlap / duplicate unbounded
        assert!(matches!(
            ShardMap::new(1, Strategy::Hash, vec![r(None, None, 1), r(None, None, 2)]),
            Err(ShardMapError::Coverage(_))
        ));
        // not covering the top
        assert!(matches!(
            ShardMap::new(1, Strategy::Range, vec![r(None, Some(10), 1)]),
            Err(ShardMapError::Coverage(_))
        ));
        // not covering the bottom
        assert!(matches!(
            ShardMap::new(1, Strategy::Hash, vec![r(Some(0), None, 1)]),
            Err(ShardMapError::Coverage(_))
        ));
        // modulo must end at modulus
        assert!(matches!(
            ShardMap::new(
                1,
                Strategy::Modulo { modulus: 4 },
                vec![r(Some(0), Some(2), 1), r(Some(2), Some(3), 2)]
            ),
            Err(ShardMapError::Coverage(_))
        ));
        // empty range
        assert!(matches!(
            ShardMap::new(
                1,
                Strategy::Range,
                vec![
                    r(None, Some(5), 1),
                    r(Some(5), Some(5), 2),
                    r(Some(5), None, 3)
                ]
            ),
            Err(ShardMapError::Coverage(_))
        ));
        // unsorted input is fine
        let m = ShardMap::new(
            3,
            Strategy::Modulo { modulus: 3 },
            vec![r(Some(2), Some(3), 7), r(Some(0), Some(2), 5)],
        )
        .unwrap();
        assert_eq!(m.ranges[0].shard, 5);
        assert_eq!(m.shard_for(5), 7);
        assert_eq!(m.shard_for(-1), 7);
        assert_eq!(m.shard_for(-2), 5);
    }

    #[test]
    fn uniform_maps_validate_and_cover() {
        for n in 1..=11u32 {
            let shards: Vec<u32> = (0..n).map(|i| i + 1).collect();
            for strategy in [
                Strategy::Range,
                Strategy::Hash,
                Strategy::Modulo { modulus: 0 },
            ] {
                let m = ShardMap::uniform(1, strategy, &shards);
                let checked = ShardMap::new(1, m.strategy, m.ranges.clone()).unwrap();
                assert_eq!(checked, m);
                assert_eq!(m.shards(), shards);
                for k in [i64::MIN, i64::MIN + 1, -1, 0, 1, 42, i64::MAX - 1, i64::MAX] {
                    let s = m.shard_for(k);
                    assert!(shards.contains(&s));
                    assert!(m.owns(s, k));
                }
            }
        }
        let m = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[4, 5, 6]);
        assert_eq!(m.strategy, Strategy::Modulo { modulus: 3 });
        assert_eq!(m.shard_for(3), 4);
        assert_eq!(m.shard_for(4), 5);
        assert_eq!(m.shard_for(-1), 6);
        let h = ShardMap::uniform(1, Strategy::Hash, &[1, 2]);
        assert_eq!(h.ranges[0].upper, Some(0));
        let h4 = ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3, 4]);
        assert_eq!(h4.ranges[1].upper, Some(0));
        assert_eq!(h4.ranges[0].upper, Some(i64::MIN / 2));
    }

    #[test]
    fn boundaries() {
        let m = ShardMap::new(
            1,
            Strategy::Range,
            vec![
                r(None, Some(100), 1),
                r(Some(100), Some(200), 2),
                r(Some(200), None, 3),
            ],
        )
        .unwrap();
        assert_eq!(m.shard_for(i64::MIN), 1);
        assert_eq!(m.shard_for(99), 1);
        assert_eq!(m.shard_for(100), 2);
        assert_eq!(m.shard_for(199), 2);
        assert_eq!(m.shard_for(200), 3);
        assert_eq!(m.shard_for(i64::MAX), 3);
        let h = ShardMap::uniform(1, Strategy::Hash, &[1, 2]);
        // hash(5) < 0, hash(0) > 0
        assert_eq!(h.shard_for(5), 1);
        assert_eq!(h.shard_for(0), 2);
        assert_eq!(h.shard_for(i64::MIN), 1);
        assert_eq!(h.shard_for(i64::MAX), 2);
    }

    #[test]
    fn range_map_is_not_modulo() {
        // The classic mistake: routing a range map by key % n.
        let m = ShardMap::uniform(1, Strategy::Range, &[1, 2, 3, 4]);
        for k in 0..1000 {
            assert_eq!(m.shard_for(k), 1, "small keys all live in the first range");
        }
        assert_eq!(m.point(7), 7);
        assert_eq!(m.shard_for(i64::MAX / 4 * 3), 4);
        let md = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[1, 2, 3, 4]);
        assert_eq!(md.point(-7), 1);
        assert_eq!(md.point(i64::MIN), 0);
    }

    #[test]
    fn sql_twin() {
        let h = ShardMap::uniform(1, Strategy::Hash, &[1, 2]);
        assert_eq!(h.sql_point_expr("user_id"), "hashint8extended(user_id, 0)");
        assert_eq!(
            h.sql_owned_by("user_id", 2),
            "(hashint8extended(user_id, 0) >= 0)"
        );
        assert_eq!(h.sql_owned_by("user_id", 9), "false");
        assert_eq!(
            h.sql_range_predicate("UserId", &r(Some(-123), Some(456), 1)),
            "(hashint8extended(\"UserId\", 0) >= -123 AND hashint8extended(\"UserId\", 0) < 456)"
        );
        let one = ShardMap::uniform(1, Strategy::Range, &[1]);
        assert_eq!(one.sql_owned_by("k", 1), "true");
        let m = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[1, 2]);
        assert_eq!(m.sql_point_expr("k"), "mod(mod(k, 2) + 2, 2)");
        assert_eq!(
            m.sql_owned_by("k", 2),
            "(mod(mod(k, 2) + 2, 2) >= 1 AND mod(mod(k, 2) + 2, 2) < 2)"
        );
        let two = ShardMap::new(
            1,
            Strategy::Range,
            vec![
                r(None, Some(10), 1),
                r(Some(10), Some(20), 2),
                r(Some(20), None, 1),
            ],
        )
        .unwrap();
        assert_eq!(
            two.sql_owned_by("user", 1),
            "((\"user\" < 10) OR (\"user\" >= 20))"
        );
    }
}
