//! The server connections a session holds, by shard: one or two at a time (a block spanning
//! shards holds more), looked up on every request. A short list, not a map: a B-tree node for
//! eleven connections was allocated and freed by every request of a back-to-back client.

use super::PooledConn;

/// Most slots kept allocated while no connection is held (an idle client's whole cost here).
const KEPT_SLOTS: usize = 2;

/// The held connections, one per shard, in shard order (as a map would iterate them).
pub struct HeldConns<C = PooledConn>(Vec<(u32, C)>);

impl<C> Default for HeldConns<C> {
    fn default() -> Self {
        HeldConns(Vec::new())
    }
}

impl<C> HeldConns<C> {
    fn position(&self, shard: u32) -> Option<usize> {
        self.0.iter().position(|(s, _)| *s == shard)
    }

    pub fn get(&self, shard: &u32) -> Option<&C> {
        self.0.iter().find(|(s, _)| s == shard).map(|(_, c)| c)
    }

    pub fn get_mut(&mut self, shard: &u32) -> Option<&mut C> {
        self.0.iter_mut().find(|(s, _)| s == shard).map(|(_, c)| c)
    }

    pub fn contains_key(&self, shard: &u32) -> bool {
        self.position(*shard).is_some()
    }

    /// Holds `conn` for `shard`, giving back the one it replaces.
    pub fn insert(&mut self, shard: u32, conn: C) -> Option<C> {
        match self.0.binary_search_by_key(&shard, |(s, _)| *s) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, conn)),
            Err(i) => {
                self.0.insert(i, (shard, conn));
                None
            }
        }
    }

    /// Lets go of `shard`'s connection; an emptied list larger than a client usually needs
    /// gives its room back.
    pub fn remove(&mut self, shard: &u32) -> Option<C> {
        let i = self.position(*shard)?;
        let (_, conn) = self.0.remove(i);
        if self.0.is_empty() && self.0.capacity() > KEPT_SLOTS {
            self.0 = Vec::new();
        }
        Some(conn)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(s, _)| s)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut C> {
        self.0.iter_mut().map(|(_, c)| c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &C)> {
        self.0.iter().map(|(s, c)| (s, c))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut C)> {
        self.0.iter_mut().map(|(s, c)| (&*s, c))
    }
}

impl<C> IntoIterator for HeldConns<C> {
    type Item = (u32, C);
    type IntoIter = std::vec::IntoIter<(u32, C)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_in_shard_order_and_one_per_shard() {
        let mut held: HeldConns<&str> = HeldConns::default();
        // (shard, connection inserted, what it replaced)
        let inserts = [
            (7, "a", None),
            (2, "b", None),
            (9, "c", None),
            (7, "d", Some("a")),
        ];
        for (shard, conn, replaced) in inserts {
            assert_eq!(held.insert(shard, conn), replaced, "shard {shard}");
        }
        assert_eq!(held.keys().copied().collect::<Vec<_>>(), [2, 7, 9]);
        assert_eq!(held.get(&7), Some(&"d"));
        assert!(held.contains_key(&9) && !held.contains_key(&3));
        if let Some(c) = held.get_mut(&2) {
            *c = "e";
        }
        assert_eq!(held.remove(&7), Some("d"));
        assert_eq!(held.remove(&7), None);
        let rest: Vec<(u32, &str)> = held.into_iter().collect();
        assert_eq!(rest, [(2, "e"), (9, "c")]);
    }

    #[test]
    fn an_emptied_list_keeps_little_room() {
        let mut held: HeldConns<u64> = HeldConns::default();
        for shard in 0..10 {
            held.insert(shard, u64::from(shard));
        }
        for shard in 0..10 {
            assert_eq!(held.remove(&shard), Some(u64::from(shard)));
        }
        assert!(held.is_empty());
        assert!(held.0.capacity() <= KEPT_SLOTS);
    }
}
