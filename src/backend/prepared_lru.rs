//! The server-side prepared statements of one server connection, least recently used first, with
//! a cap (`pool.max_prepared_statements`): drivers that prepare every statement must not grow a
//! server's memory without bound. Pure bookkeeping; the exchange sends the Close messages.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lru::LruCache;

/// Names prepared on one connection, in order of last use, and how many it may keep.
pub struct PreparedNames {
    /// As bytes: a statement's use is marked with its name as it stands in the Bind, not
    /// checked for UTF-8 again on every exchange (every name here came in as a `String`).
    names: LruCache<Vec<u8>, (), crate::fast_hash::FastState>,
    /// 0: unlimited.
    cap: usize,
    /// The count summed over every connection of the pool, for `SHOW POOLS`.
    gauge: Arc<AtomicUsize>,
}

impl Default for PreparedNames {
    fn default() -> Self {
        PreparedNames::new(0, Arc::new(AtomicUsize::new(0)))
    }
}

impl PreparedNames {
    /// An empty set keeping at most `cap` names (0: no limit), counted into `gauge`.
    pub fn new(cap: usize, gauge: Arc<AtomicUsize>) -> PreparedNames {
        PreparedNames {
            names: LruCache::unbounded_with_hasher(Default::default()),
            cap,
            gauge,
        }
    }

    /// True when `name` exists on the connection (its order of use unchanged).
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name.as_bytes())
    }

    /// How many statements the connection holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when the connection holds none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Records a statement the server just prepared, as the most recently used.
    pub fn insert(&mut self, name: String) {
        if self.names.put(name.into_bytes(), ()).is_none() {
            self.gauge.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets a statement the server just closed.
    pub fn remove(&mut self, name: &str) {
        if self.names.pop(name.as_bytes()).is_some() {
            self.gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets every statement (the server discarded them all).
    pub fn clear(&mut self) {
        self.gauge.fetch_sub(self.names.len(), Ordering::Relaxed);
        self.names.clear();
    }

    /// Marks `name` (its bytes, as a Bind or Describe names it) as just used.
    pub fn touch(&mut self, name: &[u8]) {
        // A connection running the same statement again (the usual case) needs no reordering:
        // one comparison instead of a hash lookup.
        if self
            .names
            .peek_mru()
            .is_some_and(|(mru, ())| mru.as_slice() == name)
        {
            return;
        }
        self.names.promote(name);
    }

    /// The statements to close before `adding` new ones are prepared, least recently used
    /// first, never one in `keep` (a request about to use it). When `keep` alone exceeds the cap,
    /// the connection goes over it for that request rather than break it.
    pub fn victims(&self, adding: usize, keep: &HashSet<String>) -> Vec<String> {
        if self.cap == 0 {
            return Vec::new();
        }
        let excess = (self.names.len() + adding).saturating_sub(self.cap);
        self.names
            .iter()
            .rev()
            .map(|(name, ())| String::from_utf8_lossy(name))
            .filter(|name| !keep.contains(name.as_ref()))
            .take(excess)
            .map(|name| name.into_owned())
            .collect()
    }
}

impl Drop for PreparedNames {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.names.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cap: usize, names: &[&str]) -> PreparedNames {
        let mut p = PreparedNames::new(cap, Arc::new(AtomicUsize::new(0)));
        for n in names {
            p.insert(n.to_string());
        }
        p
    }

    #[test]
    fn victims_are_least_recently_used_and_spare_what_the_request_uses() {
        // (cap, prepared in order, touched after, adding, keep, victims)
        type Case = (
            usize,
            &'static [&'static str],
            &'static [&'static str],
            usize,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (3, &["a", "b"], &[], 1, &[], &[]),
            (3, &["a", "b", "c"], &[], 1, &[], &["a"]),
            (3, &["a", "b", "c"], &["a"], 1, &[], &["b"]),
            (3, &["a", "b", "c"], &[], 2, &["a"], &["b", "c"]),
            (3, &["a", "b", "c"], &[], 1, &["a", "b", "c"], &[]),
            (2, &["a", "b", "c"], &[], 1, &[], &["a", "b"]),
            (0, &["a", "b", "c"], &[], 10, &[], &[]),
            (1, &[], &[], 3, &[], &[]),
        ];
        for (cap, prepared, touched, adding, keep, want) in cases {
            let mut p = set(*cap, prepared);
            for t in *touched {
                p.touch(t.as_bytes());
            }
            let keep: HashSet<String> = keep.iter().map(|s| s.to_string()).collect();
            let got = p.victims(*adding, &keep);
            assert_eq!(got, *want, "cap {cap}, {prepared:?} touched {touched:?}");
        }
    }

    #[test]
    fn the_gauge_counts_names_of_live_sets() {
        let gauge = Arc::new(AtomicUsize::new(0));
        let mut a = PreparedNames::new(2, gauge.clone());
        a.insert("x".into());
        a.insert("x".into());
        a.insert("y".into());
        let mut b = PreparedNames::new(2, gauge.clone());
        b.insert("x".into());
        assert_eq!(gauge.load(Ordering::Relaxed), 3);
        a.remove("x");
        a.remove("nothing");
        assert_eq!(gauge.load(Ordering::Relaxed), 2);
        assert!(!a.contains("x") && a.contains("y") && a.len() == 1);
        drop(b);
        assert_eq!(gauge.load(Ordering::Relaxed), 1);
    }
}
