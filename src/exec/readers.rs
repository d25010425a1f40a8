//! The per-shard reader tasks of a request that runs on several shards end with the request: if
//! the session stops waiting (the query timeout gave up on a server that does not answer), the
//! readers are aborted and their connections, left mid-exchange, are closed instead of holding
//! pool slots until the server answers.

use tokio::task::{AbortHandle, JoinHandle};

/// Aborts the tasks it watches when dropped; tasks that already finished are unaffected.
#[derive(Default)]
pub struct AbortOnDrop(Vec<AbortHandle>);

impl AbortOnDrop {
    /// Watches `task` too.
    pub fn watch<T>(&mut self, task: &JoinHandle<T>) {
        self.0.push(task.abort_handle());
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_guard_aborts_a_pending_task() {
        let task = tokio::spawn(std::future::pending::<()>());
        let mut guard = AbortOnDrop::default();
        guard.watch(&task);
        drop(guard);
        let err = task.await.expect_err("the task was aborted");
        assert!(err.is_cancelled());
    }

    #[tokio::test]
    async fn a_finished_task_keeps_its_result() {
        let task = tokio::spawn(async { 7 });
        let mut guard = AbortOnDrop::default();
        guard.watch(&task);
        let value = task.await.expect("the task finished");
        drop(guard);
        assert_eq!(value, 7);
    }
}
