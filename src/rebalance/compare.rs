//! The cut-over's comparison of source and destination, split so the hold does not grow with
//! the rows moved: before the hold, aggregates of the moving rows' hashes by bucket of key on
//! both sides (one scan each, a few thousand rows shipped), then the rows of the buckets that
//! differ; inside the hold, only the keys that differed then or that a watch saw change since (index lookups),
//! or the whole table when a watch cannot name the keys (a truncate).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::future::join_all;
use tokio_postgres::Client;

use super::copy::{predicates, step_move};
use super::jobs::Job;
use super::pgoutput::ChangedKeys;
use super::RebalanceError;
use crate::config::Config;
use crate::router::names::quote_config_name;
use crate::sql_text::quote_ident as ident;

/// (step, table) positions of a table read in [`scan`].
type Member = (usize, usize);

/// Row hash by key (as text) of one side of one table of one step.
type Rows = HashMap<String, i32>;

/// One table of one step: its predicate and the rows of both sides as last read.
#[derive(Debug)]
pub struct TableRows {
    pub table: String,
    key: String,
    /// The key column's SQL type (for lookups by key).
    key_type: String,
    pred: String,
    source: Rows,
    dest: Rows,
    /// Keys that differed at the last read: all that can differ unless a watch saw a change.
    suspect: BTreeSet<String>,
}

/// The compared rows of one step.
#[derive(Debug)]
pub struct StepRows {
    pub no: i32,
    pub source: u32,
    pub dest: u32,
    pub tables: Vec<TableRows>,
}

impl TableRows {
    fn select(&self, filter: &str) -> String {
        format!(
            "SELECT {k}::text, hashtext(pgshard_r::text) FROM {t} pgshard_r WHERE ({}){filter}",
            self.pred,
            k = ident(&self.key),
            t = quote_config_name(&self.table),
        )
    }

    /// Keys whose rows differ between the sides.
    fn differing(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .source
            .iter()
            .filter(|(k, h)| self.dest.get(*k) != Some(h))
            .map(|(k, _)| k.clone())
            .collect();
        out.extend(
            self.dest
                .keys()
                .filter(|k| !self.source.contains_key(*k))
                .cloned(),
        );
        out
    }
}

/// Runs a comparison read in one round trip (no separate prepare: the hold waits for it).
async fn rows(
    client: &Client,
    shard: u32,
    sql: &str,
    keys: &[String],
) -> Result<Rows, RebalanceError> {
    let result = if keys.is_empty() {
        client.query_typed(sql, &[]).await
    } else {
        client
            .query_typed(sql, &[(&keys, tokio_postgres::types::Type::TEXT_ARRAY)])
            .await
    };
    Ok(result
        .map_err(RebalanceError::shard(shard))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Rows a bucket of [`scan`]'s aggregates holds on average: a mismatch then costs re-reading
/// about this many rows per side, and the aggregates are this many times fewer than the rows.
const ROWS_PER_BUCKET: i64 = 32;

/// Most buckets per step and table: past this the aggregates shipped outweigh the rows saved.
const MAX_BUCKETS: i64 = 1 << 16;

/// The mask picking a row's bucket from the hash of its key (`hashtext(key::text) & mask`), for
/// steps of about `rows` moving rows each: a power of two buckets, [`ROWS_PER_BUCKET`] rows each.
pub fn bucket_mask(rows: i64) -> i32 {
    let want = (rows / ROWS_PER_BUCKET).clamp(1, MAX_BUCKETS);
    (want as u64).next_power_of_two().min(MAX_BUCKETS as u64) as i32 - 1
}

/// One bucket's rows on one side: how many, the xor of their 64-bit row hashes and the sum of
/// those hashes' high halves. Equal aggregates mean equal rows unless differences cancel in both
/// the xor and the sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aggregate {
    pub rows: i64,
    pub xor: i64,
    pub sum: i64,
}

/// Buckets whose aggregates differ between the sides (a bucket missing on one side holds no rows
/// there), in order.
pub fn differing_buckets(
    source: &BTreeMap<i32, Aggregate>,
    dest: &BTreeMap<i32, Aggregate>,
) -> Vec<i32> {
    let buckets: BTreeSet<i32> = source.keys().chain(dest.keys()).copied().collect();
    buckets
        .into_iter()
        .filter(|b| source.get(b) != dest.get(b))
        .collect()
}

/// `CASE WHEN (p0) THEN 0 WHEN (p1) THEN 1 … END` and `(p0) OR (p1) …`: the position of the
/// first predicate a row matches, and whether it matches any.
fn arms(preds: &[&str]) -> (String, String) {
    let arms: Vec<String> = preds
        .iter()
        .enumerate()
        .map(|(i, p)| format!("WHEN ({p}) THEN {i}"))
        .collect();
    let any: Vec<String> = preds.iter().map(|p| format!("({p})")).collect();
    (format!("CASE {} END", arms.join(" ")), any.join(" OR "))
}

/// One scan of `table` for several steps' rows, aggregated on the server: (arm, bucket, rows,
/// xor, sum) per bucket of every arm, the arm being the position of the first predicate of
/// `preds` a row matches and the bucket the hash of its key under `mask`.
fn aggregate_select(table: &str, key: &str, preds: &[&str], mask: i32) -> String {
    let (case, any) = arms(preds);
    format!(
        "SELECT arm, bucket, count(*), coalesce(bit_xor(h), 0), coalesce(sum((h >> 32)::int4), 0)::int8 \
         FROM (SELECT {case} AS arm, hashtext({k}::text) & {mask} AS bucket, \
                      hashtextextended(pgshard_r::text, 0) AS h \
               FROM {t} pgshard_r WHERE {any}) pgshard_a GROUP BY 1, 2",
        k = ident(key),
        t = quote_config_name(table),
    )
}

/// One scan of `table` for the rows of some buckets of several steps: (arm, key as text, row
/// hash) of each row whose (arm, bucket) is one of the pairs `$1::int[]`, `$2::int[]`. The row
/// hash is the one [`TableRows::select`] reads.
fn bucket_rows_select(table: &str, key: &str, preds: &[&str], mask: i32) -> String {
    let (case, any) = arms(preds);
    format!(
        "SELECT arm, key, hashtext(pgshard_r::text) \
         FROM (SELECT {case} AS arm, hashtext({k}::text) & {mask} AS bucket, {k}::text AS key, \
                      pgshard_r FROM {t} pgshard_r WHERE {any}) pgshard_b \
         WHERE (arm, bucket) IN (SELECT * FROM unnest($1::int[], $2::int[]))",
        k = ident(key),
        t = quote_config_name(table),
    )
}

/// Runs an [`aggregate_select`]: the aggregates by arm and bucket.
async fn aggregates(
    client: &Client,
    shard: u32,
    sql: &str,
) -> Result<HashMap<i32, BTreeMap<i32, Aggregate>>, RebalanceError> {
    let mut out: HashMap<i32, BTreeMap<i32, Aggregate>> = HashMap::new();
    for r in client
        .query_typed(sql, &[])
        .await
        .map_err(RebalanceError::shard(shard))?
    {
        let agg = Aggregate {
            rows: r.get(2),
            xor: r.get(3),
            sum: r.get(4),
        };
        out.entry(r.get(0)).or_default().insert(r.get(1), agg);
    }
    Ok(out)
}

/// Runs a [`bucket_rows_select`] for the (arm, bucket) pairs `arms`, `buckets`: the rows by arm.
async fn bucket_rows(
    client: &Client,
    shard: u32,
    sql: &str,
    (arms, buckets): (Vec<i32>, Vec<i32>),
) -> Result<HashMap<i32, Rows>, RebalanceError> {
    use tokio_postgres::types::Type;
    let mut out: HashMap<i32, Rows> = HashMap::new();
    for r in client
        .query_typed(
            sql,
            &[(&arms, Type::INT4_ARRAY), (&buckets, Type::INT4_ARRAY)],
        )
        .await
        .map_err(RebalanceError::shard(shard))?
    {
        out.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
    }
    Ok(out)
}

fn client(clients: &BTreeMap<u32, Client>, shard: u32) -> Result<&Client, RebalanceError> {
    clients
        .get(&shard)
        .ok_or_else(|| RebalanceError::Config(format!("no connection to shard {shard}")))
}

/// Compares every moving row of both sides of every step (all shards at once) without shipping
/// them: per step and table, aggregates of the rows' hashes by bucket of key on each side; only
/// the rows of buckets that differ are read, and their differing keys become the suspects.
pub async fn scan(
    config: &Config,
    clients: &BTreeMap<u32, Client>,
    job: &Job,
) -> Result<Vec<StepRows>, RebalanceError> {
    let mut steps = Vec::with_capacity(job.steps.len());
    for step in &job.steps {
        let m = step_move(job, step)?;
        let src = client(clients, step.source)?;
        let mut tables = Vec::new();
        for ((_, key, pred), cfg) in predicates(config, job, m)
            .into_iter()
            .zip(&config.sharded_tables)
        {
            let Some(found) = crate::backend::key_types::lookup(src, cfg)
                .await
                .map_err(RebalanceError::Refused)?
            else {
                continue;
            };
            tables.push(TableRows {
                table: cfg.name.clone(),
                key,
                key_type: found.type_name,
                pred,
                source: Rows::new(),
                dest: Rows::new(),
                suspect: BTreeSet::new(),
            });
        }
        steps.push(StepRows {
            no: step.no,
            source: step.source,
            dest: step.dest,
            tables,
        });
    }
    // One mask for every step (both sides of a step must bucket alike), sized for the largest.
    let rows = job
        .steps
        .iter()
        .map(|s| s.rows_copied.max(s.rows_estimated.unwrap_or(0)))
        .max()
        .unwrap_or(0);
    let mask = bucket_mask(rows);
    // One scan per shard, side and table, whatever the number of steps reading it there (a new
    // shard is the destination of every step of add-shard: a scan per step read it ten times).
    // A shard's steps on one side have disjoint predicates, so each row belongs to one step.
    let mut groups: BTreeMap<(u32, u8, String), Vec<Member>> = BTreeMap::new();
    for (si, step) in steps.iter().enumerate() {
        for (ti, t) in step.tables.iter().enumerate() {
            for (side, shard) in [(0, step.source), (1, step.dest)] {
                groups
                    .entry((shard, side, t.table.clone()))
                    .or_default()
                    .push((si, ti));
            }
        }
    }
    let group_sql = |members: &[Member], select: fn(&str, &str, &[&str], i32) -> String| {
        let first = &steps[members[0].0].tables[members[0].1];
        let preds: Vec<&str> = members
            .iter()
            .map(|&(si, ti)| steps[si].tables[ti].pred.as_str())
            .collect();
        select(&first.table, &first.key, &preds, mask)
    };
    let mut reads = Vec::new();
    for ((shard, side, _), members) in &groups {
        let sql = group_sql(members, aggregate_select);
        let c = client(clients, *shard)?;
        reads.push(async move { (members, *side, aggregates(c, *shard, &sql).await) });
    }
    // (step, table) → aggregates of (source, destination)
    type Sides = (BTreeMap<i32, Aggregate>, BTreeMap<i32, Aggregate>);
    let mut aggs: BTreeMap<Member, Sides> = BTreeMap::new();
    for (members, side, r) in join_all(reads).await {
        let mut by_arm = r?;
        for (arm, m) in members.iter().enumerate() {
            let a = by_arm.remove(&(arm as i32)).unwrap_or_default();
            let e = aggs.entry(*m).or_default();
            *if side == 0 { &mut e.0 } else { &mut e.1 } = a;
        }
    }
    let differing: BTreeMap<Member, Vec<i32>> = aggs
        .iter()
        .map(|(m, (s, d))| (*m, differing_buckets(s, d)))
        .filter(|(_, b)| !b.is_empty())
        .collect();
    // The rows of the differing buckets, both sides, again one scan per shard, side and table.
    let mut reads = Vec::new();
    for ((shard, side, _), members) in &groups {
        let mut pairs = (Vec::new(), Vec::new());
        for (arm, m) in members.iter().enumerate() {
            for b in differing.get(m).into_iter().flatten() {
                pairs.0.push(arm as i32);
                pairs.1.push(*b);
            }
        }
        if pairs.0.is_empty() {
            continue;
        }
        let sql = group_sql(members, bucket_rows_select);
        let c = client(clients, *shard)?;
        reads.push(async move { (members, *side, bucket_rows(c, *shard, &sql, pairs).await) });
    }
    let mut read = Vec::new();
    for (members, side, r) in join_all(reads).await {
        read.push((members, side, r?));
    }
    for (members, side, mut by_arm) in read {
        for (arm, &(si, ti)) in members.iter().enumerate() {
            let rows = by_arm.remove(&(arm as i32)).unwrap_or_default();
            let t = &mut steps[si].tables[ti];
            *if side == 0 {
                &mut t.source
            } else {
                &mut t.dest
            } = rows;
        }
    }
    for t in steps.iter_mut().flat_map(|s| s.tables.iter_mut()) {
        t.suspect = t.differing();
    }
    Ok(steps)
}

/// Re-reads, on both sides, the rows that differed at the last read or that the watches saw
/// change (`changed` by shard), and compares them; the first difference is returned as the
/// reason the copy does not match. Work grows with those keys, not with the rows moved.
pub async fn recheck(
    clients: &BTreeMap<u32, Client>,
    steps: &mut [StepRows],
    changed: &BTreeMap<u32, ChangedKeys>,
) -> Result<Option<String>, RebalanceError> {
    // (step, table, keys to re-read; None = the whole table)
    let mut plan: Vec<(usize, usize, Option<Vec<String>>)> = Vec::new();
    for (si, step) in steps.iter().enumerate() {
        for (ti, t) in step.tables.iter().enumerate() {
            let mut keys = t.suspect.clone();
            let mut unknown = false;
            for shard in [step.source, step.dest] {
                if let Some(c) = changed.get(&shard).and_then(|c| c.tables.get(&t.table)) {
                    unknown |= c.unknown;
                    keys.extend(c.keys.iter().cloned());
                }
            }
            if unknown {
                plan.push((si, ti, None));
            } else if !keys.is_empty() {
                plan.push((si, ti, Some(keys.into_iter().collect())));
            }
        }
    }
    let mut reads = Vec::new();
    for (pi, (si, ti, keys)) in plan.iter().enumerate() {
        let (step, t) = (&steps[*si], &steps[*si].tables[*ti]);
        let sql = match keys {
            None => t.select(""),
            Some(_) => t.select(&format!(
                " AND {} = ANY($1::text[]::{}[])",
                ident(&t.key),
                t.key_type
            )),
        };
        let keys: &[String] = keys.as_deref().unwrap_or(&[]);
        for (side, shard) in [(0, step.source), (1, step.dest)] {
            let (sql, c) = (sql.clone(), client(clients, shard)?);
            reads.push(async move { (pi, side, rows(c, shard, &sql, keys).await) });
        }
    }
    let mut fresh: BTreeMap<(usize, u8), Rows> = BTreeMap::new();
    for (pi, side, r) in join_all(reads).await {
        fresh.insert((pi, side), r?);
    }
    for (pi, (si, ti, keys)) in plan.iter().enumerate() {
        let t = &mut steps[*si].tables[*ti];
        let new_source = fresh.remove(&(pi, 0)).unwrap_or_default();
        let new_dest = fresh.remove(&(pi, 1)).unwrap_or_default();
        match keys {
            None => {
                t.source = new_source;
                t.dest = new_dest;
                t.suspect = t.differing();
            }
            Some(keys) => {
                for k in keys {
                    t.source.remove(k);
                    t.dest.remove(k);
                }
                t.source.extend(new_source);
                t.dest.extend(new_dest);
                t.suspect = keys
                    .iter()
                    .filter(|k| t.source.get(*k) != t.dest.get(*k))
                    .cloned()
                    .collect();
            }
        }
    }
    for step in steps.iter() {
        for t in &step.tables {
            let Some(k) = t.suspect.iter().next() else {
                continue;
            };
            let (no, source, dest) = (step.no, step.source, step.dest);
            return Ok(Some(format!(
                "step {no} ({source} → {dest}): the copy does not match the source \
                 (table {}, key {k}: source row hash {:?}, destination {:?})",
                t.table,
                t.source.get(k),
                t.dest.get(k)
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(source: &[(&str, i32)], dest: &[(&str, i32)]) -> TableRows {
        let rows = |v: &[(&str, i32)]| v.iter().map(|(k, h)| (k.to_string(), *h)).collect();
        TableRows {
            table: "users".into(),
            key: "user_id".into(),
            key_type: "bigint".into(),
            pred: "true".into(),
            source: rows(source),
            dest: rows(dest),
            suspect: BTreeSet::new(),
        }
    }

    #[test]
    fn differing_keys_cover_changed_missing_and_extra_rows() {
        let t = table(
            &[("1", 10), ("2", 20), ("3", 30)],
            &[("1", 10), ("2", 21), ("4", 40)],
        );
        assert_eq!(
            t.differing().into_iter().collect::<Vec<_>>(),
            vec!["2", "3", "4"]
        );
        assert!(table(&[("1", 1)], &[("1", 1)]).differing().is_empty());
    }

    #[test]
    fn buckets_hold_a_few_dozen_rows_each_within_bounds() {
        for (rows, mask) in [
            (0, 0),
            (1, 0),
            (31, 0),
            (64, 1),
            (65, 1),
            (96, 3),
            (9_000, 511),
            (91_000, 4095),
            (1 << 40, 65535),
            (-5, 0),
        ] {
            assert_eq!(bucket_mask(rows), mask, "{rows} rows");
        }
    }

    #[test]
    fn differing_buckets_are_those_changed_missing_or_extra() {
        let agg = |rows, xor, sum| Aggregate { rows, xor, sum };
        let side = |v: &[(i32, Aggregate)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        let source = side(&[
            (0, agg(2, 5, 7)),
            (1, agg(1, 3, 3)),
            (2, agg(4, 9, 1)),
            (3, agg(1, 1, 1)),
            (5, agg(2, 2, 2)),
        ]);
        let dest = side(&[
            (0, agg(2, 5, 7)),
            (1, agg(1, 4, 3)),
            (2, agg(4, 9, 2)),
            (3, agg(2, 1, 1)),
            (4, agg(1, 1, 1)),
        ]);
        assert_eq!(differing_buckets(&source, &dest), vec![1, 2, 3, 4, 5]);
        assert!(differing_buckets(&source, &source).is_empty());
        assert!(differing_buckets(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn one_scan_aggregates_every_steps_rows_of_a_table_by_bucket() {
        assert_eq!(
            aggregate_select("users", "user_id", &["a < 1", "a >= 5"], 15),
            "SELECT arm, bucket, count(*), coalesce(bit_xor(h), 0), \
             coalesce(sum((h >> 32)::int4), 0)::int8 \
             FROM (SELECT CASE WHEN (a < 1) THEN 0 WHEN (a >= 5) THEN 1 END AS arm, \
             hashtext(user_id::text) & 15 AS bucket, hashtextextended(pgshard_r::text, 0) AS h \
             FROM public.users pgshard_r WHERE (a < 1) OR (a >= 5)) pgshard_a GROUP BY 1, 2"
        );
    }

    #[test]
    fn differing_buckets_rows_are_read_in_one_scan() {
        assert_eq!(
            bucket_rows_select("users", "user_id", &["a < 1", "a >= 5"], 15),
            "SELECT arm, key, hashtext(pgshard_r::text) \
             FROM (SELECT CASE WHEN (a < 1) THEN 0 WHEN (a >= 5) THEN 1 END AS arm, \
             hashtext(user_id::text) & 15 AS bucket, user_id::text AS key, pgshard_r \
             FROM public.users pgshard_r WHERE (a < 1) OR (a >= 5)) pgshard_b \
             WHERE (arm, bucket) IN (SELECT * FROM unnest($1::int[], $2::int[]))"
        );
    }

    #[test]
    fn lookups_by_key_cast_the_keys() {
        let t = table(&[], &[]);
        let sql = t.select(" AND user_id = ANY($1::text[]::bigint[])");
        assert_eq!(
            sql,
            "SELECT user_id::text, hashtext(pgshard_r::text) FROM public.users pgshard_r \
             WHERE (true) AND user_id = ANY($1::text[]::bigint[])"
        );
    }
}
