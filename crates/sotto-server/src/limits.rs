//! Quotas per key (a source address, an account) over a fixed window: how
//! many registrations, failed logins and lookups one source may make. They
//! fail closed: once a key's quota is used up, the request is refused with
//! `RateLimited` and the time until the window ends, whatever it carries.
//! Memory stays bounded: expired windows are dropped when the map grows.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use sotto_proto::{ErrorCode, ProtoError};
use tokio::time::Instant;

use crate::config::Quota;

/// Above this many keys, expired windows are swept out on the next use.
const SWEEP_AT: usize = 10_000;

/// Events per key in the key's current window.
#[derive(Debug)]
pub(crate) struct Counter<K> {
    map: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K> Default for Counter<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Counter<K> {
    /// `Err` with a retry hint when `key` used up `quota`; counts one event
    /// when `count` is set and the quota was not used up.
    pub(crate) fn check(&self, key: K, quota: &Quota, count: bool) -> Result<(), ProtoError> {
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= SWEEP_AT {
            m.retain(|_, (_, start)| now.duration_since(*start) <= quota.window);
        }
        let e = m.entry(key).or_insert((0, now));
        if now.duration_since(e.1) > quota.window {
            *e = (0, now);
        }
        if e.0 >= quota.count {
            let left = quota.window.saturating_sub(now.duration_since(e.1));
            return Err(ProtoError::new(ErrorCode::RateLimited)
                .retry_after(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)));
        }
        if count {
            e.0 += 1;
        }
        Ok(())
    }
}

/// The per-source quotas of one server.
#[derive(Debug, Default)]
pub(crate) struct SourceGuards {
    /// Accounts registered per source.
    pub(crate) registrations: Counter<std::net::IpAddr>,
    /// Failed logins per source.
    pub(crate) login_failures: Counter<std::net::IpAddr>,
    /// Handle and account lookups per source.
    pub(crate) lookups: Counter<std::net::IpAddr>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_quota_refuses_then_opens_with_the_next_window() {
        let c = Counter::default();
        let q = Quota {
            count: 2,
            window: Duration::from_millis(200),
        };
        c.check(1u8, &q, true).unwrap();
        c.check(1u8, &q, false).unwrap();
        c.check(1u8, &q, true).unwrap();
        let e = c.check(1u8, &q, true).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms.is_some_and(|ms| ms <= 200), "{e:?}");
        c.check(2u8, &q, true).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        c.check(1u8, &q, true).unwrap();
    }
}
