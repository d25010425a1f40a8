//! The session's read routing and read-your-writes position (see `frontend::read_routing` for
//! the decisions made with it).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::causal_token::CausalToken;
use crate::backend::topology::ServerId;

/// Per-session read-your-writes state.
#[derive(Default)]
pub struct ReadState {
    /// Where each shard's part of the current request reads (absent: the primary).
    pub servers: HashMap<u32, ServerId>,
    /// When the session last wrote to each shard (`pin` mode).
    pub last_write: HashMap<u32, Instant>,
    /// How far the session has written (`lsn` mode), reported to the client.
    pub token: CausalToken,
    /// Shards written by requests since the token was last brought up to date.
    pub pending: BTreeSet<u32>,
    /// Round-robin position among a shard's eligible replicas.
    pub next: usize,
}
