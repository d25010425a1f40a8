//! Collision-free 64-bit ids for new shard keys.
//!
//! Layout of an id (always positive):
//! `(milliseconds since 2024-01-01 UTC) << 22 | node_id << 12 | sequence`, with a 10-bit node id
//! (from the catalog, unique among live proxies) and a 12-bit per-millisecond sequence. 41 bits of
//! milliseconds last until about 2093.
//!
//! The generator keeps one logical clock `ms << 12 | seq` and hands out `max(now << 12, last + 1)`:
//! a sequence overflow borrows the next millisecond and a clock that goes backwards is ignored, so
//! one generator never repeats a `(ms, seq)` pair and its ids strictly increase.

pub mod blocks;
pub mod key_column;
pub mod sequence_ranges;
pub mod sequence_values;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// Largest node id plus one.
pub const MAX_NODES: u16 = 1 << NODE_BITS;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const MS_BITS: u32 = 63 - NODE_BITS - SEQ_BITS;

/// Why a generator could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("node id {0} is out of range: it must be below {MAX_NODES}")]
    NodeIdOutOfRange(u16),
}

/// Hands out unique ids for one proxy node; shared by all sessions (`&self`, lock-free).
#[derive(Debug)]
pub struct IdGenerator {
    node_id: u16,
    /// The last logical time handed out: `ms << 12 | seq`.
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator for `node_id` (below 1024), as allocated by the catalog.
    pub fn new(node_id: u16) -> Result<IdGenerator, IdError> {
        if node_id >= MAX_NODES {
            return Err(IdError::NodeIdOutOfRange(node_id));
        }
        Ok(IdGenerator {
            node_id,
            last: AtomicU64::new(0),
        })
    }

    /// The node id baked into every id of this generator.
    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    /// A new id, strictly greater than every id this generator returned before.
    pub fn next_id(&self) -> i64 {
        self.next_at(now_ms())
    }

    /// `next_id` with the clock given, so tests can move time backwards.
    fn next_at(&self, now_ms: u64) -> i64 {
        self.compose(self.next_tick(now_ms))
    }

    /// The next logical time `ms << 12 | seq`, strictly after every one handed out before.
    fn next_tick(&self, now_ms: u64) -> u64 {
        let now_tick = now_ms.min((1 << MS_BITS) - 1) << SEQ_BITS;
        let mut current = self.last.load(Ordering::Relaxed);
        loop {
            let next = now_tick.max(current + 1);
            match self.last.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// A new UUIDv7 (RFC 9562) for a uuid shard key: 48 bits of Unix milliseconds, the
    /// 12-bit sequence of the same logical clock as [`IdGenerator::next_id`] in `rand_a` (so one
    /// generator's uuids strictly increase), and this node's id in the top 10 bits of `rand_b`
    /// above 52 random bits (so two live proxies never make the same one).
    pub fn next_uuid_v7(&self) -> [u8; 16] {
        self.uuid_at(now_ms(), rand::random::<u64>())
    }

    fn uuid_at(&self, now_ms: u64, random: u64) -> [u8; 16] {
        let tick = self.next_tick(now_ms);
        let unix_ms = ((tick >> SEQ_BITS) + EPOCH_MS) & ((1 << 48) - 1);
        let seq = tick & SEQ_MASK;
        let high = (unix_ms << 16) | (0x7 << 12) | seq;
        let low = (0b10 << 62) | (u64::from(self.node_id) << 52) | (random & ((1 << 52) - 1));
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&high.to_be_bytes());
        out[8..].copy_from_slice(&low.to_be_bytes());
        out
    }

    fn compose(&self, tick: u64) -> i64 {
        let ms = (tick >> SEQ_BITS) & ((1 << MS_BITS) - 1);
        let seq = tick & SEQ_MASK;
        ((ms << (NODE_BITS + SEQ_BITS)) | (u64::from(self.node_id) << SEQ_BITS) | seq) as i64
    }
}

/// A random version-4 UUID (RFC 9562), what Postgres's `gen_random_uuid()` returns: 122 random
/// bits, the version nibble 4 and the variant bits `10`.
pub fn random_uuid_v4() -> [u8; 16] {
    let mut out = rand::random::<[u8; 16]>();
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// The node id that generated `id`.
pub fn node_id_of(id: i64) -> u16 {
    ((id as u64 >> SEQ_BITS) & u64::from(MAX_NODES - 1)) as u16
}

/// The (logical) Unix time in milliseconds at which `id` was generated.
pub fn timestamp_ms_of(id: i64) -> u64 {
    (id as u64 >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS
}

/// Milliseconds since the id epoch; 0 if the wall clock is before 2024.
fn now_ms() -> u64 {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    unix_ms.saturating_sub(EPOCH_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuid_v4_has_its_version_and_variant() {
        let (a, b) = (random_uuid_v4(), random_uuid_v4());
        assert_ne!(a, b);
        for u in [a, b] {
            assert_eq!((u[6] >> 4, u[8] >> 6), (4, 0b10));
        }
    }
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn uuids_are_v7_ordered_and_carry_the_node() {
        let gen = IdGenerator::new(1023).unwrap();
        let t = 5_000;
        let a = gen.uuid_at(t, u64::MAX);
        let b = gen.uuid_at(t, 0);
        // A clock going backwards still gives a later uuid.
        let c = gen.uuid_at(t - 1_000, 0);
        assert!(a < b && b < c, "{a:?} {b:?} {c:?}");
        for u in [a, b, c] {
            assert_eq!(u[6] >> 4, 7, "version 7");
            assert_eq!(u[8] >> 6, 0b10, "RFC variant");
            let ms = u64::from_be_bytes([0, 0, u[0], u[1], u[2], u[3], u[4], u[5]]);
            assert_eq!(ms, EPOCH_MS + 5_000);
            let node = (u16::from(u[8] & 0x3f) << 4) | u16::from(u[9] >> 4);
            assert_eq!(node, 1023);
        }
        let other = IdGenerator::new(3).unwrap().uuid_at(t, u64::MAX);
        assert_ne!(other, a, "another node, same time and randomness");
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(gen.next_uuid_v7()));
        }
    }

    #[test]
    fn ids_from_many_threads_are_unique_and_positive() {
        let gen = Arc::new(IdGenerator::new(7).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let gen = gen.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::with_capacity(12_500);
                    let mut last = 0;
                    for _ in 0..12_500 {
                        let id = gen.next_id();
                        assert!(id > last, "ids of one thread must increase");
                        last = id;
                        ids.push(id);
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(id > 0);
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 100_000);
    }

    #[test]
    fn two_nodes_never_collide_and_node_is_recoverable() {
        let a = IdGenerator::new(0).unwrap();
        let b = IdGenerator::new(1023).unwrap();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let (x, y) = (a.next_id(), b.next_id());
            assert_eq!(node_id_of(x), 0);
            assert_eq!(node_id_of(y), 1023);
            assert!(seen.insert(x) && seen.insert(y));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ts = timestamp_ms_of(a.next_id());
        // Logical time may run ahead of the clock a little after sequence overflows.
        assert!(ts + 1000 > now && ts < now + 10_000, "{ts} vs {now}");
    }

    #[test]
    fn clock_going_backwards_never_reuses_a_pair() {
        let g = IdGenerator::new(3).unwrap();
        let first = g.next_at(1_000);
        let second = g.next_at(500); // clock went back
        assert!(second > first);
        assert_eq!(second >> 22, 1_000);
        assert_eq!(second & 0xfff, 1);
        // The sequence overflows into the next millisecond instead of wrapping.
        let mut last = second;
        for _ in 0..5_000 {
            let id = g.next_at(1_000);
            assert!(id > last);
            last = id;
        }
        assert_eq!(last >> 22, 1_001);
        // Once the clock catches up, ids follow it again.
        assert_eq!(g.next_at(2_000) >> 22, 2_000);
    }

    #[test]
    fn clock_before_the_epoch_still_gives_positive_ids() {
        let g = IdGenerator::new(0).unwrap();
        assert!(g.next_at(0) > 0);
        assert!(g.next_at(0) > 1);
    }

    #[test]
    fn node_id_must_fit_ten_bits() {
        assert_eq!(
            IdGenerator::new(1024).unwrap_err(),
            IdError::NodeIdOutOfRange(1024)
        );
        assert!(IdGenerator::new(1023).is_ok());
    }
}
