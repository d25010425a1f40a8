//! A bounded LRU of statement facts keyed by SQL text (normalized text for the simple protocol,
//! the exact text for prepared statements), so the same statement shape is never parsed twice.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::router::facts::StatementFacts;

/// Shared, bounded cache of route facts.
pub struct RouteCache {
    entries: Mutex<LruCache<String, Arc<[StatementFacts]>, crate::fast_hash::FastState>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl RouteCache {
    /// A cache holding at most `capacity` statements (at least one).
    pub fn new(capacity: usize) -> RouteCache {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        RouteCache {
            entries: Mutex::new(LruCache::with_hasher(cap, Default::default())),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached facts for `key`, counting a hit or a miss.
    pub fn get(&self, key: &str) -> Option<Arc<[StatementFacts]>> {
        let found = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores facts for `key`, evicting the least recently used entry when full.
    pub fn put(&self, key: String, facts: Arc<[StatementFacts]>) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, facts);
    }

    /// The cached facts for `key`, computing and storing them on a miss.
    pub fn get_or_insert_with(
        &self,
        key: &str,
        compute: impl FnOnce() -> Vec<StatementFacts>,
    ) -> Arc<[StatementFacts]> {
        if let Some(f) = self.get(key) {
            return f;
        }
        let facts: Arc<[StatementFacts]> = compute().into();
        self.put(key.to_string(), facts.clone());
        facts
    }

    /// Forgets every entry (what the facts were derived from changed).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Number of cached statements.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::facts::StatementKind;

    #[test]
    fn bounded_with_counters() {
        let c = RouteCache::new(2);
        let f = |k| -> Arc<[StatementFacts]> { vec![StatementFacts::plain(k)].into() };
        assert!(c.get("a").is_none());
        c.put("a".into(), f(StatementKind::Select));
        c.put("b".into(), f(StatementKind::Insert));
        assert!(c.get("a").is_some());
        c.put("c".into(), f(StatementKind::Update)); // evicts b
        assert!(c.get("b").is_none());
        assert_eq!(c.len(), 2);
        let got = c.get_or_insert_with("a", || panic!("cached"));
        assert_eq!(got[0].kind, StatementKind::Select);
        assert_eq!(c.stats(), (2, 2));
    }
}
