//! The accept loop: [`run`] takes a bound listener, a TLS configuration, the
//! shared state and a shutdown future. Each connection runs in its own task
//! under a global connection cap; on shutdown the loop stops accepting, tells
//! every connection to close and waits for them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::bus::Bus;
use crate::shared::Shared;
use crate::store::Store;

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
                if let Err(e) = shared.store.purge_expired(shared.clock.now_ms()).await {
                    shared.metrics.store_failed("purge", &e);
                    tracing::warn!(error = %e, "purging expired messages failed");
                }
                match shared.store.purge_blobs(shared.clock.now_ms()).await {
                    Ok(gone) => {
                        for b in gone {
                            if let Err(e) = shared.blobs.delete(b) {
                                tracing::warn!(error = %e, "deleting an expired blob failed");
                            }
                        }
                    }
                    Err(e) => {
                        shared.metrics.store_failed("purge", &e);
                        tracing::warn!(error = %e, "purging expired blobs failed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
            }
        });
    }

    // Delivery that does not depend on the bus (a cluster bus may lose
    // wake-ups): see `crate::watch`.
    tasks.spawn({
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        async move {
            let polled = crate::watch::Polled {
                store: &shared.store,
                bus: &shared.bus,
                watch: &shared.watch,
                metrics: &shared.metrics,
            };
            crate::watch::poll(polled, shared.config.store_poll, stop).await;
        }
    });
    // The store's readiness, checked in the background so that `/readyz`
    // answers at once whatever is down.
    tasks.spawn(crate::admin::check_store(shared.clone(), stop_rx.clone()));

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
        let Some(source) = shared.connections.take(&shared.config.limits, peer.ip()) else {
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
