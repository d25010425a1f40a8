//! Ids for narrow (smallint, integer) key columns: the catalog hands each proxy blocks of
//! consecutive ids per table, so ids never collide across proxies or restarts and stay dense
//! enough for 32 bits. This is the proxy's local stock of those blocks, per table.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// One block `[start, end)` the catalog gave this proxy, partly used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    next: i64,
    end: i64,
}

/// Unused ids of every table's blocks, shared by the proxy's sessions.
#[derive(Debug, Default)]
pub struct BlockStock {
    tables: Mutex<HashMap<String, VecDeque<Block>>>,
}

impl BlockStock {
    /// Takes `n` ids of `table` in ascending order, or nothing when fewer are in stock (the
    /// caller then asks the catalog for a block and calls `add`).
    pub fn take(&self, table: &str, n: usize) -> Option<Vec<i64>> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let blocks = tables.get_mut(table)?;
        let available: i64 = blocks.iter().map(|b| b.end - b.next).sum();
        if available < i64::try_from(n).ok()? {
            return None;
        }
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let Some(block) = blocks.front_mut() else {
                break;
            };
            while block.next < block.end && ids.len() < n {
                ids.push(block.next);
                block.next += 1;
            }
            if block.next == block.end {
                blocks.pop_front();
            }
        }
        Some(ids)
    }

    /// Adds the block `[start, start + len)` of `table`.
    pub fn add(&self, table: &str, start: i64, len: i64) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .entry(table.to_string())
            .or_default()
            .push_back(Block {
                next: start,
                end: start.saturating_add(len),
            });
    }

    /// Forgets every table's stock: after DDL the table may be new, with a new catalog counter.
    pub fn clear(&self) {
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_consecutive_ids_across_blocks() {
        let stock = BlockStock::default();
        assert_eq!(stock.take("t", 1), None);
        stock.add("t", 1, 3);
        stock.add("t", 101, 2);
        assert_eq!(stock.take("t", 2), Some(vec![1, 2]));
        assert_eq!(stock.take("t", 4), None, "only three left");
        assert_eq!(stock.take("t", 3), Some(vec![3, 101, 102]));
        assert_eq!(stock.take("t", 1), None);
        assert_eq!(stock.take("other", 0), None);
    }

    #[test]
    fn tables_have_their_own_stock() {
        let stock = BlockStock::default();
        stock.add("a", 1, 10);
        stock.add("b", 500, 10);
        assert_eq!(stock.take("b", 2), Some(vec![500, 501]));
        assert_eq!(stock.take("a", 1), Some(vec![1]));
        stock.clear();
        assert_eq!(stock.take("a", 1), None);
    }
}
