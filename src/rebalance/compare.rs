//! The cut-over's comparison of source and destination, split so the hold does not grow with
//! the rows moved: before the hold, a hash per moving row on both sides (one scan each); inside
//! the hold, only the keys that differed then or that a watch saw change since (index lookups),
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

impl StepRows {
    /// (table:count:checksum …, rows) of the source side: what the catalog records per step.
    pub fn summary(&self) -> (String, i64) {
        let parts: Vec<String> = self
            .tables
            .iter()
            .map(|t| {
                let sum: i64 = t.source.values().map(|h| i64::from(*h)).sum();
                format!("{}:{}:{sum}", t.table, t.source.len())
            })
            .collect();
        (
            parts.join(" "),
            self.tables.iter().map(|t| t.source.len() as i64).sum(),
        )
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

/// One scan of `table` for several steps' rows: (arm, key as text, row hash) of every row
/// matching one of the predicates `preds`, the arm being the position of the first one it
/// matches. The row hash is the one [`TableRows::select`] reads.
fn grouped_select(table: &str, key: &str, preds: &[&str]) -> String {
    let arms: Vec<String> = preds
        .iter()
        .enumerate()
        .map(|(i, p)| format!("WHEN ({p}) THEN {i}"))
        .collect();
    let any: Vec<String> = preds.iter().map(|p| format!("({p})")).collect();
    format!(
        "SELECT CASE {} END, {}::text, hashtext(pgshard_r::text) FROM {} pgshard_r WHERE {}",
        arms.join(" "),
        ident(key),
        quote_config_name(table),
        any.join(" OR ")
    )
}

/// Runs a [`grouped_select`] and sorts its rows by arm.
async fn grouped_rows(
    client: &Client,
    shard: u32,
    sql: &str,
) -> Result<HashMap<i32, Rows>, RebalanceError> {
    let mut out: HashMap<i32, Rows> = HashMap::new();
    for r in client
        .query_typed(sql, &[])
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

/// Reads every moving row's hash on both sides of every step (all shards at once).
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
    // One scan per shard, side and table, whatever the number of steps reading it there (a new
    // shard is the destination of every step of add-shard: a scan per step read it ten times).
    // A shard's steps on one side have disjoint predicates, so each row belongs to one step.
    let mut groups: BTreeMap<(u32, u8, &str), Vec<Member>> = BTreeMap::new();
    for (si, step) in steps.iter().enumerate() {
        for (ti, t) in step.tables.iter().enumerate() {
            for (side, shard) in [(0, step.source), (1, step.dest)] {
                groups
                    .entry((shard, side, t.table.as_str()))
                    .or_default()
                    .push((si, ti));
            }
        }
    }
    let mut reads = Vec::new();
    for ((shard, side, _), members) in groups {
        let first = &steps[members[0].0].tables[members[0].1];
        let preds: Vec<&str> = members
            .iter()
            .map(|&(si, ti)| steps[si].tables[ti].pred.as_str())
            .collect();
        let sql = grouped_select(&first.table, &first.key, &preds);
        let c = client(clients, shard)?;
        reads.push(async move { (members, side, grouped_rows(c, shard, &sql).await) });
    }
    // At most `steps_at_once` scans at a time: each is a busy server process beside the
    // clients'.
    let mut read = Vec::new();
    for (members, side, r) in super::at_most(config.rebalance.steps_at_once, reads).await {
        read.push((members, side, r?));
    }
    for (members, side, mut by_arm) in read {
        for (arm, (si, ti)) in members.into_iter().enumerate() {
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
    fn summary_counts_and_sums_the_source() {
        let step = StepRows {
            no: 0,
            source: 1,
            dest: 2,
            tables: vec![table(&[("1", 10), ("2", -3)], &[])],
        };
        assert_eq!(step.summary(), ("users:2:7".to_string(), 2));
    }

    #[test]
    fn one_scan_reads_every_steps_rows_of_a_table() {
        assert_eq!(
            grouped_select("users", "user_id", &["a < 1", "a >= 5"]),
            "SELECT CASE WHEN (a < 1) THEN 0 WHEN (a >= 5) THEN 1 END, user_id::text, \
             hashtext(pgshard_r::text) FROM public.users pgshard_r WHERE (a < 1) OR (a >= 5)"
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
