//! Several `sotto-server` nodes on one PostgreSQL database and one NATS,
//! behind a TCP [`Balancer`], as an operator runs them: the nodes share the
//! TLS identity (copied from the first node's data directory) and the
//! attachment directory, and announce the balancer's address in their link.
//! Each node has an admin endpoint ([`Cluster::admin`], [`admin_get`]); a
//! fault test gives each node its own store and bus addresses (proxies it
//! can cut: [`Cluster::start_each`]).

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
    /// Each node's admin endpoint (`/healthz`, `/readyz`, `/busz`, `/metrics`).
    pub admin: Vec<SocketAddr>,
    fingerprint: String,
}

impl Cluster {
    /// Starts `n` nodes with data directories under `root`, on `store` (a
    /// postgres:// URL) and `bus` (a nats:// URL).
    pub fn start(root: &Path, n: usize, store: &str, bus: &str) -> Self {
        let each = vec![(store.to_owned(), bus.to_owned()); n];
        Self::start_each(root, &each)
    }

    /// Starts one node per (store URL, bus URL): the same database and NATS
    /// reached through addresses of each node's own.
    pub fn start_each(root: &Path, each: &[(String, String)]) -> Self {
        let balancer = Balancer::start(Vec::new());
        let lb = balancer.addr.to_string();
        let blobs = root.join("blobs");
        let blobs = blobs.to_str().expect("utf-8 path");
        let mut nodes: Vec<ServerProcess> = Vec::new();
        let mut admin = Vec::new();
        for (i, (store, bus)) in each.iter().enumerate() {
            let data = root.join(format!("node{i}"));
            if let Some(first) = nodes.first() {
                share_tls(&first.data, &data);
            }
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let admin_addr: SocketAddr =
                format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let admin_arg = admin_addr.to_string();
            let args = [
                "--store",
                store.as_str(),
                "--bus",
                bus.as_str(),
                "--public-addr",
                &lb,
                "--blob-dir",
                blobs,
                "--admin-listen",
                &admin_arg,
            ];
            nodes.push(ServerProcess::start_on(&data, addr, &args));
            admin.push(admin_addr);
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
            admin,
            fingerprint,
        }
    }

    /// A link naming the nodes' own addresses in this order (a client
    /// without a balancer, failing over from one node to the next).
    pub fn failover_link(&self, order: &[usize]) -> String {
        let addrs: Vec<String> = order
            .iter()
            .map(|&i| self.nodes[i].addr.to_string())
            .collect();
        format!("sotto://{}#fp={}", addrs.join(","), self.fingerprint)
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

/// Copies the first node's TLS identity and key-directory key into a new
/// node's data directory (docs/OPERATING.md, "Several nodes").
fn share_tls(from: &Path, to: &PathBuf) {
    std::fs::create_dir_all(to).expect("node data dir");
    for f in ["tls-cert.der", "tls-key.der", "directory.key"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy TLS identity and directory key");
    }
}

/// `GET path` on an admin endpoint: (status, body, time taken). A status of
/// 0 means no answer.
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String, std::time::Duration) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    let took = started.elapsed();
    let Ok(text) = answer else {
        return (0, String::new(), took);
    };
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body, took)
}
