//! Evening out shards by row counts. Counts the rows each shard owns (over every sharded table),
//! works out how many rows the fullest shards give to the emptiest (pure, `transfers`), and finds
//! on each giving shard the point where its top slice of that many rows starts — so `plan` gets
//! concrete slices and stays pure.

use super::plan::{Reassign, Target};
use super::shards::connect;
use super::RebalanceError;
use crate::config::Config;
use crate::router::{ShardMap, Strategy};

/// Rows one shard gives another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub source: u32,
    pub dest: u32,
    pub rows: i64,
}

/// The transfers that leave every shard within one row of the mean: the fullest shards give,
/// the emptiest take, each giver to as few takers as it can. Transfers smaller than one percent
/// of the mean are left out — each costs a copy and a cut-over, and a shard a few rows over the
/// mean is even enough.
pub fn transfers(counts: &[(u32, i64)]) -> Vec<Transfer> {
    let n = counts.len() as i64;
    if n < 2 {
        return Vec::new();
    }
    let total: i64 = counts.iter().map(|(_, c)| c.max(&0)).sum();
    let (mean, extra) = (total / n, total % n);
    // The fullest shards keep the `extra` rows the mean cannot split, so fewer rows move.
    let mut by_size: Vec<(u32, i64)> = counts.iter().map(|&(s, c)| (s, c.max(0))).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let target = |rank: usize| mean + i64::from((rank as i64) < extra);
    let mut givers: Vec<(u32, i64)> = Vec::new();
    let mut takers: Vec<(u32, i64)> = Vec::new();
    for (rank, &(shard, rows)) in by_size.iter().enumerate() {
        let diff = rows - target(rank);
        if diff > 0 {
            givers.push((shard, diff));
        } else if diff < 0 {
            takers.push((shard, -diff));
        }
    }
    let threshold = (mean / 100).max(1);
    let mut out = Vec::new();
    let mut t = 0usize;
    for (source, mut excess) in givers {
        while excess > 0 && t < takers.len() {
            let (dest, need) = &mut takers[t];
            let rows = excess.min(*need);
            if rows >= threshold {
                out.push(Transfer {
                    source,
                    dest: *dest,
                    rows,
                });
            }
            excess -= rows;
            *need -= rows;
            if *need == 0 {
                t += 1;
            }
        }
    }
    out
}

/// `target` ready to plan: for [`Target::EvenOut`], the slices read off the shards' rows under
/// `map`; any other target as it is.
pub async fn measure(
    config: &Config,
    map: &ShardMap,
    target: &Target,
) -> Result<Target, RebalanceError> {
    let Target::EvenOut { .. } = target else {
        return Ok(target.clone());
    };
    if let Strategy::Modulo { .. } = map.strategy {
        return Err(super::PlanError::EvenOutNeedsHashOrRange.into());
    }
    let mut counts = Vec::new();
    for shard in map.shards() {
        let points = points_sql(config, map, shard).await?;
        let rows = match &points {
            Some(sql) => {
                let client = connect(config, shard).await?;
                client
                    .query_one(&format!("SELECT count(*) FROM ({sql}) AS owned"), &[])
                    .await
                    .map_err(RebalanceError::shard(shard))?
                    .get(0)
            }
            None => 0,
        };
        counts.push((shard, rows));
    }
    let mut slices = Vec::new();
    let mut by_source: Vec<(u32, Vec<Transfer>)> = Vec::new();
    for t in transfers(&counts) {
        match by_source.iter_mut().find(|(s, _)| *s == t.source) {
            Some((_, list)) => list.push(t),
            None => by_source.push((t.source, vec![t])),
        }
    }
    for (source, list) in by_source {
        let Some(sql) = points_sql(config, map, source).await? else {
            continue;
        };
        let client = connect(config, source).await?;
        // The top slice of `rows` points goes to the first taker, the next slice down to the
        // next: each slice is [the point `rows` down from its top, the previous cut).
        let mut upper: Option<i64> = None;
        let mut offset = 0i64;
        for t in list {
            offset += t.rows;
            let cut: Option<i64> = client
                .query_opt(
                    &format!("SELECT p FROM ({sql}) AS owned ORDER BY p DESC OFFSET $1 LIMIT 1"),
                    &[&(offset - 1)],
                )
                .await
                .map_err(RebalanceError::shard(source))?
                .map(|r| r.get(0));
            let Some(cut) = cut else {
                break;
            };
            if upper.is_some_and(|u| u <= cut) {
                // Rows sharing one point cannot be split: this slice is empty.
                continue;
            }
            slices.push(Reassign {
                source,
                lower: Some(cut),
                upper,
                dest: t.dest,
            });
            upper = Some(cut);
        }
    }
    Ok(Target::EvenOut { slices })
}

/// SQL listing, as `p`, the point of every row `shard` owns under `map`, over the sharded tables
/// the shard has (None when it has none of them).
async fn points_sql(
    config: &Config,
    map: &ShardMap,
    shard: u32,
) -> Result<Option<String>, RebalanceError> {
    let client = connect(config, shard).await?;
    let mut parts = Vec::new();
    for table in &config.sharded_tables {
        let exists = super::shards::table_exists(
            &client,
            shard,
            &crate::router::names::quote_config_name(&table.name),
        )
        .await?;
        if exists {
            let key_type = crate::backend::key_types::key_type_on(&client, table, &map.strategy)
                .await
                .map_err(RebalanceError::Refused)?;
            parts.push(format!(
                "SELECT {} AS p FROM {} WHERE {}",
                map.sql_point_expr_typed(&table.key, key_type),
                crate::router::names::quote_config_name(&table.name),
                map.sql_owned_by_typed(&table.key, key_type, shard)
            ));
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join(" UNION ALL ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(counts: &[(u32, i64)], moves: &[Transfer]) -> Vec<(u32, i64)> {
        counts
            .iter()
            .map(|&(s, c)| {
                let out: i64 = moves.iter().filter(|t| t.source == s).map(|t| t.rows).sum();
                let into: i64 = moves.iter().filter(|t| t.dest == s).map(|t| t.rows).sum();
                (s, c - out + into)
            })
            .collect()
    }

    #[test]
    fn every_shard_ends_within_one_row_of_the_mean() {
        let counts = [(0, 1000), (1, 10), (2, 500), (3, 0), (4, 490)];
        let moves = transfers(&counts);
        let total: i64 = counts.iter().map(|c| c.1).sum();
        let ends = after(&counts, &moves);
        assert_eq!(ends.iter().map(|e| e.1).sum::<i64>(), total);
        for (shard, rows) in ends {
            assert!((rows - total / 5).abs() <= 1, "shard {shard}: {rows}");
        }
        // Only shards over the mean give, only those under it take.
        assert!(moves.iter().all(|t| [0, 2, 4].contains(&t.source)));
        assert!(moves.iter().all(|t| [1, 3].contains(&t.dest)));
    }

    #[test]
    fn a_new_empty_shard_takes_from_every_full_one() {
        let mut counts: Vec<(u32, i64)> = (0..10).map(|s| (s, 1100)).collect();
        counts.push((10, 0));
        let moves = transfers(&counts);
        assert_eq!(moves.len(), 10);
        assert!(moves.iter().all(|t| t.dest == 10 && t.rows == 100));
    }

    #[test]
    fn an_even_cluster_moves_nothing() {
        assert!(transfers(&[(0, 100), (1, 101), (2, 100)]).is_empty());
        assert!(transfers(&[(0, 0), (1, 0)]).is_empty());
        assert!(transfers(&[(0, 5)]).is_empty());
        // A transfer under one percent of the mean is not worth a cut-over.
        assert!(transfers(&[(0, 10_050), (1, 10_000), (2, 9_950)]).is_empty());
    }
}
