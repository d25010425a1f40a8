//! Planning a rebalancing job: from the current shard map and a target (add a shard, drain one,
//! move a range, even out by row counts, migrate modulo to hash) compute the new map and the
//! moves — which keys go from which shard to which. Pure: no catalog, no shards (evening out
//! gets its slices from `rebalance::even`, which reads the row counts).

use crate::router::{KeyType, ShardKey};
use std::collections::BTreeMap;

use crate::router::{KeyRange, ShardMap, ShardMapError, Strategy};

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A new shard takes a share of the keys: with hash or range, the top `1/(N+1)` of every
    /// range (so every shard gives about the same); with modulo, the modulus grows by one (nearly
    /// every key moves — which is why hash exists).
    AddShard(u32),
    /// Every range of this shard goes to a neighbour (hash, range) or its remainders are dealt
    /// to the other shards (modulo).
    Drain(u32),
    /// The points `[lower, upper)` of the current strategy's key space go to `to`.
    MoveRange {
        lower: Option<i64>,
        upper: Option<i64>,
        to: u32,
    },
    /// One key value to `to` (a tenant placed by hand): the single point of the key space the
    /// key maps to becomes a map entry of its own, a pin. Hash and range maps only (a modulo
    /// point is a whole remainder class).
    MoveKey { key: ShardKey, to: u32 },
    /// A tenant schema (schema-based sharding), whole, to shard `to`: its tables are copied
    /// and caught up, and the map's tenant placement switches under a hold of that tenant's
    /// statements only.
    MoveSchema { schema: String, to: u32 },
    /// The same shards, each owning an even slice of the hash ring instead of remainders.
    ModuloToHash,
    /// Every shard ends with about the mean number of rows: slices of the fullest shards' key
    /// space go to the emptiest. As typed the target has no slices; `rebalance::even::measure`
    /// fills them in from the shards' row counts.
    EvenOut { slices: Vec<Reassign> },
}

/// Keys of `source` whose points lie in `[lower, upper)` go to `dest` (points `source` does not
/// own in that span stay where they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassign {
    pub source: u32,
    pub lower: Option<i64>,
    pub upper: Option<i64>,
    pub dest: u32,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AddShard(s) => write!(f, "add shard {s}"),
            Target::Drain(s) => write!(f, "drain shard {s}"),
            Target::MoveRange { lower, upper, to } => {
                write!(
                    f,
                    "move [{}, {}) to shard {to}",
                    bound(*lower),
                    bound(*upper)
                )
            }
            Target::MoveKey { key, to } => {
                write!(f, "move key {} to shard {to}", key.sql_literal())
            }
            Target::MoveSchema { schema, to } => write!(f, "move schema {schema} to shard {to}"),
            Target::ModuloToHash => write!(f, "migrate modulo to hash"),
            Target::EvenOut { .. } => write!(f, "even out by row counts"),
        }
    }
}

/// Why a target cannot be planned from the current map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("shard {0} already holds keys in the current map; add a shard that has none")]
    AlreadyInMap(u32),
    #[error("shard {0} holds no keys in the current map")]
    NotInMap(u32),
    #[error("cannot drain shard {0}: it is the only shard of the map")]
    LastShard(u32),
    #[error("the range to move is empty")]
    EmptyRange,
    #[error("the current map uses the {0} strategy; migrating to hash starts from modulo")]
    NotModulo(&'static str),
    #[error("the target map would be invalid: {0}")]
    Invalid(#[from] ShardMapError),
    #[error("nothing to move: the target map equals the current one")]
    NothingMoves,
    #[error("a key can be pinned to a shard only in a hash map, or an integer key in a range map (with {0} the key's point is not its own)")]
    PinNeedsHashOrRange(&'static str),
    #[error("key {0} already lives on shard {1}")]
    KeyAlreadyThere(String, u32),
    #[error("schema {0} is not a tenant schema: only schemas the shard map places whole on one shard ([[sharded_schemas]]) can be moved")]
    NotATenant(String),
    #[error("tenant schema {0} already lives on shard {1}")]
    SchemaAlreadyThere(String, u32),
    #[error("evening out needs the hash or range strategy (with modulo every shard owns whole remainders); migrate modulo-to-hash first")]
    EvenOutNeedsHashOrRange,
}

/// Keys that leave one shard for another. For maps of the same strategy these are exact slices of
/// the key space; across strategies (modulo → hash), a key moves when it lies in one of the old
/// map's ranges of `source` and one of the new map's ranges of `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub source: u32,
    pub dest: u32,
    /// Slices of the (shared) key space; empty across strategies.
    pub slices: Vec<(Option<i64>, Option<i64>)>,
    /// The tenant schema this move carries whole (then it carries no sharded-table rows).
    pub schema: Option<String>,
}

/// A planned job: the target map (version `from.version + 1`) and the moves, one per (source,
/// destination) pair, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from: ShardMap,
    pub to: ShardMap,
    pub moves: Vec<Move>,
}

impl Plan {
    /// The SQL predicate (over an integer `column`) true exactly for the rows move `m` carries.
    pub fn predicate(&self, column: &str, m: &Move) -> String {
        self.predicate_typed(column, KeyType::Int, m)
    }

    /// [`Plan::predicate`] for a key column of any type.
    pub fn predicate_typed(&self, column: &str, key_type: KeyType, m: &Move) -> String {
        if m.schema.is_some() {
            // A tenant's move carries no row of a sharded table.
            return "false".into();
        }
        if same_space(&self.from, &self.to) {
            let parts: Vec<String> = m
                .slices
                .iter()
                .map(|&(lower, upper)| {
                    self.to.sql_range_predicate_typed(
                        column,
                        key_type,
                        &KeyRange {
                            lower,
                            upper,
                            shard: m.dest,
                        },
                    )
                })
                .collect();
            match parts.len() {
                1 => parts.into_iter().next().unwrap_or_default(),
                _ => format!("({})", parts.join(" OR ")),
            }
        } else {
            format!(
                "({} AND {})",
                self.from.sql_owned_by_typed(column, key_type, m.source),
                self.to.sql_owned_by_typed(column, key_type, m.dest)
            )
        }
    }

    /// The move carrying `key`, if it moves (the Rust twin of [`Plan::predicate`]).
    pub fn move_of(&self, key: i64) -> Option<&Move> {
        let (src, dst) = (self.from.shard_for(key), self.to.shard_for(key));
        let m = self
            .moves
            .iter()
            .find(|m| m.source == src && m.dest == dst)?;
        if !same_space(&self.from, &self.to) {
            return Some(m);
        }
        let p = self.to.point(key);
        m.slices
            .iter()
            .any(|&(l, u)| l.is_none_or(|l| l <= p) && u.is_none_or(|u| p < u))
            .then_some(m)
    }
}

/// True when both maps place keys on the same key space (same strategy and modulus).
fn same_space(a: &ShardMap, b: &ShardMap) -> bool {
    a.strategy == b.strategy
}

/// Plans `target` from the map `from`.
pub fn plan(from: &ShardMap, target: &Target) -> Result<Plan, PlanError> {
    let version = from.version + 1;
    let to = match target {
        Target::MoveSchema { schema, to } => return move_schema(from, schema, *to),
        Target::AddShard(shard) => add_shard(from, *shard)?,
        Target::Drain(shard) => drain(from, *shard)?,
        Target::MoveRange { lower, upper, to } => move_range(from, None, *lower, *upper, *to)?,
        Target::MoveKey { key, to } => {
            let point = pin_point(from, key)?;
            if from.shard_of(key) == *to {
                return Err(PlanError::KeyAlreadyThere(key.sql_literal(), *to));
            }
            move_range(from, None, Some(point), point.checked_add(1), *to)?
        }
        Target::EvenOut { slices } => {
            if let Strategy::Modulo { .. } = from.strategy {
                return Err(PlanError::EvenOutNeedsHashOrRange);
            }
            let mut to = from.clone();
            for r in slices {
                if !from.shards().contains(&r.source) {
                    return Err(PlanError::NotInMap(r.source));
                }
                if !from.shards().contains(&r.dest) {
                    return Err(PlanError::NotInMap(r.dest));
                }
                to = move_range(&to, Some(r.source), r.lower, r.upper, r.dest)?;
            }
            to
        }
        Target::ModuloToHash => match from.strategy {
            Strategy::Modulo { .. } => ShardMap::uniform(version, Strategy::Hash, &from.shards()),
            other => return Err(PlanError::NotModulo(other.name())),
        },
    };
    // Tenant schemas stay where they are (a job moves one only when asked to).
    let to = ShardMap::new(version, to.strategy, coalesce(to.ranges))?
        .with_tenants(from.tenants.clone());
    let moves = moves_between(from, &to);
    if moves.is_empty() {
        return Err(PlanError::NothingMoves);
    }
    Ok(Plan {
        from: from.clone(),
        to,
        moves,
    })
}

/// The plan moving tenant `schema` whole to `to`: the same key ranges, one tenant placed anew.
fn move_schema(from: &ShardMap, schema: &str, to: u32) -> Result<Plan, PlanError> {
    let schema = schema.to_lowercase();
    match from.tenant_shard(&schema) {
        None => return Err(PlanError::NotATenant(schema)),
        Some(s) if s == to => return Err(PlanError::SchemaAlreadyThere(schema, to)),
        Some(_) => {}
    }
    let mut target = from.clone();
    target.version = from.version + 1;
    target.tenants.insert(schema, to);
    let moves = moves_between(from, &target);
    Ok(Plan {
        from: from.clone(),
        to: target,
        moves,
    })
}

/// `[lower, upper)` of the key space; `None` is unbounded.
type Slice = (Option<i64>, Option<i64>);

/// Every (source, dest) pair whose keys change owner between `from` and `to`.
pub fn moves_between(from: &ShardMap, to: &ShardMap) -> Vec<Move> {
    let mut by_pair: BTreeMap<(u32, u32), Vec<Slice>> = BTreeMap::new();
    if same_space(from, to) {
        for a in &from.ranges {
            for b in &to.ranges {
                if a.shard == b.shard {
                    continue;
                }
                let lower = max_lower(a.lower, b.lower);
                let upper = min_upper(a.upper, b.upper);
                let empty = matches!((lower, upper), (Some(l), Some(u)) if l >= u);
                if !empty {
                    by_pair
                        .entry((a.shard, b.shard))
                        .or_default()
                        .push((lower, upper));
                }
            }
        }
    } else {
        for src in from.shards() {
            for dst in to.shards() {
                if src != dst {
                    by_pair.entry((src, dst)).or_default();
                }
            }
        }
    }
    let tenants = from.tenants.iter().filter_map(|(schema, &source)| {
        let dest = to.tenant_shard(schema)?;
        (dest != source).then(|| Move {
            source,
            dest,
            slices: Vec::new(),
            schema: Some(schema.clone()),
        })
    });
    by_pair
        .into_iter()
        .map(|((source, dest), slices)| Move {
            source,
            dest,
            slices,
            schema: None,
        })
        .chain(tenants)
        .collect()
}

fn max_lower(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.max(b)),
    }
}

fn min_upper(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.min(b)),
    }
}

/// Merges neighbouring ranges of the same shard.
fn coalesce(mut ranges: Vec<KeyRange>) -> Vec<KeyRange> {
    ranges.sort_by_key(|r| r.lower);
    let mut out: Vec<KeyRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.shard == r.shard && last.upper == r.lower => last.upper = r.upper,
            _ => out.push(r),
        }
    }
    out
}

/// The lowest and highest point of a range as i128, for arithmetic on its width.
fn span(r: &KeyRange, modulus: Option<i64>) -> (i128, i128) {
    let lo = r.lower.map_or(
        if modulus.is_some() {
            0
        } else {
            i64::MIN as i128
        },
        |l| l as i128,
    );
    let hi = r
        .upper
        .map_or(modulus.map_or(i64::MAX as i128 + 1, |m| m as i128), |u| {
            u as i128
        });
    (lo, hi)
}

fn add_shard(from: &ShardMap, shard: u32) -> Result<ShardMap, PlanError> {
    if from.shards().contains(&shard) {
        return Err(PlanError::AlreadyInMap(shard));
    }
    match from.strategy {
        Strategy::Modulo { .. } => {
            let mut shards = from.shards();
            shards.push(shard);
            Ok(ShardMap::uniform(
                from.version + 1,
                Strategy::Modulo { modulus: 0 },
                &shards,
            ))
        }
        Strategy::Hash | Strategy::Range => {
            let n = from.shards().len() as i128 + 1;
            let mut ranges = Vec::with_capacity(from.ranges.len() * 2);
            for r in &from.ranges {
                let (lo, hi) = span(r, None);
                let give = (hi - lo) / n;
                if give == 0 {
                    ranges.push(*r);
                    continue;
                }
                // `cut` lies strictly inside the range, so it fits in i64.
                let cut = (hi - give) as i64;
                ranges.push(KeyRange {
                    upper: Some(cut),
                    ..*r
                });
                ranges.push(KeyRange {
                    lower: Some(cut),
                    upper: r.upper,
                    shard,
                });
            }
            Ok(ShardMap {
                version: from.version + 1,
                strategy: from.strategy,
                ranges,
                tenants: from.tenants.clone(),
            })
        }
    }
}

fn drain(from: &ShardMap, shard: u32) -> Result<ShardMap, PlanError> {
    let shards = from.shards();
    if !shards.contains(&shard) {
        return Err(PlanError::NotInMap(shard));
    }
    if shards.len() == 1 {
        return Err(PlanError::LastShard(shard));
    }
    let others: Vec<u32> = shards.into_iter().filter(|&s| s != shard).collect();
    let mut ranges = from.ranges.clone();
    match from.strategy {
        Strategy::Modulo { .. } => {
            for (next, r) in ranges.iter_mut().filter(|r| r.shard == shard).enumerate() {
                r.shard = others[next % others.len()];
            }
        }
        Strategy::Hash | Strategy::Range => {
            // Each drained range joins its left neighbour (or the right one for the first range);
            // going left to right, a run of drained ranges all join the same neighbour.
            let mut left: Option<u32> = None;
            for r in ranges.iter_mut() {
                if r.shard == shard {
                    if let Some(l) = left {
                        r.shard = l;
                    }
                } else {
                    left = Some(r.shard);
                }
            }
            let first_owner = ranges.iter().map(|r| r.shard).find(|&s| s != shard);
            for r in ranges.iter_mut().filter(|r| r.shard == shard) {
                if let Some(s) = first_owner {
                    r.shard = s;
                }
            }
        }
    }
    Ok(ShardMap {
        version: from.version + 1,
        strategy: from.strategy,
        ranges,
        tenants: from.tenants.clone(),
    })
}

/// `[lower, upper)` of the key space goes to `to` — only the part `only_from` owns, when given.
fn move_range(
    from: &ShardMap,
    only_from: Option<u32>,
    lower: Option<i64>,
    upper: Option<i64>,
    to: u32,
) -> Result<ShardMap, PlanError> {
    if let (Some(l), Some(u)) = (lower, upper) {
        if l >= u {
            return Err(PlanError::EmptyRange);
        }
    }
    let modulus = match from.strategy {
        Strategy::Modulo { modulus } => Some(modulus),
        _ => None,
    };
    let mut ranges = Vec::with_capacity(from.ranges.len() + 2);
    for r in &from.ranges {
        if only_from.is_some_and(|s| s != r.shard) {
            ranges.push(*r);
            continue;
        }
        let (lo, hi) = span(r, modulus);
        let mlo = lower.map_or(i128::MIN, |l| l as i128);
        let mhi = upper.map_or(i128::MAX, |u| u as i128);
        let (olo, ohi) = (lo.max(mlo), hi.min(mhi));
        if olo >= ohi {
            ranges.push(*r);
            continue;
        }
        if olo > lo {
            ranges.push(KeyRange {
                upper: Some(olo as i64),
                ..*r
            });
        }
        ranges.push(KeyRange {
            lower: if olo > lo { Some(olo as i64) } else { r.lower },
            upper: if ohi < hi { Some(ohi as i64) } else { r.upper },
            shard: to,
        });
        if ohi < hi {
            ranges.push(KeyRange {
                lower: Some(ohi as i64),
                ..*r
            });
        }
    }
    Ok(ShardMap {
        version: from.version + 1,
        strategy: from.strategy,
        ranges,
        tenants: from.tenants.clone(),
    })
}

fn bound(b: Option<i64>) -> String {
    b.map_or_else(|| "unbounded".to_string(), |v| v.to_string())
}

/// The point of the key space a pinned key owns alone: its hash in a hash map, the key itself in
/// a range map.
pub fn pin_point(map: &ShardMap, key: &ShardKey) -> Result<i64, PlanError> {
    match (map.strategy, key) {
        (Strategy::Hash, _) => Ok(key.hash_point()),
        (Strategy::Range, ShardKey::Int(k)) => Ok(*k),
        (s, _) => Err(PlanError::PinNeedsHashOrRange(s.name())),
    }
}

/// True when a map entry is a pin: it holds exactly one point.
pub fn is_pin(r: &KeyRange) -> bool {
    match (r.lower, r.upper) {
        (Some(l), Some(u)) => l.checked_add(1) == Some(u),
        (Some(l), None) => l == i64::MAX,
        _ => false,
    }
}

/// A key as `move-key` takes it: `'…'::type` or `…::type` names its type; otherwise an integer,
/// then a uuid, then text (so an integer-looking text key needs `::text`).
pub fn parse_key(word: &str) -> Result<ShardKey, String> {
    let (value, ty) = match word.rsplit_once("::") {
        Some((v, ty)) => {
            let t = KeyType::from_pg_type(ty)
                .ok_or_else(|| format!("`{ty}` is not a shard-key type (bigint, uuid, text)"))?;
            (v, Some(t))
        }
        None => (word, None),
    };
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .map(|v| v.replace("''", "'"))
        .unwrap_or_else(|| value.to_string());
    let key = match ty {
        Some(t) => t.parse_text(&value),
        None => KeyType::Int
            .parse_text(&value)
            .or_else(|| KeyType::Uuid.parse_text(&value))
            .or_else(|| KeyType::Text.parse_text(&value)),
    };
    key.ok_or_else(|| format!("`{value}` is not a valid key of its type"))
}

/// A schema name as `move-schema` takes it: `"Name"` keeps its case, a bare name is lowercased
/// (as Postgres folds it).
fn schema_name(word: &str) -> Result<String, String> {
    let name = match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => word.to_lowercase(),
    };
    if name.is_empty() {
        return Err("move-schema needs a schema name".into());
    }
    Ok(name)
}

/// Parses a target as the CLI and the admin console spell it: `add-shard N`, `drain N`,
/// `move LOWER UPPER N` (`-` for unbounded), `modulo-to-hash`.
pub fn parse_target(words: &[&str]) -> Result<Target, String> {
    let num = |w: &str| -> Result<u32, String> {
        w.parse::<u32>()
            .map_err(|_| format!("`{w}` is not a shard id"))
    };
    let point = |w: &str| -> Result<Option<i64>, String> {
        if w == "-" {
            return Ok(None);
        }
        w.parse::<i64>()
            .map(Some)
            .map_err(|_| format!("`{w}` is not a bigint bound (or - for unbounded)"))
    };
    match words {
        ["add-shard" | "add_shard" | "add", n] => Ok(Target::AddShard(num(n)?)),
        ["drain", n] => Ok(Target::Drain(num(n)?)),
        ["move-key" | "move_key", key, n] => Ok(Target::MoveKey {
            key: parse_key(key)?,
            to: num(n)?,
        }),
        ["move", lo, hi, n] => Ok(Target::MoveRange {
            lower: point(lo)?,
            upper: point(hi)?,
            to: num(n)?,
        }),
        ["modulo-to-hash" | "modulo_to_hash"] => Ok(Target::ModuloToHash),
        ["move-schema" | "move_schema", schema, n] => Ok(Target::MoveSchema {
            schema: schema_name(schema)?,
            to: num(n)?,
        }),
        ["even" | "even-out" | "even_out"] => Ok(Target::EvenOut { slices: Vec::new() }),
        _ => Err(
            "a target is one of: add-shard N | drain N | move LOWER UPPER N (- for unbounded) | move-key KEY N | move-schema SCHEMA N | even-out | modulo-to-hash"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys spread over the whole i64 line, plus the edges and small ids.
    fn keys() -> Vec<i64> {
        let mut ks: Vec<i64> = (-200..200).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ks.push(x as i64);
        }
        ks.extend([i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1]);
        ks
    }

    /// The property every plan must have: a key moves exactly when its owner changes, and then
    /// with the move from its old owner to its new one; no other key changes owner.
    fn check(plan: &Plan) {
        assert_eq!(plan.to.version, plan.from.version + 1);
        for k in keys() {
            let (old, new) = (plan.from.shard_for(k), plan.to.shard_for(k));
            match plan.move_of(k) {
                Some(m) => {
                    assert_ne!(old, new, "key {k} is in a move but keeps its shard");
                    assert_eq!((m.source, m.dest), (old, new), "key {k}");
                }
                None => assert_eq!(old, new, "key {k} changes shard outside every move"),
            }
        }
        for m in &plan.moves {
            assert_ne!(m.source, m.dest);
        }
    }

    fn hash10() -> ShardMap {
        ShardMap::uniform(3, Strategy::Hash, &(0..10).collect::<Vec<_>>())
    }

    #[test]
    fn add_shard_hash_moves_about_one_eleventh_from_every_shard() {
        let p = plan(&hash10(), &Target::AddShard(10)).unwrap();
        check(&p);
        assert_eq!(p.moves.len(), 10);
        assert!(p.moves.iter().all(|m| m.dest == 10));
        let ks = keys();
        let moved = ks.iter().filter(|&&k| p.move_of(k).is_some()).count();
        let share = moved as f64 / ks.len() as f64;
        assert!((0.07..0.115).contains(&share), "moved share {share}");
        assert_eq!(p.to.shards(), (0..11).collect::<Vec<_>>());
    }

    #[test]
    fn add_shard_range_and_modulo() {
        let r = ShardMap::uniform(1, Strategy::Range, &[1, 2, 3]);
        let p = plan(&r, &Target::AddShard(4)).unwrap();
        check(&p);
        assert_eq!(p.moves.len(), 3);
        let m = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[0, 1, 2]);
        let p = plan(&m, &Target::AddShard(3)).unwrap();
        check(&p);
        assert_eq!(p.to.strategy, Strategy::Modulo { modulus: 4 });
        // Across moduli nearly every key moves, hence the cross-strategy form.
        let moved = keys().iter().filter(|&&k| p.move_of(k).is_some()).count();
        assert!(moved * 2 > keys().len());
        assert!(matches!(
            plan(&m, &Target::AddShard(1)),
            Err(PlanError::AlreadyInMap(1))
        ));
    }

    #[test]
    fn drain_gives_ranges_to_neighbours() {
        let p = plan(&hash10(), &Target::Drain(0)).unwrap();
        check(&p);
        assert!(!p.to.shards().contains(&0));
        assert_eq!(p.moves.len(), 1);
        let p = plan(&hash10(), &Target::Drain(5)).unwrap();
        check(&p);
        assert_eq!((p.moves[0].source, p.moves[0].dest), (5, 4));
        let m = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[0, 1, 2]);
        let p = plan(&m, &Target::Drain(1)).unwrap();
        check(&p);
        assert_eq!(p.to.shards(), vec![0, 2]);
        let one = ShardMap::uniform(1, Strategy::Hash, &[7]);
        assert_eq!(plan(&one, &Target::Drain(7)), Err(PlanError::LastShard(7)));
        assert_eq!(plan(&one, &Target::Drain(8)), Err(PlanError::NotInMap(8)));
    }

    #[test]
    fn evening_out_moves_only_the_slices_of_their_sources() {
        // Shard 0 owns [-inf, a) and, after an earlier add, [b, c); its slice [x, +inf) covers
        // only its own keys in that span, never shard 1's.
        let from = ShardMap::new(
            4,
            Strategy::Range,
            vec![
                KeyRange {
                    lower: None,
                    upper: Some(100),
                    shard: 0,
                },
                KeyRange {
                    lower: Some(100),
                    upper: Some(200),
                    shard: 1,
                },
                KeyRange {
                    lower: Some(200),
                    upper: Some(300),
                    shard: 0,
                },
                KeyRange {
                    lower: Some(300),
                    upper: None,
                    shard: 2,
                },
            ],
        )
        .unwrap();
        let slices = vec![
            Reassign {
                source: 0,
                lower: Some(250),
                upper: None,
                dest: 2,
            },
            Reassign {
                source: 0,
                lower: Some(50),
                upper: Some(250),
                dest: 1,
            },
        ];
        let p = plan(&from, &Target::EvenOut { slices }).unwrap();
        check(&p);
        for (key, owner) in [
            (49, 0),
            (50, 1),
            (150, 1),
            (249, 1),
            (250, 2),
            (299, 2),
            (400, 2),
        ] {
            assert_eq!(p.to.shard_for(key), owner, "key {key}");
        }
        let hash = hash10();
        let three = hash.ranges.iter().find(|r| r.shard == 3).unwrap();
        let middle = three.lower.unwrap() / 2 + three.upper.unwrap() / 2;
        let cut = Reassign {
            source: 3,
            lower: Some(middle),
            upper: None,
            dest: 7,
        };
        let p = plan(&hash, &Target::EvenOut { slices: vec![cut] }).unwrap();
        check(&p);
        assert_eq!(p.moves.len(), 1);
        assert_eq!(
            plan(&hash, &Target::EvenOut { slices: Vec::new() }),
            Err(PlanError::NothingMoves)
        );
        let m = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[0, 1]);
        assert_eq!(
            plan(&m, &Target::EvenOut { slices: Vec::new() }),
            Err(PlanError::EvenOutNeedsHashOrRange)
        );
    }

    /// Range shards 1 and 2; `[100, 1000)` goes to a new shard 3.
    fn move_100_to_1000_to_shard_3() -> Plan {
        let r = ShardMap::uniform(1, Strategy::Range, &[1, 2]);
        let target = Target::MoveRange {
            lower: Some(100),
            upper: Some(1000),
            to: 3,
        };
        plan(&r, &target).unwrap()
    }

    #[test]
    fn a_moved_key_is_pinned_alone_and_stays_pinned() {
        let from = hash10();
        let tenant = parse_key("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        let owner = from.shard_of(&tenant);
        let to = (owner + 1) % 10;
        let p = plan(
            &from,
            &Target::MoveKey {
                key: tenant.clone(),
                to,
            },
        )
        .unwrap();
        check(&p);
        let point = tenant.hash_point();
        assert_eq!(p.to.shard_of(&tenant), to);
        let pins: Vec<&KeyRange> = p.to.ranges.iter().filter(|r| is_pin(r)).collect();
        assert_eq!(pins.len(), 1);
        assert_eq!((pins[0].lower, pins[0].shard), (Some(point), to));
        assert_eq!(p.moves.len(), 1);
        assert_eq!((p.moves[0].source, p.moves[0].dest), (owner, to));
        assert_eq!(p.moves[0].slices, vec![(Some(point), Some(point + 1))]);
        // Every other key keeps its shard (the neighbours of the point too).
        for k in keys() {
            assert_eq!(p.to.shard_for(k), from.shard_for(k), "key {k}");
        }
        // A shard added later takes slices around the pin, never the pin.
        let added = plan(&p.to, &Target::AddShard(10)).unwrap();
        assert_eq!(added.to.shard_of(&tenant), to);
        assert!(added
            .to
            .ranges
            .iter()
            .any(|r| is_pin(r) && r.lower == Some(point)));
        // Moving it back joins the point to its neighbours again.
        let back = plan(
            &p.to,
            &Target::MoveKey {
                key: tenant.clone(),
                to: owner,
            },
        )
        .unwrap();
        assert_eq!(back.to.ranges, from.ranges);
        assert_eq!(
            plan(
                &from,
                &Target::MoveKey {
                    key: tenant.clone(),
                    to: owner
                }
            ),
            Err(PlanError::KeyAlreadyThere(tenant.sql_literal(), owner))
        );
        // Range maps pin integer keys at the key itself; modulo maps cannot pin.
        let range = ShardMap::uniform(1, Strategy::Range, &[0, 1]);
        let r = plan(
            &range,
            &Target::MoveKey {
                key: ShardKey::Int(42),
                to: 1,
            },
        )
        .unwrap();
        assert_eq!(
            (r.to.shard_for(41), r.to.shard_for(42), r.to.shard_for(43)),
            (0, 1, 0)
        );
        let modulo = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[0, 1]);
        assert!(matches!(
            plan(
                &modulo,
                &Target::MoveKey {
                    key: ShardKey::Int(42),
                    to: 1
                }
            ),
            Err(PlanError::PinNeedsHashOrRange("modulo"))
        ));
        let uuid_in_range = parse_key("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid").unwrap();
        assert!(plan(
            &range,
            &Target::MoveKey {
                key: uuid_in_range,
                to: 1
            }
        )
        .is_err());
    }

    #[test]
    fn move_key_targets_parse() {
        let table: [(&[&str], Result<Target, &str>); 6] = [
            (
                &["move-key", "42", "3"],
                Ok(Target::MoveKey {
                    key: ShardKey::Int(42),
                    to: 3,
                }),
            ),
            (
                &["move-key", "'42'::text", "3"],
                Ok(Target::MoveKey {
                    key: ShardKey::Text("42".into()),
                    to: 3,
                }),
            ),
            (
                &["move-key", "Acme's", "1"],
                Ok(Target::MoveKey {
                    key: ShardKey::Text("Acme's".into()),
                    to: 1,
                }),
            ),
            (
                &["move-key", "'it''s'", "1"],
                Ok(Target::MoveKey {
                    key: ShardKey::Text("it's".into()),
                    to: 1,
                }),
            ),
            (&["move-key", "x::uuid", "1"], Err("is not a valid key")),
            (&["move-key", "7", "x"], Err("is not a shard id")),
        ];
        for (words, want) in table {
            match (parse_target(words), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{words:?}"),
                (Err(e), Err(text)) => assert!(e.contains(text), "{words:?}: {e}"),
                (got, _) => panic!("{words:?}: {got:?}"),
            }
        }
        let uuid = parse_target(&["move-key", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "2"]);
        assert!(matches!(
            uuid,
            Ok(Target::MoveKey {
                key: ShardKey::Uuid(_),
                to: 2
            })
        ));
    }

    #[test]
    fn move_range_splits_and_joins() {
        let p = move_100_to_1000_to_shard_3();
        check(&p);
        assert_eq!(p.moves.len(), 1);
        assert_eq!(p.moves[0].slices, vec![(Some(100), Some(1000))]);
        assert_eq!(p.to.shard_for(99), 1);
        assert_eq!(p.to.shard_for(100), 3);
        assert_eq!(p.to.shard_for(999), 3);
        assert_eq!(p.to.shard_for(1000), 1);
        // A range spanning a boundary takes from both owners.
        let r = p.from.clone();
        let mid = r.ranges[0].upper.unwrap();
        let p = plan(
            &r,
            &Target::MoveRange {
                lower: Some(mid - 10),
                upper: None,
                to: 1,
            },
        )
        .unwrap();
        check(&p);
        assert_eq!(p.to.ranges.len(), 1, "{:?}", p.to.ranges);
        assert_eq!(
            plan(
                &r,
                &Target::MoveRange {
                    lower: Some(5),
                    upper: Some(5),
                    to: 1
                }
            ),
            Err(PlanError::EmptyRange)
        );
        assert_eq!(
            plan(
                &r,
                &Target::MoveRange {
                    lower: Some(5),
                    upper: Some(10),
                    to: 1
                }
            ),
            Err(PlanError::NothingMoves)
        );
        // Modulo remainders can move too.
        let m = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[0, 1, 2]);
        let p = plan(
            &m,
            &Target::MoveRange {
                lower: Some(2),
                upper: None,
                to: 0,
            },
        )
        .unwrap();
        check(&p);
        assert_eq!(p.to.shard_for(5), 0);
    }

    #[test]
    fn modulo_to_hash_keeps_the_shards() {
        let m = ShardMap::uniform(4, Strategy::Modulo { modulus: 0 }, &[0, 1, 2]);
        let p = plan(&m, &Target::ModuloToHash).unwrap();
        check(&p);
        assert_eq!(p.to.strategy, Strategy::Hash);
        assert_eq!(p.moves.len(), 6);
        assert!(p
            .predicate("user_id", &p.moves[0])
            .contains("hashint8extended"));
        assert!(matches!(
            plan(&hash10(), &Target::ModuloToHash),
            Err(PlanError::NotModulo("hash"))
        ));
    }

    #[test]
    fn predicates_name_the_slices() {
        let p = move_100_to_1000_to_shard_3();
        assert_eq!(
            p.predicate("user_id", &p.moves[0]),
            "(user_id >= 100 AND user_id < 1000)"
        );
    }

    #[test]
    fn parses_targets() {
        assert_eq!(parse_target(&["add-shard", "10"]), Ok(Target::AddShard(10)));
        assert_eq!(parse_target(&["drain", "3"]), Ok(Target::Drain(3)));
        assert_eq!(
            parse_target(&["move", "-", "5", "2"]),
            Ok(Target::MoveRange {
                lower: None,
                upper: Some(5),
                to: 2
            })
        );
        assert_eq!(parse_target(&["modulo-to-hash"]), Ok(Target::ModuloToHash));
        assert_eq!(
            parse_target(&["even-out"]),
            Ok(Target::EvenOut { slices: Vec::new() })
        );
        assert!(parse_target(&["add-shard", "x"]).is_err());
        assert_eq!(
            parse_target(&["move-schema", "Tenant_A", "2"]),
            Ok(Target::MoveSchema {
                schema: "tenant_a".into(),
                to: 2
            })
        );
        assert!(parse_target(&["move-schema", "tenant_a"]).is_err());
        assert!(parse_target(&["spin"]).is_err());
    }

    /// A tenant's move changes its placement only: one move of that schema, no key changes
    /// owner, and the other tenants stay.
    #[test]
    fn move_schema_places_one_tenant_anew() {
        let from = hash10().with_tenants(
            [("tenant_a".to_string(), 1), ("tenant_b".to_string(), 2)]
                .into_iter()
                .collect(),
        );
        let target = |s: &str, to| Target::MoveSchema {
            schema: s.into(),
            to,
        };
        let p = plan(&from, &target("tenant_a", 3)).unwrap();
        check(&p);
        assert_eq!(p.to.version, from.version + 1);
        assert_eq!(p.to.ranges, from.ranges);
        assert_eq!(p.to.tenant_shard("tenant_a"), Some(3));
        assert_eq!(p.to.tenant_shard("tenant_b"), Some(2));
        assert_eq!(
            p.moves,
            vec![Move {
                source: 1,
                dest: 3,
                slices: Vec::new(),
                schema: Some("tenant_a".into()),
            }]
        );
        assert_eq!(p.predicate("id", &p.moves[0]), "false");
        assert_eq!(moves_between(&p.from, &p.to), p.moves);
        assert_eq!(
            plan(&from, &target("tenant_b", 2)),
            Err(PlanError::SchemaAlreadyThere("tenant_b".into(), 2))
        );
        assert_eq!(
            plan(&from, &target("public", 2)),
            Err(PlanError::NotATenant("public".into()))
        );
        // Other jobs keep the tenants where they are.
        let p = plan(&from, &Target::Drain(0)).unwrap();
        assert_eq!(p.to.tenants, from.tenants);
    }
}
