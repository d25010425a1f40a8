//! What the `pgshard verify` and `pgshard rebalance …` commands print, written to any `Write` so
//! the binary stays a thin shell.

use std::io::Write;

use super::plan::parse_target;
use super::shards::{catalog, with_registered_shards};
use super::{estimate, verify, RebalanceError};
use crate::config::Config;

/// The current map from the catalog named in `config`.
pub async fn current_map(config: &Config) -> anyhow::Result<crate::router::ShardMap> {
    let client = catalog(config).await?;
    Ok(crate::catalog::load_map(&client)
        .await?
        .ok_or(crate::catalog::CatalogError::NoMap)?)
}

/// `pgshard verify`: prints per-shard counts and every misplacement; Ok(false) when misplaced
/// rows exist.
pub async fn verify_command(config: &Config, out: &mut impl Write) -> anyhow::Result<bool> {
    let config = &with_registered_shards(config).await?;
    let map = current_map(config).await?;
    let report = verify::verify(config, &map).await?;
    writeln!(
        out,
        "shard map version {} ({}), {} shard(s), {} sharded table(s)",
        map.version,
        map.strategy.name(),
        config.shards.len(),
        config.sharded_tables.len()
    )?;
    for (shard, table, rows) in &report.counted {
        writeln!(out, "  shard {shard:>3} {table}: {rows} row(s)")?;
    }
    if report.clean() {
        writeln!(out, "ok: every row sits on the shard the map names")?;
        return Ok(true);
    }
    for m in &report.misplaced {
        writeln!(
            out,
            "MISPLACED: shard {} {}: {} row(s) the map gives another shard, e.g. {} = {}",
            m.shard,
            m.table,
            m.count,
            config
                .sharded_tables
                .iter()
                .find(|t| t.name == m.table)
                .map_or("key", |t| t.key.as_str()),
            m.samples.join(", ")
        )?;
    }
    Ok(false)
}

/// `pgshard rebalance plan`: prints the new map's ranges and each move with its row estimate.
pub async fn plan_command(
    config: &Config,
    words: &[String],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let target = parse_target(&words).map_err(RebalanceError::Config)?;
    let config = &with_registered_shards(config).await?;
    let map = current_map(config).await?;
    if let Some(shard) = map_shards_missing(config, &target).first() {
        anyhow::bail!(
            "shard {shard} is not registered; add it first with `pgshard shard add` or ADD SHARD"
        );
    }
    let target = super::even::measure(config, &map, &target).await?;
    let plan = super::plan(&map, &target)?;
    let rows = estimate::rows_per_move(config, &plan, estimate::Counting::Exact).await?;
    writeln!(
        out,
        "plan: {target} — map version {} ({}) → {} ({}), {} move(s)",
        plan.from.version,
        plan.from.strategy.name(),
        plan.to.version,
        plan.to.strategy.name(),
        plan.moves.len()
    )?;
    let key = config
        .sharded_tables
        .first()
        .map_or("key", |t| t.key.as_str());
    for (m, n) in plan.moves.iter().zip(&rows) {
        let what = match &m.schema {
            Some(schema) => format!("in tenant schema {schema}"),
            None => format!("where {}", plan.predicate(key, m)),
        };
        writeln!(
            out,
            "  shard {:>3} → shard {:>3}: ~{n} row(s) {what}",
            m.source, m.dest
        )?;
    }
    writeln!(out, "  total: {} row(s) move", rows.iter().sum::<i64>())?;
    Ok(())
}

/// Shards a target names that the config does not list.
fn map_shards_missing(config: &Config, target: &super::Target) -> Vec<u32> {
    let named = match target {
        super::Target::AddShard(s) | super::Target::Drain(s) => Some(*s),
        super::Target::MoveRange { to, .. }
        | super::Target::MoveKey { to, .. }
        | super::Target::MoveSchema { to, .. } => Some(*to),
        super::Target::ModuloToHash | super::Target::EvenOut { .. } => None,
    };
    named
        .filter(|s| config.shard(*s).is_none())
        .into_iter()
        .collect()
}

/// `pgshard rebalance start`: plans, records the job (a proxy's runner picks it up) and prints its
/// id.
pub async fn start_command(
    config: &Config,
    words: &[String],
    out: &mut impl Write,
) -> anyhow::Result<i64> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let target = parse_target(&w).map_err(RebalanceError::Config)?;
    let id = create_job(config, &target).await?;
    writeln!(
        out,
        "rebalancing job {id} created ({target}); a running pgshard proxy runs it — watch it with `pgshard rebalance status`"
    )?;
    Ok(id)
}

/// Plans `target` from the current map and records it as a new job.
pub async fn create_job(config: &Config, target: &super::Target) -> anyhow::Result<i64> {
    // One catalog login for the topology, the map and the job (each login is a SCRAM exchange
    // the catalog's server computes while clients wait for its CPU).
    let mut client = catalog(config).await?;
    let topology = crate::catalog::load_topology(&client).await?;
    let config = &crate::catalog::with_topology(config, topology.as_ref());
    if let Some(shard) = map_shards_missing(config, target).first() {
        anyhow::bail!(
            "shard {shard} is not registered; add it first with `pgshard shard add` or ADD SHARD"
        );
    }
    let map = crate::catalog::load_map(&client)
        .await?
        .ok_or(crate::catalog::CatalogError::NoMap)?;
    let target = super::even::measure(config, &map, target).await?;
    if let super::Target::MoveSchema { schema, .. } = &target {
        schema_known(config, &map, schema).await?;
    }
    let plan = super::plan(&map, &target)?;
    let rows = estimate::rows_per_move(config, &plan, estimate::Counting::Sampled).await?;
    Ok(super::jobs::create(&mut client, &target.to_string(), &plan, &rows).await?)
}

/// `move-schema` of a schema no shard holds is refused as Postgres refuses an unknown schema
/// (3F000); a tenant the map places must exist on its shard, anything else is left to the plan
/// (not a tenant, already there).
async fn schema_known(
    config: &Config,
    map: &crate::router::ShardMap,
    schema: &str,
) -> Result<(), RebalanceError> {
    let shards: Vec<u32> = match map.tenant_shard(schema) {
        Some(shard) => vec![shard],
        None => config.shards.iter().map(|s| s.id).collect(),
    };
    for shard in shards {
        let client = super::shards::connect(config, shard).await?;
        if super::tenant::exists(&client, shard, schema).await? {
            return Ok(());
        }
    }
    Err(RebalanceError::UnknownSchema(schema.to_string()))
}

/// A text progress bar `[#####.....]` of `width` cells.
pub fn bar(done: i64, total: i64, width: usize) -> String {
    let filled = if total <= 0 {
        width
    } else {
        ((done.max(0) as f64 / total as f64).min(1.0) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Lines describing a job and each of its steps.
pub fn describe(job: &super::jobs::Job) -> Vec<String> {
    let mut lines = vec![format!(
        "job {} {}: {} (map {} → {}{}), cut-over attempts {}, longest hold {}{}",
        job.id,
        job.state.as_str(),
        job.target,
        job.plan.from.version,
        job.plan.to.version,
        job.new_version
            .map_or(String::new(), |v| format!(", published {v}")),
        job.cutover_attempts,
        job.longest_hold_ms
            .map_or("-".to_string(), |ms| format!("{ms} ms")),
        job.error
            .as_deref()
            .map_or(String::new(), |e| format!(", last error: {e}")),
    )];
    for s in &job.steps {
        let total = s.rows_estimated.unwrap_or(0);
        lines.push(format!(
            "  step {:>2} shard {:>3} → {:>3} {:<11} {} {}/{} rows, lag {}, deleted {}",
            s.no,
            s.source,
            s.dest,
            s.state,
            bar(s.rows_copied, total, 20),
            s.rows_copied,
            total,
            s.lag_bytes.map_or("-".into(), |b| format!("{b} B")),
            s.rows_deleted
        ));
    }
    lines
}

/// `pgshard rebalance status`: the newest jobs (or one), redrawn until it ends with `follow`.
pub async fn status_command(
    config: &Config,
    job: Option<i64>,
    follow: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = catalog(config).await?;
    let mut drawn = 0usize;
    loop {
        let jobs = match job {
            Some(id) => super::jobs::load(&client, id).await?.into_iter().collect(),
            None => super::jobs::list(&client, 5).await?,
        };
        if jobs.is_empty() {
            writeln!(out, "no rebalancing jobs")?;
            return Ok(());
        }
        let lines: Vec<String> = jobs.iter().flat_map(describe).collect();
        if follow && drawn > 0 {
            // Back to the first line of the previous drawing.
            write!(out, "\x1b[{drawn}A\r")?;
        }
        for l in &lines {
            writeln!(out, "{l}\x1b[K")?;
        }
        out.flush()?;
        drawn = lines.len();
        if !follow || jobs.iter().all(|j| j.state.ended()) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `pgshard rebalance cancel`.
pub async fn cancel_command(config: &Config, id: i64, out: &mut impl Write) -> anyhow::Result<()> {
    let client = catalog(config).await?;
    let state = super::jobs::request_cancel(&client, id).await?;
    writeln!(out, "rebalancing job {id}: {state}")?;
    Ok(())
}
