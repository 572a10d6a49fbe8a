//! Server links: `sotto://HOST:PORT#fp=<sha256 of the certificate, hex>`.
//! The fingerprint is the trust anchor: the client connects only to a
//! server that presents exactly that certificate.
//!
//! A link may name several addresses of one server, the nodes of a cluster
//! sharing its certificate: `sotto://h1:7443,h2:7443#fp=...`. The client
//! keeps to the node that last worked and moves to the next one when it is
//! unreachable or answers that it cannot serve (`Unavailable`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::ClientError;

/// Most addresses one link may name.
pub const MAX_LINK_ADDRESSES: usize = 16;

/// A parsed server link.
#[derive(Clone)]
pub struct ServerLink {
    /// Host name or IP address (IPv6 in brackets) of the first address.
    pub host: String,
    /// TCP port of the first address.
    pub port: u16,
    /// The other addresses of the same server (nodes sharing its
    /// certificate), as (host, port), in the order given.
    pub alternates: Vec<(String, u16)>,
    /// SHA-256 of the server's certificate.
    pub fingerprint: [u8; 32],
    /// The address to try first (shared by clones of this link).
    preferred: Arc<AtomicUsize>,
}

impl PartialEq for ServerLink {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host
            && self.port == other.port
            && self.alternates == other.alternates
            && self.fingerprint == other.fingerprint
    }
}

impl Eq for ServerLink {}

/// One `HOST:PORT`.
fn address(a: &str) -> Result<(String, u16), ClientError> {
    let bad = |why: &str| ClientError::BadLink(why.to_owned());
    let (host, port) = a.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
    let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
    if host.is_empty() || host.contains(['/', ',', '#', ' ']) {
        return Err(bad("invalid host"));
    }
    Ok((host.to_owned(), port))
}

impl ServerLink {
    /// Parses a link.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::BadLink(why.to_owned());
        let rest = s
            .trim()
            .strip_prefix("sotto://")
            .ok_or_else(|| bad("expected sotto://HOST:PORT#fp=FINGERPRINT"))?;
        let (addr, frag) = rest
            .split_once('#')
            .ok_or_else(|| bad("missing #fp= certificate fingerprint"))?;
        let fp_hex = frag
            .strip_prefix("fp=")
            .ok_or_else(|| bad("missing #fp= certificate fingerprint"))?;
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(fp_hex, &mut fingerprint)
            .map_err(|_| bad("fingerprint must be 64 hex digits"))?;
        let mut addresses = addr.split(',').map(address);
        let (host, port) = addresses.next().ok_or_else(|| bad("missing HOST:PORT"))??;
        let alternates = addresses.collect::<Result<Vec<_>, _>>()?;
        if alternates.len() >= MAX_LINK_ADDRESSES {
            return Err(bad("too many addresses"));
        }
        Ok(Self {
            host,
            port,
            alternates,
            fingerprint,
            preferred: Arc::default(),
        })
    }

    /// `host:port` of the first address.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Every `host:port`, in the link's order.
    pub fn authorities(&self) -> Vec<String> {
        std::iter::once(self.authority())
            .chain(self.alternates.iter().map(|(h, p)| format!("{h}:{p}")))
            .collect()
    }

    /// The index (in [`ServerLink::authorities`]) of the address to try first.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % (self.alternates.len() + 1)
    }

    /// Address `i` worked: try it first next time.
    pub(crate) fn prefer(&self, i: usize) {
        self.preferred.store(i, Ordering::Relaxed);
    }

    /// Address `i` cannot serve: unless another was preferred meanwhile,
    /// the next connection starts with the address after it.
    pub(crate) fn avoid(&self, i: usize) {
        let next = (i + 1) % (self.alternates.len() + 1);
        let _ = self
            .preferred
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl fmt::Display for ServerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sotto://{}#fp={}",
            self.authorities().join(","),
            hex::encode(self.fingerprint)
        )
    }
}

impl fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerLink({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let fp = "ab".repeat(32);
        let s = format!("sotto://127.0.0.1:7443#fp={fp}");
        let l = ServerLink::parse(&s).unwrap();
        assert_eq!(l.host, "127.0.0.1");
        assert_eq!(l.port, 7443);
        assert_eq!(l.to_string(), s);
        let v6 = ServerLink::parse(&format!("sotto://[::1]:9#fp={fp}")).unwrap();
        assert_eq!(v6.authority(), "[::1]:9");
    }

    #[test]
    fn rejects_bad_links() {
        let fp = "ab".repeat(32);
        for bad in [
            "https://x:1#fp=00".to_owned(),
            "sotto://x:1".to_owned(),
            "sotto://x:1#fp=zz".to_owned(),
            format!("sotto://x#fp={fp}"),
            format!("sotto://x:99999#fp={fp}"),
            format!("sotto://:1#fp={fp}"),
            format!("sotto://x:1,#fp={fp}"),
            format!("sotto://x:1,y#fp={fp}"),
            format!("sotto://x:1,,y:2#fp={fp}"),
            format!("sotto://{}#fp={fp}", vec!["x:1"; 17].join(",")),
        ] {
            assert!(
                matches!(ServerLink::parse(&bad), Err(ClientError::BadLink(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn several_addresses_of_one_server() {
        let fp = "cd".repeat(32);
        let s = format!("sotto://h1:7443,[::1]:7444,h3:7445#fp={fp}");
        let l = ServerLink::parse(&s).unwrap();
        assert_eq!((l.host.as_str(), l.port), ("h1", 7443));
        assert_eq!(l.authorities(), vec!["h1:7443", "[::1]:7444", "h3:7445"]);
        assert_eq!(l.to_string(), s);
        // The preferred address is shared by clones and moves on from one
        // that cannot serve, unless another was preferred meanwhile.
        let c = l.clone();
        assert_eq!(l.preferred(), 0);
        c.avoid(0);
        assert_eq!(l.preferred(), 1);
        c.avoid(0);
        assert_eq!(l.preferred(), 1);
        l.avoid(1);
        l.avoid(2);
        assert_eq!(c.preferred(), 0);
        assert_eq!(l, ServerLink::parse(&s).unwrap());
        // A single address is unchanged.
        let one = ServerLink::parse(&format!("sotto://h:1#fp={fp}")).unwrap();
        assert!(one.alternates.is_empty());
        one.avoid(0);
        assert_eq!(one.preferred(), 0);
    }
}
