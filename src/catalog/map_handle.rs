//! The shard map every session routes with, swapped atomically when a newer version arrives.

use std::sync::{Arc, RwLock};

use crate::router::ShardMap;

/// Called with every map installed (see [`MapHandle::on_install`]).
type Observer = Arc<dyn Fn(&ShardMap) + Send + Sync>;

/// A cheap, cloneable handle on the current shard map.
#[derive(Clone)]
pub struct MapHandle {
    map: Arc<RwLock<Arc<ShardMap>>>,
    observers: Arc<RwLock<Vec<Observer>>>,
}

impl MapHandle {
    pub fn new(map: ShardMap) -> MapHandle {
        MapHandle {
            map: Arc::new(RwLock::new(Arc::new(map))),
            observers: Default::default(),
        }
    }

    /// The map to route with now.
    pub fn current(&self) -> Arc<ShardMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls `observe` with the current map now and with every newer one when it is installed,
    /// before [`MapHandle::install`] returns: a hold released on a new map lets its statements
    /// go only after the router knows that map's tenant placements.
    pub fn on_install(&self, observe: impl Fn(&ShardMap) + Send + Sync + 'static) {
        let observe: Observer = Arc::new(observe);
        observe(&self.current());
        self.observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observe);
    }

    /// Installs `map` if it is newer than the current one (versions only grow); true if it was.
    pub fn install(&self, map: ShardMap) -> bool {
        {
            let mut current = self.map.write().unwrap_or_else(|p| p.into_inner());
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
        }
        let observers = self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // The map current now, not the one installed: of two installs racing, the older one's
        // observers must not have the last word.
        let map = self.current();
        for observe in observers {
            observe(&map);
        }
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

    #[test]
    fn observers_see_the_current_map_and_every_newer_one() {
        let handle = MapHandle::new(ShardMap::uniform(1, Strategy::Hash, &[0]));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        handle.on_install(move |m| s.lock().unwrap().push(m.version));
        handle.install(ShardMap::uniform(1, Strategy::Hash, &[0]));
        handle.install(ShardMap::uniform(4, Strategy::Hash, &[0]));
        assert_eq!(*seen.lock().unwrap(), vec![1, 4]);
    }
}
