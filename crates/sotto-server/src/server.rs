//! The accept loop: [`run`] takes a bound listener, a TLS configuration, the
//! shared state and a shutdown future. Each connection runs in its own task
//! under a global connection cap; on shutdown the loop stops accepting, tells
//! every connection to close and waits for them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::bus::Bus;
use crate::config::ServerConfig;
use crate::store::Store;

/// What every connection shares: the store, the bus, the configuration and
/// the guards against guessing.
pub struct Shared<S, B> {
    /// Persistent state.
    pub store: S,
    /// Mailbox notifications.
    pub bus: B,
    /// Configuration.
    pub config: ServerConfig,
    /// Attachment bytes.
    pub blobs: Arc<dyn crate::blobs::BlobStore>,
    /// Counters and latencies for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Open connections per source address.
    pub(crate) per_source:
        Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// KeyPackage claims per claimer, and per (claimer, target account).
    pub(crate) claims: std::sync::Mutex<Claims>,
    /// Registrations, failed logins and lookups per source address.
    pub(crate) sources: crate::guard::SourceGuards,
}

impl<S: std::fmt::Debug, B: std::fmt::Debug> std::fmt::Debug for Shared<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("bus", &self.bus)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One connection's place in its source's count; freed on drop.
struct SourceSlot {
    map: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl SourceSlot {
    fn take<S, B>(shared: &Shared<S, B>, ip: std::net::IpAddr) -> Option<Self> {
        let mut m = shared.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= shared.config.limits.max_connections_per_source {
            return None;
        }
        *n += 1;
        Some(Self {
            map: shared.per_source.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
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

/// KeyPackage claims in the current window.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    pub(crate) window_start: Option<tokio::time::Instant>,
    pub(crate) per_claimer: std::collections::HashMap<sotto_proto::DeviceId, u32>,
    pub(crate) per_pair:
        std::collections::HashMap<(sotto_proto::DeviceId, sotto_proto::Handle), u32>,
}

impl<S, B> Shared<S, B> {
    /// Shared state for `run`.
    pub fn new(
        store: S,
        bus: B,
        blobs: Arc<dyn crate::blobs::BlobStore>,
        config: ServerConfig,
    ) -> Self {
        Self {
            store,
            bus,
            blobs,
            config,
            metrics: Arc::default(),
            per_source: Default::default(),
            claims: Default::default(),
            sources: Default::default(),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Serves the protocol on `listener` until `shutdown` completes.
pub async fn run<S: Store, B: Bus>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared<S, B>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    // Expired messages are purged every `purge_interval` (and at start);
    // deliveries skip expired ones in between.
    {
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        let every = shared.config.limits.purge_interval;
        tasks.spawn(async move {
            loop {
                if let Err(e) = shared.store.purge_expired(now_ms()).await {
                    tracing::warn!(error = %e, "purging expired messages failed");
                }
                match shared.store.purge_blobs(now_ms()).await {
                    Ok(gone) => {
                        for b in gone {
                            if let Err(e) = shared.blobs.delete(b) {
                                tracing::warn!(error = %e, "deleting an expired blob failed");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "purging expired blobs failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
            }
        });
    }

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.inc();
            drop(tcp);
            continue;
        };
        // Per-source cap: one address cannot take every connection. The
        // address is counted, never logged.
        let Some(source) = SourceSlot::take(&shared, peer.ip()) else {
            shared.metrics.connections_refused.inc();
            drop(tcp);
            continue;
        };
        shared.metrics.connections_accepted.inc();
        shared.metrics.connections.inc();
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            crate::conn::serve(tcp, acceptor, shared.clone(), stop).await;
            shared.metrics.connections.dec();
            drop(source);
            drop(permit);
        });
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }

    // Drain: no new connections (and /readyz says so), every connection
    // finishes the request it is on and closes; clients reconnect to
    // another node. Whatever has not closed after the grace period is cut.
    shared
        .metrics
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(left = tasks.len(), "shutdown grace over; closing the rest");
        tasks.shutdown().await;
    }
    Ok(())
}
