//! Every limit this node keeps in its own memory, in one place, each with
//! its name from [`crate::config::Limits`]:
//!
//! - `request_burst` / `requests_per_second`: a token bucket per connection
//!   ([`TokenBucket`]);
//! - `max_connections_per_source`: open connections per source address
//!   ([`ConnectionSlots`]);
//! - `registrations_per_source`, `login_failures_per_source`,
//!   `lookups_per_source`: quotas per source over a fixed window
//!   ([`SourceGuards`]);
//! - `claims_per_claimer`, `claims_per_target`: KeyPackage claims per
//!   claiming device and per (claimer, target) ([`Claims`]).
//!
//! Quotas fail closed: once a key's quota is used up, the request is
//! refused with `RateLimited` and the time until the window ends, whatever
//! it carries. Memory stays bounded: expired windows are dropped when a map
//! grows. Time is tokio's monotonic clock, which tests pause and advance.
//! Limits that must hold across nodes and restarts (kill-code guesses) are
//! kept in the store instead (`services::kill`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sotto_proto::{DeviceId, ErrorCode, Handle, ProtoError};
use tokio::time::Instant;

use crate::config::{Limits, Quota};

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

/// What [`Counter::apply`] does with an event that the quota allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Only look: is the quota used up?
    Look,
    /// Count it.
    Spend,
}

impl<K: Hash + Eq> Counter<K> {
    /// `Err` with a retry hint when `key` used up `quota`; counts nothing.
    pub(crate) fn check(&self, key: K, quota: &Quota) -> Result<(), ProtoError> {
        self.apply(key, quota, Use::Look)
    }

    /// `Err` with a retry hint when `key` used up `quota`; otherwise counts
    /// one event.
    pub(crate) fn spend(&self, key: K, quota: &Quota) -> Result<(), ProtoError> {
        self.apply(key, quota, Use::Spend)
    }

    fn apply(&self, key: K, quota: &Quota, what: Use) -> Result<(), ProtoError> {
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
        if what == Use::Spend {
            e.0 += 1;
        }
        Ok(())
    }
}

/// The per-source quotas of one server.
#[derive(Debug, Default)]
pub(crate) struct SourceGuards {
    /// Accounts registered per source.
    pub(crate) registrations: Counter<IpAddr>,
    /// Failed logins per source.
    pub(crate) login_failures: Counter<IpAddr>,
    /// Handle and account lookups per source.
    pub(crate) lookups: Counter<IpAddr>,
}

/// KeyPackage claims in the current window: per claiming device, and per
/// (claimer, target handle).
#[derive(Debug, Default)]
pub(crate) struct Claims(Mutex<ClaimWindow>);

#[derive(Debug, Default)]
struct ClaimWindow {
    start: Option<Instant>,
    per_claimer: HashMap<DeviceId, u32>,
    per_pair: HashMap<(DeviceId, Handle), u32>,
}

impl Claims {
    /// Counts a claim by `claimer` of `target`'s KeyPackages; `Err` when the
    /// claimer used up `claims_per_claimer` in total or `claims_per_target`
    /// for this target in the window (fail closed: the claim is refused).
    pub(crate) fn spend(
        &self,
        limits: &Limits,
        claimer: DeviceId,
        target: &Handle,
    ) -> Result<(), ProtoError> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let start = *c.start.get_or_insert(now);
        if now.duration_since(start) > limits.claim_window {
            *c = ClaimWindow {
                start: Some(now),
                ..ClaimWindow::default()
            };
        }
        let left = limits
            .claim_window
            .saturating_sub(now.duration_since(c.start.unwrap_or(now)));
        let retry = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let total = c.per_claimer.get(&claimer).copied().unwrap_or(0);
        let pair = c
            .per_pair
            .get(&(claimer, target.clone()))
            .copied()
            .unwrap_or(0);
        if total >= limits.claims_per_claimer || pair >= limits.claims_per_target {
            return Err(ProtoError::with_message(
                ErrorCode::RateLimited,
                "too many key package claims",
            )
            .retry_after(retry));
        }
        *c.per_claimer.entry(claimer).or_insert(0) += 1;
        *c.per_pair.entry((claimer, target.clone())).or_insert(0) += 1;
        Ok(())
    }
}

/// A connection's request allowance: `request_burst` tokens, refilled at
/// `requests_per_second`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            tokens: limits.request_burst,
            refilled: Instant::now(),
        }
    }

    /// Takes a token for one request; `false` when none is left.
    pub(crate) fn take(&mut self, limits: &Limits) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * limits.requests_per_second).min(limits.request_burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections per source address (`max_connections_per_source`).
#[derive(Debug, Default)]
pub(crate) struct ConnectionSlots(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in its source's count; freed on drop.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ConnectionSlots {
    /// A place for one more connection from `ip`, if it has one left.
    pub(crate) fn take(&self, limits: &Limits, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_source {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            map: self.0.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quota_refuses_then_opens_with_the_next_window() {
        let c = Counter::default();
        let q = Quota {
            count: 2,
            window: Duration::from_millis(200),
        };
        c.spend(1u8, &q).unwrap();
        c.check(1u8, &q).unwrap();
        c.spend(1u8, &q).unwrap();
        let e = c.spend(1u8, &q).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms.is_some_and(|ms| ms <= 200), "{e:?}");
        assert_eq!(c.check(1u8, &q).unwrap_err().code, ErrorCode::RateLimited);
        c.spend(2u8, &q).unwrap();
        tokio::time::advance(Duration::from_millis(250)).await;
        c.spend(1u8, &q).unwrap();
    }
}
