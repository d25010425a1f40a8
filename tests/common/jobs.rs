//! Rebalancing jobs as tests follow them: the newest one, its state, waiting for it to end.

use std::time::{Duration, Instant};

use pgshard::cluster::ClusterInfo;

use super::proxy;

/// The id of the job created last.
pub async fn newest_job(info: &ClusterInfo) -> i64 {
    proxy::catalog(info)
        .await
        .query_one("SELECT max(job_id) FROM rebalance_jobs", &[])
        .await
        .unwrap()
        .get(0)
}

pub async fn job_state(info: &ClusterInfo, id: i64) -> pgshard::rebalance::jobs::Job {
    let c = proxy::catalog(info).await;
    pgshard::rebalance::jobs::load(&c, id)
        .await
        .unwrap()
        .expect("the job exists")
}

/// Waits until job `id` has ended, checks that it is done, and returns it.
pub async fn wait_job_done(info: &ClusterInfo, id: i64) -> pgshard::rebalance::jobs::Job {
    let job = wait_job_end(info, id, Duration::from_secs(120)).await;
    assert_eq!(
        job.state,
        pgshard::rebalance::jobs::JobState::Done,
        "{:?} {:?}",
        job.error,
        job.steps
    );
    job
}

/// Waits until job `id` has ended and returns it.
pub async fn wait_job_end(
    info: &ClusterInfo,
    id: i64,
    limit: Duration,
) -> pgshard::rebalance::jobs::Job {
    let started = Instant::now();
    loop {
        let job = job_state(info, id).await;
        if job.state.ended() {
            return job;
        }
        assert!(
            started.elapsed() < limit,
            "job {id} did not finish: {:?} {:?} {:?}",
            job.state,
            job.error,
            job.steps
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
