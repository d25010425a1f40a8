//! The session's side of `exec::collect`: runs on the connections this session holds.

use crate::backend::ServerConn;
use crate::exec::collect::{run_collected, Collected};
use crate::exec::exchange::Step;
use crate::frontend::session::Session;

impl Session {
    /// [`run_collected`] on the connections this session holds (call `ensure_conn` first).
    pub async fn run_collected(
        &mut self,
        shards: &[u32],
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Vec<Collected> {
        run_collected(&mut self.held, &self.cancel, shards, steps).await
    }
}
