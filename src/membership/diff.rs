//! What a running proxy must do when the topology changes (pure): which shards appear, which
//! leave, which keep their id but change servers, and which servers' pools close.

use std::collections::BTreeMap;

use crate::backend::topology::ServerId;
use crate::config::ShardConfig;

/// The work between two topologies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopologyDiff {
    /// New shards: pools, topology entries and monitors to start.
    pub added: Vec<u32>,
    /// Shards that left: everything of theirs stops.
    pub removed: Vec<u32>,
    /// Shards whose server list changed: their monitor restarts over the new list.
    pub changed: Vec<u32>,
    /// Servers of kept shards whose pools close: gone, or another address at that index.
    pub closed: Vec<ServerId>,
    /// Servers of kept shards that get pools: new, or another address at that index.
    pub opened: Vec<ServerId>,
}

impl TopologyDiff {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == TopologyDiff::default()
    }
}

/// Every server's address by id, primary at index 0.
fn servers(shard: &ShardConfig) -> Vec<String> {
    std::iter::once(shard.address())
        .chain(shard.replicas.iter().map(|r| r.address()))
        .collect()
}

/// The work to go from `old` to `new`.
pub fn diff(old: &[ShardConfig], new: &[ShardConfig]) -> TopologyDiff {
    let old: BTreeMap<u32, &ShardConfig> = old.iter().map(|s| (s.id, s)).collect();
    let new: BTreeMap<u32, &ShardConfig> = new.iter().map(|s| (s.id, s)).collect();
    let mut d = TopologyDiff::default();
    for (id, shard) in &new {
        let Some(before) = old.get(id) else {
            d.added.push(*id);
            continue;
        };
        let (a, b) = (servers(before), servers(shard));
        if a == b && before.database == shard.database {
            continue;
        }
        d.changed.push(*id);
        let moved_all = before.database != shard.database;
        for index in 0..a.len().max(b.len()) {
            let server = ServerId {
                shard: *id,
                index: index as u16,
            };
            let (x, y) = (a.get(index), b.get(index));
            if x == y && !moved_all {
                continue;
            }
            if x.is_some() {
                d.closed.push(server);
            }
            if y.is_some() {
                d.opened.push(server);
            }
        }
    }
    d.removed = old
        .keys()
        .filter(|id| !new.contains_key(id))
        .copied()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::catalog::test_shard as shard;

    fn s(shard: u32, index: u16) -> ServerId {
        ServerId { shard, index }
    }

    #[test]
    fn the_pools_to_open_and_close() {
        let base = vec![shard(0, 7000, &[7100]), shard(1, 7001, &[7101, 7201])];
        let mut other_db = shard(0, 7000, &[7100]);
        other_db.database = "other".into();
        let cases: Vec<(&str, Vec<ShardConfig>, TopologyDiff)> = vec![
            ("nothing", base.clone(), TopologyDiff::default()),
            (
                "a shard added",
                vec![base[0].clone(), base[1].clone(), shard(10, 7010, &[7110])],
                TopologyDiff {
                    added: vec![10],
                    ..Default::default()
                },
            ),
            (
                "a shard dropped",
                vec![base[1].clone()],
                TopologyDiff {
                    removed: vec![0],
                    ..Default::default()
                },
            ),
            (
                "a replica added",
                vec![shard(0, 7000, &[7100, 7300]), base[1].clone()],
                TopologyDiff {
                    changed: vec![0],
                    opened: vec![s(0, 2)],
                    ..Default::default()
                },
            ),
            (
                "the first of two replicas dropped: the second moves up",
                vec![base[0].clone(), shard(1, 7001, &[7201])],
                TopologyDiff {
                    changed: vec![1],
                    closed: vec![s(1, 1), s(1, 2)],
                    opened: vec![s(1, 1)],
                    ..Default::default()
                },
            ),
            (
                "another database: every server reopens",
                vec![other_db, base[1].clone()],
                TopologyDiff {
                    changed: vec![0],
                    closed: vec![s(0, 0), s(0, 1)],
                    opened: vec![s(0, 0), s(0, 1)],
                    ..Default::default()
                },
            ),
        ];
        for (name, new, want) in cases {
            assert_eq!(diff(&base, &new), want, "{name}");
        }
        assert!(diff(&base, &base).is_empty());
    }
}
