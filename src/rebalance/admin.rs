//! The admin console's rebalancing commands: SHOW JOBS, REBALANCE <target>, CANCEL JOB n.

use crate::admin::result_set::{ColumnType, ResultSet};
use crate::proxy::Proxy;
use crate::wire::backend::ErrorFields;

use super::{jobs, RebalanceError, Target};

fn fields(e: impl std::fmt::Display, code: &str) -> ErrorFields {
    ErrorFields::error(code, e.to_string())
}

fn rebalance_fields(e: RebalanceError) -> ErrorFields {
    match e {
        RebalanceError::Refused(_) | RebalanceError::Plan(_) | RebalanceError::Config(_) => {
            fields(e, "55000")
        }
        _ => fields(e, "08006"),
    }
}

/// One row per step of the newest jobs, with the job's state and this proxy's hold statistics.
pub async fn show_jobs(proxy: &Proxy) -> Result<ResultSet, ErrorFields> {
    let client = super::shards::catalog(&proxy.config)
        .await
        .map_err(rebalance_fields)?;
    let list = jobs::list(&client, 20).await.map_err(rebalance_fields)?;
    let stats = proxy.rebalance.stats();
    let mut rs = ResultSet::new(&[
        ("job_id", ColumnType::Int8),
        ("state", ColumnType::Text),
        ("target", ColumnType::Text),
        ("step", ColumnType::Int8),
        ("source", ColumnType::Int8),
        ("dest", ColumnType::Int8),
        ("step_state", ColumnType::Text),
        ("rows_estimated", ColumnType::Int8),
        ("rows_copied", ColumnType::Int8),
        ("lag_bytes", ColumnType::Int8),
        ("rows_deleted", ColumnType::Int8),
        ("cutover_attempts", ColumnType::Int8),
        ("longest_hold_ms", ColumnType::Int8),
        ("proxy_longest_hold_ms", ColumnType::Int8),
        ("error", ColumnType::Text),
    ]);
    for job in &list {
        for s in &job.steps {
            rs.row(vec![
                job.id.into(),
                job.state.as_str().into(),
                job.target.clone().into(),
                i64::from(s.no).into(),
                i64::from(s.source).into(),
                i64::from(s.dest).into(),
                s.state.clone().into(),
                s.rows_estimated.into(),
                s.rows_copied.into(),
                s.lag_bytes.into(),
                s.rows_deleted.into(),
                i64::from(job.cutover_attempts).into(),
                job.longest_hold_ms.into(),
                stats.longest_ms.into(),
                job.error.clone().into(),
            ]);
        }
    }
    Ok(rs)
}

/// REBALANCE: plans from the current map and records the job. An unknown schema is 3F000 (as
/// Postgres says it); every other refusal 55000.
pub async fn rebalance(proxy: &Proxy, target: &Target) -> Result<i64, ErrorFields> {
    super::cli::create_job(&proxy.config, target)
        .await
        .map_err(|e| {
            let code = match e.downcast_ref::<RebalanceError>() {
                Some(RebalanceError::UnknownSchema(_)) => "3F000",
                _ => "55000",
            };
            fields(format!("{e:#}"), code)
        })
}

/// CANCEL JOB: asks the job's runner to roll it back.
pub async fn cancel(proxy: &Proxy, id: i64) -> Result<String, ErrorFields> {
    let client = super::shards::catalog(&proxy.config)
        .await
        .map_err(rebalance_fields)?;
    jobs::request_cancel(&client, id)
        .await
        .map_err(rebalance_fields)
}
