//! Who is connected, for SHOW CLIENTS: an entry per client from login to disconnect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One connected client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The pid of the BackendKeyData the client got (unique among connected clients).
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub address: Option<SocketAddr>,
    pub connected_at: SystemTime,
    /// Why the client keeps a server connection past its transactions (transaction pooling),
    /// e.g. `advisory_lock,temp_table`; empty when it keeps none.
    pub pinned: String,
}

/// Every connected client, keyed by pid; also counts logins since start.
#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<(HashMap<i32, ClientInfo>, u64)>,
}

/// Removes the client's entry when dropped (the session ended, however it ended).
pub struct ClientEntry {
    registry: Arc<ClientRegistry>,
    pid: i32,
}

impl ClientRegistry {
    /// Records a client that has logged in.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> ClientEntry {
        let pid = info.pid;
        let mut guard = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.insert(pid, info);
        guard.1 += 1;
        ClientEntry {
            registry: self.clone(),
            pid,
        }
    }

    /// Records why client `pid` is pinned to server connections now (empty: it is not).
    pub fn set_pinned(&self, pid: i32, reasons: String) {
        let mut guard = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.0.get_mut(&pid) {
            c.pinned = reasons;
        }
    }

    /// The connected clients, oldest first.
    pub fn list(&self) -> Vec<ClientInfo> {
        let guard = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ClientInfo> = guard.0.values().cloned().collect();
        v.sort_by_key(|c| (c.connected_at, c.pid));
        v
    }

    /// Logins since the proxy started.
    pub fn total(&self) -> u64 {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        let mut guard = self
            .registry
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard.0.remove(&self.pid);
    }
}

/// `YYYY-MM-DD HH:MM:SS+00` in UTC, the way Postgres prints a timestamptz with TimeZone UTC.
pub fn format_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(format_utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00+00");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(format_utc(t), "2000-02-29 12:34:56+00");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(format_utc(t), "2026-12-31 23:59:59+00");
    }

    #[test]
    fn entries_leave_when_dropped() {
        let registry = Arc::new(ClientRegistry::default());
        let info = |pid| ClientInfo {
            pid,
            user: "app".into(),
            database: "app".into(),
            address: None,
            connected_at: SystemTime::UNIX_EPOCH + Duration::from_secs(pid as u64),
            pinned: String::new(),
        };
        let a = registry.register(info(2));
        let b = registry.register(info(1));
        assert_eq!(
            registry.list().iter().map(|c| c.pid).collect::<Vec<_>>(),
            [1, 2]
        );
        registry.set_pinned(2, "temp_table".into());
        assert_eq!(registry.list()[1].pinned, "temp_table");
        drop(a);
        assert_eq!(registry.list().len(), 1);
        // A client that already left is not listed again.
        registry.set_pinned(2, "advisory_lock".into());
        assert_eq!(registry.list().len(), 1);
        drop(b);
        assert!(registry.list().is_empty());
        assert_eq!(registry.total(), 2);
    }
}
