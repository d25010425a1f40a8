//! The shard map every session routes with, swapped atomically when a newer version arrives.

use std::sync::{Arc, RwLock};

use crate::router::ShardMap;

/// A cheap, cloneable handle on the current shard map.
#[derive(Clone)]
pub struct MapHandle(Arc<RwLock<Arc<ShardMap>>>);

impl MapHandle {
    pub fn new(map: ShardMap) -> MapHandle {
        MapHandle(Arc::new(RwLock::new(Arc::new(map))))
    }

    /// The map to route with now.
    pub fn current(&self) -> Arc<ShardMap> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `map` if it is newer than the current one (versions only grow); true if it was.
    pub fn install(&self, map: ShardMap) -> bool {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.version <= current.version {
            return false;
        }
        tracing::info!(
            from = current.version,
            to = map.version,
            strategy = ?map.strategy,
            "shard map version changed"
        );
        *current = Arc::new(map);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Strategy;

    #[test]
    fn only_newer_versions_are_installed() {
        let handle = MapHandle::new(ShardMap::uniform(2, Strategy::Hash, &[0, 1]));
        assert!(!handle.install(ShardMap::uniform(1, Strategy::Range, &[0])));
        assert!(!handle.install(ShardMap::uniform(2, Strategy::Range, &[0])));
        assert_eq!(handle.current().strategy, Strategy::Hash);
        assert!(handle.install(ShardMap::uniform(3, Strategy::Range, &[0])));
        assert_eq!(handle.current().version, 3);
    }
}
