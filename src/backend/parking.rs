//! Server connections parked with their client between transactions. A client running
//! transactions back to back would otherwise give its connection back to the pool after each one
//! and check one out again for the next (a semaphore, the pool's lock, a recycle check each way).
//! While nobody waits for that pool, the finished transaction's connection stays with the client
//! instead, in a slot the pool can still reach: a checkout that finds the pool full takes a
//! parked connection back from whichever client holds it, and so do drains, resizes and
//! closes. A parked connection counts as idle in the pool's status.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::time::Instant;

use deadpool::managed::{Object, Pool};

use super::pool::{PooledConn, ServerManager};
use super::topology::ServerId;

/// Slots a client keeps (one per pool it parked a connection of): more are dropped oldest first.
const MAX_SLOTS: usize = 8;

/// One client's parked connection of one pool.
pub struct ParkSlot {
    /// The pool it belongs to (its manager's address): an identity, never dereferenced.
    pool: usize,
    server: ServerId,
    conn: Mutex<Option<PooledConn>>,
}

/// A pool's side: where its parked connections are and who waits for one.
#[derive(Default)]
pub struct PoolParking {
    slots: Mutex<Vec<Weak<ParkSlot>>>,
    /// Connections parked now (counted idle in the pool's status).
    parked: AtomicUsize,
    /// Checkouts waiting for a free connection: while any does, nothing parks.
    waiting: AtomicUsize,
}

impl PoolParking {
    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Marks a checkout as waiting for this pool until the guard drops, and takes one parked
    /// connection back (it returns to the pool, where the waiter finds it).
    pub fn wait(&self) -> WaitGuard<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.reclaim_one();
        WaitGuard(self)
    }

    /// Takes one parked connection back (it returns to the pool as an idle one) for a checkout
    /// that finds none idle: a server connection parked with an idle client is shared before
    /// a new one is opened, as it would have been had it gone back to the pool.
    pub fn reclaim_one(&self) {
        drop(self.take(1));
    }

    /// Takes every parked connection back (they return to the pool): a drain, resize or close
    /// must see them.
    pub fn release_all(&self) {
        drop(self.take(usize::MAX));
    }

    /// Takes up to `n` parked connections out of their slots; the caller drops them outside any
    /// lock.
    fn take(&self, n: usize) -> Vec<PooledConn> {
        let mut taken = Vec::new();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            if taken.len() < n {
                if let Some(conn) = slot.take(self) {
                    taken.push(conn);
                }
            }
            true
        });
        taken
    }

    fn register(&self, slot: &Arc<ParkSlot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() == slots.capacity() {
            // Before it grows: forget clients that left.
            slots.retain(|w| w.strong_count() > 0);
        }
        slots.push(Arc::downgrade(slot));
    }

    /// Whether a connection of `pool` created at `created` must go back to it now.
    fn refuses(&self, pool: &Pool<ServerManager>, created: Instant) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0 || retired(pool, created)
    }
}

/// A checkout waiting for a full pool (see [`PoolParking::wait`]).
pub struct WaitGuard<'a>(&'a PoolParking);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ParkSlot {
    fn take(&self, parking: &PoolParking) -> Option<PooledConn> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if conn.is_some() {
            parking.parked.fetch_sub(1, Ordering::SeqCst);
        }
        conn
    }
}

/// A client's parked connections, at most one per pool.
#[derive(Default)]
pub struct Parked(Vec<Arc<ParkSlot>>);

impl Parked {
    /// Parks `conn` (idle, in sync, outside any transaction) with the client; gives it back when
    /// it must go to its pool now: someone waits there, or the pool no longer hands it out.
    pub fn park(&mut self, conn: PooledConn) -> Result<(), PooledConn> {
        let Some(pool) = Object::pool(&conn) else {
            return Err(conn);
        };
        let manager = pool.manager();
        let parking = &manager.parking;
        let created = Object::metrics(&conn).created;
        if parking.refuses(&pool, created) {
            return Err(conn);
        }
        let id = manager as *const ServerManager as usize;
        let slot = match self.0.iter().find(|s| s.pool == id) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::new(ParkSlot {
                    pool: id,
                    server: manager.server_id(),
                    conn: Mutex::new(None),
                });
                parking.register(&slot);
                if self.0.len() == MAX_SLOTS {
                    self.0.remove(0);
                }
                self.0.push(slot.clone());
                slot
            }
        };
        let replaced = {
            let mut held = slot.conn.lock().unwrap_or_else(|p| p.into_inner());
            let replaced = held.replace(conn);
            if replaced.is_none() {
                parking.parked.fetch_add(1, Ordering::SeqCst);
            }
            replaced
        };
        drop(replaced);
        // A checkout that started waiting (or a drain) while this one parked may have looked at
        // the slot before it was filled: look again, now that it is.
        if parking.refuses(&pool, created) {
            if let Some(conn) = slot.take(parking) {
                return Err(conn);
            }
        }
        Ok(())
    }

    /// The connection parked for `server`, if it is still there (a waiting checkout may have
    /// taken it) and fit to run on: idle, in sync, open, its pool still handing it out.
    pub fn unpark(&mut self, server: ServerId) -> Option<PooledConn> {
        if self.0.is_empty() {
            return None;
        }
        let mut found = None;
        for slot in self.0.iter().filter(|s| s.server == server) {
            let Some(mut conn) = slot.conn.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                continue;
            };
            let fit = match Object::pool(&conn) {
                Some(pool) => {
                    pool.manager().parking.parked.fetch_sub(1, Ordering::SeqCst);
                    !retired(&pool, Object::metrics(&conn).created)
                }
                None => false,
            };
            conn.drop_deferred();
            if fit && conn.reusable() && conn.idle_and_open() && found.is_none() {
                found = Some(conn);
            }
            // Unfit: back to the pool, whose recycle check closes it.
        }
        if found.is_some() {
            // A connection had without waiting, as a checkout from the pool would record it.
            crate::telemetry::record::pool_waited(std::time::Duration::ZERO);
        }
        found
    }
}

/// Whether `pool` no longer hands out a connection created at `created`: it was closed (its
/// server left the topology), or its server drained since.
fn retired(pool: &Pool<ServerManager>, created: Instant) -> bool {
    pool.is_closed() || pool.manager().drained_since(created)
}
