//! The rebalancing runner's own thread. A job's work in the proxy — logins, the initial copy's
//! streams, decoding change watches, hashing every moving row for the comparison — ran on the
//! runtime that serves clients, where a long stretch of it held a worker thread that client
//! sessions were queued on. On a thread of its own the operating system shares the CPU between
//! it and the sessions' threads instead.
//!
//! The thread keeps the proxy's priority: a lower one (tried: `nice` 10) starved the cut-over
//! hold's round trips on a saturated machine and made the hold, which clients wait on, longer.

use std::future::Future;

/// Runs `work()` on a new thread named `name` with a runtime of its own. The returned task (on
/// the caller's runtime) stands for it: aborting or dropping that task stops the work.
pub fn spawn<F, Fut>(name: &str, work: F) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = work() => {}
                }
            });
        })?;
    Ok(tokio::spawn(async move {
        // Held until this task is aborted or dropped; then the thread's work ends.
        let _stop = stop;
        std::future::pending::<()>().await
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_on_its_own_thread_and_stops_with_its_task() {
        /// Tells the test when the work's future is dropped.
        struct Ended(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Ended {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let (seen, saw) = tokio::sync::oneshot::channel();
        let (ended, end) = tokio::sync::oneshot::channel();
        let task = spawn("pgshard-test-bg", move || async move {
            let _ended = Ended(Some(ended));
            let _ = seen.send(std::thread::current().name().map(str::to_string));
            std::future::pending::<()>().await
        })
        .unwrap();
        assert_eq!(saw.await.unwrap().as_deref(), Some("pgshard-test-bg"));
        task.abort();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), end).await;
        assert!(matches!(stopped, Ok(Ok(()))), "the work did not stop");
    }
}
