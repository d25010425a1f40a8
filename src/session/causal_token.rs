//! The causal token: how far a session has written on each shard, so its reads go only to servers
//! that have replayed that far. The client sees it as ParameterStatus `pgshard.causal_token` and
//! can hand it to another connection with `SET pgshard.causal_token = '…'`.
//!
//! Text form: `m<map version>` then, per shard, `;<shard>:<timeline>:<lsn>`, e.g.
//! `m3;0:1:0/3000060;4:2:0/1A2B3C0`. The map version and timelines let a token from before a range
//! move or a failover be recognised: such an entry sends reads to the primary.

use std::collections::BTreeMap;

use crate::backend::topology::Lsn;

/// One shard's position in a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub timeline: u32,
    pub lsn: Lsn,
}

/// A token entry written under another shard map version or timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleEntry;

/// Positions per shard, under one shard map version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalToken {
    pub map_version: i64,
    pub shards: BTreeMap<u32, Position>,
}

/// Why a token text was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid pgshard.causal_token \"{text}\": {reason}")]
pub struct TokenError {
    pub text: String,
    pub reason: &'static str,
}

impl CausalToken {
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Reads the text form.
    pub fn parse(text: &str) -> Result<CausalToken, TokenError> {
        let err = |reason| TokenError {
            text: text.to_string(),
            reason,
        };
        let mut parts = text.trim().split(';');
        let head = parts.next().unwrap_or_default();
        let map_version = head
            .strip_prefix('m')
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| err("it must start with m<map version>"))?;
        let mut shards = BTreeMap::new();
        for part in parts.filter(|p| !p.is_empty()) {
            let mut fields = part.splitn(3, ':');
            let (Some(shard), Some(timeline), Some(lsn)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(err("each shard entry is <shard>:<timeline>:<lsn>"));
            };
            let shard = shard
                .parse()
                .map_err(|_| err("a shard id is not a number"))?;
            let timeline = timeline
                .parse()
                .map_err(|_| err("a timeline is not a number"))?;
            let lsn =
                Lsn::parse(lsn).ok_or_else(|| err("a position is not an LSN like 0/16B3740"))?;
            shards.insert(shard, Position { timeline, lsn });
        }
        Ok(CausalToken {
            map_version,
            shards,
        })
    }

    /// Adds what `other` knows: per shard the later position (a newer timeline wins).
    pub fn merge(&mut self, other: &CausalToken) {
        self.map_version = self.map_version.max(other.map_version);
        for (shard, pos) in &other.shards {
            self.advance(*shard, *pos);
        }
    }

    /// Records a write on `shard` that is durable at `pos`.
    pub fn advance(&mut self, shard: u32, pos: Position) {
        let entry = self.shards.entry(shard).or_insert(pos);
        if (pos.timeline, pos.lsn) > (entry.timeline, entry.lsn) {
            *entry = pos;
        }
    }

    /// What a read of `shard` must wait for on a replica: `None` when the token says nothing
    /// about the shard. `Err(StaleEntry)` when the entry cannot be compared with the shard's servers any
    /// more (another map version or timeline): that read goes to the primary.
    pub fn requirement(
        &self,
        shard: u32,
        map_version: i64,
        timeline: u32,
    ) -> Result<Option<Lsn>, StaleEntry> {
        let Some(pos) = self.shards.get(&shard) else {
            return Ok(None);
        };
        if self.map_version != map_version || pos.timeline != timeline {
            return Err(StaleEntry);
        }
        Ok(Some(pos.lsn))
    }
}

impl std::fmt::Display for CausalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m{}", self.map_version)?;
        for (shard, pos) in &self.shards {
            write!(f, ";{shard}:{}:{}", pos.timeline, pos.lsn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(timeline: u32, lsn: u64) -> Position {
        Position {
            timeline,
            lsn: Lsn(lsn),
        }
    }

    #[test]
    fn text_round_trips() {
        let mut t = CausalToken {
            map_version: 3,
            ..Default::default()
        };
        t.advance(4, pos(2, 0x1A2B3C0));
        t.advance(0, pos(1, 0x3000060));
        let text = t.to_string();
        assert_eq!(text, "m3;0:1:0/3000060;4:2:0/1A2B3C0");
        assert_eq!(CausalToken::parse(&text).unwrap(), t);
        assert_eq!(CausalToken::parse("m7").unwrap().map_version, 7);
    }

    #[test]
    fn bad_text_is_refused_with_a_reason() {
        for bad in ["", "3;0:1:0/1", "m3;0:1", "m3;x:1:0/1", "m3;0:1:zz", "mx"] {
            assert!(CausalToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merging_keeps_the_later_position_per_shard() {
        let mut a = CausalToken::parse("m3;0:1:0/100;1:1:0/500").unwrap();
        let b = CausalToken::parse("m3;0:1:0/200;1:1:0/400;2:2:0/1").unwrap();
        a.merge(&b);
        assert_eq!(a.to_string(), "m3;0:1:0/200;1:1:0/500;2:2:0/1");
        // A newer timeline wins even at a lower position.
        a.advance(1, pos(2, 0x10));
        assert_eq!(a.shards[&1], pos(2, 0x10));
    }

    #[test]
    fn entries_from_another_map_or_timeline_send_reads_to_the_primary() {
        let t = CausalToken::parse("m3;0:1:0/100").unwrap();
        assert_eq!(t.requirement(0, 3, 1), Ok(Some(Lsn(0x100))));
        assert_eq!(t.requirement(5, 3, 1), Ok(None));
        assert_eq!(t.requirement(0, 4, 1), Err(StaleEntry));
        assert_eq!(t.requirement(0, 3, 2), Err(StaleEntry));
    }
}
