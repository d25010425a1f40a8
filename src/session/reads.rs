//! The session's read routing and read-your-writes position (see `frontend::read_routing` for
//! the decisions made with it).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::causal_token::CausalToken;
use crate::backend::topology::{Lsn, ServerId};

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
    /// Set before a request that commits a write on one shard (`lsn` mode): the position question
    /// rides behind it on the same connection. Taken by the run.
    pub commit_probe: bool,
    /// Positions read right behind a commit, not yet matched with the write they cover.
    pub probed: HashMap<u32, Lsn>,
    /// Per written shard, the latest position read right behind this request's commits.
    pub committed_at: HashMap<u32, Lsn>,
    /// Written shards with a commit this request that no position was read behind: the token
    /// needs the primary's position asked for separately.
    pub unprobed: BTreeSet<u32>,
    /// Shards whose position after a write could not be learned at all: their reads stay on
    /// the primary until a later write's position is known.
    pub unknown: BTreeSet<u32>,
}

impl ReadState {
    /// Records what the position question behind a commit on `shard` answered (`None`: no
    /// answer, or nothing committed).
    pub fn probed(&mut self, shard: u32, lsn: Option<Lsn>) {
        match lsn {
            Some(lsn) => {
                self.probed.insert(shard, lsn);
            }
            None => {
                self.probed.remove(&shard);
            }
        }
    }

    /// A commit on `shard` wrote: the token must cover it. The position read behind that commit
    /// (if any) covers it; else the shard's position must be asked for.
    pub fn wrote(&mut self, shard: u32) {
        self.pending.insert(shard);
        match self.probed.remove(&shard) {
            Some(lsn) if !self.unprobed.contains(&shard) => {
                let at = self.committed_at.entry(shard).or_insert(lsn);
                *at = (*at).max(lsn);
            }
            _ => {
                self.committed_at.remove(&shard);
                self.unprobed.insert(shard);
            }
        }
    }

    /// The position that covers every write this request committed on `shard`, if one was read
    /// behind each of them.
    pub fn known_position(&self, shard: u32) -> Option<Lsn> {
        if self.unprobed.contains(&shard) {
            return None;
        }
        self.committed_at.get(&shard).copied()
    }

    /// Forgets the positions of the request just published.
    pub fn clear_positions(&mut self) {
        self.probed.clear();
        self.committed_at.clear();
        self.unprobed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_covers_a_write_only_when_read_behind_every_commit() {
        // (commits on shard 0 in order: probe answer or none) → known position
        let cases: &[(&[Option<u64>], Option<u64>)] = &[
            (&[Some(0x10)], Some(0x10)),
            (&[None], None),
            (&[Some(0x10), Some(0x30)], Some(0x30)),
            (&[Some(0x10), None], None),
            (&[None, Some(0x30)], None),
        ];
        for (commits, known) in cases {
            let mut r = ReadState::default();
            for c in *commits {
                r.probed(0, c.map(Lsn));
                r.wrote(0);
            }
            assert_eq!(r.known_position(0), known.map(Lsn), "{commits:?}");
            assert!(r.pending.contains(&0));
            r.clear_positions();
            assert_eq!(r.known_position(0), None);
        }
    }

    #[test]
    fn a_probe_answer_without_a_write_is_not_used_later() {
        let mut r = ReadState::default();
        // A write whose request failed: answered, never matched.
        r.probed(0, Some(Lsn(0x10)));
        r.clear_positions();
        r.wrote(0);
        assert_eq!(r.known_position(0), None);
    }
}
