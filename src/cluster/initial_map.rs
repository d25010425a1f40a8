//! The first shard map of a new cluster: the key space split evenly over the shards.
//!
//! Stand-in until `ShardMap::uniform` (src/router/shard_map.rs) lands; the catalog rows it produces
//! are the same, so swapping it in later changes nothing on disk.

use crate::router::{KeyRange, Strategy};

/// Splits the strategy's key space into `ids.len()` contiguous ranges, in the order of `ids`:
/// - range: `[0, i64::MAX]` in equal steps, the first range open below, the last open above;
/// - hash: the whole `i64` hash ring in equal steps (computed in `i128`), both ends open;
/// - modulo: `[i, i+1)` for each remainder `i` (the modulus is the number of shards).
pub fn uniform_ranges(strategy: Strategy, ids: &[u32]) -> Vec<KeyRange> {
    let n = ids.len() as i128;
    if n == 0 {
        return Vec::new();
    }
    let bound = |lo: i128, width: i128, i: i128| -> i64 {
        // lo + width * i / n lies within [lo, lo + width], which fits in i64 by construction.
        i64::try_from(lo + width * i / n).unwrap_or(i64::MAX)
    };
    ids.iter()
        .enumerate()
        .map(|(i, &shard)| {
            let i = i as i128;
            let (lower, upper) = match strategy {
                Strategy::Range => (
                    bound(0, i64::MAX as i128, i),
                    bound(0, i64::MAX as i128, i + 1),
                ),
                Strategy::Hash => {
                    let width = 1i128 << 64;
                    (
                        bound(i64::MIN as i128, width, i),
                        bound(i64::MIN as i128, width, i + 1),
                    )
                }
                Strategy::Modulo { .. } => {
                    return KeyRange {
                        lower: Some(i as i64),
                        upper: Some(i as i64 + 1),
                        shard,
                    }
                }
            };
            KeyRange {
                lower: (i > 0).then_some(lower),
                upper: (i + 1 < n).then_some(upper),
                shard,
            }
        })
        .collect()
}

/// The strategy as the catalog's `shard_map_versions.strategy` spells it, and its modulus.
pub fn catalog_strategy(strategy: Strategy) -> (&'static str, Option<i64>) {
    match strategy {
        Strategy::Range => ("range", None),
        Strategy::Hash => ("hash", None),
        Strategy::Modulo { modulus } => ("modulo", Some(modulus)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contiguous(ranges: &[KeyRange]) {
        assert_eq!(ranges.first().unwrap().lower, None);
        assert_eq!(ranges.last().unwrap().upper, None);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].upper, pair[1].lower);
            assert!(pair[1].lower.unwrap() > pair[0].lower.unwrap_or(i64::MIN));
        }
    }

    #[test]
    fn range_splits_the_positive_keys() {
        let r = uniform_ranges(Strategy::Range, &[0, 1, 2, 3]);
        contiguous(&r);
        assert_eq!(r[1].lower, Some(i64::MAX / 4));
        assert_eq!(
            r.iter().map(|k| k.shard).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn hash_splits_the_whole_ring() {
        let r = uniform_ranges(Strategy::Hash, &[0, 1]);
        contiguous(&r);
        assert_eq!(r[0].upper, Some(0));
        let r = uniform_ranges(Strategy::Hash, &[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        contiguous(&r);
        assert_eq!(r.len(), 10);
    }

    #[test]
    fn one_shard_owns_everything() {
        for s in [Strategy::Range, Strategy::Hash] {
            let r = uniform_ranges(s, &[3]);
            assert_eq!(
                r,
                vec![KeyRange {
                    lower: None,
                    upper: None,
                    shard: 3
                }]
            );
        }
    }

    #[test]
    fn modulo_gives_one_remainder_per_shard() {
        let r = uniform_ranges(Strategy::Modulo { modulus: 3 }, &[0, 1, 2]);
        assert_eq!(
            r[2],
            KeyRange {
                lower: Some(2),
                upper: Some(3),
                shard: 2
            }
        );
    }
}
