//! Failed logins per client address: an address with too many failures in a minute is refused
//! until its minute is over. The table is bounded, so a flood of addresses cannot grow it without
//! limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long failures count against an address, from its first failure.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at most; beyond it, expired entries go first, then the oldest window.
const MAX_TRACKED: usize = 10_000;

/// One address's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// The failure counts of recent client addresses, shared by all logins of a proxy.
#[derive(Default)]
pub struct LoginFailures {
    by_address: Mutex<HashMap<IpAddr, Window>>,
}

impl LoginFailures {
    /// How much longer logins from `ip` are refused, when it has `limit` failures (or more) in
    /// its current window; `None` if it may try (and always when `limit` is 0).
    pub fn refused_for(&self, ip: IpAddr, limit: u32, now: Instant) -> Option<Duration> {
        if limit == 0 {
            return None;
        }
        let table = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let window = table.get(&ip)?;
        let ends = window.started + WINDOW;
        (window.failures >= limit && now < ends).then(|| ends - now)
    }

    /// Counts a failed login from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut table = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(window) = table.get_mut(&ip) {
            if now < window.started + WINDOW {
                window.failures = window.failures.saturating_add(1);
            } else {
                *window = Window {
                    started: now,
                    failures: 1,
                };
            }
            return;
        }
        if table.len() >= MAX_TRACKED {
            table.retain(|_, w| now < w.started + WINDOW);
        }
        if table.len() >= MAX_TRACKED {
            let oldest = table
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        table.insert(
            ip,
            Window {
                started: now,
                failures: 1,
            },
        );
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn an_address_is_refused_after_the_limit_until_its_window_ends() {
        let guard = LoginFailures::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(guard.refused_for(ip(1), 3, t0), None, "after {i} failures");
            guard.record_failure(ip(1), t0);
        }
        let left = guard.refused_for(ip(1), 3, t0 + Duration::from_secs(10));
        assert_eq!(left, Some(Duration::from_secs(50)));
        assert_eq!(
            guard.refused_for(ip(2), 3, t0),
            None,
            "other addresses may log in"
        );
        assert_eq!(guard.refused_for(ip(1), 0, t0), None, "0 means no limit");
        assert_eq!(guard.refused_for(ip(1), 3, t0 + WINDOW), None);
        // A failure after the window starts a new one.
        guard.record_failure(ip(1), t0 + WINDOW);
        assert_eq!(guard.refused_for(ip(1), 2, t0 + WINDOW), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let guard = LoginFailures::default();
        let t0 = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 500) {
            guard.record_failure(ip(n), t0 + Duration::from_millis(n as u64));
        }
        assert_eq!(guard.tracked(), MAX_TRACKED);
        // The oldest windows were dropped, the newest kept.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(guard.refused_for(ip(0), 1, late), None);
        let newest = ip(MAX_TRACKED as u32 + 499);
        assert!(guard.refused_for(newest, 1, late).is_some());
    }
}
