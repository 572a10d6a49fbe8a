//! Several `sotto-server` nodes on one PostgreSQL database and one NATS,
//! behind a TCP [`Balancer`], as an operator runs them: the nodes share the
//! TLS identity (copied from the first node's data directory) and the
//! attachment directory, and announce the balancer's address in their link.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::ServerProcess;
use crate::balancer::Balancer;
use crate::services::free_port;

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<ServerProcess>,
    /// Where clients connect.
    pub balancer: Balancer,
    /// The link clients register with (the balancer's address).
    pub link: String,
    fingerprint: String,
}

impl Cluster {
    /// Starts `n` nodes with data directories under `root`, on `store` (a
    /// postgres:// URL) and `bus` (a nats:// URL).
    pub fn start(root: &Path, n: usize, store: &str, bus: &str) -> Self {
        let balancer = Balancer::start(Vec::new());
        let lb = balancer.addr.to_string();
        let blobs = root.join("blobs");
        let blobs = blobs.to_str().expect("utf-8 path");
        let args = [
            "--store",
            store,
            "--bus",
            bus,
            "--public-addr",
            &lb,
            "--blob-dir",
            blobs,
        ];
        let mut nodes: Vec<ServerProcess> = Vec::new();
        for i in 0..n {
            let data = root.join(format!("node{i}"));
            if let Some(first) = nodes.first() {
                share_tls(&first.data, &data);
            }
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            nodes.push(ServerProcess::start_on(&data, addr, &args));
        }
        let link = nodes[0].link.clone();
        for node in &nodes {
            assert_eq!(node.link, link, "every node announces the same link");
        }
        balancer.set_backends(nodes.iter().map(|n| n.addr).collect());
        let fingerprint = link.split("#fp=").nth(1).expect("fingerprint").to_owned();
        Self {
            nodes,
            balancer,
            link,
            fingerprint,
        }
    }

    /// A link that reaches node `i` directly, not through the balancer.
    pub fn node_link(&self, i: usize) -> String {
        format!("sotto://{}#fp={}", self.nodes[i].addr, self.fingerprint)
    }

    /// A fresh invite code.
    pub fn invite(&self) -> String {
        self.nodes[0].invite()
    }
}

/// Copies the first node's TLS identity into a new node's data directory.
fn share_tls(from: &Path, to: &PathBuf) {
    std::fs::create_dir_all(to).expect("node data dir");
    for f in ["tls-cert.der", "tls-key.der"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy TLS identity");
    }
}
