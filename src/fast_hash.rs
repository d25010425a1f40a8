//! Hash maps keyed by what the data path looks up on every message (statement and portal names,
//! SQL texts, pool keys): std's SipHash cost more than the lookups around it. foldhash is seeded
//! per process, so keys a client picks cannot be aimed at one bucket ahead of time.

/// The hasher builder of the data path's maps.
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;

/// A `HashSet` with [`FastState`].
pub type FastSet<K> = std::collections::HashSet<K, FastState>;
